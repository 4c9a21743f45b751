"""Poison records: find the records on which a map task's user code fails, by bisection.

When a map task fails the same way twice, the policy runs it again with ``bisect`` set,
and the attempt runner calls :func:`without_bad_records`: it runs the user's function on
the split's records; on a failure it looks for one record that fails alone (first the one
the function was reading when it failed, else by halving the records that fail together),
sets it aside, and runs the function again on the rest, until it succeeds. Any partition
of a split gives the same answer (the aggregator's laws), so the result is the answer over
the split without those records, exactly. More than ``limit`` bad records, or a failure
that no single record causes, end the task with :class:`BadRecords`, whose message names
every record found (file and byte offset, the exception, the line of user code that raised).

>>> def partial(records):
...     return sum(1 / r for r in records)
>>> value, bad = without_bad_records(partial, [1, 2, 0, 4], limit=1)
>>> value, [(b.index, b.error) for b in bad]
(1.75, [(2, 'ZeroDivisionError: division by zero')])

Cost: with a function that reads its records in order, a bad record costs a run up to it,
one run of that record alone, and the final run of the rest; otherwise about two runs per
halving (log2 of the split's records) per bad record.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass

from mergeagg.errors import BadRecords
from mergeagg.inputs import RecordList
from mergeagg.runtime.refs import Cancel

__all__ = ["without_bad_records", "BadRecord", "BadRecords"]


@dataclass
class BadRecord:
    """A record set aside: its ``index`` in the split, the ``error`` it raised alone and
    the ``frame`` (file, line and function of user code) that raised it."""

    index: int
    error: str
    frame: str
    where: str = ""

    def describe(self):
        return f"{self.where or f'record {self.index}'}: {self.error} (at {self.frame})"


class _Tracked(RecordList):
    """The records handed to the user's function, remembering how far iteration went
    (a hint only: C functions over a list read it without iterating)."""

    last = None

    def __iter__(self):
        for i, r in enumerate(list.__iter__(self)):
            self.last = i
            yield r


def _view(records, idx, like):
    out = _Tracked(map(records.__getitem__, idx))
    out.columns = getattr(like, "columns", None)
    out.bytes_read = getattr(like, "bytes_read", 0)
    return out


def _run(fn, records, idx, like):
    """``(result, None)`` or ``(None, exception)`` of ``fn`` over ``records[idx]``, and
    the position the function had read to."""
    view = _view(records, idx, like)
    try:
        return fn(view), None, view.last
    except Cancel:
        raise
    except Exception as exc:  # the user's code: any failure is one to look into
        return None, exc, view.last


def _describe(exc):
    frames = traceback.extract_tb(exc.__traceback__)
    frame = frames[-1] if frames else None
    where = f"{frame.filename}:{frame.lineno} in {frame.name}" if frame else "?"
    return f"{type(exc).__name__}: {exc}", where


def _culprit(fn, records, idx, like, hint):
    """An index of ``idx`` whose record fails alone, with its exception; ``None`` if the
    failure needs several records together. ``fn`` fails over ``records[idx]``."""
    if hint is not None and 0 <= hint < len(idx):
        _r, exc, _ = _run(fn, records, [idx[hint]], like)
        if exc is not None:
            return idx[hint], exc
    while len(idx) > 1:
        mid = len(idx) // 2
        for half in (idx[:mid], idx[mid:]):
            _r, exc, last = _run(fn, records, half, like)
            if exc is not None:
                if last is not None and 0 <= last < len(half):
                    _r, alone, _ = _run(fn, records, [half[last]], like)
                    if alone is not None:
                        return half[last], alone
                idx = half
                break
        else:
            return None
    _r, exc, _ = _run(fn, records, idx, like)
    return (idx[0], exc) if exc is not None else None


def without_bad_records(fn, records, limit, locate=None):
    """``(fn(records without the bad ones), bad)``: see the module docstring. ``limit``:
    how many records may be set aside (0: none; the first one found is named in the
    error). ``locate(index)`` says where a record is (file and byte offset). Raises
    :class:`BadRecords` past the limit, or when no single record makes ``fn`` fail."""
    like = records
    records = list(records)
    bad = []
    idx = list(range(len(records)))
    while True:
        result, exc, last = _run(fn, records, idx, like)
        if exc is None:
            return result, bad
        found = _culprit(fn, records, idx, like, last)
        if found is None:
            error, frame = _describe(exc)
            raise BadRecords(
                f"the task fails over its records ({error}, at {frame}) but on no single "
                f"record alone{_so_far(bad)}: it depends on several records together, so "
                "skipping records cannot help", records=[b.describe() for b in bad])
        i, alone = found
        error, frame = _describe(alone)
        bad.append(BadRecord(i, error, frame, locate(i) if locate else ""))
        if len(bad) > limit:
            allowed = (f"skip_bad_records={limit} allows {limit}" if limit
                       else "pass skip_bad_records=N (--skip-bad-records N) to skip up to N")
            raise BadRecords(
                f"bad record{'s' if len(bad) > 1 else ''} found by bisection: "
                + "; ".join(b.describe() for b in bad) + f" ({allowed})",
                records=[b.describe() for b in bad])
        idx.remove(i)


def _so_far(bad):
    if not bad:
        return ""
    return " (records set aside so far: " + "; ".join(b.describe() for b in bad) + ")"
