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

__all__ = ["run_attempt", "Host", "Cancel"]


class Host(Protocol):
    """What an attempt needs from the executor that runs it.

    * ``worker``: its name; ``workdir``: a directory for a keyed map's spill files.
    * ``load(ref)``: a fresh copy of the value behind an output reference (raises
      :class:`~mergeagg.runtime.worker_data.InputLost` naming the task if it is gone).
    * ``store(attempt, data)``: keep a pickled output; returns its reference.
    * ``cached(part)``: ``(loaded, stats)`` of a worker-resident partition.
    * ``side(ref)``: a reducer's salted partials, for the merge.
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


def run_attempt(job, plan, launch, hint, host):
    """Run ``launch`` of ``job`` (an Aggregator or a keyed job's spec) on ``host``; the
    fault plan ``plan`` (or ``None``) decides this attempt's fault. ``hint`` is the median
    map attempt's seconds (a ``kill`` strikes part-way through a task that long).

    Cost: the user's function(s), one pickle and one fingerprint of the output, one
    unpickle per input.
    """
    fault = plan.fault_for(launch.attempt.task, launch.attempt.number) \
        if plan is not None else None
    t0 = time.perf_counter()
    stats = {}
    try:
        if fault is not None:
            _strike_before(fault, hint, host)
        if isinstance(job, KeyedSpec):
            ref, fp, stats = _keyed(job, launch, host)
            if fault is not None:
                if fault.kind == "corrupt" and launch.kind == "map":
                    _corrupt_spill(ref)  # its reducer's CRC check must catch it
                else:
                    _strike_after(fault, None, time.perf_counter() - t0, host)
            stats["seconds"] = time.perf_counter() - t0
            return Finished(launch.attempt, ref, fp, stats, host.worker)
        acc, stats = _fold(job, launch, host)
        if fault is not None:
            acc = _strike_after(fault, acc, time.perf_counter() - t0, host)
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


def _fold(agg, launch, host):
    """A fold job's map or combine: ``(accumulator, stats)``."""
    if launch.kind == "map":
        split = launch.split
        if isinstance(split, ResidentPartition):
            loaded, stats = host.cached(split)
            return agg.partial(loaded), stats
        records = read_split(split)
        if launch.bisect is not None:
            return _bisected(agg.partial, records, launch)
        acc = agg.partial(records)
        return acc, {"bytes_read": getattr(records, "bytes_read", 0)}
    values = [host.load(r) for r in launch.inputs]
    acc = values[0]
    for v in values[1:]:
        acc = agg.combine(acc, v)
    return acc, {"bytes_read": 0}


def _keyed(spec, launch, host):
    """A keyed job's map, reduce or merge (see :mod:`mergeagg.runtime.shuffle`):
    ``(ref, fingerprint, stats)``."""
    aid = str(launch.attempt)
    if launch.kind == "map":
        records = read_split(launch.split)
        out_dir = os.path.join(host.workdir, aid.replace("#", "_"))
        if launch.bisect is not None:
            def map_once(sub):
                shutil.rmtree(out_dir, ignore_errors=True)  # a failed run's spills
                return run_map(spec, sub, out_dir, host.worker, launch.attempt.task)

            (ref, fp, stats), more = _bisected(map_once, records, launch)
            stats.update(more)
            return ref, fp, stats
        ref, fp, stats = run_map(spec, records, out_dir, host.worker, launch.attempt.task)
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


def _strike_after(fault, acc, elapsed, host):
    """The part of ``fault`` that strikes once the attempt computed ``acc`` in
    ``elapsed`` seconds: ``kill`` kills the worker, ``delay`` stretches the attempt to
    ``factor`` times its time, ``corrupt`` returns a perturbed ``acc`` (unless it is
    ``None``).
    Returns the accumulator to use."""
    if fault.kind == "kill":
        host.kill_now()
    elif fault.kind == "delay":
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
