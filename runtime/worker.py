"""The worker process: runs attempts sent by the master, sends back outputs' references.

One worker is one OS process with five threads: the main thread runs tasks one at a time
(user code runs here, so a cancel can interrupt it with a signal), a reader thread takes
messages off the pipe (a cancel acts at once), a writer thread sends what the others hand
it (so no thread ever waits behind another's write), a heartbeat thread says "alive"
every ``heartbeat_interval`` seconds, and a progress thread reports how far a long map or
combine attempt is (:class:`~mergeagg.runtime.port.Progress`, at most every 0.2 s). When the
master's end of the pipe closes, the worker exits: no orphans. Every attempt runs through
the one attempt runner, :func:`mergeagg.runtime.attempt.run_attempt`; this module is its
:class:`ProcessHost`.

Outputs: a task's output is pickled once and fingerprinted on the worker. Up to
``INLINE_LIMIT`` (64 KiB) it rides back to the master inside the completion message; a
larger one is written once, where it is made, to a file in the worker's own directory
(temporary name, then rename, with a CRC-32), and the master carries only its reference:
the combine that reads it runs where it is if it can, and the master's memory does not
grow with the outputs. On one machine a file outlives the process that wrote it, so a
killed worker's outputs stay valid (checked by size and CRC when read; a torn or missing
one names its task, which runs again). Every combine gets fresh objects (it unpickles
its inputs), so a combine that modifies its first argument never touches a stored output.

Worker-resident datasets: a map task whose split is a :class:`CachedPartition` runs its
``partial`` over the partition's loaded form, kept in this worker's memory across jobs
(keyed by dataset and split index). On a miss the worker rebuilds it from its lineage: it
reads the split and applies the dataset's ``load`` function. The task's stats say which
(``cache_hits`` / ``cache_misses``) and ``bytes_read`` counts only what a miss read.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import threading
import time
from collections import deque

import cloudpickle

from mergeagg.errors import CorruptSpillError
from mergeagg.inputs import read_split
from mergeagg.runtime.attempt import PROGRESS_EVERY, Reporter, run_attempt
from mergeagg.runtime.faults import ProcessFaults
from mergeagg.runtime.port import Cancelled, Progress
from mergeagg.runtime.refs import (  # noqa: F401  (re-exported: the worker's data types)
    INLINE_LIMIT,
    CachedPartition,
    Cancel,
    InputLost,
    Ref,
    dumps,
    load_ref,
    store,
)
from mergeagg.runtime.shuffle import PartRef, side_of

__all__ = ["serve", "ProcessHost", "Ref", "INLINE_LIMIT", "dumps", "load_ref", "InputLost",
           "CachedPartition"]


class ProcessHost(ProcessFaults):
    """The attempt runner's host in a worker process: outputs inline or in this worker's
    directory, worker-resident partitions in its memory, and faults that strike this OS
    process for real (SIGKILL, SIGSTOP, a sleep)."""

    def __init__(self, wid, workdir, jobs):
        self.worker = wid
        self.workdir = workdir
        self.jobs = jobs
        self.cache = {}  # (dataset, split index) -> loaded partition
        self.job = None  # the job of the attempt being run
        self.meter = None  # (Meter, job) of the running map or combine attempt, for the sampler

    load = staticmethod(load_ref)

    def track(self, meter):
        """The running map or combine attempt's meter (``None``: none runs); one assignment, read by
        the progress thread as one tuple."""
        self.meter = (meter, self.job) if meter is not None else None

    def store(self, aid, data):
        return store(self.workdir, self.worker, aid, data)

    def cached(self, part):
        """The loaded form of ``part`` from this worker's cache, or rebuilt from its
        lineage (read the split, or get the parent partition, then apply the dataset's
        load function) and kept. Returns ``(loaded, stats)``; ``bytes_read`` counts what
        the rebuild read from disk."""
        key = (part.dataset, part.index)
        if key in self.cache:
            return self.cache[key], {"cache_hits": 1, "cache_misses": 0, "bytes_read": 0}
        job = self.jobs.get(part.load_job)
        if job is None:
            raise RuntimeError(f"dataset {part.dataset}'s load function (job "
                               f"{part.load_job}) is not on worker {self.worker}; was the "
                               "dataset unpersisted?")
        t0 = time.perf_counter()
        if part.parent is not None:
            base, parent_stats = self.cached(part.parent)
            loaded = job[0](base)
            nbytes = parent_stats["bytes_read"]
        else:
            base = read_split(part.split)
            loaded = job[0](base)
            nbytes = getattr(base, "bytes_read", 0)  # text splits are read on first use
        self.cache[key] = loaded
        return loaded, {"cache_hits": 0, "cache_misses": 1, "bytes_read": nbytes,
                        "load_seconds": time.perf_counter() - t0}

    @staticmethod
    def side(ref):
        """A reducer's salted partials, from its stored output or its part's side file."""
        try:
            if isinstance(ref, PartRef):
                return load_ref(ref.side_ref) if ref.side_ref is not None else ([], [])
            return side_of(load_ref(ref))
        except InputLost as exc:
            err = CorruptSpillError(str(exc))
            err.lost = (ref.key.task if isinstance(ref, Ref)
                        else ref.key.rpartition("#")[0],)
            raise err from None


class _Worker:
    def __init__(self, wid, conn, workdir):
        self.wid = wid
        self.conn = conn
        self.out_cv = threading.Condition()
        self.outbox = []
        self.writing = False
        self.cv = threading.Condition()
        self.queue = deque()
        self.jobs = {}
        self.host = ProcessHost(wid, workdir, self.jobs)
        self.current = None
        self.cancel_target = None

    # -- threads ---------------------------------------------------------------------------

    def send(self, msg):
        """Queue ``msg`` for the writer thread; never blocks, so no thread of this worker
        ever waits behind another's write (the reader thread must always be free to take
        the master's messages off the socket)."""
        data = pickle.dumps(msg, protocol=5)
        with self.out_cv:
            self.outbox.append(data)
            self.out_cv.notify()

    def flush(self):
        """Wait until every queued message is written: before an attempt that may take
        long (or carries a fault), the master hears which attempts finished, so that if
        this worker dies in it, only that attempt is blamed. Cannot wait forever: the
        master never stops reading, and the writer exits the process if the master is
        gone."""
        with self.out_cv:
            while self.outbox or self.writing:
                self.out_cv.wait()

    def writer(self):
        conn = self.conn
        while True:
            with self.out_cv:
                while not self.outbox:
                    self.writing = False
                    self.out_cv.notify_all()
                    self.out_cv.wait()
                batch = list(self.outbox)
                self.outbox.clear()
                self.writing = True
            try:
                for data in batch:
                    conn.send_bytes(data)
            except (OSError, ValueError):
                os._exit(0)  # the master is gone

    def reader(self):
        while True:
            try:
                data = self.conn.recv_bytes()
            except (EOFError, OSError):
                os._exit(0)  # the master is gone: never outlive it
            msg = pickle.loads(data)
            if msg[0] == "cancel":
                self._cancel(msg[1])
                continue
            with self.cv:
                if msg[0] == "tasks":
                    self.queue.extend(msg[1])
                else:
                    self.queue.append(msg)
                self.cv.notify()

    def heartbeats(self, interval):
        msg = ("hb", self.wid)
        parent = os.getppid()
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(0)  # our parent (the master, or its fork server) is gone
            self.send(msg)

    def progress(self):
        """Every ``PROGRESS_EVERY`` seconds at most, send the running map or combine
        attempt's progress (the rule is :class:`~mergeagg.runtime.attempt.Reporter`'s): a sample
        reads the meter, so the attempt pays nothing per record, and attempts shorter than
        the period send nothing."""
        reporter = Reporter()
        while True:
            time.sleep(PROGRESS_EVERY / 4)  # a report comes soon after an attempt is due one
            tracked = self.host.meter
            if tracked is None:
                continue
            meter, job = tracked
            reporter.keep((meter,))
            sample = reporter.due(meter, time.perf_counter())
            if sample is not None:
                self.send(("progress", Progress(meter.attempt, sample[0], self.wid,
                                                sample[1], meter.total), job))

    def _cancel(self, aid):
        with self.cv:
            for item in self.queue:
                if not isinstance(item[0], str) and item[0].attempt == aid:
                    self.queue.remove(item)
                    self.send(("cancelled", Cancelled(aid, self.wid), item[1]))
                    return
            if self.current == aid:
                self.cancel_target = aid
                os.kill(os.getpid(), signal.SIGUSR1)

    def _on_signal(self, signum, frame):
        if self.current is not None and self.current == self.cancel_target:
            raise Cancel()

    # -- the main thread -------------------------------------------------------------------

    def loop(self):
        pending = []
        first = 0.0
        last_seconds = 0.0
        while True:
            with self.cv:
                if not self.queue and not pending:
                    while not self.queue:
                        self.cv.wait()
                item = self.queue.popleft() if self.queue else None
            if item is None:
                self.send(("batch", pending))
                pending = []
                continue
            if isinstance(item[0], str):
                if pending:
                    self.send(("batch", pending))
                    pending = []
                if item[0] == "job":
                    _, job_id, payload, plan = item
                    self.jobs[job_id] = (cloudpickle.loads(payload), plan)
                elif item[0] == "drop":
                    self.jobs.pop(item[1], None)
                elif item[0] == "uncache":
                    for key in [k for k in self.host.cache if k[0] == item[1]]:
                        del self.host.cache[key]
                else:
                    return
                continue
            # Completions ride together only while attempts are tiny; before anything
            # longer starts, the master hears of what finished, so that if this worker dies
            # now the master knows which attempt was running (and blames only that one).
            if pending and (last_seconds > 0.0005 or self._faulty(item)):
                self.send(("batch", pending))
                pending = []
                self.flush()
            if not pending:
                first = time.perf_counter()
            started = time.perf_counter()
            # Every answer carries its job id: attempt ids repeat from one job to the next
            # on a reused pool, and a late answer must not be taken for a newer attempt.
            pending.append((self.run(item), item[1]))
            last_seconds = time.perf_counter() - started
            if len(pending) >= 64 or time.perf_counter() - first > 0.002:
                self.send(("batch", pending))
                pending = []
                self.flush()

    def _faulty(self, item):
        job = self.jobs.get(item[1])
        plan = job[1] if job is not None else None
        aid = item[0].attempt
        return plan is not None and plan.fault_for(aid.task, aid.number) is not None

    def run(self, item):
        """One attempt, through the one attempt runner; a cancel may interrupt it."""
        launch, job_id, hint = item
        job, plan = self.jobs[job_id]
        self.current = launch.attempt
        self.host.job = job_id
        try:
            event = run_attempt(job, plan, launch, hint, self.host)
            self.current = None
        except Cancel:
            self.current = None
            event = Cancelled(launch.attempt, self.wid)
        return event


def serve(wid, conn, heartbeat_interval, workdir):
    """The worker process's main function (the target the executor starts)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the master's to handle
    # A forked worker inherits its parent's heap (a benchmark's input lists, a notebook's
    # data): never traverse it in this process's collections (a keyed reducer ran 3-5x
    # slower without this, under a parent holding 2 million tuples).
    gc.freeze()
    os.makedirs(workdir, exist_ok=True)
    w = _Worker(wid, conn, workdir)
    signal.signal(signal.SIGUSR1, w._on_signal)
    threading.Thread(target=w.writer, daemon=True, name="mergeagg-writer").start()
    threading.Thread(target=w.reader, daemon=True, name="mergeagg-reader").start()
    threading.Thread(target=w.heartbeats, args=(heartbeat_interval,), daemon=True,
                     name="mergeagg-heartbeat").start()
    threading.Thread(target=w.progress, daemon=True, name="mergeagg-progress").start()
    w.send(("ready", wid, os.getpid()))
    w.loop()
