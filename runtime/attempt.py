"""The one attempt runner: every executor runs every attempt of every task kind here.

:func:`run_attempt` runs one :class:`~mergeagg.runtime.port.Launch` of a fold job (map,
combine) or a keyed job (map, reduce, merge), with the job's fault strikes in one place,
and returns the typed event that says how it went (:class:`~mergeagg.runtime.port.Finished`,
:class:`~mergeagg.runtime.port.Failed` or :class:`~mergeagg.runtime.port.Cancelled`).
Executors differ only in where outputs live and how a fault reaches a process, which they
say through a :class:`Host`: the worker processes on this machine
(:mod:`mergeagg.runtime.worker`), and workers simulated in this process
(:mod:`mergeagg.runtime.inprocess`). So a ``kill`` fault kills the worker on every executor,
a ``corrupt`` fault on a keyed map damages a spill file on every executor, and so on.

>>> import mergeagg as ma
>>> from mergeagg.inputs import shards
>>> from mergeagg.runtime.inprocess import MemoryHost
>>> from mergeagg.runtime.port import AttemptId, Launch
>>> agg = ma.Aggregator(sum, lambda a, b: a + b)
>>> split = shards([[1, 2, 3]]).splits()[0]
>>> ev = run_attempt(agg, None, Launch(AttemptId("map-0", 1), "w1", "map", split), 0.0,
...                  MemoryHost("w1"))
>>> type(ev).__name__, ev.stats["bytes_read"], MemoryHost("w1").load(ev.ref)
('Finished', 0, 6)
"""

from __future__ import annotations

import os
import shutil
import time
import traceback
from typing import Protocol

from mergeagg.errors import BadRecords, CorruptSpillError, InputError
from mergeagg.fingerprint import MappingDigest, fingerprint
from mergeagg.inputs import read_split, record_location
from mergeagg.runtime.faults import InjectedFault, corrupt_value
from mergeagg.runtime.port import Cancelled, Failed, Finished
from mergeagg.runtime.refs import (
    Cancel,
    InputLost,
    RecomputedInput,
    ResidentPartition,
    dumps,
)
from mergeagg.runtime.shuffle import (
    KeyedSpec,
    PartRef,
    reducer_fingerprint,
    run_map,
    run_merge,
    run_reduce,
)

__all__ = ["run_attempt", "Host", "Cancel", "Meter", "Reporter", "Steps", "PROGRESS_EVERY"]

PROGRESS_EVERY = 0.2  # seconds between two progress reports of one attempt, at least
_BYTE_SPLITS = ("text", "gzip", "bz2", "xz")  # split kinds whose range is in file bytes


class Host(Protocol):
    """What an attempt needs from the executor that runs it.

    * ``worker``: its name; ``workdir``: a directory for a keyed map's spill files.
    * ``load(ref)``: a fresh copy of the value behind an output reference (raises
      :class:`~mergeagg.runtime.worker_data.InputLost` naming the task if it is gone).
    * ``store(attempt, data)``: keep a pickled output; returns its reference.
    * ``cached(part)``: ``(loaded, stats)`` of a worker-resident partition.
    * ``side(ref)``: a reducer's salted partials, for the merge.
    * ``track(meter)`` (optional): a map attempt's :class:`Meter` as it starts, ``None``
      as it ends; an executor that reports progress samples the meter (a host without
      ``track`` reports none).
    * ``kill_now()``, ``kill_after(seconds)``, ``hang()``, ``delay(factor, elapsed)``: how
      the ``kill``, ``hang`` and ``delay`` faults reach this worker (``delay`` makes an
      attempt that took ``elapsed`` seconds take ``factor`` times as long); ``noise()``: a
      number in [0, 1) for the ``corrupt`` fault (a non-deterministic task's output).
    """

    worker: str
    workdir: str

    def load(self, ref): ...

    def store(self, attempt, data): ...

    def cached(self, part): ...

    def side(self, ref): ...

    def kill_now(self): ...

    def kill_after(self, seconds): ...

    def hang(self): ...

    def delay(self, factor, elapsed): ...

    def noise(self): ...


class Meter:
    """How far a running map (or combine) attempt is, for its executor to sample (from
    another thread, or between events).

    Progress is the share of its input the partial has consumed (Hadoop's measure of a
    map task's progress, which LATE rates attempts by):

    * while the partial iterates the split's records, the share of them it has been
      handed (:meth:`~mergeagg.inputs.TextShard.consumed`, the list iterator's position);
    * otherwise the share of the split's bytes read. The reader reads a split whole on
      first use, so this steps from 0 to 1 as the read completes: a partial that takes
      the text whole (``shard.text()``) has consumed its input once it is read, and
      however long it then computes, it reports 1 (LATE cannot see such an attempt
      straggle; the threshold rules can);
    * a split without a byte count (in memory) is unknown (``None``) until the partial
      returns; then 1;
    * a fold's combine: the share of its steps done (load each input, fold each in:
      :class:`Steps`).

    A ``delay`` fault (a straggler ``factor`` times slower) is seen as one: its fractions
    are divided by ``factor`` while the attempt computes, then grow with time through the
    delay, as a task slowed uniformly would report them.

    Cost: nothing per record (a sample reads the iterator's position or the reader's byte
    counter); O(1) per sample.

    >>> m = Meter("map-0#1", 100, slow=4.0)
    >>> m.sample() is None, m.computed() or m.sample()
    (False, (0.25, 25))
    """

    __slots__ = ("attempt", "total", "started", "_records", "_done", "_slow", "_stretch")

    def __init__(self, attempt, total, slow=1.0):
        self.attempt = attempt
        self.total = total
        self.started = time.perf_counter()
        self._records = None
        self._done = False
        self._slow = slow
        self._stretch = None

    def reading(self, records):
        """The records the partial consumes (their position or ``bytes_read`` is
        sampled)."""
        self._records = records

    def computed(self):
        """The partial has returned: the split's work is done."""
        self._done = True

    def stretch(self, factor, elapsed):
        """A ``delay`` fault stretches the attempt, which took ``elapsed`` seconds, to
        ``factor`` times as long, from now."""
        self._stretch = (time.perf_counter(), elapsed, factor)

    def sample(self):
        """``(fraction, bytes_done)`` now, or ``None`` while unknown."""
        total = self.total
        if self._stretch is not None:
            t0, elapsed, factor = self._stretch
            whole = max(factor * elapsed, 1e-9)
            frac = min(1.0, (elapsed + time.perf_counter() - t0) / whole)
            return frac, int(frac * total)
        if self._done:
            frac = 1.0
        else:
            records = self._records
            consumed = getattr(records, "consumed", None)
            frac = consumed() if consumed is not None else None
            if frac is None:
                if total <= 0:
                    return None
                frac = min(getattr(records, "bytes_read", 0) or 0, total) / total
        frac /= self._slow
        return frac, int(frac * total)


class Reporter:
    """When an executor sends a running attempt's progress: once it has run
    ``PROGRESS_EVERY`` seconds, then at most every ``PROGRESS_EVERY`` seconds, and only
    when the fraction moved. One per worker process (the local workers' and the Dask
    workers' samplers share it). Cost: O(1) per meter per call; it remembers only the
    meters it was last shown.

    >>> r, m = Reporter(), Meter("map-0#1", 100)
    >>> m.computed(); r.due(m, m.started + 0.1), r.due(m, m.started + 0.3)
    (None, (1.0, 100))
    >>> r.due(m, m.started + 0.9) is None  # it has not moved since
    True
    """

    __slots__ = ("_last",)

    def __init__(self):
        self._last = {}  # meter -> (fraction, when) of its last report

    def due(self, meter, now):
        """``(fraction, bytes_done)`` to report for ``meter`` now, or ``None``."""
        if now - meter.started < PROGRESS_EVERY:
            return None
        last = self._last.get(meter)
        if last is not None and now - last[1] < PROGRESS_EVERY:
            return None
        sample = meter.sample()
        if sample is None or (last is not None and last[0] == sample[0]):
            return None
        self._last[meter] = (sample[0], now)
        return sample

    def keep(self, meters):
        """Forget every meter but ``meters`` (the attempts still running)."""
        for m in [m for m in self._last if m not in meters]:
            del self._last[m]


class Steps:
    """A fold combine's progress: of its ``total`` steps (load each input, then fold each
    in), how many are ``done``; what its :class:`Meter` samples. Cost: one increment a
    step.

    >>> s = Steps(4); s.done = 1; s.consumed()
    0.25
    """

    __slots__ = ("done", "total")

    def __init__(self, total):
        self.done = 0
        self.total = total

    def consumed(self):
        return self.done / self.total if self.total else 1.0


def _meter(launch, fault, host):
    """A :class:`Meter` for a map attempt, or a fold's combine (whose steps ``_fold``
    counts), on a host that tracks progress (else ``None``)."""
    track = getattr(host, "track", None)
    if track is None or launch.kind not in ("map", "combine") \
            or isinstance(launch.split, ResidentPartition):
        return None
    split = launch.split
    total = 0
    if getattr(split, "kind", None) in _BYTE_SPLITS:
        total = max(0, split.end - split.start)
    slow = fault.factor if fault is not None and fault.kind == "delay" else 1.0
    if launch.kind == "map" and not total and slow == 1.0:
        return None  # nothing to say until it is over (an in-memory split): no meter
    meter = Meter(launch.attempt, total, slow)
    track(meter)
    return meter


def run_attempt(job, plan, launch, hint, host):
    """Run ``launch`` of ``job`` (an Aggregator or a keyed job's spec) on ``host``; the
    fault plan ``plan`` (or ``None``) decides this attempt's fault. ``hint`` is the median
    map attempt's seconds (a ``kill`` strikes part-way through a task that long).

    Cost: the user's function(s), one pickle and one fingerprint of the output, one
    unpickle per input.
    """
    fault = plan.fault_for(launch.attempt.task, launch.attempt.number) \
        if plan is not None else None
    meter = _meter(launch, fault, host)
    if meter is None:
        return _run(job, launch, hint, host, fault, None)
    try:
        return _run(job, launch, hint, host, fault, meter)
    finally:
        host.track(None)


def _run(job, launch, hint, host, fault, meter):
    """:func:`run_attempt` once its fault and meter are known."""
    t0 = time.perf_counter()
    stats = {}
    try:
        if fault is not None:
            _strike_before(fault, hint, host)
        if isinstance(job, KeyedSpec):
            ref, fp, stats = _keyed(job, launch, host, meter)
            if fault is not None:
                if fault.kind == "corrupt" and launch.kind == "map":
                    _corrupt_spill(ref)  # its reducer's CRC check must catch it
                else:
                    _strike_after(fault, None, time.perf_counter() - t0, host, meter)
            stats["seconds"] = time.perf_counter() - t0
            return Finished(launch.attempt, ref, fp, stats, host.worker)
        acc, stats = _fold(job, launch, host, meter)
        if fault is not None:
            acc = _strike_after(fault, acc, time.perf_counter() - t0, host, meter)
        seconds = time.perf_counter() - t0
    except Cancel:
        return Cancelled(launch.attempt, host.worker)
    except InputLost as exc:
        lost = (exc.task,) if exc.task is not None else ()
        return Failed(launch.attempt, "input_lost", str(exc), "", lost, host.worker)
    except CorruptSpillError as exc:
        return Failed(launch.attempt, "input_lost", str(exc), "",
                      tuple(getattr(exc, "lost", ())), host.worker)
    except InputError as exc:
        return Failed(launch.attempt, "input", str(exc), "", (), host.worker)
    except BadRecords as exc:
        return Failed(launch.attempt, "bad_records", str(exc), "\n".join(exc.records), (),
                      host.worker)
    except RecomputedInput as exc:
        return Failed(launch.attempt, "nondeterministic", str(exc), "", (), host.worker)
    except Exception as exc:
        return Failed(launch.attempt, "raise", f"{type(exc).__name__}: {exc}",
                      traceback.format_exc(), (), host.worker)
    try:
        data = dumps(acc)
        fp = fingerprint(acc)
    except Exception as exc:
        return Failed(launch.attempt, "raise",
                      f"the output of {launch.kind} could not be serialised or "
                      f"fingerprinted: {type(exc).__name__}: {exc}", traceback.format_exc(),
                      (), host.worker)
    ref = host.store(launch.attempt, data)
    stats.update(seconds=seconds, output_bytes=len(data))
    return Finished(launch.attempt, ref, fp, stats, host.worker)


def _fold(agg, launch, host, meter=None):
    """A fold job's map or combine: ``(accumulator, stats)``."""
    if launch.kind == "map":
        split = launch.split
        if isinstance(split, ResidentPartition):
            loaded, stats = host.cached(split)
            return agg.partial(loaded), stats
        records = read_split(split)
        if meter is not None:
            meter.reading(records)
        if launch.bisect is not None:
            return _bisected(agg.partial, records, launch)
        acc = agg.partial(records)
        if meter is not None:
            meter.computed()
        return acc, {"bytes_read": getattr(records, "bytes_read", 0)}
    steps = Steps(2 * len(launch.inputs))
    if meter is not None:
        meter.reading(steps)
    values = []
    for r in launch.inputs:
        values.append(host.load(r))
        steps.done += 1
    acc = values[0]
    steps.done += 1
    for v in values[1:]:
        acc = agg.combine(acc, v)
        steps.done += 1
    return acc, {"bytes_read": 0}


def _keyed(spec, launch, host, meter=None):
    """A keyed job's map, reduce or merge (see :mod:`mergeagg.runtime.shuffle`):
    ``(ref, fingerprint, stats)``."""
    aid = str(launch.attempt)
    if launch.kind == "map":
        records = read_split(launch.split)
        if meter is not None:
            meter.reading(records)
        out_dir = os.path.join(host.workdir, aid.replace("#", "_"))
        if launch.bisect is not None:
            def map_once(sub):
                shutil.rmtree(out_dir, ignore_errors=True)  # a failed run's spills
                return run_map(spec, sub, out_dir, host.worker, launch.attempt.task)

            (ref, fp, stats), more = _bisected(map_once, records, launch)
            stats.update(more)
            return ref, fp, stats
        ref, fp, stats = run_map(spec, records, out_dir, host.worker, launch.attempt.task)
        if meter is not None:
            meter.computed()
        stats["bytes_read"] = getattr(records, "bytes_read", 0)
        return ref, fp, stats
    if launch.kind == "merge":
        sides = [host.side(ref) for ref in launch.inputs]
        value, digest, stats = run_merge(spec, sides, aid)
        fp = MappingDigest(*digest).fingerprint()
    else:
        value, digest, stats = run_reduce(spec, launch.inputs, launch.index, aid)
        fp = reducer_fingerprint(digest, value)
    stats["digest"] = digest
    if isinstance(value, PartRef):
        if value.side is not None:
            value.side_ref = host.store(launch.attempt._replace(task=launch.attempt.task
                                                                + "-side"),
                                        dumps(value.side))
            value.side = None
        return value, fp, stats
    return host.store(launch.attempt, dumps(value)), fp, stats


def _bisected(fn, records, launch):
    """``fn`` over the split's records without those it fails on (found by bisection,
    at most ``launch.bisect`` of them): ``(result, stats)`` with the set-aside records in
    ``stats["skipped_records"]``; raises :class:`~mergeagg.errors.BadRecords`."""
    from mergeagg.runtime.poison import without_bad_records

    split = launch.split
    result, bad = without_bad_records(fn, records, launch.bisect,
                                      locate=lambda i: record_location(split, i))
    stats = {"bytes_read": getattr(records, "bytes_read", 0), "bisected": 1}
    if bad:
        stats["skipped_records"] = [b.describe() for b in bad]
    return result, stats


def _strike_before(fault, hint, host):
    """The part of ``fault`` that strikes as an attempt starts: ``raise`` raises
    :class:`~mergeagg.runtime.faults.InjectedFault`, ``hang`` stops the worker, ``kill``
    arms its death ``fault.at`` of the way through a task of ``hint`` seconds (none yet:
    it dies at the end)."""
    if fault.kind == "raise":
        raise InjectedFault(f"injected fault: raise (worker {host.worker})")
    if fault.kind == "hang":
        host.hang()
    elif fault.kind == "kill" and hint > 0:
        host.kill_after(fault.at * hint)


def _strike_after(fault, acc, elapsed, host, meter=None):
    """The part of ``fault`` that strikes once the attempt computed ``acc`` in
    ``elapsed`` seconds: ``kill`` kills the worker, ``delay`` stretches the attempt to
    ``factor`` times its time, ``corrupt`` returns a perturbed ``acc`` (unless it is
    ``None``).
    Returns the accumulator to use."""
    if fault.kind == "kill":
        host.kill_now()
    elif fault.kind == "delay":
        if meter is not None:
            meter.stretch(fault.factor, elapsed)
        host.delay(fault.factor, elapsed)
    elif fault.kind == "corrupt" and acc is not None:
        acc = corrupt_value(acc, host.noise())
    return acc


def _corrupt_spill(out):
    """Flip one byte in the middle of a map output's largest spill file, on disk."""
    path, nbytes, _n = max(out.buckets, key=lambda b: b[1])
    if nbytes == 0:
        return
    with open(path, "r+b") as f:
        f.seek(nbytes // 2)
        byte = f.read(1)
        f.seek(nbytes // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
