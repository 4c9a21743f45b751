"""The whole contract: ``Aggregator(partial, combine, finalize=None)``.

``partial(shard) -> acc`` runs once per input shard (any iterable of records).
``combine(a, b) -> acc`` merges two accumulators; it must be **associative** and
**commutative**, so that mergeagg may split the input any way, fold the partials in any tree,
re-run any task and race backups without changing the answer. ``finalize(acc) -> result``
runs once, on the root (an average keeps ``(sum, count)`` and divides only there).

Ownership (which operand ``combine`` may mutate), written down as Beam's CombineFn does:

* ``combine`` **may modify its first argument in place and return it**;
* it **must not modify its second argument**, and must not return an object that shares
  mutable state with the second argument (return ``a`` updated, or a new value);
* the runtime passes every accumulator to at most one ``combine`` as the first argument and
  never reads it again afterwards; a value it must keep (a task output that a retry or a
  backup may need again) it keeps serialised, handing each combine a fresh copy.

:func:`mergeagg.laws.check` tests both rules on your own aggregator.

So ``lambda a, b: a + b`` and ``def merge(a, b): a.update(b); return a`` are both fine.

>>> from collections import Counter
>>> wc = Aggregator(lambda lines: Counter(w for l in lines for w in l.split()),
...                 lambda a, b: a + b)
>>> wc.finalize(wc.combine(wc.partial(["a b"]), wc.partial(["b"])))
Counter({'b': 2, 'a': 1})
"""

from __future__ import annotations

__all__ = ["Aggregator", "product", "identity"]


def identity(acc):
    """Return ``acc`` unchanged: the default ``finalize``.

    >>> identity(3)
    3
    """
    return acc


class Aggregator:
    """A mergeable aggregation: ``partial``, ``combine`` and an optional ``finalize``.

    Cost: whatever the three functions cost; the runtime calls ``partial`` once per shard,
    ``combine`` once per tree edge (n - 1 times for n shards) and ``finalize`` once.

    >>> total = Aggregator(sum, lambda a, b: a + b)
    >>> total.reduce([[1, 2], [3], []])
    6
    >>> mean = Aggregator(lambda xs: (sum(xs), len(xs)),
    ...                   lambda a, b: (a[0] + b[0], a[1] + b[1]),
    ...                   lambda acc: acc[0] / acc[1])
    >>> mean.reduce([[1, 2], [3, 6]])
    3.0
    """

    __slots__ = ("partial", "combine", "finalize", "name")

    def __init__(self, partial, combine, finalize=None, *, name=None):
        for label, fn in (("partial", partial), ("combine", combine)):
            if not callable(fn):
                raise TypeError(f"Aggregator {label} must be callable, got {type(fn).__name__}")
        if finalize is not None and not callable(finalize):
            raise TypeError(
                f"Aggregator finalize must be callable or None, got {type(finalize).__name__}"
            )
        self.partial = partial
        self.combine = combine
        self.finalize = identity if finalize is None else finalize
        self.name = name or getattr(partial, "__name__", "aggregator")

    def reduce(self, shards):
        """Run the aggregation in a plain loop, left to right: the simplest reference.

        Cost: one ``partial`` per shard, ``len(shards) - 1`` combines. Raises
        ``ValueError`` for no shards (a monoid needs at least one partial here).

        >>> Aggregator(max, max).reduce([[3, 1], [2]])
        3
        """
        acc = _NOTHING
        for shard in shards:
            p = self.partial(shard)
            acc = p if acc is _NOTHING else self.combine(acc, p)
        if acc is _NOTHING:
            raise ValueError("reduce needs at least one shard")
        return self.finalize(acc)

    def __getstate__(self):
        return (self.partial, self.combine, self.finalize, self.name)

    def __setstate__(self, state):
        self.partial, self.combine, self.finalize, self.name = state

    def __repr__(self):
        return f"Aggregator({self.name})"


_NOTHING = object()


class _Product:
    """The partial/combine/finalize of several aggregators run in one pass (picklable)."""

    __slots__ = ("parts", "names")

    def __init__(self, parts, names):
        self.parts = tuple(parts)
        self.names = names

    def __getstate__(self):
        return (self.parts, self.names)

    def __setstate__(self, state):
        self.parts, self.names = state

    def partial(self, shard):
        # Every component must see the same records, so a one-shot iterator (a generator,
        # a file object) is read into a list once. Anything that can be iterated again (a
        # list, an ndarray, a text split with its fast ``text()``) is passed as it is.
        records = list(shard) if iter(shard) is shard else shard
        return tuple(agg.partial(records) for agg in self.parts)

    def combine(self, a, b):
        return tuple(agg.combine(x, y) for agg, x, y in zip(self.parts, a, b))

    def finalize(self, acc):
        values = tuple(agg.finalize(x) for agg, x in zip(self.parts, acc))
        if self.names is None:
            return values
        return dict(zip(self.names, values))


def product(*aggregators, **named):
    """Several aggregators in one pass over the data.

    Positional aggregators give a tuple of results, keyword ones a dict keyed by name
    (mixing the two is a ``TypeError``). Each shard is read once and handed to every
    component; the accumulator is the tuple of the components' accumulators. Cost: the sum
    of the components' costs, plus, when a shard is a one-shot iterator, making it a list.

    >>> count = Aggregator(len, lambda a, b: a + b)
    >>> biggest = Aggregator(max, max)
    >>> product(count, biggest).reduce([[4, 1], [7]])
    (3, 7)
    >>> product(n=count, top=biggest).reduce([[4, 1], [7]])
    {'n': 3, 'top': 7}
    """
    if aggregators and named:
        raise TypeError("product takes aggregators either all positional or all by name")
    if not aggregators and not named:
        raise TypeError("product needs at least one aggregator")
    names = tuple(named) if named else None
    parts = tuple(named.values()) if named else aggregators
    for i, agg in enumerate(parts):
        if not isinstance(agg, Aggregator):
            where = names[i] if names else f"position {i}"
            raise TypeError(f"product: {where} is a {type(agg).__name__}, not an Aggregator")
    prod = _Product(parts, names)
    label = ", ".join(names) if names else ", ".join(a.name for a in parts)
    return Aggregator(prod.partial, prod.combine, prod.finalize, name=f"product({label})")
