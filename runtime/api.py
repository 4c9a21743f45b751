"""``run``: the one call that runs an aggregation, and its ``Result``."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from mergeagg.aggregator import Aggregator
from mergeagg.fingerprint import fingerprint
from mergeagg.inputs import as_source
from mergeagg.runtime.report import Report
from mergeagg.runtime.serial import run_serial
from mergeagg.runtime.tree import check_fan_in

__all__ = ["run", "Result", "DEFAULT_FAN_IN"]

DEFAULT_FAN_IN = 8


@dataclass
class Result:
    """What a run gives back: the finalized ``value``, its ``fingerprint`` and the ``report``."""

    value: object
    fingerprint: str
    report: Report

    def __repr__(self):
        return f"Result(fingerprint={self.fingerprint[:16]}..., value={_short(self.value)})"


def _short(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run(aggregator, source, *, workers=None, backend="local", fan_in=DEFAULT_FAN_IN,
        split_size=None, format="text", errors="strict", max_attempts=4, backups=True,
        backup_after=0.75, backup_factor=1.5, verify=0.0, faults=None,
        heartbeat_interval=0.2, heartbeat_timeout=5.0, task_timeout=None, progress=None,
        start_method=None, session=None):
    """Run ``aggregator`` over ``source`` and return a :class:`Result`.

    ``source`` is anything :func:`mergeagg.inputs.as_source` accepts: file paths, globs and
    directories, a list of in-memory shards, an ndarray, or a Source.

    ``workers=0`` runs serially in this process, folding along the same fixed tree
    (``fan_in`` children per node) as the parallel runtime: the reference every parallel
    run is compared with. ``workers=None`` means one worker process per CPU; ``workers=N``
    that many worker processes (see ``docs/runtime.md`` for the fault model and every knob:
    ``max_attempts``, ``backups``, ``backup_after``, ``backup_factor``, ``verify``,
    ``heartbeat_interval``, ``heartbeat_timeout``, ``task_timeout``, ``faults``,
    ``progress``, ``start_method``).

    Cost: one ``partial`` per split, ``n - 1`` combines, one ``finalize`` and one
    fingerprint of the value; on workers, also one fingerprint and one pickle per task
    output.

    >>> import mergeagg as ma
    >>> total = ma.Aggregator(sum, lambda a, b: a + b)
    >>> r = ma.run(total, [[1, 2], [3], [4, 5]], workers=0)
    >>> r.value, r.report.attempts
    (15, [1, 1, 1])
    """
    from mergeagg.runtime.faults import FaultPlan
    from mergeagg.runtime.master import PolicyConfig

    if not isinstance(aggregator, Aggregator):
        raise TypeError(f"run needs an Aggregator, got {type(aggregator).__name__}")
    check_fan_in(fan_in)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 0):
        raise ValueError(f"workers must be None or an int >= 0, got {workers!r}")
    if backend != "local":
        raise ValueError(f"unknown backend {backend!r}; this build knows 'local'")
    plan = FaultPlan.parse(faults) if isinstance(faults, (str, type(None))) else faults
    config = PolicyConfig(max_attempts=max_attempts, backups=backups,
                          backup_after=backup_after, backup_factor=backup_factor,
                          verify=verify, heartbeat_timeout=heartbeat_timeout,
                          task_timeout=task_timeout)
    src = as_source(source, split_size=split_size, format=format, errors=errors)
    start = time.perf_counter()
    if session is not None:
        value, report = session._run(aggregator, src, fan_in=fan_in, config=config,
                                     faults=plan, progress=progress)
    elif workers is None or workers > 0:
        from mergeagg.runtime.local import run_local

        n = workers if workers is not None else (os.cpu_count() or 1)
        value, report = run_local(aggregator, src, workers=n, fan_in=fan_in, config=config,
                                  faults=plan, progress=progress,
                                  heartbeat_interval=heartbeat_interval,
                                  start_method=start_method)
    else:
        if plan is not None:
            raise ValueError("faults are injected into worker processes; workers=0 has none")
        value, report = run_serial(aggregator, src, fan_in=fan_in)
    fp_start = time.perf_counter()
    fp = fingerprint(value)
    report.phases["fingerprint"] = time.perf_counter() - fp_start
    report.wall_seconds = time.perf_counter() - start
    return Result(value, fp, report)
