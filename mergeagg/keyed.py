"""Keyed jobs: the partial emits ``key -> value`` and ``combine`` runs per key.

A :class:`KeyedJob` is the MapReduce shape of a mergeable aggregation (word count, inverted
index, joins, PageRank): ``map(shard)`` yields ``(key, value)`` pairs (or returns a
mapping), ``combine(a, b)`` merges two values of one key (associative and commutative,
and, as for :class:`~mergeagg.Aggregator`, it may modify and return ``a`` but never
modifies ``b``), and ``finalize(acc)`` (optional) runs once per key at the end.

Run it with :func:`mergeagg.run` like a fold job; the runtime combines on the map side,
shuffles by a stable hash of each key into ``partitions`` reduce partitions through
checksummed spill files, and merges each partition per key (see ``docs/shuffle.md``).

The per-key combine order is fixed: with the map-side combiner on, each map task folds its
own records left to right and the reducer folds the map outputs in split order; with it
off, every value of a key is folded in input order. Neither the number of partitions, nor
spills, nor worker counts, failures or backups change that order, so even float
accumulators give the same bytes for a fixed split layout.

>>> job = KeyedJob(lambda lines: ((w, 1) for l in lines for w in l.split()),
...                lambda a, b: a + b)
>>> sorted(job.reduce([["a b a"], ["b"]]).items())
[('a', 2), ('b', 2)]
"""

from __future__ import annotations

from collections.abc import Mapping

from mergeagg.aggregator import identity

__all__ = ["KeyedJob", "pairs_of"]


def pairs_of(mapped, where="map"):
    """The ``(key, value)`` pairs of what a map function returned (pairs or a mapping).

    >>> list(pairs_of({"a": 1}))
    [('a', 1)]
    """
    if isinstance(mapped, Mapping):
        return iter(mapped.items())
    if isinstance(mapped, (str, bytes)) or mapped is None:
        raise TypeError(
            f"{where} must return (key, value) pairs or a mapping, got "
            f"{type(mapped).__name__}"
        )
    return iter(mapped)


class KeyedJob:
    """A keyed aggregation: ``map``, a per-key ``combine`` and an optional ``finalize``.

    Cost: one ``map`` per split, one ``combine`` per value after a key's first (on the
    map side with the combiner, then once per map output on the reduce side), one
    ``finalize`` per key.
    """

    __slots__ = ("map", "combine", "finalize", "name")

    def __init__(self, map, combine, finalize=None, *, name=None):  # noqa: A002
        for label, fn in (("map", map), ("combine", combine)):
            if not callable(fn):
                raise TypeError(f"KeyedJob {label} must be callable, got {type(fn).__name__}")
        if finalize is not None and not callable(finalize):
            raise TypeError(f"KeyedJob finalize must be callable or None, got "
                            f"{type(finalize).__name__}")
        self.map = map
        self.combine = combine
        self.finalize = identity if finalize is None else finalize
        self.name = name or getattr(map, "__name__", "keyed")

    def map_table(self, shard):
        """The map side's combined table of one shard: ``{key: acc}``, folded in order."""
        table = {}
        combine = self.combine
        for key, value in pairs_of(self.map(shard)):
            if key in table:
                table[key] = combine(table[key], value)
            else:
                table[key] = value
        return table

    def reduce(self, shards, combiner=True):
        """The plain-loop reference: ``{key: finalize(acc)}`` over ``shards`` in order.

        With ``combiner=True`` each shard is folded per key first and the shards' tables
        are then folded per key in shard order (what the runtime does with the map-side
        combiner); with ``False`` every value is folded in input order.
        """
        out = {}
        combine = self.combine
        for shard in shards:
            source = (self.map_table(shard).items() if combiner
                      else pairs_of(self.map(shard)))
            for key, value in source:
                if key in out:
                    out[key] = combine(out[key], value)
                else:
                    out[key] = value
        finalize = self.finalize
        if finalize is identity:
            return out
        return {k: finalize(v) for k, v in out.items()}

    def __getstate__(self):
        return (self.map, self.combine, self.finalize, self.name)

    def __setstate__(self, state):
        self.map, self.combine, self.finalize, self.name = state

    def __repr__(self):
        return f"KeyedJob({self.name})"
