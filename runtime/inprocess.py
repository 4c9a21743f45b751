"""Workers simulated in this process: the executor port with a virtual clock.

:class:`InProcessExecutor` runs every attempt synchronously, in this process, through the
one attempt runner (:func:`mergeagg.runtime.attempt.run_attempt`): the user's real
``partial`` and ``combine``, real pickling and fingerprints, real spill files for keyed
jobs. What it simulates is the machines: each worker is a queue of attempts on a
:class:`~mergeagg.runtime.port.VirtualClock`; an attempt takes ``task_seconds`` of virtual
time (a number, or a function of the Launch); the fault plan's ``kill`` makes the worker
disappear (the driver sees :class:`~mergeagg.runtime.port.Lost`, and a replacement
joins), ``hang`` makes it silent until the policy's heartbeat timeout kills it, ``delay``
stretches the attempt's virtual time, ``raise`` and ``corrupt`` act as on real workers.
Nothing sleeps: a job whose workers hang for the whole heartbeat timeout finishes in
milliseconds, and the same seed gives the same run.

Driven by the production driver and policy, it is what the cluster simulator and the
users' failure-invariance tests stand on.

>>> import mergeagg as ma
>>> from mergeagg.runtime.driver import drive, fetch_root
>>> from mergeagg.runtime.master import Policy, PolicyConfig, fold_tasks
>>> from mergeagg.runtime.faults import FaultPlan
>>> from mergeagg.inputs import shards
>>> agg = ma.Aggregator(sum, lambda a, b: a + b)
>>> source = shards([[i] for i in range(100)])
>>> policy = Policy(fold_tasks(source.splits(), 4), PolicyConfig(heartbeat_timeout=10.0))
>>> ex = InProcessExecutor(8)
>>> acc, _ = drive(policy, ex, agg, fetch_root, faults=FaultPlan.parse("kill=0.2,hang=0.05"),
...                clock=ex.clock)
>>> acc == sum(range(100)), policy.workers_lost > 0, ex.clock() > 10.0
(True, True, True)
"""

from __future__ import annotations

import heapq
import itertools
import os
import pickle
import random
import shutil
import tempfile
from collections import deque

from mergeagg.errors import CorruptSpillError
from mergeagg.inputs import read_split
from mergeagg.runtime.attempt import PROGRESS_EVERY, run_attempt
from mergeagg.runtime.datasets import WorkerMemoryDatasets
from mergeagg.runtime.pickling import dumps as ship_dumps
from mergeagg.runtime.port import (
    Cancel,
    Cancelled,
    Finished,
    Heartbeat,
    Joined,
    KillWorker,
    Launch,
    Lost,
    Progress,
    Release,
    VirtualClock,
)
from mergeagg.runtime.refs import InputLost, Ref, load_ref
from mergeagg.runtime.shuffle import PartRef, side_of

__all__ = ["InProcessExecutor", "MemoryHost"]


class _Killed(BaseException):
    """The simulated worker died in the attempt (a BaseException: user code's ``except
    Exception`` must not catch it)."""


class _Hung(BaseException):
    """The simulated worker stopped in the attempt: alive, silent."""


class MemoryHost:
    """The attempt runner's host for a worker simulated in this process: outputs are kept
    as pickled bytes (so every combine still gets fresh objects), worker-resident
    partitions in a dict, and faults become simulated events. ``lost(ref)`` says whether
    an output died with its worker (the executor's loss model)."""

    def __init__(self, worker, workdir=None, jobs=None, lost=None, rng=None):
        self.worker = worker
        self.workdir = workdir or tempfile.gettempdir()
        self.jobs = jobs if jobs is not None else {}
        self.lost = lost or (lambda ref: False)
        self.rng = rng or random.Random(0)
        self.cache = {}
        self.stretch = 1.0
        self.kill_at = None

    def load(self, ref):
        if self.lost(ref):
            raise InputLost(f"output {ref.key} died with worker {ref.worker}",
                            worker=ref.worker, task=ref.key.task)
        return load_ref(ref)

    def store(self, aid, data):
        return Ref(self.worker, aid, data=data, nbytes=len(data))

    def cached(self, part):
        key = (part.dataset, part.index)
        if key in self.cache:
            return self.cache[key], {"cache_hits": 1, "cache_misses": 0, "bytes_read": 0}
        load = self.jobs[part.load_job][0]
        if part.parent is not None:
            base, parent_stats = self.cached(part.parent)
            self.cache[key] = loaded = load(base)
            nbytes = parent_stats["bytes_read"]
        else:
            base = read_split(part.split)
            self.cache[key] = loaded = load(base)
            nbytes = getattr(base, "bytes_read", 0)  # text splits are read on first use
        return loaded, {"cache_hits": 0, "cache_misses": 1, "bytes_read": nbytes}

    def side(self, ref):
        try:
            if isinstance(ref, PartRef):
                return self.load(ref.side_ref) if ref.side_ref is not None else ([], [])
            return side_of(self.load(ref))
        except InputLost as exc:
            err = CorruptSpillError(str(exc))
            err.lost = (exc.task,)
            raise err from None

    def kill_now(self):
        raise _Killed()

    def kill_after(self, seconds):
        self.kill_at = seconds

    def hang(self):
        raise _Hung()

    def delay(self, factor, elapsed):
        self.stretch *= factor  # of the attempt's virtual time

    def noise(self):
        return self.rng.random()


class _SimWorker:
    __slots__ = ("name", "queue", "host", "head", "job", "alive", "hung", "reported")

    def __init__(self, name, host):
        self.name = name
        self.queue = deque()  # Launches waiting, the head excluded
        self.host = host
        self.head = None  # (launch, event or None[, start, duration]) of the running attempt
        self.job = None  # the job of the running attempt
        self.alive = True
        self.hung = False
        self.reported = 0.0  # when its running attempt's progress was last reported


class InProcessExecutor(WorkerMemoryDatasets):
    """``workers`` simulated workers in this process on a virtual clock (see the module
    docstring). ``task_seconds``: the virtual duration of an attempt (a number, or
    ``task_seconds(launch) -> seconds``); ``restart_seconds``: how long a killed worker's
    replacement takes to join; ``outputs_survive_worker``: the loss model (``True`` as on
    one machine; ``False`` as when a worker's disk goes with it). ``seed`` makes the
    ``corrupt`` fault's noise repeatable. Cost: O(log workers) per attempt besides the
    attempt itself; no threads, no processes, one temporary directory for spill files.
    Persisted datasets live in the simulated workers' memory
    (:class:`~mergeagg.runtime.datasets.WorkerMemoryDatasets`) and die with them.
    """

    mode = "inprocess"

    def __init__(self, workers, *, clock=None, task_seconds=0.001, restart_seconds=0.0,
                 outputs_survive_worker=True, seed=0):
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"an InProcessExecutor needs at least one worker, got "
                             f"{workers!r}")
        self.size = workers
        self.clock = clock if clock is not None else VirtualClock()
        self.task_seconds = task_seconds
        self.restart_seconds = restart_seconds
        self.outputs_survive_worker = outputs_survive_worker
        self.seed = seed
        self.workers = {}
        self.dead = set()
        self.jobs = {}
        self._job_ids = itertools.count(1)
        self._names = itertools.count(1)
        self._outbox = []  # events ready now
        self._later = []  # heap of (time, seq, event or callable) for the future
        self._seq = itertools.count()
        self.workdir = None
        self._started = False
        self.dataset_jobs = {}  # persisted dataset id -> the job carrying its load

    # -- lifecycle -------------------------------------------------------------------------

    def start(self):
        """Make the workers (idempotent); they join at once. Returns ``self``."""
        if not self._started:
            self._started = True
            self.workdir = tempfile.mkdtemp(prefix="mergeagg-inprocess-")
            for _ in range(self.size):
                self._spawn()
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Forget every worker and remove the spill directory."""
        self.workers.clear()
        self._later.clear()
        self._outbox.clear()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def _spawn(self):
        name = f"s{next(self._names)}"
        wdir = os.path.join(self.workdir, name)
        os.makedirs(wdir, exist_ok=True)
        rng = random.Random(f"{self.seed}:{name}")
        self.workers[name] = _SimWorker(
            name, MemoryHost(name, wdir, self.jobs, self._output_lost, rng))
        return name

    def _output_lost(self, ref):
        return (not self.outputs_survive_worker and ref.worker is not None
                and ref.worker in self.dead)

    # -- the port --------------------------------------------------------------------------

    def live_workers(self):
        """Workers alive and ready."""
        return sorted(n for n, w in self.workers.items() if w.alive)

    def load_job(self, payload, faults=None):
        """Take a job's functions (round-tripped through the same pickling a real worker
        gets, so what cannot travel fails here too); returns its id."""
        job = next(self._job_ids)
        self.jobs[job] = (pickle.loads(ship_dumps(payload)), faults)
        return job

    def drop_job(self, job):
        """Forget a job: what it left queued or running is abandoned and its answers not
        yet delivered are dropped (attempt ids repeat from one job to the next; a hung
        worker stays hung)."""
        self.jobs.pop(job, None)
        now = self.clock()
        for w in list(self.workers.values()):
            w.queue = deque(item for item in w.queue if item[1] != job)
            if w.head is not None and w.job == job and not w.hung:
                w.head = None
                self._start_next(w, now)
        self._outbox = [ev for ev in self._outbox if isinstance(ev, (Joined, Lost))]

    def settle(self, timeout=10.0):
        """Between jobs: nothing to wait for (:meth:`drop_job` already dropped what the
        last job left)."""

    def evict(self, dataset_id):
        """Drop a persisted dataset's partitions from every simulated worker's memory."""
        for w in self.workers.values():
            for key in [k for k in w.host.cache if k[0] == dataset_id]:
                del w.host.cache[key]

    def apply(self, actions, job, hint=0.0):
        """Queue launches, carry out cancels and kills; releases free nothing (outputs
        are bytes in memory, dropped with their references)."""
        now = self.clock()
        for a in actions:
            if isinstance(a, Launch):
                w = self.workers.get(a.worker)
                if w is None or not w.alive:
                    continue  # it died meanwhile: the policy hears of it
                w.queue.append((a, job, hint))
                if w.head is None and not w.hung:
                    self._start_next(w, now)
            elif isinstance(a, Cancel):
                self._cancel(a)
            elif isinstance(a, KillWorker):
                self._remove(a.worker, now, announce=False)
            elif isinstance(a, Release):
                pass

    def events(self, timeout):
        """The events due by ``timeout`` seconds of virtual time from now: the earliest
        ones, the clock moved to their time; or none, the clock moved by ``timeout``."""
        if self._outbox:
            out, self._outbox = self._outbox, []
            return out + self._heartbeats() + self._progress()
        deadline = self.clock() + max(timeout, 0.0)
        if not self._later or self._later[0][0] > deadline:
            self.clock.advance_to(deadline)
            return self._heartbeats() + self._progress()
        when = self._later[0][0]
        self.clock.advance_to(when)
        while self._later and self._later[0][0] <= when:
            _t, _seq, item = heapq.heappop(self._later)
            item()
        out, self._outbox = self._outbox, []
        return out + self._heartbeats() + self._progress()

    def fetch(self, ref):
        """The value behind a sink's output reference."""
        if self._output_lost(ref):
            raise InputLost(f"output {ref.key} died with worker {ref.worker}",
                            worker=ref.worker, task=ref.key.task)
        return load_ref(ref)

    # -- internals -------------------------------------------------------------------------

    def _heartbeats(self):
        return [Heartbeat(n) for n, w in self.workers.items() if w.alive and not w.hung]

    def _progress(self):
        """Running map and combine attempts' progress (as the real executors report), as
        the share of their virtual time gone (a ``delay`` fault's attempt moves ``factor``
        times slower), for those that have run ``PROGRESS_EVERY`` seconds, at most that
        often each."""
        now = self.clock()
        out = []
        for w in self.workers.values():
            head = w.head
            if head is None or len(head) < 4 or w.hung or now - w.reported < PROGRESS_EVERY:
                continue
            launch, _event, start, duration = head
            if launch.kind in ("map", "combine") and now - start >= PROGRESS_EVERY:
                w.reported = now
                out.append(Progress(launch.attempt, min(1.0, (now - start) / duration)
                                    if duration > 0 else 1.0, w.name))
        return out

    def _at(self, when, fn):
        heapq.heappush(self._later, (when, next(self._seq), fn))

    def _duration(self, launch):
        ts = self.task_seconds
        return ts(launch) if callable(ts) else ts

    def _start_next(self, w, now):
        """Run the next queued attempt of ``w`` now; its outcome is delivered when its
        virtual time is up."""
        if not w.queue:
            return
        launch, job, hint = w.queue.popleft()
        payload, plan = self.jobs[job]
        w.job = job
        host = w.host
        host.stretch, host.kill_at = 1.0, None
        try:
            event = run_attempt(payload, plan, launch, hint, host)
        except _Killed:
            w.head = (launch, None)
            self._at(now + self._duration(launch), lambda: self._die(w, "killed (simulated)"))
            return
        except _Hung:
            w.head = (launch, None)
            w.hung = True
            return
        duration = self._duration(launch) * host.stretch
        if isinstance(event, Finished):
            event.stats["seconds"] = duration  # the attempt's time is the virtual one
        w.head = (launch, event, now, duration)
        if host.kill_at is not None and host.kill_at < duration:
            self._at(now + host.kill_at, lambda: self._die(w, "killed (simulated)"))
            return
        self._at(now + duration, lambda: self._complete(w, launch))
        if host.kill_at is not None:
            self._at(now + host.kill_at, lambda: self._die(w, "killed (simulated)"))

    def _complete(self, w, launch):
        if not w.alive or w.head is None or w.head[0] is not launch:
            return  # it died, or the attempt was cancelled, meanwhile
        self._outbox.append(w.head[1])
        w.head = None
        self._start_next(w, self.clock())

    def _die(self, w, cause):
        if w.alive and self.workers.get(w.name) is w:
            self._remove(w.name, self.clock(), announce=True, cause=cause)

    def _remove(self, name, now, announce, cause="killed by the master"):
        w = self.workers.pop(name, None)
        if w is None:
            return
        w.alive = False
        self.dead.add(name)
        if announce:
            self._outbox.append(Lost(name, cause))

        def replace():
            self._outbox.append(Joined(self._spawn()))

        if self.restart_seconds > 0:
            self._at(now + self.restart_seconds, replace)
        else:
            replace()

    def _cancel(self, action):
        w = self.workers.get(action.worker)
        if w is None:
            return
        for item in w.queue:
            if item[0].attempt == action.attempt:
                w.queue.remove(item)
                self._outbox.append(Cancelled(action.attempt, w.name))
                return
        if w.head is not None and w.head[0].attempt == action.attempt and not w.hung:
            # (A stopped process takes no signal: a hung worker's attempt stays.)
            w.head = None
            self._outbox.append(Cancelled(action.attempt, w.name))
            self._start_next(w, self.clock())
