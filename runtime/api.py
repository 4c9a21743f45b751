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
        split_size=None, format="text", errors="strict"):
    """Run ``aggregator`` over ``source`` and return a :class:`Result`.

    ``source`` is anything :func:`mergeagg.inputs.as_source` accepts: file paths, globs and
    directories, a list of in-memory shards, an ndarray, or a Source. ``workers=0`` runs
    serially in this process, folding along the same fixed tree (``fan_in`` children per
    node) as the parallel runtime; it is the reference every parallel run is compared with.

    Cost: one ``partial`` per split, ``n - 1`` combines, one ``finalize`` and one
    fingerprint of the value.

    >>> import mergeagg as ma
    >>> total = ma.Aggregator(sum, lambda a, b: a + b)
    >>> r = ma.run(total, [[1, 2], [3], [4, 5]], workers=0)
    >>> r.value, r.report.attempts
    (15, [1, 1, 1])
    """
    if not isinstance(aggregator, Aggregator):
        raise TypeError(f"run needs an Aggregator, got {type(aggregator).__name__}")
    check_fan_in(fan_in)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 0):
        raise ValueError(f"workers must be None or an int >= 0, got {workers!r}")
    src = as_source(source, split_size=split_size, format=format, errors=errors)
    start = time.perf_counter()
    if workers is None:
        workers = os.cpu_count() or 1
    # The local runtime lands separately; until then every run is serial.
    value, report = run_serial(aggregator, src, fan_in=fan_in)
    if workers:
        report.workers = 0
    fp_start = time.perf_counter()
    fp = fingerprint(value)
    report.phases["fingerprint"] = time.perf_counter() - fp_start
    report.wall_seconds = time.perf_counter() - start
    return Result(value, fp, report)
