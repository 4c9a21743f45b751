"""Approximate heavy hitters with a mergeable Misra–Gries summary of ``k`` counters.

The guarantee (Misra & Gries 1982; the merge is Agarwal et al., "Mergeable Summaries",
2012): after any number of updates and merges over a stream of ``n`` items, for every item

    estimate(item) <= true count <= estimate(item) + max_error,
    max_error = floor((n - sum of counters) / (k + 1)) <= n / (k + 1).

So every item occurring more than ``n / (k + 1)`` times has a positive estimate and is
reported. With ``phi`` (which must exceed ``1 / (k + 1)``, so that an item without a counter
is certainly below ``phi * n``), the result keeps the items whose upper bound reaches
``phi * n``: no item with ``phi * n`` or more occurrences is left out, and every reported
item occurs at least ``phi * n - max_error`` times. Memory: at most ``k`` counters (plus
one chunk of 65,536 items while a shard is counted).

A merge adds the two summaries' counters and, if more than ``k`` remain, subtracts the
``(k+1)``-th largest counter from all of them and drops those not above zero. That step
depends on values only, never on the order of items or ties, so a run gives the same bytes
whatever fails, retries or races. Different split layouts (or fan-ins) can give different
summaries — each within the guarantee. The reported list is sorted by estimate, ties by
item (:func:`~mergeagg.algorithms._keyed.order_key`).

>>> hh = heavyhitters(k=2).reduce([["a", "a", "b"], ["a", "c", "a", "d"]])
>>> hh.items[0], hh.n, hh.max_error
(('a', 3, 4), 7, 1)
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from dataclasses import dataclass
from itertools import islice

from mergeagg.aggregator import Aggregator
from mergeagg.algorithms._keyed import order_key
from mergeagg.algorithms.registry import Entry, Flag
from mergeagg.algorithms.topk import items_of
from mergeagg.errors import IncompatibleMergeError

__all__ = ["heavyhitters", "MisraGries", "HeavyHitters"]

_CHUNK = 1 << 16


class MisraGries:
    """A Misra–Gries summary with ``k`` counters: mergeable, deterministic, O(k) memory.

    Cost: O(n) per update of n items (a Counter per chunk, then an O(k + chunk) prune),
    O(k) per merge. Error: see :attr:`max_error`, at most ``n / (k + 1)``.

    >>> s = MisraGries(1)
    >>> s.update("aab")
    >>> s.counters, s.n, s.max_error
    ({'a': 1}, 3, 1)
    """

    __slots__ = ("k", "counters", "n")

    def __init__(self, k):
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"k must be an int, got {type(k).__name__}")
        if k < 1:
            raise ValueError(f"k must be at least 1 counter, got {k}")
        self.k = k
        self.counters = {}
        self.n = 0

    def update(self, items):
        """Count an iterable of hashable items. Cost: O(len(items)).

        >>> s = MisraGries(2); s.update(["x", "y", "x"]); s.counters
        {'x': 2, 'y': 1}
        """
        it = iter(items)
        while True:
            chunk = Counter(islice(it, _CHUNK))
            if not chunk:
                return
            self.n += sum(chunk.values())
            counters = self.counters
            for item, c in chunk.items():
                counters[item] = counters.get(item, 0) + c
            self._prune()

    def merge(self, other):
        """Merge ``other`` into this summary and return this one (``other`` is unchanged).

        Raises :class:`~mergeagg.errors.IncompatibleMergeError` if the ``k`` differ.
        Cost: O(k) (a partial selection of the (k+1)-th largest counter).

        >>> a, b = MisraGries(1), MisraGries(1)
        >>> a.update("aab"); b.update("bbc")
        >>> a.merge(b).counters, a.n, a.max_error
        ({}, 6, 3)
        """
        if not isinstance(other, MisraGries):
            raise TypeError(f"MisraGries.merge takes a MisraGries, got {type(other).__name__}")
        if other.k != self.k:
            raise IncompatibleMergeError(
                f"cannot merge Misra-Gries summaries with different k: {self.k} != {other.k}; "
                "build both with the same number of counters")
        counters = self.counters
        for item, c in other.counters.items():
            counters[item] = counters.get(item, 0) + c
        self.n += other.n
        self._prune()
        return self

    def _prune(self):
        if len(self.counters) <= self.k:
            return
        cut = heapq.nlargest(self.k + 1, self.counters.values())[-1]
        self.counters = {x: c - cut for x, c in self.counters.items() if c > cut}

    @property
    def max_error(self):
        """How far below its true count any item's estimate may be (an int). Cost: O(k).

        >>> s = MisraGries(3); s.update("abc"); s.max_error
        0
        """
        return (self.n - sum(self.counters.values())) // (self.k + 1)

    def estimate(self, item):
        """A lower bound of ``item``'s count (0 if it has no counter). Cost: O(1).

        >>> s = MisraGries(1); s.update("aab"); s.estimate("a"), s.estimate("b")
        (1, 0)
        """
        return self.counters.get(item, 0)

    def _check(self):
        """Assert every invariant (used by the tests after each mutation)."""
        assert len(self.counters) <= self.k, "more counters than k"
        assert all(c > 0 for c in self.counters.values()), "a counter is not positive"
        assert sum(self.counters.values()) <= self.n, "counters exceed the stream length"

    def __getstate__(self):
        return (self.k, self.counters, self.n)

    def __setstate__(self, state):
        self.k, self.counters, self.n = state

    def __mergeagg_fingerprint__(self):
        return ("MisraGries", self.k, self.n, self.counters)

    def __eq__(self, other):
        if not isinstance(other, MisraGries):
            return NotImplemented
        return (self.k, self.n, self.counters) == (other.k, other.n, other.counters)

    __hash__ = None

    def __repr__(self):
        return f"MisraGries(k={self.k}, n={self.n}, {len(self.counters)} counters)"


@dataclass(frozen=True)
class HeavyHitters:
    """The reported heavy hitters: ``items`` as ``(item, lower, upper)`` bounds on counts.

    ``n`` is the stream length, ``k`` the counters, ``max_error`` the bound on
    ``upper - lower``, ``phi`` the threshold used (or ``None``: every counter is reported).
    A plain record: O(1) to build, fingerprinted field by field.

    >>> HeavyHitters(items=(("a", 3, 4),), n=7, k=2, max_error=1).items[0]
    ('a', 3, 4)
    """

    items: tuple
    n: int
    k: int
    max_error: int
    phi: float | None = None


def _report(summary, phi):
    err = summary.max_error
    rows = []
    for item, c in summary.counters.items():
        if phi is not None and c + err < phi * summary.n:
            continue
        rows.append((item, c, c + err))
    rows.sort(key=lambda r: (-r[1], order_key(r[0])))
    return HeavyHitters(tuple(rows), summary.n, summary.k, err, phi)


class _HH:
    __slots__ = ("k", "phi", "field", "words")

    def __init__(self, k, phi, field, words):
        self.k, self.phi, self.field, self.words = k, phi, field, words

    def __getstate__(self):
        return (self.k, self.phi, self.field, self.words)

    def __setstate__(self, state):
        self.k, self.phi, self.field, self.words = state

    def partial(self, shard):
        s = MisraGries(self.k)
        s.update(items_of(shard, self.field, self.words))
        return s

    @staticmethod
    def combine(a, b):
        return a.merge(b)

    def finalize(self, summary):
        return _report(summary, self.phi)


def heavyhitters(k=None, epsilon=None, phi=None, field=None, words=False):
    """Approximate heavy hitters: a :class:`HeavyHitters` result from a Misra–Gries summary.

    Give ``k`` counters (default 100) or ``epsilon``, the error as a fraction of ``n``
    (``k = ceil(1 / epsilon) - 1``). ``phi`` (``1 / (k + 1) < phi <= 1``) reports only the
    items that may reach ``phi * n``. Items are records, a ``field`` of mapping records, or
    the words of text lines (``words=True``). Cost: O(n) time over all partials, O(k)
    memory per summary, O(k) per combine.

    >>> r = heavyhitters(epsilon=0.25, phi=0.5).reduce([list("aaaabbc"), list("aac")])
    >>> [item for item, lower, upper in r.items], r.k
    (['a'], 3)
    """
    if k is not None and epsilon is not None:
        raise TypeError("heavyhitters takes k= or epsilon=, not both")
    if epsilon is not None:
        if not isinstance(epsilon, (int, float)) or isinstance(epsilon, bool):
            raise TypeError(f"epsilon must be a number, got {type(epsilon).__name__}")
        if not 0 < epsilon < 1:
            raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
        k = max(1, math.ceil(1 / epsilon) - 1)
    elif k is None:
        k = 100
    MisraGries(k)  # validates k
    if phi is not None:
        if not isinstance(phi, (int, float)) or isinstance(phi, bool):
            raise TypeError(f"phi must be a number, got {type(phi).__name__}")
        if not 0 < phi <= 1:
            raise ValueError(f"phi must be in (0, 1], got {phi}")
        if phi <= 1 / (k + 1):
            raise ValueError(
                f"phi must exceed 1/(k+1) = {1 / (k + 1):.6g} for the no-false-negative "
                f"guarantee, got {phi}; use more counters (k >= {math.floor(1 / phi)})")
    if field is not None and not isinstance(field, str):
        raise TypeError(f"field must be a str or None, got {type(field).__name__}")
    if words and field is not None:
        raise TypeError("heavyhitters takes field= or words=True, not both")
    impl = _HH(k, phi, field, words)
    return Aggregator(impl.partial, impl.combine, impl.finalize, name="heavyhitters")


def _summarize(value, params):
    lines = [f"{value.n} items, k={value.k} counters, each count within "
             f"+{value.max_error} of its lower bound"]
    for item, lower, upper in value.items[: params.get("_top", 20)]:
        lines.append(f"{lower:>10} .. {upper:<10}  {item}")
    return lines


def _jsonable(value):
    return {"n": value.n, "k": value.k, "max_error": value.max_error, "phi": value.phi,
            "items": [[item, lower, upper] for item, lower, upper in value.items]}


ENTRY = Entry(
    name="heavyhitters",
    summary="approximate heavy hitters (mergeable Misra-Gries), error <= n/(k+1)",
    factory=heavyhitters,
    flags=(
        Flag("--k", type=int, default=None, help="counters (default 100)"),
        Flag("--epsilon", type=float, default=None,
             help="error bound as a fraction of n (instead of --k)"),
        Flag("--phi", type=float, default=None,
             help="report only items that may occur at least phi * n times"),
        Flag("--field", type=str, default=None, help="count this column or key"),
        Flag("--words", action="store_true", default=False,
             help="count whitespace-separated words, not whole lines"),
        Flag("--top", type=int, default=20, help="how many to print", dest="_top"),
    ),
    summarize=_summarize,
    jsonable=_jsonable,
)
