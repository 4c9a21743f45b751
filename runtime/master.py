"""The scheduling policy: a task table, retries, lost workers, backups and fingerprint checks.

Pure policy, no processes and no wall clock: every method takes ``now`` from the caller, an
executor adapter (:mod:`mergeagg.runtime.local`, :mod:`mergeagg.runtime.dask`, a simulator,
a test's fake) feeds it events and carries out the actions it returns. Its state is plain
data (dicts, lists, dataclasses) so that it can be journalled.

The life of a job, as in MapReduce:

* every task is **idle**, **in progress** (one or more attempts running) or **completed**;
* map tasks are ready at once; a combine task (a node of the fixed-shape tree of
  :mod:`mergeagg.runtime.tree`) is ready when its children have completed, and runs where a
  child's output already is when that worker has a free slot;
* user code that raises is retried up to ``max_attempts``; then the job fails with
  :class:`~mergeagg.errors.TaskFailed` naming the task, its split, the attempts and the last
  traceback;
* a worker that dies, or is silent for ``heartbeat_timeout``, is lost: its running attempts
  go back to idle, and so do completed tasks whose outputs lived on it and are still needed;
* once ``backup_after`` (75%) of a stage's tasks have completed, a running task whose
  elapsed time exceeds ``backup_factor`` (1.5) times the stage's median gets one backup
  attempt on another worker; the first completion wins, the other attempt is cancelled
  (``PolicyConfig(speculation=...)`` takes another rule from
  :mod:`mergeagg.runtime.speculation`: Spark's, Hadoop's caps, Cubed's, LATE);
* every completion carries the output's fingerprint: two completions of one task must
  agree, else the job stops with :class:`~mergeagg.errors.NondeterminismError`;
  ``verify`` re-runs a sampled fraction of map tasks on another worker only to compare.

>>> from mergeagg.runtime.master import Policy, TaskDef, Launch
>>> p = Policy([TaskDef("map-0", "map", split="s0")], prefetch=1)
>>> p.worker_joined("w1", now=0.0)
>>> [type(a).__name__ for a in p.tick(now=0.0)]
['Launch']
"""

from __future__ import annotations

import bisect
import enum
import hashlib
import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field

from mergeagg.errors import BadRecords, InputError, JobFailed, NondeterminismError, TaskFailed
from mergeagg.runtime.port import (
    AttemptId,
    Cancel,
    Cancelled,
    Failed,
    Finished,
    Heartbeat,
    Heartbeats,
    Joined,
    KillWorker,
    Launch,
    Lost,
    Progress,
    Release,
)
from mergeagg.runtime.speculation import Speculation, Threshold, by_name


class _Where(enum.Enum):
    LOST = "lost"  # ref_worker of an output that died with its worker


_GONE = _Where.LOST

__all__ = [
    "TaskState",
    "TaskDef",
    "Launch",
    "Cancel",
    "KillWorker",
    "Release",
    "Policy",
    "FailureDetector",
    "PolicyConfig",
    "fold_tasks",
]


class TaskState(enum.Enum):
    """MapReduce's three task states."""

    IDLE = "idle"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"


# (Module constants: read per completion and per launch, an enum's attribute is a lookup more.)
_IDLE, _IN_PROGRESS, _COMPLETED = TaskState.IDLE, TaskState.IN_PROGRESS, TaskState.COMPLETED


@dataclass(slots=True)
class TaskDef:
    """A task: ``kind`` "map" (reads ``split``), "combine" (folds ``children`` in order),
    "reduce" (merges one partition of every map output) or "merge" (a final small step).

    ``parents`` are the tasks that read this task's output; a task without parents is a
    sink, whose output the caller fetches at the end, as it does for a task marked
    ``output`` (a reducer whose partition is part of the result but also feeds a final
    merge).

    ``prefer`` names the worker where the task should run (a worker holding its cached
    input partition): while that worker is alive the task waits for a free slot there, up
    to ``PolicyConfig.locality_wait`` seconds, before it goes to any worker.
    """

    id: str
    kind: str
    split: object = None
    children: tuple = ()
    parents: tuple = ()
    index: int = 0
    output: bool = False
    prefer: str | None = None

    @property
    def parent(self):
        """The single parent of a fold-tree task (``None`` for a sink)."""
        return self.parents[0] if self.parents else None


@dataclass
class PolicyConfig:
    """Every knob of the policy, with MapReduce/Spark-like defaults.

    ``outputs_survive_worker`` is the executor's loss model: ``True`` where a dead worker
    process's committed outputs stay readable (the local executor: they are files on this
    machine's disk, checked by CRC and fingerprint when read, and only those that fail the
    check run again); ``False`` where they die with it (a worker on another host, Dask).
    ``max_lost`` is how many times one task's running attempt may take its worker down
    with it before the job fails, naming the task. ``stealing`` lets an idle worker take
    attempts queued behind another worker's slow or stalled one (the one right behind a
    running attempt only once that has run ``steal_after`` seconds and longer than its
    stage's median: a shorter wait would mostly race the worker that is about to start
    it). ``speculation``: the backup rule (a
    :class:`~mergeagg.runtime.speculation.Speculation`, or its name in
    :data:`~mergeagg.runtime.speculation.NAMES`: ``"none"`` turns ``backups`` off);
    ``None`` builds ``Threshold(backup_after, backup_factor,
    min_seconds=backup_min_seconds)``.
    ``scan_interval``: the rule is asked at most this often (seconds); on a real clock,
    asking at every event would back up sub-millisecond tasks whose first attempt has not
    yet reached its worker; the simulator asks at every event (0).
    ``queues_in_order``: whether a worker runs the attempts queued to it in the order the
    policy queued them (the local and in-process executors do). Where it does, an attempt
    queued behind the running one when its worker dies never ran: it moves, keeping its
    number. A Dask worker runs whichever of its tasks is ready first, so any of them may
    have run, and crashed it: each runs again as a new attempt, recorded as ``worker lost
    (queued, may have run)`` (not counted against ``max_lost``, which counts the attempts
    known to have run: an injected ``kill`` on a moved attempt would strike again, worker
    after worker).
    A map task whose user code fails twice the same way (same exception type, same line)
    runs next by bisection (:mod:`mergeagg.runtime.poison`), which finds the records it
    fails on: ``skip_bad_records`` is how many it may set aside (``None``: none; the job
    fails naming the first).
    """

    max_attempts: int = 4
    max_lost: int = 10
    backups: bool = True
    backup_after: float = 0.75
    backup_factor: float = 1.5
    backup_min_seconds: float = 0.0
    heartbeat_timeout: float = 10.0
    task_timeout: float | None = None
    verify: float = 0.0
    seed: int = 0
    prefetch: int = 2
    locality_wait: float = 3.0
    outputs_survive_worker: bool = False
    queues_in_order: bool = True
    stealing: bool = True
    steal_after: float = 0.05
    speculation: Speculation | None = None
    scan_interval: float = 0.02
    skip_bad_records: int | None = None

    def __post_init__(self):
        if self.skip_bad_records is not None and (
                isinstance(self.skip_bad_records, bool)
                or not isinstance(self.skip_bad_records, int) or self.skip_bad_records < 0):
            raise ValueError(f"skip_bad_records must be None or an int >= 0, got "
                             f"{self.skip_bad_records!r}")
        if self.scan_interval < 0:
            raise ValueError(f"scan_interval must be >= 0 seconds, got {self.scan_interval!r}")
        if isinstance(self.speculation, str):
            name, self.speculation = self.speculation, by_name(self.speculation)
            if name == "none":
                self.backups = False
        if self.speculation is not None and not isinstance(self.speculation, Speculation):
            raise TypeError(f"speculation must be a mergeagg.runtime.speculation.Speculation "
                            f"or None, got {self.speculation!r}")
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"max_attempts must be an int >= 1, got {self.max_attempts!r}")
        if not 0.0 <= self.backup_after <= 1.0:
            raise ValueError(f"backup_after must be within [0, 1], got {self.backup_after!r}")
        if self.backup_factor <= 0:
            raise ValueError(f"backup_factor must be positive, got {self.backup_factor!r}")
        if not 0.0 <= self.verify <= 1.0:
            raise ValueError(f"verify must be a fraction within [0, 1], got {self.verify!r}")
        if self.heartbeat_timeout <= 0:
            raise ValueError(f"heartbeat_timeout must be positive, got {self.heartbeat_timeout}")
        if self.task_timeout is not None and self.task_timeout <= 0:
            raise ValueError(f"task_timeout must be positive or None, got {self.task_timeout}")
        if not isinstance(self.prefetch, int) or self.prefetch < 1:
            raise ValueError(f"prefetch must be an int >= 1, got {self.prefetch!r}")
        if self.locality_wait < 0:
            raise ValueError(f"locality_wait must be >= 0 seconds, got {self.locality_wait!r}")


class FailureDetector:
    """Who has been silent too long: ``failed(now, timeout)`` lists them, sorted.

    A worker is failed when ``now - last_heartbeat > timeout``, and stays failed until it
    sends a heartbeat again. The runtime's policy and the ``mergeagg master`` JSON-lines
    node both use this class.

    >>> d = FailureDetector()
    >>> d.heartbeat("w1", 0); d.heartbeat("w2", 8)
    >>> d.failed(now=10, timeout=5)
    ['w1']
    """

    def __init__(self):
        self.last = {}  # worker -> last heard, oldest first while ``_ordered``
        self._ordered = True
        self._newest = float("-inf")

    def heartbeat(self, worker, timestamp):
        """Record that ``worker`` was heard from at ``timestamp``. Cost: O(1)."""
        last = self.last
        prev = last.get(worker)
        if prev is None or timestamp > prev:
            if prev is not None:
                del last[worker]  # to the end: the dict stays oldest first
            last[worker] = timestamp
            if timestamp < self._newest:
                self._ordered = False
            else:
                self._newest = timestamp

    def heartbeats(self, workers, timestamp, only=None):
        """Record that each of ``workers`` was heard from at ``timestamp`` (a round of
        heartbeats): the same as :meth:`heartbeat` for each (``only``: a dict or set; the
        workers not in it are ignored), in set operations at C speed rather than a call
        per worker. Cost: O(len(workers) + silent workers × log of them).

        >>> d = FailureDetector()
        >>> d.heartbeat("w1", 0); d.heartbeat("w2", 0); d.heartbeat("w3", 4)
        >>> d.heartbeats(["w1", "w3", "w9"], 6, only={"w1", "w2", "w3"})
        >>> d.failed(now=10, timeout=5), list(d.last)
        (['w2'], ['w2', 'w1', 'w3'])
        """
        if timestamp < self._newest:
            for w in workers:  # out of time order: keep the newest of each worker
                if only is None or w in only:
                    self.heartbeat(w, timestamp)
            return
        heard = dict.fromkeys(workers, timestamp)
        if only is not None:
            for w in heard.keys() - only:
                del heard[w]
        last = self.last
        silent = last.keys() - heard.keys()
        if silent:
            # The workers not heard keep their times, first (every time kept is at most
            # ``timestamp``), oldest first as ever.
            kept = {w: last[w] for w in sorted(silent, key=lambda w: (last[w], w))}
            kept.update(heard)
            heard = kept
        self.last = heard
        self._newest = timestamp

    def forget(self, worker):
        """Stop tracking ``worker`` (it was replaced)."""
        self.last.pop(worker, None)

    def failed(self, now, timeout):
        """Workers silent for more than ``timeout``, sorted. Cost: O(failed workers) when
        heartbeats arrive in time order (the driver's), O(workers log workers) once after
        one arrived out of order."""
        if not self._ordered:
            self.last = dict(sorted(self.last.items(), key=lambda kv: kv[1]))
            self._ordered = True
        last = self.last
        if not last or now - next(iter(last.values())) <= timeout:
            return []  # the longest silent is within the timeout: nobody is failed
        out = []
        for w, t in last.items():
            if now - t <= timeout:
                break
            out.append(w)
        return sorted(out)


class SortedDurations:
    """A stage's completed durations as a sorted sequence whose median ``d[len(d) // 2]``
    costs O(1): two heaps (the lower half and the rest), sorted into a list only when
    another index or an iteration asks. Cost: O(log n) per :meth:`add`.

    >>> d = SortedDurations()
    >>> for x in (5.0, 1.0, 3.0, 2.0): d.add(x)
    >>> d[len(d) // 2], list(d), len(d)
    (3.0, [1.0, 2.0, 3.0, 5.0], 4)
    """

    __slots__ = ("_lo", "_hi", "_sorted")

    def __init__(self):
        self._lo = []  # max-heap (negated) of the len // 2 smallest
        self._hi = []  # min-heap of the rest: _hi[0] is the median d[len // 2]
        self._sorted = None

    def add(self, x):
        self._sorted = None
        if self._lo and x < -self._lo[0]:
            x = -heapq.heappushpop(self._lo, -x)
        heapq.heappush(self._hi, x)
        if len(self._hi) > len(self._lo) + 1:
            heapq.heappush(self._lo, -heapq.heappop(self._hi))

    def __len__(self):
        return len(self._lo) + len(self._hi)

    def median(self):
        """``d[len(d) // 2]`` (``None`` when empty). Cost: O(1)."""
        hi = self._hi
        return hi[0] if hi else None

    def __bool__(self):
        return bool(self._hi)

    def _list(self):
        if self._sorted is None:
            self._sorted = sorted([-x for x in self._lo] + self._hi)
        return self._sorted

    def __getitem__(self, i):
        if i == len(self._lo) and self._hi:
            return self._hi[0]
        return self._list()[i]

    def __iter__(self):
        return iter(self._list())

    def __repr__(self):
        return f"SortedDurations({self._list()!r})"


@dataclass(slots=True)
class _Task:
    d: TaskDef
    state: TaskState = TaskState.IDLE
    launched: int = 0
    failures: int = 0
    lost: int = 0
    running: list = field(default_factory=list)
    ref: object = None
    ref_worker: str | None = None
    fingerprint: str | None = None
    duration: float = 0.0
    worker: str | None = None
    last_error: str = ""
    last_traceback: str = ""
    pending_children: int = 0
    backup_launched: bool = False
    stats: dict = field(default_factory=dict)
    audit_failures: int = 0
    waiting_since: float | None = None  # when it began waiting for its preferred worker
    bisect: int | None = None  # set once it failed twice alike: run by bisection
    last_signature: object = None  # (exception type, line) of its last failure
    moved: AttemptId | None = None  # an attempt that never ran: its next launch keeps it


@dataclass(slots=True)
class _Attempt:
    id: AttemptId
    worker: str
    started: float | None  # None while queued behind another attempt on its worker
    backup: bool = False
    audit: bool = False
    progress: tuple | None = None  # (share of its work, when) it last reported
    seq: int = 0  # a first attempt's place among the starts (ties in ``started``)
    rec: object = None  # its task's record (_Task): a completion needs no lookup by id

    @property
    def task(self):
        return self.id.task

    @property
    def number(self):
        return self.id.number


def fold_tasks(splits, fan_in):
    """The task list of a fold job: one map task per split and the fixed combine tree.

    Map task ``i`` is ``map-i``; tree node ``j`` of level ``L`` is ``combine-L-j``; a
    single-child node is not a task (its child feeds the next level directly). The last
    task is the root.

    >>> [t.id for t in fold_tasks(["a", "b", "c"], 2)]
    ['map-0', 'map-1', 'map-2', 'combine-1-0', 'combine-2-0']
    """
    from mergeagg.runtime.tree import level_sizes

    tasks = [TaskDef(f"map-{i}", "map", split=s, index=i) for i, s in enumerate(splits)]
    level_ids = [t.id for t in tasks]
    sizes = level_sizes(len(tasks), fan_in)
    by_id = {t.id: t for t in tasks}
    for level in range(1, len(sizes)):
        nxt = []
        for j in range(sizes[level]):
            kids = level_ids[j * fan_in:(j + 1) * fan_in]
            if len(kids) == 1:
                nxt.append(kids[0])
                continue
            node = TaskDef(f"combine-{level}-{j}", "combine", children=tuple(kids), index=j)
            for k in kids:
                by_id[k].parents = (node.id,)
            tasks.append(node)
            by_id[node.id] = node
            nxt.append(node.id)
        level_ids = nxt
    return tasks


def _signature(error, traceback):
    """How an attempt failed, to tell a repeated failure: the exception's type and the
    last line of code in its traceback."""
    frame = ""
    for line in traceback.splitlines():
        if line.lstrip().startswith("File "):
            frame = line.strip()
    return error.split(":", 1)[0], frame


class Policy:
    """The master's policy over an executor port; see the module docstring.

    Feed it ``worker_joined``, ``worker_lost``, ``heartbeat``, ``finished`` and ``failed``
    events and call ``tick(now)`` for the actions to carry out. ``done`` is set when the
    root task has completed (and every audit has compared); ``error`` holds the exception
    when the job failed. Cost: O(log workers) amortised per event and per attempt
    launched (workers with free slots are a heap keyed by load, running first attempts a
    queue per stage in start-time order once a speculation rule reads it, heartbeats a dict
    in time order; a round of heartbeats, :class:`~mergeagg.runtime.port.Heartbeats`, is
    O(workers) dict and set operations at C speed); ``tick`` is
    O(stages) besides, plus the speculation rule's own cost (:class:`Late` scans the
    running attempts every ``interval``), plus O(workers) while idle workers may steal.
    """


    def __init__(self, tasks, config=None, **overrides):
        if config is None:
            config = PolicyConfig(**overrides)
        elif overrides:
            raise TypeError("pass either a PolicyConfig or keyword overrides, not both")
        if not tasks:
            raise ValueError("a job needs at least one task")
        self.config = config
        self.tasks = {t.id: _Task(t) for t in tasks}
        self.order = [t.id for t in tasks]
        self.root = tasks[-1].id
        self.sinks = [t.id for t in tasks if not t.parents]
        self.outputs = [t.id for t in tasks if not t.parents or t.output]
        self.results = {}  # sink id -> (ref, fingerprint)
        self.ready = deque()
        for t in self.tasks.values():
            t.pending_children = len(t.d.children)
            if not t.d.children:
                self.ready.append(t.d.id)
        self.attempts = {}
        self.workers = {}  # worker -> list of attempt ids assigned there
        self.detector = FailureDetector()
        self.done = False
        self.error = None
        self.result = None  # (ref, fingerprint) of the root
        self.backup_wanted = deque()
        self.audits_wanted = deque()
        self.audits_running = 0
        kinds = sorted({t.kind for t in tasks} | {"map", "combine"})
        self._durations = {k: SortedDurations() for k in kinds}
        self._stage_total = {k: 0 for k in kinds}
        self._stage_done = {k: 0 for k in kinds}
        for t in tasks:
            self._stage_total[t.kind] += 1
        self._actions = []
        self.failures = []  # (task, attempt number, worker, cause, detail)
        self.backups_launched = 0
        self.backups_won = 0
        self.bytes_read = 0
        self.steals = 0  # attempts moved before they ran: stolen, or off a dead worker
        self.verified = 0
        self.workers_lost = 0
        self.restored = 0  # tasks whose outputs an earlier run's journal gave
        self.skipped = 0  # tasks not run because their consumers' outputs were restored
        self._now = 0.0
        self._locality_deadline = None  # when a task waiting for its worker gives up
        spec = config.speculation
        if spec is None:
            spec = Threshold(config.backup_after, config.backup_factor,
                             min_seconds=config.backup_min_seconds)
        self.speculation = spec
        spec.start()  # a rule given to job after job keeps nothing of the last one
        self._last_scan = float("-inf")
        self._index = {tid: i for i, tid in enumerate(self.order)}
        self._ordinal = {}  # worker -> join order (ties in picking go to the earliest)
        self._ordinals = itertools.count()
        self._free = []  # heap of (load, ordinal, worker); stale entries skipped
        # Loads below this are in the heap: the largest ``cap`` asked of ``_pick`` so far
        # (a worker at or past every cap asked needs no entry: at prefetch 1 the heap holds
        # only the idle workers, not one entry per launch as well).
        self._indexed = config.prefetch
        self._deep = set()  # workers with two or more attempts queued
        # (started, seq, attempt id) per stage, oldest first: attempts start in time order,
        # so an append keeps it sorted (an out-of-order start is inserted in its place).
        # Kept from the first time a speculation rule reads a stage's (``_kept``), built then
        # from the running attempts: most of a job runs before any rule looks.
        self._starts = {k: deque() for k in kinds}
        self._kept = set()
        self._seq = itertools.count()
        self._backup_ids = set()  # backup attempts, some finished (pruned when counted)
        self._held = {}  # worker -> completed tasks whose outputs it held
        self._gone = {}  # completed tasks whose outputs are lost (a dict as ordered set)

    # -- events ----------------------------------------------------------------------------

    def handle(self, event, now):
        """Feed one typed event (:mod:`mergeagg.runtime.port`) to the policy: the single
        entry point a driver uses. Actions come from the next :meth:`tick`."""
        kind = type(event)
        if kind is Heartbeat:
            # Most events of a large cluster: one dict lookup, then the detector.
            if event.worker in self.workers:
                self.detector.heartbeat(event.worker, now)
        elif kind is Finished:
            worker = event.worker
            if worker is not None and worker in self.workers:
                self.detector.heartbeat(worker, now)
            self.finished(event.attempt, event.ref, event.fingerprint, now, event.stats)
        elif kind is Heartbeats:
            self.detector.heartbeats(event.workers, now, only=self.workers.keys())
        elif kind is Failed:
            if event.worker is not None:
                self.heartbeat(event.worker, now)
            self.failed(event.attempt, event.error, now, traceback=event.traceback,
                        kind=event.kind, lost=event.lost)
        elif kind is Joined:
            self.worker_joined(event.worker, now)
        elif kind is Lost:
            self.worker_lost(event.worker, event.cause, now)
        elif kind is Cancelled:
            self.heartbeat(event.worker, now)
        elif kind is Progress:
            self.heartbeat(event.worker, now)
            self._now = now
            self.progressed(event.attempt, event.fraction)
        else:
            raise TypeError(f"not a policy event: {event!r}")

    def progressed(self, attempt_id, fraction):
        """Attempt ``attempt_id`` reports it has done ``fraction`` of its work (what
        :class:`~mergeagg.runtime.speculation.Late` rates it by); a report of an attempt
        the policy no longer runs is ignored. Cost: O(1)."""
        att = self.attempts.get(attempt_id)
        if att is not None and att.started is not None:
            att.progress = (min(max(float(fraction), 0.0), 1.0), self._now)

    def progress(self, attempt_id, now):
        """The share of its work attempt ``attempt_id`` has done by ``now``, estimated from
        its last report at the rate it reported (a report is a little old when it is read:
        taken as it is, every attempt would look slower than it is, the more so the more
        recently it started); ``None``: it has reported none, or it is not running. Cost:
        O(1)."""
        att = self.attempts.get(attempt_id)
        if att is None or att.progress is None:
            return None
        fraction, at = att.progress
        ran = at - att.started
        if ran <= 0 or now <= at:
            return fraction
        return min(1.0, fraction * (now - att.started) / ran)

    def worker_joined(self, worker, now):
        """A worker is ready for tasks."""
        if worker not in self.workers:
            self.workers[worker] = []
            self._ordinal[worker] = next(self._ordinals)
            self._load_changed(worker)
        self.detector.heartbeat(worker, now)

    def heartbeat(self, worker, now):
        """``worker`` was heard from (any message counts)."""
        if worker in self.workers:
            self.detector.heartbeat(worker, now)

    def worker_lost(self, worker, cause, now):
        """``worker`` died or was killed: requeue its attempts and the outputs it held."""
        self._now = now
        if worker not in self.workers:
            return
        self.workers_lost += 1
        assigned = self.workers.pop(worker)
        self._ordinal.pop(worker, None)
        self._deep.discard(worker)
        self.detector.forget(worker)
        for aid in list(assigned):
            att = self.attempts.pop(aid, None)
            if att is None:
                continue
            task = self.tasks[att.task]
            if aid in task.running:
                task.running.remove(aid)
            if att.started is None:
                if self.config.queues_in_order or att.audit:
                    self._move_queued(task, att)
                    continue
                self.failures.append((att.task, att.number, worker,
                                      "worker lost (queued, may have run)", cause))
                if task.state is TaskState.IN_PROGRESS and not task.running:
                    self._requeue(task)
                continue
            # Only the attempt that was running (the head of the worker's queue) can have
            # caused the loss.
            if att.audit:
                task.lost += 1
                self._audit_failed(task, att, "lost", cause,
                                   give_up=task.lost >= self.config.max_lost)
                if self.error is not None:
                    return
                continue
            self.failures.append((att.task, att.number, worker, "worker lost", cause))
            if task.state is TaskState.IN_PROGRESS:
                task.lost += 1
                if task.lost >= self.config.max_lost:
                    self._fail(JobFailed(
                        f"task {att.task} ({self._where(task)}) lost its worker {task.lost} "
                        f"times (last cause: {cause}); it may be crashing its worker process"
                    ))
                    return
                if not task.running:
                    self._requeue(task)
        if self.config.outputs_survive_worker:
            return  # its outputs are still on the disk; a torn one is found when read
        # Outputs that lived on the worker are gone; re-run the tasks still needed.
        for tid in self._held.pop(worker, ()):
            task = self.tasks[tid]
            if task.ref_worker == worker:
                task.ref = None
                task.ref_worker = _GONE
                self._gone[tid] = None
        self._rerun_lost_outputs(worker, cause)

    def _move_queued(self, task, att):
        """``att`` was only queued on a worker that died: it never ran, so it is no failed
        attempt. As an attempt an idle worker takes, it keeps its number (its faults, its
        row in the report, ``max_attempts`` and ``max_lost`` see one attempt) and its
        task's next launch gives it its next placement. Counted in :attr:`steals` (the
        report's ``attempts_moved``)."""
        self.steals += 1
        task.moved = att.id
        if att.audit:
            self.audits_running -= 1
            self.audits_wanted.appendleft(task.d.id)
        elif task.state is TaskState.IN_PROGRESS:
            if att.backup:
                # Counted again when it is placed; if the original wins first, it never ran.
                self.backups_launched -= 1
                if task.running:
                    self.backup_wanted.appendleft(task.d.id)
            if not task.running:
                self._requeue(task)

    def output_lost(self, task_id, cause, now):
        """The output of completed task ``task_id`` could not be read (gone, torn or
        corrupt): run that task again, and whatever its loss makes needed."""
        self._now = now
        task = self.tasks[task_id]
        if task.state is TaskState.COMPLETED:
            task.ref = None
            task.ref_worker = _GONE
            self._gone[task_id] = None
            self._rerun_lost_outputs(None, cause)

    def finished(self, attempt_id, ref, fingerprint, now, stats=None):
        """Attempt ``attempt_id`` completed with output ``ref`` whose fingerprint is given."""
        self._now = now
        att = self.attempts.pop(attempt_id, None)
        if att is None:
            # Cancelled or from a lost worker: still a witness of determinism.
            return self._late_completion(attempt_id, ref, fingerprint)
        self._unassign(att, now)
        task = att.rec
        running = task.running
        if running:
            if running[0] == attempt_id:
                del running[0]
            elif attempt_id in running:
                running.remove(attempt_id)
        if att.audit:
            self.audits_running -= 1
        if task.state is _COMPLETED:
            self._compare(task, fingerprint, att)
            if ref is not None and ref is not task.ref:
                self._actions.append(Release((ref,)))
            if att.audit and self.error is None:
                self.verified += 1
            self._maybe_done()
            return
        if self.error is not None or self.done:
            return
        d = task.d
        tid = d.id
        task.state = _COMPLETED
        task.ref = ref
        ref_worker = task.ref_worker = getattr(ref, "worker", None)
        if ref_worker is not None:
            held = self._held.get(ref_worker)
            if held is None:
                self._held[ref_worker] = [tid]
            else:
                held.append(tid)
        task.fingerprint = fingerprint
        worker = task.worker = att.worker
        if stats:
            # (Copied: the report keeps them, and an executor may reuse its dict.)
            stats = task.stats = dict(stats)
            measured = stats.get("seconds")
            nbytes = stats.get("bytes_read")
            if nbytes:
                self.bytes_read += nbytes
        else:
            stats = task.stats = {}
            measured = None
        # The worker's own measure of the attempt when it gives one (the master sees
        # completions in batches); else the time since the attempt reached its queue's head.
        duration = task.duration = measured if measured is not None else (
            now - (att.started if att.started is not None else now))
        kind = d.kind
        self._stage_done[kind] += 1
        self._durations[kind].add(duration)
        if att.backup:
            self.backups_won += 1
        self.speculation.finished(worker, kind, duration)
        if running:
            for other in list(running):
                oatt = self.attempts.pop(other, None)
                if oatt is not None:
                    # Forget the loser now, so its worker's slot is free; if it completes
                    # anyway, its fingerprint is still compared (_late_completion).
                    self._unassign(oatt)
                    self._actions.append(Cancel(other, oatt.worker))
            running.clear()
        if self.config.verify and kind == "map" and self._sampled(tid):
            self.audits_wanted.append(tid)
        parents = d.parents
        if not parents or d.output:
            self.results[tid] = (ref, fingerprint)
            if tid == self.root:
                self.result = (ref, fingerprint)
        if not parents:
            if len(self.results) == len(self.outputs):
                self._maybe_done()
            return
        for parent_id in parents:
            parent = self.tasks[parent_id]
            parent.pending_children -= 1
            if parent.pending_children == 0 and parent.state is TaskState.IDLE:
                # Ready combines and reduces go first: folding outputs promptly frees them
                # and shortens what a lost worker can take with it.
                self.ready.appendleft(parent_id)

    def failed(self, attempt_id, error, now, traceback="", kind="raise", lost=()):
        """Attempt ``attempt_id`` failed: user code raised (``kind="raise"``), or its input
        was gone or corrupt (``kind="input_lost"``, not counted against ``max_attempts``;
        ``lost`` names the tasks whose outputs could not be read: they run again)."""
        self._now = now
        att = self.attempts.pop(attempt_id, None)
        if att is None:
            # A cancelled attempt (a backup's loser, a placement moved elsewhere) that
            # failed anyway: nothing to decide, but the report keeps what happened.
            if attempt_id.task in self.tasks:
                self.failures.append((attempt_id.task, attempt_id.number, None,
                                      f"{kind} (cancelled attempt)", error))
            return
        self._unassign(att, now)
        task = self.tasks[att.task]
        if attempt_id in task.running:
            task.running.remove(attempt_id)
        if att.audit:
            task.audit_failures += 1
            self._audit_failed(task, att, kind, error,
                               give_up=task.audit_failures >= self.config.max_attempts)
            self._maybe_done()
            return
        self.failures.append((att.task, att.number, att.worker, kind, error))
        if task.state is not TaskState.IN_PROGRESS:
            return
        if kind == "input_lost":
            self._input_lost(task, lost)
            return
        if kind == "input":
            # Bad input (a missing file, invalid UTF-8) fails the same way every time:
            # stop at once with the reader's own message, no retries.
            self._fail(InputError(error))
            return
        if kind == "bad_records":
            # Bisection found the records (or that no single record is to blame): the
            # same would happen on every attempt.
            self._fail(BadRecords(
                f"task {task.d.id} ({self._where(task)}) failed {task.failures} time(s) the "
                f"same way, last with {task.last_error}; then {error}",
                records=traceback.splitlines(), task=task.d.id, split=self._split_id(task),
                attempts=task.failures + 1, traceback=task.last_traceback))
            return
        task.failures += 1
        task.last_error = error
        task.last_traceback = traceback
        signature = _signature(error, traceback)
        if (task.d.kind == "map" and task.bisect is None and kind == "raise"
                and signature == task.last_signature):
            # Twice alike: the split's records are to blame, most likely one of them.
            task.bisect = self.config.skip_bad_records or 0
            task.last_signature = signature
            for other in list(task.running):  # a copy started before: it would fail alike
                oatt = self.attempts.pop(other, None)
                if oatt is not None:
                    self._unassign(oatt)
                    self._actions.append(Cancel(other, oatt.worker))
            task.running.clear()
            self._requeue(task)
            return
        task.last_signature = signature
        if task.failures >= self.config.max_attempts:
            self._fail(TaskFailed(
                f"task {task.d.id} ({self._where(task)}) failed {task.failures} time(s), the "
                f"limit is max_attempts={self.config.max_attempts}; last error: {error}\n"
                f"last traceback:\n{traceback}",
                task=task.d.id, split=self._split_id(task), attempts=task.failures,
                traceback=traceback,
            ))
            return
        if not task.running:
            self._requeue(task)

    # -- decisions -------------------------------------------------------------------------

    def tick(self, now):
        """The actions to carry out now: launches, cancels, kills and releases."""
        self._now = now
        config = self.config
        if self.error is None and not self.done:
            silent = self.detector.failed(now, config.heartbeat_timeout)
            if silent:
                self._lose_silent(silent, now)
            if config.task_timeout is not None:
                self._check_timeouts(now)
        if self.error is None and not self.done:
            if config.backups and now - self._last_scan >= config.scan_interval:
                self._last_scan = now
                self._speculate(now)
            self._assign(now)
            if len(self.results) == len(self.outputs):
                self._maybe_done()
        out, self._actions = self._actions, []
        return out

    def next_deadline(self, now):
        """The latest time the caller should call ``tick`` again, even without events."""
        config = self.config
        horizon = config.heartbeat_timeout / 4
        if config.task_timeout is not None:
            horizon = min(horizon, config.task_timeout / 4)
        if config.backups and self.attempts and self.error is None:
            when = self.speculation.next_check(self, now)
            if when is not None:
                when = max(when, self._last_scan + config.scan_interval)
                # Just past the moment a task turns slow (the test is strict).
                horizon = min(horizon, when - now + 1e-6 if when > now else 1e-3)
        if config.stealing and self._deep and self._idle_worker() is not None:
            horizon = min(horizon, max(config.scan_interval, 0.005))
        if self._locality_deadline is not None:
            horizon = min(horizon, max(self._locality_deadline - now, 0.0))
        return now + horizon

    # -- internals -------------------------------------------------------------------------

    def _where(self, task):
        split = self._split_id(task)
        return f"split {split}" if split is not None else f"combining {', '.join(task.d.children)}"

    @staticmethod
    def _split_id(task):
        split = task.d.split
        return getattr(split, "id", split) if split is not None else None

    def _fail(self, exc):
        if self.error is None:
            self.error = exc
            for aid, att in list(self.attempts.items()):
                self._actions.append(Cancel(aid, att.worker))

    def _compare(self, task, fingerprint, att):
        if fingerprint != task.fingerprint:
            which = "audit" if att.audit else ("backup" if att.backup else "attempt")
            self._fail(NondeterminismError(
                f"task {task.d.id} ({self._where(task)}) is not deterministic: the first "
                f"completion's output has fingerprint {task.fingerprint}, {which} "
                f"{att.number} (on {att.worker}) gave {fingerprint}. A task must be a pure "
                "function of its input.",
                task=task.d.id, fingerprints=(task.fingerprint, fingerprint),
            ))

    def _late_completion(self, attempt_id, ref, fingerprint):
        task = self.tasks.get(attempt_id.task)
        if task is not None and task.state is TaskState.COMPLETED and fingerprint is not None:
            self._compare(task, fingerprint, _Attempt(attempt_id, "?", 0.0))
        if ref is not None and (task is None or ref is not task.ref):
            self._actions.append(Release((ref,)))

    def _audit_failed(self, task, att, cause, error, give_up):
        """A verification re-run could not compare (it raised, timed out or lost its
        worker): audit again elsewhere; past the limit, fail the job rather than accept a
        completion that was to be verified and could not be."""
        self.audits_running -= 1
        self.failures.append((att.task, att.number, att.worker, "audit " + cause, error))
        if not give_up:
            self.audits_wanted.append(att.task)
            return
        self._fail(TaskFailed(
            f"task {task.d.id} ({self._where(task)}) could not be verified: its re-runs "
            f"failed (last: {cause}: {error}); a task that completes once and fails when run "
            "again is not a pure function of its input",
            task=task.d.id, split=self._split_id(task), attempts=task.launched,
            traceback="",
        ))

    def _sampled(self, task_id):
        h = hashlib.blake2b(f"{self.config.seed}:{task_id}".encode(), digest_size=8).digest()
        return int.from_bytes(h, "little") / 2**64 < self.config.verify

    def _unassign(self, att, now=None):
        """Take ``att`` off its worker's queue; the next queued attempt starts now."""
        now = self._now if now is None else now
        worker = att.worker
        lst = self.workers.get(worker)
        if lst is not None and att.id in lst:
            if lst[0] == att.id:
                del lst[0]  # the running attempt: the usual case
            else:
                lst.remove(att.id)
            self._load_changed(worker, len(lst))
            if lst:
                head = self.attempts.get(lst[0])
                if head is not None and head.started is None:
                    head.started = now
                    self._started_now(head)

    def _requeue(self, task):
        task.state = TaskState.IDLE
        task.backup_launched = False
        if task.pending_children == 0:
            self.ready.appendleft(task.d.id)

    def _output_needed(self, task):
        if not task.d.parents or task.d.output:
            return True  # a sink's output is needed until the caller has fetched it
        return any(self.tasks[p].state is not TaskState.COMPLETED for p in task.d.parents)

    def _reset_completed(self, task):
        """A completed task's output is lost: run it again, and hold back its parent."""
        task.state = TaskState.IDLE
        task.ref = None
        task.ref_worker = None
        task.backup_launched = False
        self._stage_done[task.d.kind] -= 1
        # Its children may have lost their outputs too while it was complete (a sink on a
        # crashed machine, with the map outputs it read): it waits for them again.
        task.pending_children = sum(self.tasks[c].state is not TaskState.COMPLETED
                                    for c in task.d.children)
        if not task.d.parents or task.d.output:
            self.results.pop(task.d.id, None)
            if task.d.id == self.root:
                self.result = None
            self.done = False
        for parent_id in task.d.parents:
            parent = self.tasks[parent_id]
            if parent.state is TaskState.COMPLETED:
                continue
            parent.pending_children += 1
            if parent.state is TaskState.IN_PROGRESS:
                for aid in list(parent.running):
                    att = self.attempts.pop(aid)
                    self._unassign(att)
                    self._actions.append(Cancel(aid, att.worker))
                parent.running.clear()
                parent.state = TaskState.IDLE
            # Only a parent that was ready can be in the ready queue (a search of the
            # queue for each of a map's thousands of reducers made a mass loss quadratic).
            if parent.pending_children == 1 and parent.d.id in self.ready:
                self.ready.remove(parent.d.id)
        if task.pending_children == 0:
            self.ready.appendleft(task.d.id)

    def _input_lost(self, task, lost=()):
        """An attempt could not read a child's output: re-run the lost children."""
        if not task.running and task.state is TaskState.IN_PROGRESS:
            task.state = TaskState.IDLE
            if task.pending_children == 0:
                self.ready.appendleft(task.d.id)
        survive = self.config.outputs_survive_worker
        for cid in task.d.children:
            child = self.tasks[cid]
            if cid in lost or (not survive and child.ref_worker is not None
                               and child.ref_worker not in self.workers):
                child.ref = None
                child.ref_worker = _GONE
                self._gone[cid] = None
        self._rerun_lost_outputs(None, "input could not be read")

    def _rerun_lost_outputs(self, worker, cause):
        """Reset completed tasks whose outputs are gone and still needed, to a fixpoint
        (re-running a parent makes its children's outputs needed again)."""
        changed = True
        while changed:
            changed = False
            for tid in sorted(self._gone, key=self._index.__getitem__):
                task = self.tasks[tid]
                if task.state is not TaskState.COMPLETED or task.ref_worker is not _GONE:
                    del self._gone[tid]
                elif self._output_needed(task):
                    self.failures.append((task.d.id, task.launched, worker,
                                          "output lost with worker", cause))
                    self._reset_completed(task)
                    del self._gone[tid]
                    changed = True

    def _maybe_done(self):
        if (len(self.results) == len(self.outputs) and not self.audits_wanted
                and self.audits_running == 0
                and self.error is None):
            self.done = True

    def _lose_silent(self, workers, now):
        """``workers`` have been silent past the heartbeat timeout: kill and lose them."""
        for worker in workers:
            self._actions.append(KillWorker(worker, "missed heartbeats for "
                                            f"{self.config.heartbeat_timeout:g}s"))
            self.worker_lost(worker, "missed heartbeats", now)

    def _check_timeouts(self, now):
        limit = self.config.task_timeout
        if limit is None:
            return
        for att in list(self.attempts.values()):
            if att.started is not None and now - att.started > limit \
                    and att.id in self.attempts:
                task = self.tasks[att.task]
                worker = att.worker
                self._actions.append(KillWorker(worker, f"task {att.task} exceeded "
                                                f"task_timeout={limit:g}s"))
                # Count the timeout against the task as a failure of its user code.
                self.attempts.pop(att.id)
                self._unassign(att, now)
                if att.id in task.running:
                    task.running.remove(att.id)
                if att.audit:
                    task.audit_failures += 1
                    self._audit_failed(task, att, "timeout",
                                       f"exceeded task_timeout={limit:g}s",
                                       give_up=task.audit_failures >= self.config.max_attempts)
                    self.worker_lost(worker, f"killed: task {att.task} timed out", now)
                    continue
                self.failures.append((att.task, att.number, worker, "timeout",
                                      f"exceeded task_timeout={limit:g}s"))
                if task.state is TaskState.IN_PROGRESS:
                    task.failures += 1
                    task.last_error = f"exceeded task_timeout={limit:g}s"
                    if task.failures >= self.config.max_attempts:
                        self._fail(TaskFailed(
                            f"task {task.d.id} ({self._where(task)}) failed {task.failures} "
                            f"time(s), the limit is max_attempts={self.config.max_attempts}; "
                            f"last error: it exceeded task_timeout={limit:g}s",
                            task=task.d.id, split=self._split_id(task),
                            attempts=task.failures, traceback="",
                        ))
                        return
                    if not task.running:
                        self._requeue(task)
                self.worker_lost(worker, f"killed: task {att.task} timed out", now)

    def _speculate(self, now):
        """Ask the speculation rule which running tasks get a backup now."""
        for tid in self.speculation.due(self, now):
            task = self.tasks[tid]
            if (task.state is TaskState.IN_PROGRESS and not task.backup_launched
                    and len(task.running) == 1):
                task.backup_launched = True
                self.backup_wanted.append(tid)

    def _cap(self):
        """Attempts queued per worker: ``prefetch``, deeper when tasks take under 5 ms (16)
        or 1 ms (64), so that messages carry batches and dispatch is not bound by round
        trips and context switches."""
        cap = self.config.prefetch
        d = self._durations["map"]
        if len(d._lo) >= 4:  # eight or more durations (the lower half holds len // 2)
            median = d.median()
            if median < 0.001:
                cap = max(cap, 64)  # at most a few tens of ms of work queued per worker
            elif median < 0.005:
                cap = max(cap, 16)
        return cap

    def _launch(self, task, worker, now, backup=False, audit=False, aid=None):
        d = task.d
        if aid is None and task.moved is not None:
            aid, task.moved = task.moved.moved(), None  # it never ran: same attempt
        if aid is None:
            task.launched += 1
            aid = AttemptId(d.id, task.launched)
        queue = self.workers[worker]
        queued = bool(queue)
        att = _Attempt(aid, worker, None if queued else now, backup, audit, None, 0, task)
        self.attempts[aid] = att
        queue.append(aid)
        self._load_changed(worker, len(queue))
        kind = d.kind
        if not queued and not backup and not audit:
            self._started_now(att, kind)
        if backup:
            self._backup_ids.add(aid)
        children = d.children
        inputs = tuple([self.tasks[c].ref for c in children]) if children else ()
        if not audit:
            task.running.append(aid)
            task.state = _IN_PROGRESS
        self._actions.append(Launch(aid, worker, kind, d.split, inputs, d.index, backup,
                                    audit, task.bisect))

    def _assign(self, now):
        if not self.workers:
            return
        cap = self.config.prefetch
        d = self._durations["map"]
        if len(d._lo) >= 4 and d._hi[0] < 0.005:  # tiny tasks: deeper queues (_cap)
            cap = self._cap()
        if self.backup_wanted:
            self._assign_backups(now, cap)
        while self.audits_wanted:
            tid = self.audits_wanted[0]
            task = self.tasks[tid]
            avoid = task.worker if len(self.workers) > 1 else None
            worker = self._pick(lambda w, avoid=avoid: w != avoid, cap)
            if worker is None:
                break
            self.audits_wanted.popleft()
            self.audits_running += 1
            self._launch(task, worker, now, audit=True)
        self._assign_ready(now, cap)
        if self.config.stealing:
            self._steal(now)

    def _assign_backups(self, now, cap):
        """Backups first: they are why an idle slot exists near the end of a stage."""
        spec = self.speculation
        backup_cap = spec.cap(self)
        while self.backup_wanted:
            tid = self.backup_wanted[0]
            task = self.tasks[tid]
            if task.state is not TaskState.IN_PROGRESS or len(task.running) != 1:
                self.backup_wanted.popleft()
                continue
            if backup_cap is not None and self.running_backups() >= backup_cap:
                break
            busy_on = {self.attempts[a].worker for a in task.running}
            # Any other worker with a free slot: with queues of two, waiting for an empty
            # queue would mean no backup until the stage's last task is handed out.
            worker = self._pick(lambda w, busy_on=busy_on: (w not in busy_on
                                                             and spec.worker_ok(self, w)),
                                cap)
            if worker is None:
                break
            self.backup_wanted.popleft()
            self.backups_launched += 1
            self._launch(task, worker, now, backup=True)

    def _assign_ready(self, now, cap):
        """Ready tasks, in order, to workers with a free slot: a task that prefers a worker
        waits for it up to ``locality_wait``; a combine goes where a child's output is if
        that worker has room."""
        waiting = []  # tasks held back for their preferred worker, in ready order
        self._locality_deadline = None
        ready, tasks, workers = self.ready, self.tasks, self.workers
        while ready:
            tid = ready[0]
            task = tasks[tid]
            if task.state is not _IDLE or task.pending_children:
                ready.popleft()
                continue
            d = task.d
            prefer = d.prefer
            worker = None
            if prefer is not None and prefer in workers:
                if len(workers[prefer]) < cap:
                    worker = prefer
                else:
                    if task.waiting_since is None:
                        task.waiting_since = now
                    give_up = task.waiting_since + self.config.locality_wait
                    if now < give_up:
                        ready.popleft()
                        waiting.append(tid)
                        if self._locality_deadline is None or give_up < self._locality_deadline:
                            self._locality_deadline = give_up
                        continue
            if worker is None and d.kind == "combine":
                for c in d.children:
                    h = tasks[c].ref_worker
                    if h in workers and len(workers[h]) < cap:
                        worker = h
                        break
            if worker is None:
                worker = self._pick(None, cap)
                if worker is None:
                    break
            ready.popleft()
            task.waiting_since = None
            self._launch(task, worker, now)
        if waiting:
            ready.extendleft(reversed(waiting))

    def _steal(self, now):
        """Idle workers take attempts queued behind another worker's running one.

        An attempt two or more places back is taken at once; the one right behind the
        head only when the head has run longer than its stage's median and
        ``steal_after`` (it is slow or stalled), so that tiny tasks are not moved back
        and forth. The attempt keeps its
        number (its faults, its place in the report) and gets a new placement; the old
        placement is cancelled, and should it have started meanwhile, its completion is
        compared like any duplicate's. Cost: O(log workers) when no worker is idle or
        none has two attempts queued; else O(workers + queues of two or more) per idle
        worker.
        """
        if not self._deep or self._idle_worker() is None:
            return
        for w, lst in list(self.workers.items()):
            if lst:
                continue
            best = None
            for v in sorted(self._deep, key=self._ordinal.__getitem__):
                queue = self.workers[v]
                head = self.attempts[queue[0]]
                elapsed = now - head.started
                durations = self._durations.get(self.tasks[head.task].d.kind) or ()
                slow = (bool(durations) and elapsed > durations[len(durations) // 2]
                        and elapsed > self.config.steal_after)
                for position in range(len(queue) - 1, 0, -1):
                    att = self.attempts[queue[position]]
                    if att.audit or self.tasks[att.task].d.prefer == v:
                        continue
                    if position >= 2 or slow:
                        if best is None or elapsed > best[0]:
                            best = (elapsed, v, att)
                        break
            if best is None:
                return
            _elapsed, victim, att = best
            task = self.tasks[att.task]
            del self.attempts[att.id]
            self.workers[victim].remove(att.id)
            self._load_changed(victim)
            task.running.remove(att.id)
            self._actions.append(Cancel(att.id, victim))
            self.steals += 1
            self._launch(task, w, now, backup=att.backup, aid=att.id.moved())

    def _pick(self, ok, cap):
        """The least loaded worker with fewer than ``cap`` attempts for which ``ok(w)``
        holds (``ok=None``: any), the earliest joined among equals; ``None`` if there is none. Cost:
        O(log workers) amortised, plus O(log workers) per worker ``ok`` refuses."""
        if cap > self._indexed:
            self._indexed = cap
            self._reindex()
        heap = self._free
        workers, ordinal = self.workers, self._ordinal
        if ok is None:  # the usual question, without the bookkeeping of refusals
            while heap:
                load, o, w = heap[0]
                lst = workers.get(w)
                if lst is None or len(lst) != load or ordinal.get(w) != o:
                    heapq.heappop(heap)  # stale
                    continue
                return w if load < cap else None
            return None
        refused = []
        found = None
        while heap:
            load, o, w = heap[0]
            lst = workers.get(w)
            if lst is None or len(lst) != load or ordinal.get(w) != o:
                heapq.heappop(heap)  # stale: the worker's load changed or it left
                continue
            if load >= cap:
                break
            if ok is None or ok(w):
                found = w
                break
            refused.append(heapq.heappop(heap))
        for entry in refused:
            heapq.heappush(heap, entry)
        return found

    def _idle_worker(self):
        return self._pick(None, 1)

    def _load_changed(self, worker, n=None):
        """Record ``worker``'s new queue length ``n`` in the free-slot heap. Cost:
        O(log W)."""
        workers = self.workers
        if n is None:
            n = len(workers[worker])
        free = self._free
        if n < self._indexed:
            if len(free) > 4 * len(workers) + 64:
                self._reindex()
            else:
                heapq.heappush(free, (n, self._ordinal[worker], worker))
        elif free and free[0][2] == worker:
            heapq.heappop(free)  # its entry, now stale, is the first: the worker just picked
        if n >= 2:
            self._deep.add(worker)
        elif self._deep:
            self._deep.discard(worker)

    def _reindex(self):
        """Rebuild the free-slot heap from the workers' queues (its stale entries dropped).
        Cost: O(workers)."""
        limit, ordinal = self._indexed, self._ordinal
        self._free = [(len(q), ordinal[w], w) for w, q in self.workers.items()
                      if len(q) < limit]
        heapq.heapify(self._free)

    def _started_now(self, att, kind=None):
        """``att`` reached the head of its worker's queue: a first attempt joins its
        stage's start times (what speculation rules look slow tasks up in). Cost: O(1)
        amortised when attempts start in time order (a driver's clock), O(running)
        otherwise."""
        if att.backup or att.audit:
            return
        att.seq = next(self._seq)
        if kind is None:
            kind = self.tasks[att.id.task].d.kind
        if kind not in self._kept:
            return  # no rule has read this stage yet: built from the attempts when one does
        starts = self._starts[kind]
        if len(starts) > 4 * len(self.attempts) + 64:
            live = [e for e in starts if self._live_start(e)]
            starts.clear()
            starts.extend(live)
        entry = (att.started, att.seq, att.id)
        if not starts or starts[-1][0] <= entry[0]:
            starts.append(entry)
        else:
            bisect.insort(starts, entry)

    def _start_queue(self, kind):
        """The start queue of stage ``kind``, kept from now on; built on the first read
        from the running first attempts, in the order they started. Cost: O(1), and
        O(attempts log attempts) once per stage."""
        starts = self._starts[kind]
        if kind not in self._kept:
            self._kept.add(kind)
            tasks = self.tasks
            starts.extend(sorted(
                (att.started, att.seq, aid) for aid, att in self.attempts.items()
                if att.started is not None and not att.backup and not att.audit
                and tasks[aid.task].d.kind == kind))
        return starts

    def _live_start(self, entry):
        started, _seq, aid = entry
        att = self.attempts.get(aid)
        if att is None or att.started != started:
            return False
        task = att.rec
        return task.state is _IN_PROGRESS and not task.backup_launched

    # -- what a speculation rule reads ----------------------------------------------------

    def overdue(self, kind, limit, now, most=None):
        """Running first attempts of ``kind`` that have run more than ``limit`` seconds
        and whose tasks have no backup yet, longest running first, at most ``most``: their
        task ids. Each is reported once (the rule decides now). Cost: O(1) per task
        returned or stale entry dropped."""
        starts = self._start_queue(kind)
        live = self._live_start
        out = []
        while starts and (most is None or len(out) < most):
            entry = starts[0]
            if not live(entry):
                starts.popleft()
                continue
            if now - entry[0] <= limit:
                break
            starts.popleft()
            out.append(entry[2].task)
        return out

    def oldest_start(self, kind):
        """When the longest-running first attempt of ``kind`` without a backup started
        (``None``: there is none). Cost: O(1) per stale entry dropped."""
        starts = self._start_queue(kind)
        while starts and not self._live_start(starts[0]):
            starts.popleft()
        return starts[0][0] if starts else None

    def running_primaries(self):
        """``(attempt id, started)`` of every running first attempt without a backup.
        Cost: O(attempts)."""
        for aid, att in self.attempts.items():
            if att.started is not None and not att.backup and not att.audit:
                task = self.tasks[aid.task]
                if task.state is TaskState.IN_PROGRESS and not task.backup_launched:
                    yield aid, att.started

    def running_backups(self):
        """How many backup attempts are assigned to workers now. Cost: O(that)."""
        self._backup_ids = {a for a in self._backup_ids if a in self.attempts}
        return len(self._backup_ids)

    def backups_pending(self):
        """Backups decided but not yet launched."""
        return len(self.backup_wanted)

    def running_attempts(self):
        """Attempts assigned to workers (running or queued)."""
        return len(self.attempts)

    def worker_count(self):
        """Workers alive."""
        return len(self.workers)

    # -- a journal's reuse ------------------------------------------------------------------

    def restore(self, task_id, ref, fingerprint, stats=None):
        """Before the job starts, take task ``task_id`` as completed by an earlier run of the
        same job (a journal): its output ``ref`` survives every worker. Cost: O(parents)."""
        task = self.tasks[task_id]
        if task.state is not TaskState.IDLE or self.attempts:
            raise RuntimeError(f"restore({task_id}) after the job started")
        task.state = TaskState.COMPLETED
        task.ref, task.ref_worker, task.fingerprint = ref, None, fingerprint
        task.stats = dict(stats or {})
        task.stats["restored"] = 1
        self._stage_done[task.d.kind] += 1
        self.restored += 1
        if not task.d.parents or task.d.output:
            self.results[task_id] = (ref, fingerprint)
            if task_id == self.root:
                self.result = (ref, fingerprint)
        for parent_id in task.d.parents:
            self.tasks[parent_id].pending_children -= 1
        self._maybe_done()

    def skip_unneeded(self):
        """After :meth:`restore`: tasks whose output no task still to run needs are not
        run. Each is held as completed with its output gone, the way a lost output is, so
        that if a restored output turns out unreadable later the tasks under it run after
        all. Returns how many were skipped. Cost: O(tasks + edges)."""
        needed = set()
        for tid in reversed(self.order):  # parents come after their children
            t = self.tasks[tid]
            if t.state is TaskState.COMPLETED:
                continue
            if (not t.d.parents or t.d.output
                    or any(p in needed for p in t.d.parents)):
                needed.add(tid)
        skipped = 0
        for tid in self.order:
            t = self.tasks[tid]
            if t.state is TaskState.COMPLETED or tid in needed:
                continue
            t.state = TaskState.COMPLETED
            t.ref, t.ref_worker, t.fingerprint = None, _GONE, None
            self._gone[tid] = None
            self._stage_done[t.d.kind] += 1
            for parent_id in t.d.parents:
                self.tasks[parent_id].pending_children -= 1
            skipped += 1
        for tid in self.order:  # a task whose children were skipped or restored is ready
            t = self.tasks[tid]
            if tid in needed and t.d.children and t.pending_children == 0:
                self.ready.appendleft(tid)
        self.skipped = skipped
        self._maybe_done()
        return skipped

    # -- what a driver reads --------------------------------------------------------------

    def stage_counts(self):
        """``(done, total)``: completed and all tasks per kind (live dicts; read only)."""
        return self._stage_done, self._stage_total

    def durations(self, kind):
        """The sorted durations of the completed tasks of ``kind`` (read only)."""
        return self._durations.get(kind, ())

    def input_bytes(self):
        """The bytes the map tasks' splits cover (0 where a split does not say)."""
        return sum(getattr(t.d.split, "nbytes", 0) or 0 for t in self.tasks.values()
                   if t.d.kind == "map")

    # -- invariants ------------------------------------------------------------------------

    def validate(self):
        """Assert every invariant of the policy's state (tests call it after each event).
        Cost: O(tasks + attempts)."""
        queued = {}
        for w, lst in self.workers.items():
            for position, aid in enumerate(lst):
                assert aid not in queued, f"{aid} queued on {queued.get(aid)} and {w}"
                queued[aid] = w
                att = self.attempts.get(aid)
                assert att is not None, f"{w} queues {aid}, which is not an attempt"
                assert att.worker == w, f"{aid} is on {w} but says {att.worker}"
                if position == 0:
                    assert att.started is not None, f"{aid} heads {w}'s queue, not started"
        assert set(queued) == set(self.attempts), "attempts not on any worker's queue"
        done = dict.fromkeys(self._stage_total, 0)
        for tid, t in self.tasks.items():
            for aid in t.running:
                att = self.attempts.get(aid)
                assert att is not None and att.task == tid and not att.audit, \
                    f"{tid} runs {aid}, which is not its attempt"
            if self.error is None:
                assert (t.state is TaskState.IN_PROGRESS) == bool(t.running), \
                    f"{tid} is {t.state.value} with attempts {t.running}"
            if t.state is TaskState.COMPLETED:
                done[t.d.kind] += 1
                assert t.fingerprint is not None or tid in self._gone, \
                    f"{tid} completed without a fingerprint"
            else:
                missing = sum(self.tasks[c].state is not TaskState.COMPLETED
                              for c in t.d.children)
                assert t.pending_children == missing, \
                    f"{tid} waits for {t.pending_children} children, {missing} are not done"
        assert done == self._stage_done, f"stage counts {self._stage_done} != {done}"
        for tid in self.results:
            assert self.tasks[tid].state is TaskState.COMPLETED, f"result of {tid} not done"
        assert self.audits_running == sum(a.audit for a in self.attempts.values())
        assert set(self._ordinal) == set(self.workers), "ordinals do not match the workers"
        live = {(len(q), self._ordinal[w], w) for w, q in self.workers.items()
                if len(q) < self._indexed}
        assert live <= set(self._free), "a worker's load is missing from the free-slot heap"
        assert self._deep == {w for w, q in self.workers.items() if len(q) >= 2}
        entries = {(e[0], e[2]) for heap in self._starts.values() for e in heap}
        for aid, started in self.running_primaries():
            if self.tasks[aid.task].d.kind not in self._kept:
                continue  # not read by a rule yet: built from the attempts when it is
            assert (started, aid) in entries, f"{aid} runs, not in its stage's start times"

    # -- reporting -------------------------------------------------------------------------

    def task_rows(self):
        """Per-task facts for the report: (id, kind, split id, attempts, seconds, worker,
        stats, fingerprint), in task order."""
        tasks = self.tasks
        for tid in self.order:
            t = tasks[tid]
            d = t.d
            split = d.split
            if split is not None:
                split = getattr(split, "id", split)  # (_split_id, without a call a row)
            yield (tid, d.kind, split, t.launched, t.duration, t.worker, t.stats,
                   t.fingerprint)
