"""A cluster in a process: thousands of simulated workers driven by the real policy and driver.

:func:`simulate` builds a job of ``maps`` map tasks (and ``reduces`` reduce tasks), gives
it to the production :class:`~mergeagg.runtime.master.Policy` through the production
:func:`~mergeagg.runtime.driver.drive` loop, and carries the policy's actions out on
:class:`SimulatedExecutor`: machines on a :class:`~mergeagg.runtime.port.VirtualClock` that
run no user code, only take time. Task durations come from a distribution (a constant,
a lognormal, or a trace of measured durations); stragglers are a share of attempts or of
machines slowed by a factor; machines crash (silently: the policy's heartbeat detector
finds them) with a probability over the job or at given times, or their worker processes
are killed (the executor reports it at once and a replacement joins after
``restart_seconds``); heartbeats, task-start latency and shuffle transfer time per byte
are modelled. Nothing sleeps; the same seed gives the same run.

>>> sim = simulate(workers=100, maps=100, duration=10.0, slow_machines=1, slow_factor=6.0,
...                speculation="none")
>>> sim.seconds
60.0
>>> simulate(workers=100, maps=100, duration=10.0, slow_machines=1, slow_factor=6.0,
...          speculation="mapreduce").seconds
20.0
"""

from __future__ import annotations

import contextlib
import copy
import gc
import heapq
import itertools
import math
import random
from dataclasses import dataclass, field

from mergeagg.errors import JobFailed
from mergeagg.runtime.port import (
    Cancel,
    Cancelled,
    Finished,
    Heartbeats,
    Joined,
    KillWorker,
    Launch,
    Lost,
    Release,
    VirtualClock,
)

__all__ = ["simulate", "Simulation", "Span", "SimulatedExecutor", "NoWorkersLeft",
           "SimulationTooLong", "read_trace"]


class NoWorkersLeft(JobFailed):
    """Every simulated machine is gone and none will join: the job cannot finish."""


class SimulationTooLong(JobFailed):
    """The simulated job ran past ``max_seconds`` of virtual time."""


@dataclass(frozen=True, slots=True)
class Span:
    """One attempt on the timeline: ``outcome`` is ``finished``, ``cancelled`` (a backup's
    loser, a moved attempt) or ``lost`` (its machine crashed or was killed)."""

    worker: str
    attempt: str
    kind: str
    start: float
    end: float
    outcome: str
    backup: bool


@dataclass
class Simulation:
    """What :func:`simulate` gives back: the job's virtual ``seconds``, the same
    :class:`~mergeagg.runtime.report.Report` a real run gives, the ``timeline`` of
    attempts, and counts: ``events`` fed to the policy, ``task_seconds`` spent by every
    attempt (losers and lost ones included), ``retries`` (attempts that were neither a
    task's first nor a backup), and the ``wall_seconds`` and ``cpu_seconds`` (this
process's) the simulation took."""

    seconds: float
    report: object
    timeline: list = field(repr=False)
    events: int = 0
    task_seconds: float = 0.0
    useful_seconds: float = 0.0
    retries: int = 0
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0

    @property
    def result(self):
        """The run as a :class:`~mergeagg.runtime.api.Result`: no value (no user code ran),
        a fingerprint of the job's shape (the same whatever failed), the report."""
        import hashlib

        from mergeagg.runtime.api import Result

        shape = ",".join(t.task for t in self.report.tasks).encode()
        return Result(None, hashlib.blake2b(shape, digest_size=32).hexdigest(), self.report)

    @property
    def backups_launched(self):
        return self.report.backups_launched

    @property
    def backups_won(self):
        return self.report.backups_won

    @property
    def workers_lost(self):
        return self.report.workers_lost

    @property
    def extra_work(self):
        """Task-seconds spent beyond the winning attempts', as a share of those."""
        return self.task_seconds / self.useful_seconds - 1.0 if self.useful_seconds else 0.0


class _Ref:
    """A simulated output reference: where the output lives (one object per machine)."""

    __slots__ = ("worker",)

    def __init__(self, worker):
        self.worker = worker


class _Machine:
    __slots__ = ("name", "queue", "head", "start", "end", "alive", "crashed", "factor",
                 "ref", "token")

    def __init__(self, name, factor):
        self.name = name
        self.queue = []  # Launches waiting behind the head (short: prefetch deep)
        self.head = None
        self.start = self.end = 0.0
        self.alive = True
        self.crashed = False
        self.factor = factor
        self.ref = _Ref(name)
        self.token = 0  # bumped whenever the head changes: stale completions are dropped


_DONE, _CRASH, _KILL, _BEAT, _JOIN, _KILLW = range(6)


class SimulatedExecutor:
    """``workers`` simulated machines on a virtual clock, implementing the executor port
    (:class:`~mergeagg.runtime.port.Executor`) without running user code.

    ``seconds(launch) -> float``: an attempt's duration on a normal machine;
    ``machine_factor``: a dict of machine name to slow-down; ``crash_at``/``kill_at``:
    lists of virtual times at which a random live machine crashes silently or has its
    worker killed (reported at once); ``restart_seconds``: when a killed worker's
    replacement joins (``None``: never; crashed machines are never replaced);
    ``heartbeat_interval``: how often live machines are heard from; ``check``: called
    before every batch of events (tests pass ``policy.validate``); ``kill_after(launch,
    hint)``: seconds into the attempt at which its worker is killed (``None``: not), as the
    ``kill`` fault does on real workers (``hint``: the median map seconds so far). Cost:
    O(log events pending) per attempt and per event, O(workers) at C speed per heartbeat
    round: a round reaches the policy as one
    :class:`~mergeagg.runtime.port.Heartbeats` event, counted in ``events_out`` as the one
    message per machine it stands for. :meth:`progress` needs ``where`` (attempt ->
    machine), which :func:`simulate` keeps only for a rule that reads progress.
    """

    mode = "simulated"

    def __init__(self, workers, seconds, *, machine_factor=None, crash_at=(), kill_at=(),
                 restart_seconds=None, heartbeat_interval=1.0, outputs_survive_worker=False,
                 seed=0, timeline=True, check=None, max_seconds=math.inf, kill_after=None):
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"a simulated cluster needs at least one worker, got {workers!r}")
        if heartbeat_interval <= 0:
            raise ValueError(f"heartbeat_interval must be positive, got {heartbeat_interval}")
        self.size = workers
        self.clock = VirtualClock()
        self.seconds = seconds
        self.machine_factor = machine_factor or {}
        self.restart_seconds = restart_seconds
        self.heartbeat_interval = heartbeat_interval
        self.outputs_survive_worker = outputs_survive_worker
        self.rng = random.Random(f"{seed}:faults")
        self.timeline = [] if timeline else None
        self.check = check
        self.max_seconds = max_seconds
        self.kill_after = kill_after
        self._hint = 0.0
        self.machines = {}
        self.alive = {}  # name -> machine, in join order
        # attempt id -> machine running or queueing it, for progress(); None: not kept
        # (simulate() keeps it only for a rule that reads progress, such as LATE)
        self.where = {}
        self.task_seconds = 0.0
        self.useful_seconds = 0.0
        self.events_out = 0  # messages delivered to the policy (see _deliver)
        self._beats = 0  # heartbeats gathered in rounds beyond one event per round
        self.up = {}  # name -> machine alive and not crashed, in join order
        # What is due when: a heap of (time, sequence, code, machine or argument, token);
        # the sequence keeps simultaneous events in the order they were scheduled.
        self._heap = []
        self._seq = itertools.count()
        self._names = itertools.count(1)
        self._outbox = []
        self._joins_pending = 0
        self._crash_at = sorted(crash_at)
        self._kill_at = sorted(kill_at)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self):
        if not self.machines:
            for _ in range(self.size):
                self._spawn()
            for t in self._crash_at:
                self._at(t, _CRASH, None)
            for t in self._kill_at:
                self._at(t, _KILL, None)
            self._at(self.heartbeat_interval, _BEAT, None)
        return self

    def close(self):
        self._heap.clear()

    def load_job(self, payload, faults=None):
        return 1

    def drop_job(self, job):
        pass

    def live_workers(self):
        return list(self.alive)

    def fetch(self, ref):
        return None

    def _spawn(self, factor=None):
        name = f"m{next(self._names)}"
        m = _Machine(name, self.machine_factor.get(name, 1.0) if factor is None else factor)
        self.machines[name] = m
        self.alive[name] = m
        self.up[name] = m
        return m

    def _at(self, when, code, arg, token=None):
        heapq.heappush(self._heap, (when, next(self._seq), code, arg, token))

    # -- the port --------------------------------------------------------------------------

    def apply(self, actions, job, hint=0.0):
        now = self.clock.t
        self._hint = hint
        alive, where = self.alive, self.where
        for a in actions:
            kind = type(a)
            if kind is Launch:
                m = alive.get(a.worker)
                if m is None:
                    continue  # it died meanwhile: the policy hears of it
                if where is not None:
                    where[a.attempt] = m
                if m.head is None and not m.crashed:
                    self._begin(m, a, now)
                else:
                    m.queue.append(a)
            elif kind is Cancel:
                self._cancel(a.attempt, a.worker, now)
            elif kind is KillWorker:
                m = self.alive.get(a.worker)
                if m is not None:
                    self._remove(m, now, "killed by the master", announce=False)
            elif kind is Release:
                pass

    def events(self, timeout):
        if self.check is not None:
            self.check()
        if self._outbox:
            return self._deliver()
        now = self.clock.t
        if now > self.max_seconds:
            raise SimulationTooLong(f"the simulated job ran past max_seconds="
                                    f"{self.max_seconds:g} of virtual time")
        if not self.alive and not self._joins_pending:
            raise NoWorkersLeft(f"every simulated machine is gone at t={now:g}s and none "
                                "will join (crashed machines are not replaced; set "
                                "restart_seconds for killed workers)")
        heap = self._heap
        deadline = now + max(timeout, 0.0)
        if not heap or heap[0][0] > deadline:
            self.clock.advance_to(deadline)
            return []
        when = heap[0][0]
        if when > now:
            self.clock.t = when  # (the clock's advance_to, without the call)
        # What comes due at ``when`` while this runs (a zero-second attempt) comes after.
        pop = heapq.heappop
        while heap and heap[0][0] <= when:
            _t, _s, code, arg, token = pop(heap)
            if code == _DONE:
                if arg.token == token and arg.alive and not arg.crashed:
                    self._complete(arg, when)
            else:
                self._other(code, arg, token, when)
        out, self._outbox = self._outbox, []
        self.events_out += len(out) + self._beats
        self._beats = 0
        return out

    def _other(self, code, arg, token, when):
        """Carry out what is due at ``when`` besides a completion."""
        if code == _BEAT:
            # One heartbeat per live machine, handed over as one round (counted as
            # that many events: each is a message a real worker would send).
            beating = tuple(self.up)
            if beating:
                self._outbox.append(Heartbeats(beating))
                self._beats += len(beating) - 1
            self._at(when + self.heartbeat_interval, _BEAT, None)
        elif code == _CRASH:
            live = list(self.up.values())
            if live:
                self._crash(self.rng.choice(live), when)
        elif code == _KILL:
            live = list(self.up.values())
            if live:
                self._remove(self.rng.choice(live), when, "worker process killed",
                             announce=True)
        elif code == _KILLW:
            if arg.token == token and arg.alive and not arg.crashed:
                self._remove(arg, when, "worker process killed", announce=True)
        elif code == _JOIN:
            self._joins_pending -= 1
            self._outbox.append(Joined(self._spawn(arg).name))

    def _deliver(self):
        """The events gathered, counted as the messages they are (a round of heartbeats
        is one per machine; ``events`` does the same inline)."""
        out, self._outbox = self._outbox, []
        self.events_out += len(out) + self._beats
        self._beats = 0
        return out

    def progress(self, attempt, now):
        """The share of ``attempt`` done at ``now`` (0 while it waits to start): what
        :class:`~mergeagg.runtime.speculation.Late` reads."""
        if self.where is None:
            raise RuntimeError("this simulated executor does not keep its attempts' "
                               "progress (where is None)")
        m = self.where.get(attempt)
        if m is None or m.head is None or m.head.attempt != attempt or m.end <= m.start:
            return 0.0
        return min(1.0, max(0.0, (now - m.start) / (m.end - m.start)))

    # -- internals -------------------------------------------------------------------------

    def _begin(self, m, launch, now):
        m.head = launch
        token = m.token = m.token + 1
        m.start = now
        end = m.end = now + self.seconds(launch) * m.factor
        heapq.heappush(self._heap, (end, next(self._seq), _DONE, m, token))
        if self.kill_after is not None:
            after = self.kill_after(launch, self._hint)
            if after is not None and now + after < end:
                self._at(now + after, _KILLW, m, token)

    def _span(self, m, now, outcome):
        launch = m.head
        self.task_seconds += now - m.start
        if outcome == "finished":
            self.useful_seconds += now - m.start
        if self.timeline is not None:
            self.timeline.append(Span(m.name, str(launch.attempt), launch.kind, m.start, now,
                                      outcome, launch.backup))

    def _next(self, m, now):
        m.head = None
        m.token += 1
        if m.queue:
            self._begin(m, m.queue.pop(0), now)

    def _complete(self, m, now):
        launch = m.head
        aid = launch.attempt
        ran = now - m.start
        self.task_seconds += ran
        self.useful_seconds += ran
        if self.timeline is not None:
            self.timeline.append(Span(m.name, str(aid), launch.kind, m.start, now, "finished",
                                      launch.backup))
        if self.where is not None:
            self.where.pop(aid, None)
        self._outbox.append(Finished(aid, m.ref, aid.task, {"seconds": ran}, m.name))
        m.head = None
        m.token += 1
        if m.queue:
            self._begin(m, m.queue.pop(0), now)

    def _cancel(self, attempt, worker, now):
        if self.where is not None:
            self.where.pop(attempt, None)
        m = self.alive.get(worker)  # (names are never reused)
        if m is None:
            return
        if m.head is not None and m.head.attempt == attempt:
            if m.crashed:
                return  # a dead machine takes no message
            self._span(m, now, "cancelled")
            self._outbox.append(Cancelled(attempt, m.name))
            self._next(m, now)
            return
        for i, launch in enumerate(m.queue):
            if launch.attempt == attempt:
                del m.queue[i]
                if not m.crashed:
                    self._outbox.append(Cancelled(attempt, m.name))
                return

    def _crash(self, m, now):
        """The machine stops: no completion, no heartbeat; the policy's detector will
        declare it lost and tell us to kill it."""
        m.crashed = True
        del self.up[m.name]
        if m.head is not None:
            self._span(m, now, "lost")
            m.head = None
            m.token += 1

    def _remove(self, m, now, cause, announce):
        if m.head is not None:
            self._span(m, now, "lost")
        if self.where is not None:
            for launch in [m.head, *m.queue]:
                if launch is not None:
                    self.where.pop(launch.attempt, None)
        m.head = None
        m.queue = []
        m.token += 1
        m.alive = False
        del self.alive[m.name]
        self.up.pop(m.name, None)
        if announce:
            self._outbox.append(Lost(m.name, cause))
        if not m.crashed and self.restart_seconds is not None:
            self._joins_pending += 1
            self._at(now + self.restart_seconds, _JOIN, m.factor)


# -- building a job --------------------------------------------------------------------------

def read_trace(path):
    """Task durations from a trace file: one number of seconds per line (blank lines and
    ``#`` comments skipped). Cost: O(lines).

    >>> import pathlib, tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = pathlib.Path(d, "trace.txt")
    ...     _ = p.write_text("# seconds\\n10\\n12.5\\n")
    ...     print(read_trace(p))
    ...     _ = p.write_text("10\\nslow\\n")
    ...     try:
    ...         read_trace(p)
    ...     except ValueError as exc:
    ...         print(str(exc).replace(d, "DIR"))
    [10.0, 12.5]
    trace DIR/trace.txt, line 2: 'slow' is not a number of seconds
    """
    out = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                v = float(text)
            except ValueError:
                raise ValueError(f"trace {path}, line {lineno}: {text!r} is not a number of "
                                 "seconds") from None
            if not v >= 0 or math.isinf(v):
                raise ValueError(f"trace {path}, line {lineno}: {text!r} is not a duration "
                                 "(>= 0 seconds)")
            out.append(v)
    if not out:
        raise ValueError(f"trace {path} holds no durations")
    return out


def _durations(spec, n, rng, what):
    """``n`` base durations from ``spec``: a number, ``("lognormal", median, sigma)``, a
    trace file's path or a sequence of numbers (cycled)."""
    if isinstance(spec, bool):
        raise TypeError(f"{what}: a duration, not {spec!r}")
    if isinstance(spec, (int, float)):
        if spec < 0:
            raise ValueError(f"{what} must be >= 0 seconds, got {spec!r}")
        return [float(spec)] * n
    if isinstance(spec, tuple) and spec and spec[0] == "lognormal":
        if len(spec) != 3 or spec[1] <= 0 or spec[2] < 0:
            raise ValueError(f"{what}: ('lognormal', median > 0, sigma >= 0), got {spec!r}")
        _, median, sigma = spec
        return [median * math.exp(sigma * rng.gauss(0.0, 1.0)) for _ in range(n)]
    if isinstance(spec, str):
        spec = read_trace(spec)
    if isinstance(spec, (list, tuple)) and spec:
        values = [float(v) for v in spec]
        if any(not v >= 0 for v in values):
            raise ValueError(f"{what}: every duration must be >= 0 seconds")
        return [values[i % len(values)] for i in range(n)]
    raise TypeError(f"{what}: a number, ('lognormal', median, sigma), a trace file or a list "
                    f"of seconds, got {spec!r}")


def simulate(workers=100, maps=100, reduces=0, *, duration=10.0, reduce_duration=None,
             slow_attempts=0.0, slow_machines=0, slow_tasks=(), slow_factor=5.0,
             failure_p=0.0,
             failure_window=None, crash_at=(), kill_at=(), restart_seconds=None,
             heartbeat_interval=1.0, heartbeat_timeout=10.0, start_latency=0.0,
             transfer_per_byte=0.0, map_output_bytes=0, speculation="default",
             prefetch=1, max_attempts=4, max_lost=10, seed=0, timeline=True, check=None,
             max_seconds=1e9, fan_in=None, kill_tasks=None, outputs_survive_worker=False,
             backup_factor=None):
    """Simulate a job on ``workers`` machines with the production policy and driver;
    returns a :class:`Simulation`. Cost: O((attempts + events) × log workers) and
    O(workers) per heartbeat round, in this process; about 4 µs per policy event.

    * the job: ``maps`` map tasks, then ``reduces`` reduce tasks that read every map's
      output (``0``: a map-only job); ``duration`` (maps) and ``reduce_duration``
      (default: ``duration``): a number of seconds, ``("lognormal", median, sigma)``, a
      trace file's path or a list of seconds;
    * stragglers: each attempt is ``slow_factor`` times slower with probability
      ``slow_attempts``; ``slow_machines`` machines (an int) or that share of them (a
      float below 1) are ``slow_factor`` times slower for the whole job; the first
      attempt of each map task listed in ``slow_tasks`` (indices) is ``slow_factor``
      times slower;
    * failures: each machine crashes with probability ``failure_p`` at a uniform time in
      ``[0, failure_window)`` (default: the job's length without failures); ``crash_at``
      and ``kill_at`` list times at which one machine crashes (found by the heartbeat
      detector) or has its worker killed (reported at once, replaced after
      ``restart_seconds``; ``None``: never);
    * ``heartbeat_interval`` and ``heartbeat_timeout``; ``start_latency`` seconds
      before each attempt starts; reducers take ``transfer_per_byte`` seconds per byte
      of their share of ``map_output_bytes`` per map; a lost machine's map outputs are
      lost with it;
    * ``fan_in``: a fold job instead (the maps, then the fixed combine tree of that fan-in,
      combines taking ``reduce_duration``); ``kill_tasks``: ``{map index: at}``, the
      first attempt of that map kills its worker ``at`` × the median map time into it
      (the ``kill`` fault); ``outputs_survive_worker``: the loss model (``True`` as on one
      machine's disk); ``backup_factor``: the default rule's multiple of the median;
    * ``speculation``: a name of :data:`mergeagg.runtime.speculation.NAMES` or a
      :class:`~mergeagg.runtime.speculation.Speculation`; ``prefetch`` attempts queued per
      worker (1: a worker asks for its next task when it finishes one, as in MapReduce).

    The policy's errors (a task lost its worker ``max_lost`` times...) are raised, as are
    :class:`NoWorkersLeft` and :class:`SimulationTooLong`.

    >>> sim = simulate(workers=4, maps=8, duration=2.0)
    >>> sim.seconds, sim.report.backups_launched, len(sim.timeline)
    (4.0, 0, 8)
    >>> sim.result.fingerprint == simulate(workers=2, maps=8, kill_at=[1.0],
    ...                                    restart_seconds=0.0).result.fingerprint
    True
    """
    import time

    from mergeagg.runtime import speculation as spec_mod
    from mergeagg.runtime.driver import drive, report
    from mergeagg.runtime.master import Policy, PolicyConfig, TaskDef
    from mergeagg.runtime.shuffle import keyed_tasks

    if not isinstance(maps, int) or maps < 1:
        raise ValueError(f"maps must be an int >= 1, got {maps!r}")
    if not isinstance(reduces, int) or reduces < 0:
        raise ValueError(f"reduces must be an int >= 0, got {reduces!r}")
    for name, v in (("slow_attempts", slow_attempts), ("failure_p", failure_p)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be a probability within [0, 1], got {v!r}")
    if slow_factor <= 0:
        raise ValueError(f"slow_factor must be positive, got {slow_factor!r}")
    rng = random.Random(seed)
    map_base = _durations(duration, maps, rng, "duration")
    if fan_in is not None:
        from mergeagg.runtime.master import fold_tasks

        fold = fold_tasks(list(range(maps)), fan_in)
        n_second = len(fold) - maps
    else:
        n_second = reduces
    red_base = _durations(duration if reduce_duration is None else reduce_duration,
                          n_second, rng, "reduce_duration") if n_second else []
    names = [f"m{i + 1}" for i in range(workers)] if isinstance(workers, int) else []
    if isinstance(slow_machines, float):
        if not 0.0 <= slow_machines <= 1.0:
            raise ValueError(f"slow_machines as a share must be within [0, 1], got "
                             f"{slow_machines!r}")
        slow_machines = round(slow_machines * len(names))
    if not 0 <= slow_machines <= len(names):
        raise ValueError(f"slow_machines must be between 0 and workers, got {slow_machines!r}")
    factor = {n: slow_factor for n in rng.sample(names, slow_machines)}
    if failure_window is None:
        waves = math.ceil(maps / max(len(names), 1))
        failure_window = waves * (sum(map_base) / maps) + (
            math.ceil(reduces / max(len(names), 1)) * sum(red_base) / reduces if reduces
            else 0.0)
    crashes = list(crash_at) + [rng.uniform(0.0, failure_window)
                                for _ in names if failure_p and rng.random() < failure_p]
    transfer = (transfer_per_byte * map_output_bytes * maps / reduces) if reduces else 0.0
    attempt_rng = random.Random(f"{seed}:attempts")
    second_index = ({t.id: i for i, t in enumerate(fold[maps:])} if fan_in is not None
                    else {})
    kills = dict(kill_tasks or {})

    def kill_after(launch, hint):
        if launch.kind == "map" and launch.attempt.number == 1 and launch.index in kills:
            return kills[launch.index] * hint
        return None

    slow_first = frozenset(slow_tasks)

    def seconds(launch):
        if launch.kind == "map":
            base = map_base[launch.index]
            if launch.index in slow_first and launch.attempt.number == 1:
                base *= slow_factor
        elif launch.kind == "combine":
            base = red_base[second_index[launch.task]]
        else:
            base = red_base[launch.index] + transfer
        if slow_attempts and attempt_rng.random() < slow_attempts:
            base *= slow_factor
        return start_latency + base

    ex = SimulatedExecutor(workers, seconds, machine_factor=factor, crash_at=crashes,
                           kill_at=kill_at, restart_seconds=restart_seconds,
                           heartbeat_interval=heartbeat_interval, seed=seed,
                           timeline=timeline, max_seconds=max_seconds,
                           kill_after=kill_after if kills else None,
                           outputs_survive_worker=outputs_survive_worker)
    if speculation == "default" and backup_factor is not None:
        speculation = spec_mod.Threshold(0.75, backup_factor)
    elif isinstance(speculation, str):
        speculation = spec_mod.by_name(speculation, progress=ex.progress)
    elif isinstance(speculation, spec_mod.Late) and speculation.progress is None:
        # A rule built by the caller reads progress from the policy, which the simulated
        # machines do not report event by event: a copy reads the simulator's directly.
        speculation = copy.copy(speculation)
        speculation.progress = ex.progress
    if not getattr(speculation, "needs_progress", False):
        ex.where = None  # nothing reads the attempts' progress: no need to keep where
    config = PolicyConfig(backups=speculation is not None,
                          speculation=speculation, heartbeat_timeout=heartbeat_timeout,
                          prefetch=prefetch, max_attempts=max_attempts, max_lost=max_lost,
                          stealing=prefetch > 1, scan_interval=0.0, seed=seed)
    splits = list(range(maps))
    if fan_in is not None:
        tasks = fold
    elif reduces:
        tasks = keyed_tasks(splits, reduces)
    else:
        tasks = [TaskDef(f"map-{i}", "map", split=i, index=i) for i in splits]
    policy = Policy(tasks, config)
    if check is not None:
        ex.check = lambda: check(policy)
    t0, c0 = time.perf_counter(), time.process_time()
    with _static_heap():
        _fetched, phases = drive(policy, ex, None, lambda p, e: None, progress=False,
                                 clock=ex.clock)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    with _static_heap():  # a row per task, no cycles either: 5x faster without collections
        rep = report(policy, workers, 0, phases, mode="simulated")
    retries = sum(t.launched for t in policy.tasks.values()) - len(policy.tasks) \
        - policy.backups_launched
    return Simulation(seconds=ex.clock(), report=rep, timeline=ex.timeline or [],
                      events=ex.events_out, task_seconds=ex.task_seconds,
                      useful_seconds=ex.useful_seconds, retries=retries, wall_seconds=wall,
                      cpu_seconds=cpu)


@contextlib.contextmanager
def _static_heap():
    """Keep the cyclic collector out of the simulation loop. The loop allocates an
    attempt, a launch and an event or two per step, none of them in a reference cycle
    (refcounting frees them all; tests/runtime/test_simulate.py checks that a simulation
    leaves no cyclic garbage), so a collection only traverses live objects: with the
    task table frozen (``gc.freeze``: millions of objects at 100,000 tasks) and young
    collections every 50,000 allocations, they still took about 7% of the run's CPU at
    10,000 workers x 100,000 maps, each traversing the tens of thousands of attempts,
    launches and results made since the last. The collector is back on, and the heap
    unfrozen, when the simulation ends or fails."""
    enabled = gc.isenabled()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        gc.unfreeze()
