"""Shared helpers of the keyed catalog entries: a dict of per-key accumulators, folded.

A keyed entry (inverted index, join, top-K by count, matrix multiply) is described by three
per-key pieces, which is what a keyed job (a shuffle by key, then a reduce per key) needs:

* a **map** from a shard to ``(key, value)`` pairs or to a dict key -> accumulator;
* a per-key **combine** ``(a, b) -> a`` (may modify and return ``a``, never modifies ``b``);
* a per-key **copy** (so a value taken from ``b`` never shares mutable state with ``b``)
  and an optional per-key **finalize**.

Until that job exists, :class:`KeyedFold` turns the three pieces into a plain
:class:`~mergeagg.aggregator.Aggregator` whose accumulator is one dict key -> accumulator.
:func:`order_key` is the deterministic total order the entries use to sort keys, rows and
ties (Python's ``<`` does not order ``None``, ``1`` and ``"a"`` together).

>>> fold = KeyedFold(lambda shard: fold_pairs((w, 1) for w in shard), lambda a, b: a + b)
>>> agg = fold.aggregator("counts")
>>> agg.reduce([["a", "b"], ["b"]])
{'a': 1, 'b': 2}
"""

from __future__ import annotations

import hashlib
import json
import math

from mergeagg.aggregator import Aggregator

__all__ = ["KeyedFold", "KeyedTable", "fold_pairs", "merge_into", "order_key",
           "sorted_by_key", "no_copy", "json_digest"]


def no_copy(value):
    """The copy of an immutable per-key accumulator: the value itself. Cost: O(1).

    >>> no_copy(3)
    3
    """
    return value


def fold_pairs(pairs, combine=None, into=None):
    """Fold ``(key, value)`` pairs into a dict, ``combine``-ing the values of a repeated key.

    Each value must be a fresh accumulator (it is stored, and later modified, as is).
    ``combine`` defaults to ``+``. Cost: one dict lookup and at most one combine per pair.

    >>> fold_pairs([("x", 1), ("y", 2), ("x", 3)])
    {'x': 4, 'y': 2}
    >>> fold_pairs([("x", [1]), ("x", [2])], lambda a, b: a + b, into={"z": [0]})
    {'z': [0], 'x': [1, 2]}
    """
    out = {} if into is None else into
    if combine is None:
        for key, value in pairs:
            if key in out:
                out[key] = out[key] + value
            else:
                out[key] = value
        return out
    for key, value in pairs:
        if key in out:
            out[key] = combine(out[key], value)
        else:
            out[key] = value
    return out


def merge_into(a, b, combine, copy=no_copy):
    """Merge dict ``b`` into dict ``a`` per key and return ``a``; ``b`` is left unchanged.

    A key only in ``b`` gets ``copy(b[key])``, so ``a`` never shares a mutable accumulator
    with ``b``. Cost: O(len(b)) lookups plus one combine per shared key.

    >>> a, b = {"x": [1]}, {"x": [2], "y": [3]}
    >>> merge_into(a, b, lambda u, v: u + v, list)
    {'x': [1, 2], 'y': [3]}
    >>> a["y"] is b["y"]
    False
    """
    for key, value in b.items():
        if key in a:
            a[key] = combine(a[key], value)
        else:
            a[key] = copy(value)
    return a


def _type_rank(x):
    if x is None:
        return 0
    if isinstance(x, (bool, int, float)):
        return 1
    if isinstance(x, str):
        return 2
    if isinstance(x, bytes):
        return 3
    if isinstance(x, tuple):
        return 4
    if isinstance(x, list):
        return 5
    if isinstance(x, dict):
        return 6
    return 7


def order_key(x):
    """A sort key giving one deterministic total order over mixed plain values.

    ``None`` first, then numbers by value (NaN after every other number; ``1`` and ``1.0``
    tie, ``-0.0`` and ``0.0`` too), then str, bytes, tuples, lists and dicts (dicts by their
    sorted items), then anything else by type name and ``repr``. Cost: O(size of ``x``).

    >>> sorted([3, "b", None, 1.5, "a", (1, 2)], key=order_key)
    [None, 1.5, 3, 'a', 'b', (1, 2)]
    >>> sorted([{"b": 1}, {"a": 2}], key=order_key)
    [{'a': 2}, {'b': 1}]
    """
    rank = _type_rank(x)
    if rank == 0:
        return (0,)
    if rank == 1:
        if isinstance(x, float) and math.isnan(x):
            return (1, 1, 0)
        return (1, 0, x)
    if rank in (2, 3):
        return (rank, x)
    if rank in (4, 5):
        return (rank, tuple(order_key(v) for v in x))
    if rank == 6:
        items = sorted(((order_key(k), order_key(v)) for k, v in x.items()))
        return (6, tuple(items))
    return (7, type(x).__qualname__, repr(x))


def sorted_by_key(mapping, finalize=None):
    """A new dict of ``mapping``'s items in :func:`order_key` order of the keys.

    ``finalize``, when given, is applied to each value. Cost: O(n log n).

    >>> sorted_by_key({"b": 2, None: 0, "a": 1})
    {None: 0, 'a': 1, 'b': 2}
    """
    keys = sorted(mapping, key=order_key)
    if finalize is None:
        return {k: mapping[k] for k in keys}
    return {k: finalize(mapping[k]) for k in keys}


def json_digest(tag, value):
    """A stand-in for ``value`` in a fingerprint: ``tag`` and its canonical JSON (the JSON's
    SHA-256 when it is longer than 4 KiB).

    Only for values that JSON renders exactly — dicts with str keys, lists, str, int,
    float, bool and None (``1``, ``1.0``, ``true`` and ``"1"`` all differ) — where it is
    many times faster than fingerprinting many small containers one by one. Cost: one
    ``json.dumps`` (C speed), and one SHA-256 of its text when it is long.

    >>> json_digest("t", {"b": [1], "a": "x"}) == json_digest("t", {"a": "x", "b": [1]})
    True
    """
    text = _JSON.encode(value)
    if len(text) <= 4096:
        return (tag, text)  # small: the fingerprint hashes the text itself
    return (tag, hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest())


_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"))


_SCALARS = frozenset((str, int, float, bool, type(None)))


def _json_exact_lists(table):
    for key, value in table.items():
        if type(key) is not str or type(value) is not list:
            return False
        if not _SCALARS.issuperset(map(type, value)):
            return False
    return True


class KeyedTable:
    """The accumulator of a :class:`KeyedFold`: a dict key -> per-key accumulator.

    It is a thin wrapper so that it can fingerprint fast: a table of str keys to lists of
    JSON scalars (an inverted index's postings) stands in its canonical JSON's SHA-256;
    any other table fingerprints as its dict. Cost of the fingerprint: one ``json.dumps``.

    >>> t = KeyedTable({"w": [1, 2]})
    >>> t.data, len(t)
    ({'w': [1, 2]}, 1)
    """

    __slots__ = ("data",)

    def __init__(self, data=None):
        self.data = {} if data is None else data

    def __len__(self):
        return len(self.data)

    def __eq__(self, other):
        if not isinstance(other, KeyedTable):
            return NotImplemented
        return self.data == other.data

    __hash__ = None

    def __getstate__(self):
        return self.data

    def __setstate__(self, state):
        self.data = state

    def __mergeagg_fingerprint__(self):
        if _json_exact_lists(self.data):
            return json_digest("KeyedTable", self.data)
        return self.data

    def __repr__(self):
        return f"KeyedTable({self.data!r:.200})"


class KeyedFold:
    """The Aggregator of a keyed entry, before keyed jobs exist: one dict of accumulators.

    ``map_shard(shard) -> dict`` builds one shard's dict of fresh per-key accumulators;
    ``combine(a, b)`` merges two per-key accumulators (may modify ``a``); ``copy`` copies
    one taken from the second operand; ``finalize`` presents each, and the result is a dict
    in :func:`order_key` order of the keys. Picklable when its functions are.

    Cost: the map, plus O(keys of the smaller side) per combine, plus a sort of the keys.

    >>> fold = KeyedFold(lambda s: {x % 2: [x] for x in s}, lambda a, b: a + b, copy=list,
    ...                  finalize=sorted)
    >>> fold.aggregator("parity").reduce([[1, 2], [3, 4, 6]])
    {0: [2, 6], 1: [1, 3]}
    """

    __slots__ = ("map_shard", "combine_value", "copy_value", "finalize_value")

    def __init__(self, map_shard, combine, *, copy=no_copy, finalize=None):
        for label, fn in (("map_shard", map_shard), ("combine", combine), ("copy", copy)):
            if not callable(fn):
                raise TypeError(f"KeyedFold {label} must be callable, got {type(fn).__name__}")
        if finalize is not None and not callable(finalize):
            raise TypeError(f"KeyedFold finalize must be callable or None, "
                            f"got {type(finalize).__name__}")
        self.map_shard = map_shard
        self.combine_value = combine
        self.copy_value = copy
        self.finalize_value = finalize

    def __getstate__(self):
        return (self.map_shard, self.combine_value, self.copy_value, self.finalize_value)

    def __setstate__(self, state):
        self.map_shard, self.combine_value, self.copy_value, self.finalize_value = state

    def partial(self, shard):
        """The shard's :class:`KeyedTable` of per-key accumulators. Cost: the map's.

        >>> KeyedFold(lambda s: {x: 1 for x in s}, max).partial("ab")
        KeyedTable({'a': 1, 'b': 1})
        """
        return KeyedTable(self.map_shard(shard))

    def combine(self, a, b):
        """Merge table ``b`` into table ``a`` per key; ``b`` is unchanged.

        Cost: O(len(b)) lookups plus one per-key combine per shared key.

        >>> f = KeyedFold(dict, max)
        >>> f.combine(KeyedTable({"a": 1}), KeyedTable({"a": 3, "b": 2}))
        KeyedTable({'a': 3, 'b': 2})
        """
        merge_into(a.data, b.data, self.combine_value, self.copy_value)
        return a

    def finalize(self, acc):
        """The result dict, keys in :func:`order_key` order, each value finalized.

        Cost: O(n log n) for the sort plus one per-key finalize per key.

        >>> KeyedFold(dict, max, finalize=str).finalize(KeyedTable({"b": 1, "a": 2}))
        {'a': '2', 'b': '1'}
        """
        return sorted_by_key(acc.data, self.finalize_value)

    def aggregator(self, name):
        """This fold as an :class:`~mergeagg.aggregator.Aggregator` called ``name``. Cost: O(1).

        >>> KeyedFold(dict, max).aggregator("m")
        Aggregator(m)
        """
        return Aggregator(self.partial, self.combine, self.finalize, name=name)
