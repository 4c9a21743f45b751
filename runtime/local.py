"""The embedded default executor: worker OS processes on this machine, and the driver loop.

:class:`LocalExecutor` is an adapter of the executor port that
:class:`~mergeagg.runtime.master.Policy` drives: it starts worker processes (replacing any
that die), ships each job's functions once (cloudpickled), carries out the policy's
actions and turns what the workers say (and their deaths, seen through process
sentinels) into events. :func:`run_local` is the loop between the two.

Start method: ``forkserver`` where it exists (a fork server that has already imported
mergeagg forks each worker in milliseconds, and it is safe in programs with threads), else
``spawn``; one method whatever the program does. Under both a script that calls ``run``
must guard its entry point with ``if __name__ == "__main__":``, and one that does not gets
an error saying so. Whatever the method, a worker exits when its parent does (it watches
its parent's pid and its pipe).
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing as mp
import os
import pickle
import selectors
import shutil
import signal
import sys
import tempfile
import time

from mergeagg.errors import JobFailed, WorkerLost
from mergeagg.runtime.channel import Channel
from mergeagg.runtime.datasets import WorkerMemoryDatasets
from mergeagg.runtime.pickling import dumps as ship_dumps
from mergeagg.runtime.port import (
    Cancel,
    Cancelled,
    Failed,
    Finished,
    Heartbeat,
    Joined,
    KillWorker,
    Launch,
    Lost,
    Release,
)
from mergeagg.runtime.refs import Ref, load_ref
from mergeagg.runtime.shuffle import MapOutput
from mergeagg.runtime.worker import serve

__all__ = ["LocalExecutor", "default_start_method"]

_job_ids = itertools.count(1)


def default_start_method():
    """``forkserver`` where the platform has it, else ``spawn``: one start method whatever
    the calling program does. (``fork`` is faster to start but unsafe as soon as the
    program runs a second thread, a notebook kernel's or Dask's; a script that worked under
    ``fork`` and broke once it had a thread was the worst of both.) Under either, worker
    processes import the main module, so a script that calls ``mergeagg.run`` must guard
    its entry point with ``if __name__ == "__main__":``; one that does not is told so.
    """
    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


GUARD_EXIT = 87  # a worker's exit code when it found the main module calling mergeagg.run

GUARD_MESSAGE = (
    "worker processes import the main module, and this script calls mergeagg.run when it is "
    "imported: put the call under if __name__ == \"__main__\": (see docs/runtime.md)")


@contextlib.contextmanager
def _main_importable():
    """While a worker starts: hide the main module's ``__file__`` when it names no file
    (``python - < script``, an embedded interpreter: ``'<stdin>'``), which the fork server
    and spawn would try to re-run and fail on; the worker needs nothing from it (a job's
    functions travel pickled by value)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None or os.path.exists(path):
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def refuse_to_run_in_a_starting_worker():
    """Called when a job starts: in a worker process that is still importing the main
    module (the script has no ``if __name__ == "__main__":`` guard), exit at once with
    :data:`GUARD_EXIT`, which the driver turns into an error that says what to do, instead
    of starting workers recursively. Cost: a walk up the call stack, in child processes only.
    """
    if "__mp_main__" not in sys.modules:  # set while a child process re-runs the script
        return
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "_fixup_main_from_path":
            os._exit(GUARD_EXIT)  # the driver says why, once
        frame = frame.f_back


class LocalExecutor(WorkerMemoryDatasets):
    """A pool of worker processes on this machine; the executor port's local adapter.

    Its loss model: a worker process that dies leaves its committed outputs and spill
    files on this machine's disk, where they stay valid (read back under CRC and
    fingerprint checks; only an output that fails them runs again). They are removed with
    the working directory when the executor closes.

    It runs any number of jobs in turn (a :class:`~mergeagg.Session` keeps one), and
    persisted datasets live in its workers' memory
    (:class:`~mergeagg.runtime.datasets.WorkerMemoryDatasets`). Between two jobs,
    :meth:`settle` waits for the answers of the previous job's cancelled attempts.

    Cost: starting it forks ``workers`` processes (milliseconds each under forkserver once
    the fork server runs, about 0.1-0.3 s each under spawn). Use as a context manager, or
    call :meth:`close`; it kills its workers on close, on error, and when this process exits.
    """

    def __init__(self, workers, *, heartbeat_interval=0.2, start_method=None, workdir=None,
                 max_restarts=None):
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"a LocalExecutor needs at least one worker, got {workers!r}")
        self.size = workers
        self.heartbeat_interval = heartbeat_interval
        self.start_method = start_method or default_start_method()
        self.ctx = mp.get_context(self.start_method)
        if self.start_method == "forkserver":
            # The catalog too: a worker (a replacement above all) then loads a catalog
            # job without importing it first.
            self.ctx.set_forkserver_preload(["mergeagg.runtime.worker", "mergeagg.algorithms"])
        self._own_dir = workdir is None
        self.workdir = workdir  # made by start(), so an executor never started leaves none
        # Deaths mid-task are the policy's to judge (max_lost per task); deaths before a
        # worker is even ready mean workers cannot start at all.
        self.max_failed_starts = max_restarts if max_restarts is not None else 5
        self.failed_starts = 0
        self.restarts = 0
        self.procs = {}  # wid -> (process, Channel)
        self._closed_channels = []  # of workers gone, for the byte counts
        self._bytes_at_job = (0, 0)
        self._writing = set()  # workers whose sockets are watched for writability
        self.pids = {}
        self.ready = set()
        self.killed = set()
        self._ids = itertools.count(1)
        self._jobs = {}
        self._events = []
        self._closed = False
        self._started = False
        self._selector = selectors.DefaultSelector()
        self._last_os_check = 0.0
        self.current_job = None
        self.unsettled = {}  # cancelled attempt -> its worker, until it answers
        self.dataset_jobs = {}  # persisted dataset id -> the job carrying its load

    outputs_survive_worker = True  # see the class docstring
    mode = "local"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self):
        """Start the workers (idempotent). Returns ``self``."""
        refuse_to_run_in_a_starting_worker()
        if not self._started:
            self._started = True
            if self.workdir is None:
                self.workdir = tempfile.mkdtemp(prefix="mergeagg-")
            try:
                self._spawn()
            except OSError as exc:
                if self.start_method != "forkserver" or "path too long" not in str(exc):
                    raise
                # The fork server listens on a socket in the temporary directory, and a
                # Unix socket's path is limited to about 107 bytes: under a deep TMPDIR,
                # start workers by spawn instead (slower to start, otherwise the same).
                self.start_method = "spawn"
                self.ctx = mp.get_context("spawn")
                self._spawn()
            for _ in range(self.size - 1):
                self._spawn()
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def _spawn(self):
        wid = f"w{next(self._ids)}"
        parent, child = self.ctx.Pipe(duplex=True)
        wdir = os.path.join(self.workdir, wid)
        proc = self.ctx.Process(target=serve, args=(wid, child, self.heartbeat_interval, wdir),
                                name=f"mergeagg-{wid}", daemon=True)
        with _main_importable():
            proc.start()
        child.close()
        channel = Channel(parent)
        self._selector.register(channel.fd, selectors.EVENT_READ, ("conn", wid))
        self._selector.register(proc.sentinel, selectors.EVENT_READ, ("sentinel", wid))
        self.procs[wid] = (proc, channel)
        self.pids[wid] = proc.pid
        for job_id, (payload, plan) in self._jobs.items():
            self._send(wid, ("job", job_id, payload, plan))
        return wid

    def close(self):
        """Stop every worker and remove the working directory. Cost: one SIGKILL and one
        wait per worker; never a fixed grace period.

        Workers hold nothing a closed executor needs (outputs already fetched, or
        abandoned with the job), so they are killed at once: a worker stuck writing a
        losing attempt's output cannot hold up the end of a job.
        """
        if self._closed:
            return
        self._closed = True
        entries = list(self.procs.values())
        self.procs.clear()
        for proc, _channel in entries:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, OSError):
                pass
        for proc, channel in entries:
            proc.join(5)
            channel.close()
            self._closed_channels.append(channel)
        self._selector.close()
        if self._own_dir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _unregister(self, proc, channel):
        for obj in (channel.fd, proc.sentinel):
            try:
                self._selector.unregister(obj)
            except (KeyError, ValueError, OSError):
                pass

    @staticmethod
    def _hard_kill(proc):
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, OSError):
            pass
        proc.join(5)

    # -- the port --------------------------------------------------------------------------

    def live_workers(self):
        """Workers that said they are ready and have not been lost."""
        return sorted(self.ready)

    def report_counters(self):
        """Bytes that passed through the master's sockets in the current job (what it
        sent: the job's functions and task batches; what it received: completions, inline
        outputs, heartbeats)."""
        sent, received = self._bytes_moved()
        return {"master_bytes_sent": sent - self._bytes_at_job[0],
                "master_bytes_received": received - self._bytes_at_job[1]}

    def _bytes_moved(self):
        channels = [entry[1] for entry in self.procs.values()] + self._closed_channels
        return (sum(c.bytes_sent for c in channels), sum(c.bytes_received for c in channels))

    def worker_pids(self):
        """``{worker id: pid}`` of the live worker processes (tests kill them from outside)."""
        return {w: self.pids[w] for w in self.procs}

    def load_job(self, aggregator, faults=None):
        """Ship a job's functions to every worker once; returns the job id."""
        job_id = next(_job_ids)
        self._bytes_at_job = self._bytes_moved()
        payload = ship_dumps(aggregator)
        self._jobs[job_id] = (payload, faults)
        self.current_job = job_id
        for wid in list(self.procs):
            self._send(wid, ("job", job_id, payload, faults))
        return job_id

    def evict(self, dataset_id):
        """Drop a persisted dataset's partitions from every worker's memory."""
        for wid in list(self.procs):
            self._send(wid, ("uncache", dataset_id))

    def settle(self, timeout=10.0):
        """Between jobs: wait up to ``timeout`` seconds until every worker is ready and
        every cancelled attempt has answered (done, failed or cancelled), freeing the
        outputs of losers that completed anyway. Attempt ids (``map-3#2``) repeat from one
        job to the next, so a loser's late answer must not reach the next job: a worker
        whose cancelled attempt stays silent (hung) is replaced. Other events between
        jobs carry nothing the next job needs (it starts from :meth:`live_workers`)."""
        deadline = time.monotonic() + timeout
        while ((self.unsettled or len(self.ready) < self.size)
               and time.monotonic() < deadline):
            for ev in self.events(0.05):
                if isinstance(ev, Finished) and ev.ref is not None:
                    self._release(ev.ref)
        for aid, wid in list(self.unsettled.items()):
            if wid not in self.procs:
                del self.unsettled[aid]
        for wid in sorted(set(self.unsettled.values())):
            self.kill(wid, "a cancelled attempt never answered")
        self.unsettled.clear()

    def drop_job(self, job_id):
        """Forget a job's functions on every worker."""
        self._jobs.pop(job_id, None)
        for wid in list(self.procs):
            self._send(wid, ("drop", job_id))

    def apply(self, actions, job_id, hint=0.0):
        """Carry out the policy's actions (launches are batched per worker)."""
        batches = {}
        for a in actions:
            if isinstance(a, Launch):
                batches.setdefault(a.worker, []).append((a, job_id, hint))
            elif isinstance(a, Cancel):
                self.unsettled[a.attempt] = a.worker
                self._send(a.worker, ("cancel", a.attempt))
            elif isinstance(a, KillWorker):
                self.kill(a.worker, a.cause)
            elif isinstance(a, Release):
                for ref in a.refs:
                    self._release(ref)
        for wid, items in batches.items():
            self._send(wid, ("tasks", items))

    def kill(self, wid, cause="killed by the master"):
        """SIGKILL worker ``wid`` (the policy already counts it lost) and replace it."""
        entry = self.procs.pop(wid, None)
        self.ready.discard(wid)
        if entry is None:
            return
        proc, channel = entry
        self.killed.add(wid)
        self._unregister(proc, channel)
        self._writing.discard(wid)
        self._hard_kill(proc)
        channel.close()
        self._closed_channels.append(channel)
        self._replace(wid, cause)

    def fetch(self, ref):
        """The value behind an output reference (the root's, at the end of a job)."""
        return load_ref(ref)

    def _os_alive(self, out, now):
        """Evidence of life from the OS for workers that said nothing lately.

        A worker inside one long C call that holds the GIL (splitting a large string,
        pickling a big dict) cannot run its heartbeat thread, yet it is working: if Linux
        shows its process running (``R``) or in disk wait (``D``), that counts as a
        heartbeat. A stopped (``T``) or otherwise idle-and-silent process gets no such
        credit, so a hung worker is still found.
        """
        if now - self._last_os_check < max(self.heartbeat_interval * 2, 0.05):
            return
        self._last_os_check = now
        for wid, pid in list(self.pids.items()):
            if wid not in self.ready or wid not in self.procs:
                continue
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    state = f.read().rsplit(b")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state in (b"R", b"D"):
                out.append(Heartbeat(wid))

    def events(self, timeout):
        """Wait up to ``timeout`` seconds; return the typed events that arrived
        (:mod:`mergeagg.runtime.port`)."""
        if self._events:
            out, self._events = self._events, []
            return out
        if not self.procs:
            time.sleep(min(timeout, 0.05))
            return []
        ready = self._selector.select(max(0.0, timeout))
        out = self._events
        self._events = []
        dead = []
        for key, mask in ready:
            what, wid = key.data
            if wid not in self.procs:
                continue
            if what == "conn":
                channel = self.procs[wid][1]
                if mask & selectors.EVENT_WRITE:
                    self._flush(wid, channel)
                if mask & selectors.EVENT_READ:
                    self._drain(wid, channel, out, dead)
            else:
                dead.append(wid)
        for wid in dict.fromkeys(dead):
            self._on_death(wid, out)
        self._os_alive(out, time.monotonic())
        if self.unsettled:
            self._note_answers(out)
        return out

    def _note_answers(self, events):
        """Cancelled attempts that answered, or whose worker died, are settled."""
        for ev in events:
            if isinstance(ev, (Finished, Failed, Cancelled)):
                self.unsettled.pop(ev.attempt, None)
            elif isinstance(ev, Lost):
                for aid in [a for a, w in self.unsettled.items() if w == ev.worker]:
                    del self.unsettled[aid]

    # -- internals -------------------------------------------------------------------------

    def _send(self, wid, msg):
        """Queue ``msg`` for worker ``wid`` and write what its socket takes now: never
        blocks (see :mod:`mergeagg.runtime.channel`)."""
        entry = self.procs.get(wid)
        if entry is None:
            return
        channel = entry[1]
        was_idle = channel.idle
        channel.queue(pickle.dumps(msg, protocol=5))
        if was_idle:
            self._flush(wid, channel)

    def _flush(self, wid, channel):
        """Write a worker's queued messages; watch for writability while some remain."""
        try:
            done = channel.flush()
        except OSError:
            done = True  # its death will be seen through the sentinel
        if done == (wid not in self._writing):
            return  # already watched as it should be
        if done:
            self._writing.discard(wid)
            events = selectors.EVENT_READ
        else:
            self._writing.add(wid)
            events = selectors.EVENT_READ | selectors.EVENT_WRITE
        try:
            self._selector.modify(channel.fd, events, ("conn", wid))
        except (KeyError, ValueError, OSError):
            pass

    def _drain(self, wid, channel, out, dead):
        try:
            for frame in channel.read():
                msg = pickle.loads(frame)
                tag = msg[0]
                if tag == "batch":
                    for event, job in msg[1]:
                        if job == self.current_job:  # else: a late answer of an old job
                            out.append(event)
                    out.append(Heartbeat(wid))
                elif tag in ("cancelled", "progress"):
                    if msg[2] == self.current_job:
                        out.append(msg[1])
                elif tag == "hb":
                    out.append(Heartbeat(wid))
                elif tag == "ready":
                    self.ready.add(wid)
                    out.append(Joined(wid))
                else:  # pragma: no cover - a protocol error is a bug
                    raise JobFailed(f"unknown message from worker {wid}: {msg!r}")
        except (EOFError, OSError):
            dead.append(wid)

    def _on_death(self, wid, out):
        entry = self.procs.pop(wid, None)
        if entry is None:
            return
        proc, channel = entry
        self._unregister(proc, channel)
        self._writing.discard(wid)
        proc.join(1)
        code = proc.exitcode
        channel.close()
        self._closed_channels.append(channel)
        was_ready = wid in self.ready
        self.ready.discard(wid)
        # Its committed outputs stay: they are on this machine's disk (see close()).
        cause = (f"process died with signal {-code}" if code is not None and code < 0
                 else f"process exited with code {code}")
        if was_ready:
            out.append(Lost(wid, cause))
            self.failed_starts = 0
        elif code == GUARD_EXIT:
            raise WorkerLost(f"worker {wid} could not start: {GUARD_MESSAGE}")
        else:
            self.failed_starts += 1
        self._replace(wid, cause)

    def _replace(self, wid, cause):
        if self._closed:
            return
        self.restarts += 1
        if self.failed_starts > self.max_failed_starts:
            raise WorkerLost(
                f"worker {wid} died before it was ready ({cause}), "
                f"{self.failed_starts} times in a row; workers cannot start here"
            )
        self._spawn()

    def _release(self, ref):
        """Free a duplicate output: a worker file or a map output's spill directory. A
        committed part file (PartRef) is the job's output and is never removed."""
        if isinstance(ref, MapOutput):
            shutil.rmtree(ref.directory, ignore_errors=True)
        elif isinstance(ref, Ref) and ref.path is not None:
            try:
                os.unlink(ref.path)
            except OSError:
                pass
