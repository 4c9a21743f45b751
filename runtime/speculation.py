"""Backup (speculative) task policies: when a running task gets a second attempt.

A speculation policy is a small object the :class:`~mergeagg.runtime.master.Policy` asks, at
each tick, which running tasks deserve a backup now (:meth:`Speculation.due`), how many
backups may run at once (:meth:`Speculation.cap`), which workers a backup may go to
(:meth:`Speculation.worker_ok`) and when to ask again if nothing happens before
(:meth:`Speculation.next_check`). It reads the policy through its public read methods
(``stage_counts``, ``durations``, ``overdue``, ``oldest_start``, ``running_primaries``,
``running_backups``) and never reads a clock: ``now`` is given.

The policies:

* :class:`Threshold` (``after``, ``factor``, ``min_tasks``): once ``after`` of a stage's
  tasks have completed (and the stage has at least ``min_tasks`` tasks), a running task
  whose elapsed time exceeds ``factor`` times the stage's median gets one backup. mergeagg's
  default and Spark's defaults are ``Threshold(0.75, 1.5)`` (``spark.speculation.quantile``,
  ``spark.speculation.multiplier``); Cubed's are ``Threshold(0.5, 3.0, min_tasks=10)``; the
  MapReduce paper's "near the end of the stage" is ``Threshold(0.8, 0.0)``.
* :class:`Capped` wraps another policy with Hadoop's caps on backups running at once:
  at most ``max(minimum, total * share of all tasks, running * share of running)``
  (Hadoop's ``DefaultSpeculator``: 10, 1% and 10%).
* :class:`Late` (Zaharia et al., OSDI 2008): back up the task with the longest estimated
  time left, ``(1 - progress) / progress rate``, among those whose rate is in the slowest
  ``slow_task`` share of its stage's rates (its running attempts', and its completed
  attempts' at 1 / seconds, so that an attempt left running alone at the end of a stage is
  still judged), only on a worker that is not among the slowest ``slow_node`` share,
  with at most ``cap`` of the workers running backups. It needs each attempt's progress:
  the simulator (:mod:`mergeagg.runtime.simulate`) gives it directly; the local, Dask and
  in-process executors report it as ``Progress`` events (the share of its input a map
  attempt has consumed), which the policy keeps.

>>> from mergeagg.runtime.speculation import by_name
>>> by_name("spark"), by_name("cubed")
(Threshold(after=0.75, factor=1.5, min_tasks=0, min_seconds=0.0), \
Threshold(after=0.5, factor=3.0, min_tasks=10, min_seconds=0.0))
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

__all__ = ["Speculation", "Threshold", "Capped", "Late", "by_name", "NAMES"]


class Speculation:
    """The interface (every method has a do-nothing default). Cost: see each subclass."""

    needs_progress = False

    def due(self, policy, now, room=None):
        """Task ids to back up now (each gets at most one backup), at most ``room``."""
        return ()

    def cap(self, policy):
        """How many backup attempts may run at once (``None``: no cap)."""
        return None

    def worker_ok(self, policy, worker):
        """Whether a backup may run on ``worker``."""
        return True

    def next_check(self, policy, now):
        """When :meth:`due` could next return something without a new event (``None``:
        only after the next event)."""
        return None

    def finished(self, worker, kind, seconds):
        """An attempt of ``kind`` completed on ``worker`` in ``seconds`` (for policies that
        rate workers)."""

    def start(self):
        """A new job starts with this rule: forget what the last one taught it."""


@dataclass(frozen=True)
class Threshold(Speculation):
    """Back up a task that has run longer than ``factor`` × its stage's median (and
    ``min_seconds``), once ``after`` of the stage has completed and the stage has at least
    ``min_tasks`` tasks. Cost: O(kinds + backups launched × log running) per tick.

    >>> Threshold(0.75, 1.5).limit([1.0, 2.0, 3.0])
    3.0
    """

    after: float = 0.75
    factor: float = 1.5
    min_tasks: int = 0
    min_seconds: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.after <= 1.0:
            raise ValueError(f"Threshold: after must be within [0, 1], got {self.after!r}")
        if self.factor < 0:
            raise ValueError(f"Threshold: factor must be >= 0, got {self.factor!r}")

    def limit(self, durations):
        """The elapsed time past which a task is slow, given its stage's sorted
        durations."""
        return max(self.factor * durations[len(durations) // 2], self.min_seconds)

    def _eligible(self, policy):
        """``(kind, limit)`` of the stages past ``after``: a list (asked twice per tick,
        and empty for most of a job, so no generator)."""
        done, total = policy.stage_counts()
        out = []
        after, min_tasks = self.after, self.min_tasks
        for kind, n in total.items():
            if n and n >= min_tasks and done[kind] >= after * n:
                durations = policy.durations(kind)
                if durations:
                    out.append((kind, self.limit(durations)))
        return out

    def due(self, policy, now, room=None):
        out = []
        for kind, limit in self._eligible(policy):
            out.extend(policy.overdue(kind, limit, now,
                                      None if room is None else room - len(out)))
        return out

    def next_check(self, policy, now):
        best = None
        for kind, limit in self._eligible(policy):
            start = policy.oldest_start(kind)
            if start is not None:
                when = start + limit
                best = when if best is None or when < best else best
        return best


@dataclass(frozen=True)
class Capped(Speculation):
    """``base``'s decisions, with at most ``max(minimum, share_total × tasks,
    share_running × running attempts)`` backups running at once (Hadoop's caps). Cost:
    ``base``'s plus O(backups running) per tick.

    >>> Capped(Threshold()).allowed(tasks=5000, running=300)
    50
    """

    base: Speculation = field(default_factory=Threshold)
    share_running: float = 0.10
    share_total: float = 0.01
    minimum: int = 10

    def allowed(self, tasks, running):
        """The cap for a job of ``tasks`` tasks with ``running`` attempts running."""
        return max(self.minimum, int(self.share_total * tasks),
                   int(self.share_running * running))

    def cap(self, policy):
        _done, total = policy.stage_counts()
        return self.allowed(sum(total.values()), policy.running_attempts())

    def due(self, policy, now, room=None):
        mine = self.cap(policy) - policy.running_backups() - policy.backups_pending()
        room = mine if room is None else min(room, mine)
        if room <= 0:
            return ()
        return self.base.due(policy, now, room)

    def next_check(self, policy, now):
        if self.cap(policy) <= policy.running_backups() + policy.backups_pending():
            return None  # nothing until a backup ends, which is an event
        return self.base.next_check(policy, now)

    def worker_ok(self, policy, worker):
        return self.base.worker_ok(policy, worker)

    def finished(self, worker, kind, seconds):
        self.base.finished(worker, kind, seconds)

    def start(self):
        self.base.start()


class Late(Speculation):
    """LATE: Longest Approximate Time to End. Every ``interval`` seconds, among running
    first attempts that have run at least ``min_seconds``, those whose progress rate is in
    the slowest ``slow_task`` share of their stage's rates (running attempts', and completed
    ones' at 1 / seconds, as Hadoop's speculator also judges by completed tasks) are
    candidates; the ones with the longest estimated
    time left get backups, up to ``cap`` × workers running at once, on workers whose mean
    task time is not in the slowest ``slow_node`` share. ``progress(attempt_id, now)``
    gives an attempt's progress in [0, 1], or ``None`` if unknown (the attempt is then
    not rated); by default (``None``) the progress the executor reported to the policy
    (:meth:`~mergeagg.runtime.master.Policy.progress`). Cost: O(running × log running +
    workers × log workers) per check.

    >>> Late(interval=0.5)
    Late(cap=0.1, slow_task=0.25, slow_node=0.25, min_seconds=0.0, interval=0.5)
    """

    needs_progress = True

    def __init__(self, progress=None, *, cap=0.10, slow_task=0.25, slow_node=0.25,
                 min_seconds=0.0, interval=1.0):
        for name, v in (("cap", cap), ("slow_task", slow_task), ("slow_node", slow_node)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"Late: {name} must be within [0, 1], got {v!r}")
        if interval <= 0:
            raise ValueError(f"Late: interval must be positive, got {interval!r}")
        self.progress = progress
        self.cap_share = cap
        self.slow_task = slow_task
        self.slow_node = slow_node
        self.min_seconds = min_seconds
        self.interval = interval
        self.start()

    def start(self):
        self._node = {}  # worker -> [sum of seconds, count]
        self._slow_nodes = frozenset()
        self._last = -math.inf

    def __repr__(self):
        return (f"Late(cap={self.cap_share}, slow_task={self.slow_task}, "
                f"slow_node={self.slow_node}, min_seconds={self.min_seconds}, "
                f"interval={self.interval})")

    @property
    def slow_nodes(self):
        """The workers rated slow at the last check (no backup goes there)."""
        return self._slow_nodes

    def finished(self, worker, kind, seconds):
        s = self._node.setdefault(worker, [0.0, 0])
        s[0] += seconds
        s[1] += 1

    def cap(self, policy):
        return max(1, int(self.cap_share * policy.worker_count()))

    def worker_ok(self, policy, worker):
        return worker not in self._slow_nodes

    def next_check(self, policy, now):
        return self._last + self.interval if policy.running_attempts() else None

    def due(self, policy, now, room=None):
        if now < self._last + self.interval:
            return ()
        self._last = now
        means = sorted((s / n, w) for w, (s, n) in self._node.items() if n)
        k = int(self.slow_node * len(means))
        self._slow_nodes = frozenset(w for _m, w in means[len(means) - k:]) if k else frozenset()
        mine = self.cap(policy) - policy.running_backups() - policy.backups_pending()
        room = mine if room is None else min(room, mine)
        if room <= 0:
            return ()
        rated = []
        progress = self.progress if self.progress is not None else policy.progress
        running = {}  # kind -> the rates of its rated running attempts
        for aid, started in policy.running_primaries():
            elapsed = now - started
            if elapsed <= self.min_seconds or elapsed <= 0:
                continue
            p = progress(aid, now)
            if p is None:
                continue  # it has not said how far it is: nothing to rate it by
            p = min(max(p, 0.0), 1.0)
            rate = p / elapsed
            left = (1.0 - p) / rate if rate > 0 else math.inf
            kind = aid.task.partition("-")[0]
            rated.append((rate, left, aid.task, kind))
            running.setdefault(kind, []).append(rate)
        if not rated:
            return ()
        candidates = []
        for kind, rates in running.items():
            rates.sort()
            done = policy.durations(kind)  # sorted seconds; a completed attempt's rate is 1/s
            size = len(rates) + len(done)
            k = min(size - 1, int(self.slow_task * size))
            top = max(rates[-1], 1.0 / done[0] if done and done[0] > 0 else 0.0)
            for rate, left, task, kind_ in rated:
                if kind_ != kind or left <= 0 or rate >= top:
                    continue  # done with its input, or the fastest: nothing to race
                # Its rank among the stage's rates, running and completed: slow if at most
                # the slowest ``slow_task`` share are slower than it.
                below = bisect.bisect_left(rates, rate)
                if rate > 0:
                    below += len(done) - bisect.bisect_right(done, 1.0 / rate)
                if below <= k:
                    candidates.append((-left, task))
        candidates.sort(key=lambda c: c[0])
        return [task for _l, task in candidates[:room]]


NAMES = ("default", "spark", "hadoop", "cubed", "mapreduce", "late", "none")


def by_name(name, progress=None):
    """The speculation policy called ``name`` (one of :data:`NAMES`); ``late`` takes
    ``progress`` (the simulator's; ``None``: the progress the executor reports); ``none``
    is ``None`` (no backups). Cost: O(1).

    >>> by_name("hadoop").allowed(tasks=100, running=50)
    10
    """
    if name in ("default", "spark"):
        return Threshold(0.75, 1.5)
    if name == "cubed":
        return Threshold(0.5, 3.0, min_tasks=10)
    if name == "mapreduce":
        return Threshold(0.8, 0.0)
    if name == "hadoop":
        return Capped(Threshold(0.75, 1.5))
    if name == "late":
        return Late(progress)
    if name == "none":
        return None
    raise ValueError(f"unknown speculation policy {name!r}; choose one of {', '.join(NAMES)}")
