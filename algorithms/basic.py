"""The basic aggregates: ``count``, ``sum``, ``min``, ``max``, ``mean`` and ``variance``.

Records are numbers: Python ints and floats, numpy arrays (every element counts), or text
(a line, a CSV cell, a JSON string) that parses as an int or else as a float. With
``field=NAME`` each record is a mapping (a CSV row, a JSON object) and the number is its
``NAME`` entry; a CSV file whose header has no ``NAME`` column is an error that lists the
header, and so is a ``NAME`` that no record has as a key (never a count of nothing; a key
that only some JSON objects lack is a null); a record that is not a mapping is a
:class:`~mergeagg.errors.RecordShapeError` that says to read the input as records
(``--format csv``). A *null* — ``None``, a key missing from a JSON object, an empty or blank
string — is skipped,
as SQL's aggregates skip NULL (``count`` without a field counts every record, as
``COUNT(*)``; with a field it counts the non-null values, as ``COUNT(col)``). Booleans are
refused (``TypeError``): they are not numbers to aggregate.

* ``sum`` and ``mean`` of ints are exact. Of floats they are the usual float sums, whose
  last bits depend on how the input was split; ``exact=True`` keeps an exact sum instead
  (:class:`~mergeagg.algorithms._exact.ExactSum`), rounded once at the end, so the result is
  bitwise identical for *every* sharding and equals :func:`math.fsum`.
* ``min`` and ``max`` return ``None`` for no values, NaN if any value is NaN, and break
  ties deterministically (``1`` before ``1.0``; ``min`` prefers ``-0.0``, ``max`` ``0.0``).
* ``variance`` merges ``(n, mean, M2)`` with the parallel formula of Chan, Golub and LeVeque
  (1979), so no one ever averages averages; ``ddof=1`` (default) is the sample variance,
  ``ddof=0`` the population's; ``stddev=True`` gives the square root. Fewer than
  ``ddof + 1`` values give ``None``. ``exact=True`` keeps the count, the exact sum and the
  exact sum of squares instead (:class:`~mergeagg.algorithms._exact.ExactMoments`): the
  variance (and its root) is the correctly rounded one, bitwise identical for every
  sharding.

>>> import mergeagg as ma
>>> ma.run(total(exact=True), [[0.1] * 5, [0.1] * 5], workers=0).value
1.0
>>> mean().reduce([[1, 2], [3, 4]])
2.5
>>> variance().reduce([["1", "2", ""], ["3", "4"]])
1.6666666666666667
>>> minimum(field="t").reduce([[{"t": "7"}, {"t": ""}], [{"t": "-2"}]])
-2
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from mergeagg.aggregator import Aggregator
from mergeagg.algorithms._exact import ExactMoments, ExactSum
from mergeagg.algorithms.registry import Entry, Flag
from mergeagg.errors import InputError, RecordShapeError
from mergeagg.inputs import require_column

__all__ = [
    "count",
    "total",
    "minimum",
    "maximum",
    "mean",
    "variance",
    "to_number",
    "numbers",
    "field_of",
    "field_seen",
    "merge_seen",
    "require_seen",
    "merge_moments",
    "moments",
]


def to_number(value):
    """The int or float a record's value stands for, or ``None`` for a null.

    Cost: O(length of the text). Raises ``TypeError`` for bools and non-numbers,
    ``ValueError`` for text that is not a number.

    >>> to_number(" 42 "), to_number("2.5e3"), to_number(""), to_number(None)
    (42, 2500.0, None, None)
    >>> to_number("abc")
    Traceback (most recent call last):
    ...
    ValueError: not a number: 'abc' (expected an int or a float)
    """
    if value is None:
        return None
    if isinstance(value, bool) or isinstance(value, np.bool_):
        raise TypeError(f"a bool is not a number to aggregate: {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, (str, bytes)):
        text = value.strip()
        if not text:
            return None
        try:
            return int(text)
        except ValueError:
            pass
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"not a number: {value!r} (expected an int or a float)") from None
    if isinstance(value, Mapping):
        raise RecordShapeError(
            f"not a number: a mapping record ({value!r:.60}); name the column or key that "
            "holds the number with --field NAME (field= in Python)")
    raise TypeError(f"not a number: a {type(value).__name__} ({value!r:.60})")


def numbers(shard, field=None):
    """The non-null numbers of a shard, as ``(ints, floats)``: a list and a list or array.

    A numpy array shard gives its elements without a Python loop. Cost: O(records).

    >>> numbers([1, "2.5", None, " ", "3"])
    ([1, 3], [2.5])
    >>> numbers([{"x": 1}, {"y": 2}], field="x")
    ([1], [])
    """
    if isinstance(shard, np.ndarray) and field is None:
        if shard.dtype.kind in "iu":
            return shard.ravel().tolist(), []
        if shard.dtype.kind == "f":
            return [], shard.ravel().astype(np.float64, copy=False)
        if shard.dtype.kind == "b":
            raise TypeError("a bool array holds no numbers to aggregate")
    return _numbers_seen(shard, field)[:2]


def _numbers_seen(shard, field):
    """``(ints, floats, seen)``; ``seen`` as :func:`field_seen` (``True`` without a field)."""
    if field is not None:
        require_column(shard, field)
    ints, floats, missing = [], [], []
    for record in shard:
        if field is not None:
            value = field_of(record, field)
            if value is None:
                if ints or floats or missing is None:
                    continue
                missing.append(record)
                continue
            missing = None  # a value: the field is there
            record = value
        x = to_number(record)
        if x is None:
            continue
        if isinstance(x, float):
            floats.append(x)
        else:
            ints.append(x)
    if field is None or missing is None:
        return ints, floats, True
    return ints, floats, field_seen(missing, field)


_KEYS_SHOWN = 20


def field_seen(missing, field):
    """Whether ``field`` is a key of the records at all, from the records that gave no
    value (``missing``): ``True`` if one has it as a null, ``None`` if there are none, else
    the smallest keys they have (a tuple, at most 20). Merged by :func:`merge_seen` and
    checked by :func:`require_seen`, it tells a key missing from *every* record (a misspelt
    ``--field``: an error) from a key missing from some (nulls), for any sharding.
    Cost: O(keys of the records).

    >>> field_seen([{"x": None}], "x"), field_seen([{"b": 1}, {"a": 2}], "x")
    (True, ('a', 'b'))
    >>> field_seen([], "x"), field_seen([{}], "x")
    (None, ())
    """
    if not missing:
        return None
    keys = set()
    for record in missing:
        if field in record:
            return True
        keys.update(record)
    return tuple(sorted(keys, key=repr)[:_KEYS_SHOWN])


def merge_seen(a, b):
    """Combine two :func:`field_seen` results (associative, commutative; ``None`` is the
    identity, ``True`` absorbs). Cost: O(20).

    >>> merge_seen(("b",), ("a", "c")), merge_seen(("b",), True), merge_seen(None, ())
    (('a', 'b', 'c'), True, ())
    """
    if a is True or b is True:
        return True
    if a is None or b is None:
        return b if a is None else a
    return tuple(sorted(set(a) | set(b), key=repr)[:_KEYS_SHOWN])


def require_seen(seen, field):
    """Raise :class:`~mergeagg.errors.InputError` when records were read and none had
    ``field`` as a key (``seen`` from :func:`field_seen` / :func:`merge_seen`).

    Cost: O(20).

    >>> require_seen(True, "x"); require_seen(None, "x")
    >>> require_seen(("id", "size"), "sise")
    Traceback (most recent call last):
    ...
    mergeagg.errors.InputError: no record has the field 'sise'; their keys include 'id', 'size'
    """
    if seen is True or seen is None:
        return
    keys = ", ".join(repr(k) for k in seen)
    raise InputError(f"no record has the field {field!r}; "
                     + (f"their keys include {keys}" if keys else "the records have no keys"))


def field_of(record, field):
    """The ``field`` entry of a mapping record, ``None`` if it has none. Cost: O(1).

    A record that is not a mapping (a line of a CSV file read as text) is a
    :class:`~mergeagg.errors.RecordShapeError` (an ``InputError`` and a ``TypeError``: the
    job stops at once, with no retries) that says how to read the input as records.

    >>> field_of({"size": "10"}, "size"), field_of({}, "size")
    ('10', None)
    >>> field_of("foo,10", "size")
    Traceback (most recent call last):
    ...
    mergeagg.errors.RecordShapeError: field='size' needs mapping records ... --format csv ...
    """
    try:
        return record.get(field)
    except AttributeError:
        raise RecordShapeError(
            f"field={field!r} needs mapping records (CSV rows, JSON objects), got a "
            f"{type(record).__name__}: {record!r:.60}; read the input as records with "
            "--format csv (or tsv, jsonl; format= in Python)") from None


def _check_field(field):
    if field is not None and not isinstance(field, str):
        raise TypeError(f"field must be a str or None, got {type(field).__name__}")


class _Basic:
    """The partial/combine/finalize of one basic aggregate (picklable, no closures)."""

    __slots__ = ("kind", "field", "exact", "ddof", "stddev")

    def __init__(self, kind, field=None, exact=False, ddof=1, stddev=False):
        _check_field(field)
        self.kind, self.field, self.exact, self.ddof, self.stddev = (
            kind, field, exact, ddof, stddev)

    def __getstate__(self):
        return (self.kind, self.field, self.exact, self.ddof, self.stddev)

    def __setstate__(self, state):
        self.kind, self.field, self.exact, self.ddof, self.stddev = state

    # -- partial -------------------------------------------------------------------------

    # With a field the accumulator is ``(acc, seen)``: ``seen`` (see field_seen) tells, at
    # finalize, a field no record has from one some records lack.

    def partial(self, shard):
        kind = self.kind
        if self.field is None:
            if kind == "count":
                if isinstance(shard, np.ndarray):
                    return int(shard.size)
                return sum(1 for _ in shard)
            return self._of_numbers(*numbers(shard))
        ints, floats, seen = _numbers_seen(shard, self.field)
        return (self._of_numbers(ints, floats), seen)

    def _of_numbers(self, ints, floats):
        kind = self.kind
        if kind == "count":
            return len(ints) + len(floats)
        if kind == "sum":
            return self._sum(ints, floats)
        if kind == "mean":
            return (self._sum(ints, floats), len(ints) + len(floats))
        if kind == "variance":
            if self.exact:
                m = ExactMoments()
                m.add_ints(ints)
                m.add_floats(floats)
                return m
            return moments(ints, floats)
        return _extreme(ints, floats, kind == "min")

    def _sum(self, ints, floats):
        if self.exact:
            s = ExactSum()
            s.add_ints(ints)
            s.add_floats(floats)
            return s
        whole = sum(ints)
        if len(floats):
            return whole + math.fsum(floats)
        return whole

    # -- combine -------------------------------------------------------------------------

    def combine(self, a, b):
        if self.field is None:
            return self._combine(a, b)
        return (self._combine(a[0], b[0]), merge_seen(a[1], b[1]))

    def _combine(self, a, b):
        kind = self.kind
        if kind in ("count",):
            return a + b
        if kind == "sum":
            return a.merge(b) if self.exact else a + b
        if kind == "mean":
            s = a[0].merge(b[0]) if self.exact else a[0] + b[0]
            return (s, a[1] + b[1])
        if kind == "variance":
            return a.merge(b) if self.exact else merge_moments(a, b)
        return _pick(a, b, kind == "min")

    # -- finalize ------------------------------------------------------------------------

    def finalize(self, acc):
        if self.field is None:
            return self._finalize(acc)
        require_seen(acc[1], self.field)
        return self._finalize(acc[0])

    def _finalize(self, acc):
        kind = self.kind
        if kind == "sum":
            return acc.value() if self.exact else acc
        if kind == "mean":
            s, n = acc
            if n == 0:
                return None
            if self.exact:
                return s.divided(n)
            return s / n
        if kind == "variance":
            if self.exact:
                return acc.variance(self.ddof, self.stddev)
            n, _mean, m2 = acc
            if n - self.ddof <= 0:
                return None
            var = m2 / (n - self.ddof)
            return math.sqrt(var) if self.stddev else var
        return acc


def moments(ints, floats):
    """``(n, mean, M2)`` of some numbers (two passes, for accuracy). Cost: O(n).

    ``M2`` is the sum of squared deviations from the mean.

    >>> moments([1, 2], [3.0])
    (3, 2.0, 2.0)
    """
    if len(ints) and len(floats):
        arr = np.concatenate((np.asarray(ints, dtype=np.float64), floats))
    elif len(ints):
        arr = np.asarray(ints, dtype=np.float64)
    else:
        arr = np.asarray(floats, dtype=np.float64)
    n = int(arr.size)
    if n == 0:
        return (0, 0.0, 0.0)
    mu = math.fsum(arr.tolist()) / n
    dev = arr - mu
    return (n, mu, float(np.dot(dev, dev)))


def merge_moments(a, b):
    """Chan et al.'s merge of two ``(n, mean, M2)`` triples. Cost: O(1).

    >>> merge_moments((2, 1.5, 0.5), (2, 3.5, 0.5)) == moments([1, 2, 3, 4], [])
    True
    """
    na, ma, m2a = a
    nb, mb, m2b = b
    if nb == 0:
        return a
    if na == 0:
        return b
    n = na + nb
    delta = mb - ma
    return (n, ma + delta * (nb / n), m2a + m2b + delta * delta * (na * nb / n))


def _tiebreak(x, smallest):
    is_float = isinstance(x, float)
    sign = is_float and math.copysign(1.0, x) < 0
    return (is_float, not sign if smallest else sign)


def _pick(a, b, smallest):
    """The min (or max) of two accumulators, ``None`` meaning no value, NaN winning."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, float) and math.isnan(a):
        return a
    if isinstance(b, float) and math.isnan(b):
        return math.nan
    if a == b:
        return min(a, b, key=lambda x: _tiebreak(x, smallest))
    if smallest:
        return b if b < a else a
    return b if b > a else a


def _extreme(ints, floats, smallest):
    if len(floats):
        floats = np.asarray(floats, dtype=np.float64)
        if bool(np.isnan(floats).any()):
            return math.nan
        f = float(floats.min() if smallest else floats.max())
        if f == 0.0:  # numpy does not say which zero it found
            zeros = floats[floats == 0.0]
            neg = bool(np.signbit(zeros).any()) if smallest else not bool(
                (~np.signbit(zeros)).any())
            f = -0.0 if neg else 0.0
        best = f
    else:
        best = None
    if ints:
        i = min(ints) if smallest else max(ints)
        best = i if best is None else _pick(i, best, smallest)
    return best


def _make(kind, label, **options):
    impl = _Basic(kind, **options)
    return Aggregator(impl.partial, impl.combine, impl.finalize, name=label)


def count(field=None):
    """Count records (``field=None``), or the non-null values of ``field``.

    Cost: O(records) per partial, O(1) per combine.

    >>> count().reduce([["a", ""], ["b"]])
    3
    >>> count(field="x").reduce([[{"x": 1}, {"x": None}, {}]])
    1
    """
    return _make("count", "count", field=field)


def total(field=None, exact=False):
    """The sum (catalog entry ``sum``); ``exact=True`` for a sharding-independent float sum.

    Cost: O(values) per partial; O(1) per combine (an exact sum: O(its few thousand bits)).
    An empty input sums to ``0``.

    >>> total().reduce([[1, 2], ["3"]])
    6
    >>> total(exact=True).reduce([[1e100, 1.0], [-1e100]])
    1.0
    """
    _check_bool("exact", exact)
    return _make("sum", "sum", field=field, exact=exact)


def minimum(field=None):
    """The smallest value (catalog entry ``min``), ``None`` when there is none.

    Cost: O(values) per partial, O(1) per combine.

    >>> minimum().reduce([[3, 1.0], [1, 7]])
    1
    """
    return _make("min", "min", field=field)


def maximum(field=None):
    """The largest value (catalog entry ``max``), ``None`` when there is none.

    Cost: O(values) per partial, O(1) per combine.

    >>> maximum().reduce([[3, "9"], [], [-1]])
    9
    """
    return _make("max", "max", field=field)


def mean(field=None, exact=False):
    """The arithmetic mean, ``None`` when there are no values; ``exact=True`` rounds once.

    Cost: as :func:`total`. The accumulator is ``(sum, count)``; only finalize divides.

    >>> mean(exact=True).reduce([[0.1, 0.2], [0.3]])
    0.2
    """
    _check_bool("exact", exact)
    return _make("mean", "mean", field=field, exact=exact)


def variance(field=None, ddof=1, stddev=False, exact=False):
    """The variance (``stddev=True``: the standard deviation) by the parallel moments merge;
    ``exact=True`` for the correctly rounded variance, the same bits for every sharding.

    Cost: O(values) per partial, O(1) per combine (exact: about 5x the numpy passes of an
    exact sum per partial, O(a few thousand bits) per combine). ``ddof=1`` (default)
    divides by ``n - 1``, ``ddof=0`` by ``n``.

    >>> variance(ddof=0).reduce([[1, 2], [3, 4]])
    1.25
    >>> variance(stddev=True).reduce([[2, 4, 4, 4], [5, 5, 7, 9]])
    2.138089935299395
    >>> variance(exact=True).reduce([[1e16, 1.0], [-1e16, 3.0]])
    6.666666666666667e+31
    """
    if isinstance(ddof, bool) or not isinstance(ddof, int):
        raise TypeError(f"ddof must be an int, got {type(ddof).__name__}")
    if ddof < 0:
        raise ValueError(f"ddof must be >= 0, got {ddof}")
    _check_bool("stddev", stddev)
    _check_bool("exact", exact)
    return _make("variance", "stddev" if stddev else "variance", field=field, ddof=ddof,
                 stddev=stddev, exact=exact)


def _check_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def _summarize(value, params):
    return [repr(value)]


_FIELD = Flag("--field", type=str, default=None,
              help="take the number from this column / key (use with --format csv or jsonl)")
_EXACT = Flag("--exact", action="store_true", default=False,
              help="exact float summation: the same bits for every sharding")

ENTRIES = (
    Entry(name="count", summary="count records (or the non-null values of --field)",
          factory=count, flags=(_FIELD,), summarize=_summarize),
    Entry(name="sum", summary="sum numbers, optionally exactly (--exact)",
          factory=total, flags=(_FIELD, _EXACT), summarize=_summarize),
    Entry(name="min", summary="smallest number", factory=minimum, flags=(_FIELD,),
          summarize=_summarize),
    Entry(name="max", summary="largest number", factory=maximum, flags=(_FIELD,),
          summarize=_summarize),
    Entry(name="mean", summary="arithmetic mean, optionally exact (--exact)", factory=mean,
          flags=(_FIELD, _EXACT), summarize=_summarize),
    Entry(name="variance",
          summary="variance or standard deviation (--stddev), optionally exact (--exact)",
          factory=variance,
          flags=(_FIELD, _EXACT,
                 Flag("--ddof", type=int, default=1,
                      help="delta degrees of freedom: 1 sample (default), 0 population"),
                 Flag("--stddev", action="store_true", default=False,
                      help="report the standard deviation instead")),
          summarize=_summarize),
)
