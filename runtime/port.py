"""The executor port: the typed ids, events and actions between the policy and an executor,
the protocol every executor implements, and the clocks the driver runs on.

The policy (:mod:`mergeagg.runtime.master`) decides; an executor (worker processes on this
machine, Dask, or workers simulated in this process) carries the decisions out and reports
what happened; the driver (:mod:`mergeagg.runtime.driver`) is the loop between the two and
the only code that talks to an executor. Everything that crosses the port is plain, typed
data: no parsed strings, no tuples whose meaning depends on their position.

>>> aid = AttemptId("map-3", 2)
>>> str(aid), aid.task, aid.number, str(aid.moved())
('map-3#2', 'map-3', 2, 'map-3#2~2')
>>> clock = VirtualClock()
>>> clock.advance(1.5); clock()
1.5
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

__all__ = [
    "AttemptId",
    "Event",
    "Joined",
    "Heartbeat",
    "Heartbeats",
    "Lost",
    "Finished",
    "Failed",
    "Cancelled",
    "Progress",
    "Launch",
    "Cancel",
    "KillWorker",
    "Release",
    "Executor",
    "SessionExecutor",
    "Clock",
    "MonotonicClock",
    "VirtualClock",
    "NOT_YET",
]


class AttemptId(NamedTuple):
    """Attempt ``number`` of task ``task``, in its ``placement``-th place: an attempt that
    an idle worker took before it started keeps its number (its faults, its row in the
    report) and gets the next placement. Cost: a tuple; hashable, cheap to pickle."""

    task: str
    number: int
    placement: int = 1

    def __str__(self):
        base = f"{self.task}#{self.number}"
        return base if self.placement == 1 else f"{base}~{self.placement}"

    def moved(self):
        """The id of the same attempt in its next place."""
        return AttemptId(self.task, self.number, self.placement + 1)


def _reduce(self):
    # Events and launches cross a pipe by the thousand per second: pickled as (class,
    # field values), they cost a tuple, where the dataclass's own slots state would look
    # its fields up for every object.
    return self.__class__, tuple(map(self.__getattribute__, self.__slots__))


# -- events: what an executor reports -------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Joined:
    """``worker`` is ready for tasks."""

    __reduce__ = _reduce

    worker: str


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """``worker`` was heard from (any message counts)."""

    __reduce__ = _reduce

    worker: str


@dataclass(frozen=True, slots=True)
class Heartbeats:
    """A round of heartbeats: each of ``workers`` was heard from. One event per worker, as
    :class:`Heartbeat` is, delivered in one message by an executor that hears its workers
    together (the simulator's rounds: 10,000 calls into the policy a round cost more than
    the rest of a simulated job)."""

    __reduce__ = _reduce

    workers: tuple


@dataclass(frozen=True, slots=True)
class Lost:
    """``worker`` died or was killed; ``cause`` says how (``process died with signal 9``)."""

    __reduce__ = _reduce

    worker: str
    cause: str


@dataclass(frozen=True, slots=True)
class Finished:
    """``attempt`` completed on ``worker`` with output reference ``ref`` (or ``None`` when
    the executor keeps no reference) whose fingerprint is ``fingerprint``; ``stats`` are
    the attempt's own measures (``seconds``, ``bytes_read``, shuffle counters...)."""

    __reduce__ = _reduce

    attempt: AttemptId
    ref: object
    fingerprint: str
    stats: dict
    worker: str | None


@dataclass(frozen=True, slots=True)
class Failed:
    """``attempt`` failed on ``worker``: ``kind`` is ``"raise"`` (user code raised; it is
    retried), ``"input"`` (bad input: the job stops at once), ``"input_lost"`` (an input
    could not be read; ``lost`` names the tasks whose outputs are gone, which run again)
    or ``"nondeterministic"`` (a recomputed input changed)."""

    __reduce__ = _reduce

    attempt: AttemptId
    kind: str
    error: str
    traceback: str = ""
    lost: tuple = ()
    worker: str | None = None


@dataclass(frozen=True, slots=True)
class Cancelled:
    """``attempt`` stopped on ``worker`` because it was cancelled."""

    __reduce__ = _reduce

    attempt: AttemptId
    worker: str


@dataclass(frozen=True, slots=True)
class Progress:
    """``attempt`` on ``worker`` has done ``fraction`` (within [0, 1]) of its work:
    ``bytes_done`` of its split's ``bytes_total`` as its reader saw them (0 and 0 where the
    split has no byte count). What :class:`~mergeagg.runtime.speculation.Late` rates
    attempts by. Executors send one only for an attempt that has run a while (the local
    workers: at most every 0.2 s, none for an attempt shorter than that), so short tasks
    cost nothing.

    >>> Progress(AttemptId("map-0", 1), 0.5, "w1", 512, 1024).fraction
    0.5
    """

    __reduce__ = _reduce

    attempt: AttemptId
    fraction: float
    worker: str
    bytes_done: int = 0
    bytes_total: int = 0


Event = Joined | Heartbeat | Heartbeats | Lost | Finished | Failed | Cancelled | Progress


# -- actions: what the policy decides -------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Launch:
    """Run ``attempt`` of a task of kind ``kind`` (``map``, ``combine``, ``reduce``,
    ``merge``) on ``worker``. A map reads ``split``; the others fold ``inputs``, the
    output references of the task's children in fold order. ``index`` is the task's index
    (a reducer's partition). ``backup`` marks a speculative copy, ``audit`` a verification
    re-run. ``bisect`` (a map only) runs the split's records by bisection, setting aside
    up to that many records on which the user's code fails
    (:mod:`mergeagg.runtime.poison`)."""

    __reduce__ = _reduce

    attempt: AttemptId
    worker: str
    kind: str
    split: object = None
    inputs: tuple = ()
    index: int = 0
    backup: bool = False
    audit: bool = False
    bisect: int | None = None  # a map that failed twice alike: set aside up to N bad records

    @property
    def task(self):
        return self.attempt.task

    @property
    def number(self):
        return self.attempt.number


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop ``attempt`` on ``worker`` (a backup's loser, or an attempt moved elsewhere);
    whatever it still reports is compared, then ignored."""

    __reduce__ = _reduce

    attempt: AttemptId
    worker: str


@dataclass(frozen=True, slots=True)
class KillWorker:
    """Kill and replace ``worker`` (silent past the heartbeat timeout, or a task timed out)."""

    __reduce__ = _reduce

    worker: str
    cause: str


@dataclass(frozen=True, slots=True)
class Release:
    """Output references nothing needs any more; the executor may free them."""

    __reduce__ = _reduce

    refs: tuple


NOT_YET = object()  # what a driver's ``finish`` returns while the sinks' outputs are not in


# -- the executor protocol -------------------------------------------------------------------

@runtime_checkable
class Executor(Protocol):
    """What the driver needs of an executor. The local processes, Dask and the in-process
    executor implement it; ``tests/runtime/test_executors.py`` is the contract suite a new
    executor must pass.

    * ``outputs_survive_worker``: the loss model. ``True`` if a dead worker's committed
      outputs stay readable (one machine's disk); ``False`` if they die with it.
    * ``start()`` / ``close()``: own and release every process, thread and directory.
    * ``load_job(payload, faults) -> job``: ship a job's functions (an Aggregator or a
      keyed job's spec) and fault plan to the workers once; ``drop_job(job)``.
    * ``live_workers()``: workers ready for tasks now.
    * ``apply(actions, job, hint)``: carry out :class:`Launch`, :class:`Cancel`,
      :class:`KillWorker` and :class:`Release` actions (``hint``: the median map
      attempt's seconds, for faults that strike part-way).
    * ``events(timeout) -> list[Event]``: what happened, waiting at most ``timeout``
      seconds of the executor's clock for something to happen.
    * ``fetch(ref)``: the value behind a sink's output reference; raises
      :class:`~mergeagg.runtime.worker.InputLost` naming the task if it is gone, or returns
      :data:`NOT_YET` if it has not arrived.
    """

    outputs_survive_worker: bool

    def start(self): ...

    def close(self): ...

    def load_job(self, payload, faults=None): ...

    def drop_job(self, job): ...

    def live_workers(self): ...

    def apply(self, actions, job, hint=0.0): ...

    def events(self, timeout): ...

    def fetch(self, ref): ...


@runtime_checkable
class SessionExecutor(Executor, Protocol):
    """An executor a :class:`~mergeagg.Session` can keep: jobs one after another, and
    persisted datasets (a ``Dataset``: ``id``, ``splits()``, ``load``, ``parent``,
    ``holders``, ``loaded_once``). The local processes, Dask and the in-process executor
    implement it; the contract suite holds them to it.

    * ``settle(timeout)``: between jobs, wait up to ``timeout`` seconds until the
      workers are ready and nothing of the last job can reach the next.
    * ``persist(dataset)``: take the dataset's lineage (its splits, its parent, ``load``)
      so that its partitions can be kept where they are loaded.
    * ``partitions(dataset) -> list``: the map tasks' splits over its partitions, in
      index order (:class:`~mergeagg.runtime.refs.ResidentPartition` s).
    * ``locate(dataset) -> list``: per partition, the worker to prefer (``None``: any).
    * ``account(dataset, policy) -> dict``: the cache counters (hits, misses, rebuilds,
      bytes read) of the job ``policy`` ran over it, and note where its partitions live.
    * ``uncache(dataset)``: drop its partitions and forget its lineage.
    """

    def settle(self, timeout): ...

    def persist(self, dataset): ...

    def partitions(self, dataset): ...

    def locate(self, dataset): ...

    def account(self, dataset, policy): ...

    def uncache(self, dataset): ...


# -- clocks ---------------------------------------------------------------------------------

class Clock(Protocol):
    """A clock is a callable that returns seconds; the driver and the policy read time
    only through the one they are given."""

    def __call__(self) -> float: ...


class MonotonicClock:
    """The production clock: :func:`time.monotonic`. ``sleep`` sleeps for real."""

    __slots__ = ()

    def __call__(self):
        return time.monotonic()

    @staticmethod
    def sleep(seconds):
        if seconds > 0:
            time.sleep(seconds)


class VirtualClock:
    """A clock that moves only when told: the in-process executor advances it by the
    simulated duration of what runs, so timing logic (heartbeat timeouts, backups) is
    tested without sleeping and every run is deterministic. Cost: O(1)."""

    __slots__ = ("t",)

    def __init__(self, start=0.0):
        self.t = float(start)

    def __call__(self):
        return self.t

    def advance(self, seconds):
        """Move the clock ``seconds`` forward (never back)."""
        if seconds > 0:
            self.t += seconds

    def advance_to(self, when):
        """Move the clock to ``when`` if that is later than now."""
        if when > self.t:
            self.t = when

    sleep = advance
