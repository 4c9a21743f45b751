"""The worker process: runs tasks sent by the master, sends back outputs' references.

One worker is one OS process with three threads: the main thread runs tasks one at a time
(user code runs here, so a cancel can interrupt it with a signal), a reader thread takes
messages off the pipe (a cancel acts at once), and a heartbeat thread says "alive" every
``heartbeat_interval`` seconds. When the master's end of the pipe closes, the worker exits:
no orphans.

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
import traceback
import zlib
from collections import deque

import cloudpickle

from mergeagg.errors import CorruptSpillError, InputError
from mergeagg.fingerprint import MappingDigest, fingerprint
from mergeagg.inputs import read_split
from mergeagg.runtime.faults import strike_after, strike_before
from mergeagg.runtime.pickling import dumps as ship_dumps
from mergeagg.runtime.shuffle import (
    KeyedSpec,
    PartRef,
    reducer_fingerprint,
    run_map,
    run_merge,
    run_reduce,
    side_of,
)

__all__ = ["Ref", "serve", "INLINE_LIMIT", "dumps", "load_ref", "InputLost", "CachedPartition"]

INLINE_LIMIT = 64 * 1024


class Ref:
    """Where a task's output is: inline ``data`` (held by the master), or a file ``path``
    in ``worker``'s directory with its ``crc``. ``nbytes`` is the pickled size."""

    __slots__ = ("worker", "key", "path", "data", "nbytes", "crc")

    def __init__(self, worker, key, path=None, data=None, nbytes=0, crc=0):
        self.worker = worker
        self.key = key
        self.path = path
        self.data = data
        self.nbytes = nbytes
        self.crc = crc

    def __getstate__(self):
        return (self.worker, self.key, self.path, self.data, self.nbytes, self.crc)

    def __setstate__(self, state):
        self.worker, self.key, self.path, self.data, self.nbytes, self.crc = state

    def __repr__(self):
        where = "inline" if self.data is not None else f"{self.worker}:{self.path}"
        return f"Ref({self.key}, {where}, {self.nbytes} B)"


class CachedPartition:
    """A map task's input that stays in a worker's memory: partition ``split.index`` of
    dataset ``dataset``, with its lineage: ``split`` (the input it is read from) or
    ``parent`` (the cached partition it is derived from), and ``load_job``, the id of the
    executor job whose payload is the function that turns the split's records (or the
    parent's loaded form) into the kept form. The function is shipped to every worker once,
    as a job; a descriptor is a few words.

    >>> from mergeagg.inputs import shards
    >>> p = CachedPartition("d1", shards([[1, 2]]).splits()[0], 7)
    >>> p.id, p.index, CachedPartition("d2", p.split, 8, parent=p).parent.dataset
    ('d1/shard:0', 0, 'd1')
    """

    __slots__ = ("dataset", "split", "load_job", "parent")

    def __init__(self, dataset, split, load_job, parent=None):
        self.dataset = dataset
        self.split = split
        self.load_job = load_job
        self.parent = parent

    @property
    def index(self):
        return self.split.index

    @property
    def id(self):
        return f"{self.dataset}/{self.split.id}"

    def __getstate__(self):
        return (self.dataset, self.split, self.load_job, self.parent)

    def __setstate__(self, state):
        self.dataset, self.split, self.load_job, self.parent = state

    def __repr__(self):
        return f"CachedPartition({self.id})"


class InputLost(Exception):
    """A task's input output reference could not be read (its worker died, or it is torn).

    ``worker`` names the worker that held it, ``task`` the task that made it.
    """

    def __init__(self, message, worker=None, task=None):
        super().__init__(message)
        self.worker = worker
        self.task = task


class Cancelled(BaseException):
    """Raised inside the running task when the master cancels it (a backup's loser).

    A BaseException, so that user code's ``except Exception`` does not swallow it.
    """


def dumps(value):
    """Pickle a task output (protocol 5; cloudpickle when it holds lambdas or closures)."""
    try:
        return pickle.dumps(value, protocol=5)
    except (pickle.PicklingError, TypeError, AttributeError):
        return ship_dumps(value)


def load_ref(ref):
    """The value behind ``ref``; :class:`InputLost` if its file is gone or torn."""
    if ref.data is not None:
        return pickle.loads(ref.data)
    try:
        with open(ref.path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise InputLost(f"output {ref.key} on worker {ref.worker} is gone ({exc})",
                        worker=ref.worker, task=ref.key.rsplit("#", 1)[0]) from None
    if len(data) != ref.nbytes or zlib.crc32(data) != ref.crc:
        raise InputLost(f"output {ref.key} on worker {ref.worker} is torn or corrupted "
                        f"({len(data)} of {ref.nbytes} bytes, checksum mismatch)",
                        worker=ref.worker, task=ref.key.rsplit("#", 1)[0])
    return pickle.loads(data)


class _Worker:
    def __init__(self, wid, conn, workdir):
        self.wid = wid
        self.conn = conn
        self.workdir = workdir
        self.out_cv = threading.Condition()
        self.outbox = []
        self.writing = False
        self.cv = threading.Condition()
        self.queue = deque()
        self.jobs = {}
        self.current = None
        self.cancel_target = None
        self.stopping = False
        self.cache = {}  # (dataset, split index) -> loaded partition

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
        """Wait until every queued message is written: before a task that may take long
        (or carries a fault), the master hears which attempts finished, so that if this
        worker dies in it, only that attempt is blamed. Cannot wait forever: the master
        never stops reading, and the writer exits the process if the master is gone."""
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

    def _cancel(self, aid):
        with self.cv:
            for item in self.queue:
                if item[0] == aid:
                    self.queue.remove(item)
                    self.send(("cancelled", aid, item[1]))
                    return
            if self.current == aid:
                self.cancel_target = aid
                os.kill(os.getpid(), signal.SIGUSR1)

    def _on_signal(self, signum, frame):
        if self.current is not None and self.current == self.cancel_target:
            raise Cancelled()

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
            if isinstance(item[0], str) and item[0] in ("job", "drop", "stop", "uncache"):
                if pending:
                    self.send(("batch", pending))
                    pending = []
                if item[0] == "job":
                    _, job_id, payload, plan = item
                    self.jobs[job_id] = (cloudpickle.loads(payload), plan)
                elif item[0] == "drop":
                    self.jobs.pop(item[1], None)
                elif item[0] == "uncache":
                    for key in [k for k in self.cache if k[0] == item[1]]:
                        del self.cache[key]
                else:
                    return
                continue
            # Completions ride together only while tasks are tiny; before anything longer
            # starts, the master hears of what finished, so that if this worker dies now
            # the master knows which attempt was running (and blames only that one).
            if pending and (last_seconds > 0.0005 or self._faulty(item)):
                self.send(("batch", pending))
                pending = []
                self.flush()
            if not pending:
                first = time.perf_counter()
            started = time.perf_counter()
            # Every answer carries its job id: attempt ids repeat from one job to the next
            # on a reused pool, and a late answer must not be taken for a newer attempt.
            pending.append((*self.run_task(item), item[1]))
            last_seconds = time.perf_counter() - started
            if len(pending) >= 64 or time.perf_counter() - first > 0.002:
                self.send(("batch", pending))
                pending = []
                self.flush()

    def _faulty(self, item):
        job = self.jobs.get(item[1])
        plan = job[1] if job is not None else None
        return plan is not None and plan.fault_for(item[0].rsplit("#", 1)[0],
                                                   item[3]) is not None

    def run_task(self, item):
        aid, job_id, kind, number, split, inputs, hint = item
        agg, plan = self.jobs[job_id]
        task_id = aid.rsplit("#", 1)[0]
        fault = plan.fault_for(task_id, number) if plan is not None else None
        if isinstance(agg, KeyedSpec):
            return self.run_keyed_task(agg, aid, task_id, kind, split, inputs, fault, hint)
        t0 = time.perf_counter()
        nbytes_read = 0
        cache_stats = {}
        self.current = aid
        try:
            if fault is not None:
                strike_before(fault, hint, f"worker {self.wid}")
            if kind == "map" and isinstance(split, CachedPartition):
                loaded, cache_stats = self._cached(split)
                nbytes_read = cache_stats.pop("bytes_read")
                acc = agg.partial(loaded)
            elif kind == "map":
                records = read_split(split)
                acc = agg.partial(records)
                nbytes_read = getattr(records, "bytes_read", 0)
            else:
                values = [load_ref(r) for r in inputs]
                acc = values[0]
                for v in values[1:]:
                    acc = agg.combine(acc, v)
            if fault is not None:
                acc = strike_after(fault, acc, time.perf_counter() - t0)
            self.current = None
        except Cancelled:
            self.current = None
            return ("cancelled", aid)
        except InputLost as exc:
            self.current = None
            lost = (exc.task,) if exc.task is not None else ()
            return ("fail", aid, "input_lost", str(exc), "", lost)
        except InputError as exc:
            self.current = None
            return ("fail", aid, "input", str(exc), "", ())
        except Exception as exc:
            self.current = None
            return ("fail", aid, "raise", f"{type(exc).__name__}: {exc}",
                    traceback.format_exc(), ())
        seconds = time.perf_counter() - t0
        try:
            data = dumps(acc)
            fp = fingerprint(acc)
        except Exception as exc:
            return ("fail", aid, "raise",
                    f"the output of {kind} could not be serialised or fingerprinted: "
                    f"{type(exc).__name__}: {exc}", traceback.format_exc(), ())
        ref = self._store(aid, data)
        return ("done", aid, ref, fp, {"seconds": seconds, "bytes_read": nbytes_read,
                                       "output_bytes": len(data), **cache_stats})

    def _cached(self, part):
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
                               f"{part.load_job}) is not on worker {self.wid}; was the "
                               "dataset unpersisted?")
        t0 = time.perf_counter()
        if part.parent is not None:
            base, parent_stats = self._cached(part.parent)
            loaded = job[0](base)
            nbytes = parent_stats["bytes_read"]
        else:
            base = read_split(part.split)
            loaded = job[0](base)
            nbytes = getattr(base, "bytes_read", 0)  # text splits are read on first use
        self.cache[key] = loaded
        return loaded, {"cache_hits": 0, "cache_misses": 1, "bytes_read": nbytes,
                        "load_seconds": time.perf_counter() - t0}

    def run_keyed_task(self, spec, aid, task_id, kind, split, inputs, fault, hint):
        """A keyed job's map or reduce task (see :mod:`mergeagg.runtime.shuffle`)."""
        t0 = time.perf_counter()
        self.current = aid
        try:
            if fault is not None:
                strike_before(fault, hint, f"worker {self.wid}")
            if kind == "map":
                records = read_split(split)
                out_dir = os.path.join(self.workdir, aid.replace("#", "_"))
                ref, fp, stats = run_map(spec, records, out_dir, self.wid, task_id)
                stats["bytes_read"] = getattr(records, "bytes_read", 0)
            elif kind == "merge":
                sides = [self._side(ref) for ref in inputs]
                value, digest, stats = run_merge(spec, sides, aid)
                fp = MappingDigest(*digest).fingerprint()
                stats["digest"] = digest
                ref = value if isinstance(value, PartRef) else None
            else:
                r = int(task_id.rsplit("-", 1)[1])
                value, digest, stats = run_reduce(spec, inputs, r, aid)
                fp = reducer_fingerprint(digest, value)
                stats["digest"] = digest
                ref = value if isinstance(value, PartRef) else None
                if ref is not None and ref.side is not None:
                    ref.side_ref = self._store(aid + "-side", dumps(ref.side))
                    ref.side = None
            if fault is not None:
                strike_after(fault, None, time.perf_counter() - t0)
            self.current = None
            if kind != "map" and ref is None:
                ref = self._store(aid, dumps(value))
        except Cancelled:
            self.current = None
            return ("cancelled", aid)
        except CorruptSpillError as exc:
            self.current = None
            return ("fail", aid, "input_lost", str(exc), "", tuple(getattr(exc, "lost", ())))
        except InputError as exc:
            self.current = None
            return ("fail", aid, "input", str(exc), "", ())
        except Exception as exc:
            self.current = None
            return ("fail", aid, "raise", f"{type(exc).__name__}: {exc}",
                    traceback.format_exc(), ())
        stats["seconds"] = time.perf_counter() - t0
        return ("done", aid, ref, fp, stats)

    @staticmethod
    def _side(ref):
        """A reducer's salted partials, from its stored output or its part's side file."""
        try:
            if isinstance(ref, PartRef):
                return load_ref(ref.side_ref) if ref.side_ref is not None else ([], [])
            return side_of(load_ref(ref))
        except InputLost as exc:
            err = CorruptSpillError(str(exc))
            err.lost = (ref.key.rsplit("#", 1)[0],)
            raise err from None

    def _store(self, aid, data):
        if len(data) <= INLINE_LIMIT:
            return Ref(None, aid, data=data, nbytes=len(data))
        path = os.path.join(self.workdir, aid.replace("#", "_") + ".out")
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return Ref(self.wid, aid, path=path, nbytes=len(data), crc=zlib.crc32(data))


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
    w.send(("ready", wid, os.getpid()))
    w.loop()
