"""Exact top-K: the K largest (or smallest) values, or the K most frequent items.

``by="value"`` ranks numbers (records parsed as in :mod:`~mergeagg.algorithms.basic`), or,
with ``field=NAME``, whole mapping records by their ``NAME`` number. The accumulator is the
best K seen so far, in rank order; ``combine`` merges two such lists and keeps K (a
mergeable bounded heap). NaN and nulls are skipped. As in ``basic``, a ``field`` that a CSV
header lacks, or that no record has as a key, is an error (with a field the accumulator
carries that evidence beside the heap or the counts), not an empty answer.

``by="count"`` counts items — records (lines), the ``field`` of mapping records, or, with
``words=True``, the whitespace-separated words of text lines — with a keyed count
(``Counter`` per shard, added per key), and finalize keeps the K most frequent. On a keyed
job the same pieces split in two: the per-key count, then :func:`top_of_counts` on each
reduce partition and :func:`merge_top` over the partitions (their keys are disjoint).

Ties are broken by a fixed total order, never by arrival: for values, the int before the
equal float and then the record in :func:`~mergeagg.algorithms._keyed.order_key` order; for
counts, the item in ``order_key`` order. So the answer does not depend on the sharding.

>>> topk(3).reduce([[5, 1, 9], [7, 9.0]])
[9, 9.0, 7]
>>> topk(2, smallest=True, field="t").reduce([[{"t": 3, "id": "b"}], [{"t": 3, "id": "a"}]])
[{'t': 3, 'id': 'a'}, {'t': 3, 'id': 'b'}]
>>> topk(2, by="count", words=True).reduce([["a b a"], ["c b a"]])
[('a', 3), ('b', 2)]
"""

from __future__ import annotations

import heapq
import math
from collections import Counter

from mergeagg.aggregator import Aggregator
from mergeagg.algorithms._keyed import order_key
from mergeagg.algorithms.basic import field_of, field_seen, merge_seen, require_seen, to_number
from mergeagg.algorithms.registry import Entry, Flag
from mergeagg.errors import RecordShapeError
from mergeagg.inputs import require_column

__all__ = ["topk", "items_of", "count_items", "top_of_counts", "merge_top", "value_rank"]


def items_of(shard, field=None, words=False):
    """The items of a shard: its records, their ``field``, or the words of its lines.

    Nulls (``None``, a missing field) are skipped; a ``field`` that a CSV file's header
    lacks, or a record that is not a mapping, is an error at once. Cost: O(size of the
    shard).

    >>> list(items_of(["x y", "x"], words=True))
    ['x', 'y', 'x']
    >>> list(items_of([{"u": 1}, {"v": 2}], field="u"))
    [1]
    """
    if words:
        if field is not None:
            raise TypeError("items_of takes field= or words=True, not both")
        text_of = getattr(shard, "text", None)
        if text_of is not None:
            return text_of().split()
        return [w for line in shard for w in line.split()]
    if field is None:
        return shard
    return _values_seen(shard, field)[0]


def _values_seen(shard, field):
    """``(non-null values of field, seen)``, ``seen`` as ``basic.field_seen``."""
    require_column(shard, field)
    values, missing = [], []
    for record in shard:
        value = field_of(record, field)
        if value is not None:
            values.append(value)
        elif not values:
            missing.append(record)
    return values, (True if values else field_seen(missing, field))


def count_items(shard, field=None, words=False):
    """A Counter of the shard's items: the per-shard map of a keyed count. Cost: O(items).

    >>> count_items(["a", "b", "a"])
    Counter({'a': 2, 'b': 1})
    >>> count_items([{"k": "a"}])
    Traceback (most recent call last):
    ...
    mergeagg.errors.RecordShapeError: cannot count a dict record ... --field NAME ...
    """
    items = items_of(shard, field, words)
    try:
        return Counter(items)
    except TypeError:
        bad = next((x for x in items if not _hashable(x)), None)
        raise RecordShapeError(
            f"cannot count a {type(bad).__name__} record ({bad!r:.60}): items to count must "
            "be hashable; count a column or key with --field NAME (field= in Python), or "
            "read the file as text lines with --format text") from None


def _hashable(x):
    try:
        hash(x)
    except TypeError:
        return False
    return True


def _count_rank(kv):
    return (-kv[1], order_key(kv[0]))


def top_of_counts(counts, k):
    """The ``k`` most frequent ``(item, count)`` pairs, ties by item. Cost: O(n log k).

    >>> top_of_counts({"b": 2, "a": 2, "c": 5}, 2)
    [('c', 5), ('a', 2)]
    """
    return heapq.nsmallest(k, counts.items(), key=_count_rank)


def merge_top(a, b, k):
    """Merge two top lists of ``(item, count)`` over disjoint items, keeping ``k``.

    Cost: O(k log k).

    >>> merge_top([("a", 3)], [("b", 4), ("c", 1)], 2)
    [('b', 4), ('a', 3)]
    """
    return heapq.nsmallest(k, [*a, *b], key=_count_rank)


def _type_tie(x):
    return isinstance(x, float)


def value_rank(value, record=None, smallest=False):
    """The rank key of a value (and its record): best first when sorted ascending.

    Cost: O(1), or O(size of the record) with a record.

    >>> sorted([2, 5.0, 5], key=value_rank)
    [5, 5.0, 2]
    """
    head = value if smallest else -value
    if record is None:
        return (head, _type_tie(value))
    return (head, _type_tie(value), order_key(record))


class _TopValues:
    """The bounded heap of top-K by value (picklable, no closures)."""

    __slots__ = ("k", "field", "smallest")

    def __init__(self, k, field, smallest):
        self.k, self.field, self.smallest = k, field, smallest

    def __getstate__(self):
        return (self.k, self.field, self.smallest)

    def __setstate__(self, state):
        self.k, self.field, self.smallest = state

    def _key(self, item):
        if self.field is None:
            return value_rank(item, None, self.smallest)
        return value_rank(to_number(item[self.field]), item, self.smallest)

    def partial(self, shard):
        if self.field is None:
            candidates = []
            for record in shard:
                x = to_number(record)
                if x is None or (isinstance(x, float) and math.isnan(x)):
                    continue
                candidates.append(x)
            return heapq.nsmallest(self.k, candidates, key=self._key)
        # With a field the accumulator is (top records, seen): see basic.field_seen.
        field = self.field
        require_column(shard, field)
        candidates, missing, present = [], [], False
        for record in shard:
            value = field_of(record, field)
            if value is None:
                if not present:
                    missing.append(record)
                continue
            present = True
            x = to_number(value)
            if x is None or (isinstance(x, float) and math.isnan(x)):
                continue
            candidates.append(record)
        seen = True if present else field_seen(missing, field)
        return (heapq.nsmallest(self.k, candidates, key=self._key), seen)

    def combine(self, a, b):
        if self.field is None:
            return heapq.nsmallest(self.k, [*a, *b], key=self._key)
        return (heapq.nsmallest(self.k, [*a[0], *b[0]], key=self._key), merge_seen(a[1], b[1]))

    def finalize(self, acc):
        top, seen = acc
        require_seen(seen, self.field)
        return top


class _TopCounts:
    """Keyed count, then the K most frequent (picklable, no closures)."""

    __slots__ = ("k", "field", "words")

    def __init__(self, k, field, words):
        self.k, self.field, self.words = k, field, words

    def __getstate__(self):
        return (self.k, self.field, self.words)

    def __setstate__(self, state):
        self.k, self.field, self.words = state

    # With a field the accumulator is (counts, seen): see basic.field_seen.

    def partial(self, shard):
        if self.field is None:
            return count_items(shard, None, self.words)
        values, seen = _values_seen(shard, self.field)
        return (count_items(values), seen)

    def combine(self, a, b):
        if self.field is None:
            a.update(b)
            return a
        a[0].update(b[0])
        return (a[0], merge_seen(a[1], b[1]))

    def finalize(self, counts):
        if self.field is not None:
            counts, seen = counts
            require_seen(seen, self.field)
        return top_of_counts(counts, self.k)


def topk(k=10, by="value", field=None, smallest=False, words=False):
    """The exact top ``k``: a list, best first (``by="count"``: ``(item, count)`` pairs).

    Cost by value: O(n log k) per partial, O(k log k) per combine, memory O(k).
    Cost by count: O(n) per partial, O(distinct items) per combine and memory, O(d log k)
    to finalize. Raises ``ValueError`` for ``k < 1`` or an unknown ``by``.

    >>> topk(2, by="count").reduce([["x", "y"], ["y"]])
    [('y', 2), ('x', 1)]
    """
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if by not in ("value", "count"):
        raise ValueError(f"by must be 'value' or 'count', got {by!r}")
    if field is not None and not isinstance(field, str):
        raise TypeError(f"field must be a str or None, got {type(field).__name__}")
    if words and field is not None:
        raise TypeError("topk takes field= or words=True, not both")
    if by == "value":
        if words:
            raise ValueError("words=True counts words; use it with by='count'")
        impl = _TopValues(k, field, smallest)
        if field is None:
            return Aggregator(impl.partial, impl.combine, name=f"top{k}")
        return Aggregator(impl.partial, impl.combine, impl.finalize, name=f"top{k}")
    if smallest:
        raise ValueError("smallest=True ranks values; with by='count' the most frequent win")
    impl = _TopCounts(k, field, words)
    return Aggregator(impl.partial, impl.combine, impl.finalize, name=f"top{k}-by-count")


def _summarize(value, params):
    lines = []
    for item in value:
        if params.get("by") == "count":
            lines.append(f"{item[1]:>10}  {item[0]}")
        else:
            lines.append(repr(item))
    return lines


ENTRY = Entry(
    name="topk",
    summary="exact top-K values (or most frequent items with --by count)",
    factory=topk,
    flags=(
        Flag("--k", type=int, default=10, help="how many to keep (default 10)"),
        Flag("--by", default="value", choices=("value", "count"),
             help="rank numbers by value, or items by how often they occur"),
        Flag("--field", type=str, default=None, help="rank / count this column or key"),
        Flag("--smallest", action="store_true", default=False,
             help="the K smallest values instead of the largest"),
        Flag("--words", action="store_true", default=False,
             help="with --by count: count whitespace-separated words, not whole lines"),
    ),
    summarize=_summarize,
)
