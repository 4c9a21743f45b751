"""The serial in-process runner: the reference every parallel run is compared against.

It reads each split, runs ``partial`` and folds along the same fixed-shape tree as the
parallel runtime (:mod:`mergeagg.runtime.tree`), streaming: at most ``fan_in`` accumulators
per tree level are held at once.
"""

from __future__ import annotations

import time
import traceback

from mergeagg.errors import TaskFailed
from mergeagg.inputs import read_split
from mergeagg.runtime.report import Report, TaskRecord
from mergeagg.runtime.tree import fold_fixed

__all__ = ["run_serial"]


def run_serial(aggregator, source, *, fan_in, clock=time.perf_counter):
    """Fold ``source`` with ``aggregator`` in this process. Returns ``(value, report)``."""
    report = Report(mode="serial", workers=0, fan_in=fan_in)
    t0 = clock()
    combine_count = [0]

    def partials():
        for split in source.splits():
            started = clock()
            records = read_split(split)
            try:
                acc = aggregator.partial(records)
            except Exception as exc:
                raise TaskFailed(
                    f"partial raised on split {split.id} (task map-{split.index}, attempt 1 of "
                    f"1 in serial mode): {type(exc).__name__}: {exc}",
                    task=f"map-{split.index}", split=split.id, attempts=1,
                    traceback=traceback.format_exc(),
                ) from exc
            nbytes = getattr(records, "bytes_read", 0)
            report.bytes_read += nbytes
            report.tasks.append(TaskRecord(f"map-{split.index}", "map", split.id, attempts=1,
                                           seconds=clock() - started, bytes_read=nbytes))
            yield acc

    def combine(a, b):
        combine_count[0] += 1
        try:
            return aggregator.combine(a, b)
        except Exception as exc:
            raise TaskFailed(
                f"combine raised (combine #{combine_count[0]} in serial mode): "
                f"{type(exc).__name__}: {exc}",
                task=f"combine-{combine_count[0]}", attempts=1, traceback=traceback.format_exc(),
            ) from exc

    root = fold_fixed(partials(), combine, fan_in)
    t1 = clock()
    try:
        value = aggregator.finalize(root)
    except Exception as exc:
        raise TaskFailed(
            f"finalize raised: {type(exc).__name__}: {exc}", task="finalize", attempts=1,
            traceback=traceback.format_exc(),
        ) from exc
    t2 = clock()
    report.phases = {"map+combine": t1 - t0, "finalize": t2 - t1}
    report.wall_seconds = t2 - t0
    return value, report
