"""Count-min: how often each key occurred, never underestimated, over by at most eps*N.

A ``depth x width`` table of int64 counters; each row has its own hash of the key (a seeded
multiply-add of the key's 64-bit hash, reduced to ``[0, width)`` by a multiply-shift). Adding
a key adds its weight to one cell per row; a point query returns the smallest of its cells.
With ``width = ceil(e / epsilon)`` and ``depth = ceil(ln(1 / delta))`` the estimate is never
below the true count and exceeds it by more than ``epsilon * N`` (``N``: total weight) with
probability at most ``delta``. Merge is the cell-wise sum, so the sketch of a union is
exactly the merge of the sketches.

>>> cm = CountMin(epsilon=0.001, delta=0.01)
>>> (cm.width, cm.depth)
(2719, 5)
>>> cm.update(["a", "b", "a"]).query("a")
2
>>> cm.update(np.array([7, 7, 9]), weights=np.array([10, 5, 1])).query(7)
15
"""

from __future__ import annotations

import base64
import functools
import math
import struct

import numpy as np

from mergeagg.aggregator import Aggregator
from mergeagg.algorithms._sketch import (
    HASH_ID,
    Sketch,
    check_int,
    check_not_scalar,
    check_seed,
    expect_len,
    hash64,
    hash64_one,
    merge_into,
    records_of,
    seed_stream,
)
from mergeagg.algorithms.registry import Entry, Flag

__all__ = ["CountMin", "countmin"]

_CHUNK = 1 << 16
_MAX_WIDTH = 1 << 31
_MAX_DEPTH = 64


def _check_prob(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__} {value!r}")
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be strictly between 0 and 1, got {value!r}")
    return float(value)


class CountMin(Sketch):
    """A count-min sketch: ``CountMin(width, depth)`` or ``CountMin(epsilon=, delta=)``.

    Memory: ``8 * width * depth`` bytes (2.5 MiB for width 2**16, depth 5). Update: ~5-10 ns
    per key and row for numpy integer arrays (plus hashing). Point query: the true count
    ``<= estimate``, and ``estimate <= true + epsilon * N`` with probability ``>= 1 - delta``,
    where ``epsilon = e / width`` and ``delta = exp(-depth)``. Merge: O(width * depth).

    >>> a = CountMin(64, 3, seed=1).update([1, 2, 2])
    >>> b = CountMin(64, 3, seed=1).update([2, 3])
    >>> a.merge(b) == CountMin(64, 3, seed=1).update([1, 2, 2, 2, 3])
    True
    >>> a.query(2), a.total
    (3, 5)
    """

    KIND = 2
    __slots__ = ("width", "depth", "seed", "table", "total", "_mul", "_add", "_offsets")

    def __init__(self, width=None, depth=None, *, epsilon=None, delta=None, seed=0):
        if epsilon is not None or delta is not None:
            if width is not None or depth is not None:
                raise TypeError("give either width and depth, or epsilon and delta, not both")
            if epsilon is None or delta is None:
                raise TypeError("epsilon and delta go together: give both")
            width = math.ceil(math.e / _check_prob("epsilon", epsilon))
            depth = math.ceil(math.log(1.0 / _check_prob("delta", delta)))
        elif width is None or depth is None:
            raise TypeError("CountMin needs width and depth, or epsilon and delta")
        self.width = check_int("width", width, 1, _MAX_WIDTH)
        self.depth = check_int("depth", depth, 1, _MAX_DEPTH)
        self.seed = check_seed(seed)
        self.table = np.zeros((self.depth, self.width), dtype=np.int64)
        self.total = 0
        self._init_hashes()

    def _init_hashes(self):
        stream = seed_stream(self.seed, 2 * self.depth, salt=2)
        self._mul = np.array([v | 1 for v in stream[::2]], dtype=np.uint64)[:, None]
        self._add = np.array(stream[1::2], dtype=np.uint64)[:, None]
        self._offsets = (np.arange(self.depth, dtype=np.int64) * self.width)[:, None]

    def params(self):
        """The parameters that must match for a merge. Cost: O(1).

        >>> CountMin(8, 2).params()
        {'width': 8, 'depth': 2, 'seed': 0, 'hash': 'mm3x64+sm64/1', 'format': 1}
        """
        return {"width": self.width, "depth": self.depth, "seed": self.seed,
                "hash": HASH_ID, "format": 1}

    @property
    def epsilon(self):
        """``e / width``: the error bound per unit of total weight."""
        return math.e / self.width

    @property
    def delta(self):
        """``exp(-depth)``: the chance a query exceeds the bound."""
        return math.exp(-self.depth)

    def error_bound(self):
        """``epsilon * total``: a query exceeds the truth by more only with prob. ``delta``.

        >>> CountMin(272, 3).update(range(100)).error_bound()
        0.999...
        """
        return self.epsilon * self.total

    def _state(self):
        return (self.table,)

    def _columns(self, h, row, out=None):
        """Column indices (an int64 view) of hashes ``h`` in ``row``: a seeded multiply-add
        of the 64-bit hash, reduced to ``[0, width)`` by a multiply-shift."""
        g = np.multiply(h, self._mul[row, 0], out=out)
        g += self._add[row, 0]
        w = self.width
        if w & (w - 1) == 0:  # a power of two: ((g >> 32) * w) >> 32 is one shift
            g >>= np.uint64(64 - (w.bit_length() - 1))
        else:
            g >>= np.uint64(32)
            g *= np.uint64(w)
            g >>= np.uint64(32)
        return g.view(np.int64)  # values below 2**32: the view is exact

    def _cells(self, h):
        """Flat cell indices, shape (depth, len(h)), of hashes ``h`` (for queries)."""
        cells = np.empty((self.depth, h.shape[0]), dtype=np.int64)
        for row in range(self.depth):
            cells[row] = self._columns(h, row)
        cells += self._offsets
        return cells

    def _update_hashes(self, h, weights=None):
        buf = np.empty(min(h.shape[0], _CHUNK), dtype=np.uint64)
        for lo in range(0, h.shape[0], _CHUNK):
            chunk = h[lo:lo + _CHUNK]
            cols_buf = buf[: chunk.shape[0]]
            for row in range(self.depth):
                cols = self._columns(chunk, row, out=cols_buf)
                if weights is None:
                    self.table[row] += np.bincount(cols, minlength=self.width)
                else:
                    np.add.at(self.table[row], cols, weights[lo:lo + _CHUNK])
        self.total += int(h.shape[0]) if weights is None else int(weights.sum())

    def add(self, item, weight=1):
        """Add ``weight`` (an int >= 0) to one key's count. Cost: one hash plus O(depth).

        >>> CountMin(16, 2).add("x", 3).query("x")
        3
        """
        weight = self._check_weight(weight)
        h = np.array([hash64_one(item, self.seed)], dtype=np.uint64)
        cells = self._cells(h)[:, 0]
        self.table.reshape(-1)[cells] += weight
        self.total += weight
        return self

    @staticmethod
    def _check_weight(weight):
        if isinstance(weight, bool) or not isinstance(weight, (int, np.integer)):
            raise TypeError(f"a weight must be an int, got {type(weight).__name__}")
        if weight < 0:
            raise ValueError(f"weights must be >= 0 (count-min counts up), got {weight}")
        return int(weight)

    def update(self, items, weights=None):
        """Add every key of ``items``, each with weight 1 or its entry of ``weights``.

        Cost: ~10 ns per key and row for a numpy integer array. ``weights`` is a sequence
        of non-negative ints as long as ``items``.

        >>> CountMin(16, 2).update(["x", "y", "x"], weights=[1, 2, 3]).query("x")
        4
        """
        check_not_scalar(items)
        if not isinstance(items, (list, tuple, np.ndarray)):
            items = list(items)
        n = len(items)
        if weights is not None:
            w = np.asarray(weights)
            if w.size == 0:
                w = w.astype(np.int64)
            if w.dtype.kind not in "iu":
                raise TypeError(f"weights must be integers, got dtype {w.dtype}")
            if w.shape != (n,):
                raise ValueError(f"{w.shape[0] if w.ndim else 'a scalar'} weights for "
                                 f"{n} items: give one weight per item")
            if w.size and int(w.min()) < 0:
                raise ValueError("weights must be >= 0 (count-min counts up)")
            weights = w.astype(np.int64)
        for lo in range(0, max(n, 1), _CHUNK):
            h = hash64(items[lo:lo + _CHUNK], self.seed)
            self._update_hashes(h, None if weights is None else weights[lo:lo + _CHUNK])
        return self

    def _merge(self, other):
        self.table += other.table
        self.total += other.total

    def _check(self):
        """Assert every invariant (for tests, after each mutation)."""
        assert self.table.dtype == np.int64 and self.table.shape == (self.depth, self.width)
        assert (self.table >= 0).all()
        assert (self.table.sum(axis=1) == self.total).all()

    def query(self, item):
        """The estimated count of one key (an int, never below the truth). Cost: O(depth).

        >>> CountMin(16, 2).query("never added")
        0
        """
        h = np.array([hash64_one(item, self.seed)], dtype=np.uint64)
        return int(self.table.reshape(-1)[self._cells(h)[:, 0]].min())

    def query_many(self, items):
        """Estimated counts of many keys as an int64 array. Cost: O(depth) per key.

        >>> CountMin(64, 3).update([5, 5, 6]).query_many([5, 6, 7]).tolist()
        [2, 1, 0]
        """
        h = hash64(items, self.seed)
        out = np.empty(h.shape[0], dtype=np.int64)
        flat = self.table.reshape(-1)
        for lo in range(0, h.shape[0], _CHUNK):
            out[lo:lo + _CHUNK] = flat[self._cells(h[lo:lo + _CHUNK])].min(axis=0)
        return out

    def _encode(self):
        return struct.pack("<II", self.width, self.depth) + self.table.astype("<i8").tobytes()

    @classmethod
    def _decode(cls, payload, seed):
        if len(payload) < 8:
            raise ValueError("corrupt CountMin bytes: the payload is shorter than its sizes")
        width, depth = struct.unpack_from("<II", payload)
        if not (1 <= width <= _MAX_WIDTH and 1 <= depth <= _MAX_DEPTH):
            raise ValueError(f"corrupt CountMin bytes: width {width} / depth {depth} out of "
                             "range")
        expect_len(payload, 8 + 8 * width * depth, "CountMin")
        table = np.frombuffer(payload, dtype="<i8", offset=8).reshape(depth, width)
        sums = table.sum(axis=1)
        if (table < 0).any() or (sums != sums[0]).any():
            raise ValueError("corrupt CountMin bytes: counters are negative or rows disagree "
                             "on the total")
        sk = cls(width, depth, seed=seed)
        sk.table = table.astype(np.int64)
        sk.total = int(sums[0])
        return sk

    def to_jsonable(self):
        """A JSON-ready summary: parameters, total, bound and the bytes in base64."""
        return {"kind": "CountMin", "params": self.params(), "total": self.total,
                "error_bound": self.error_bound(), "delta": self.delta,
                "bytes_base64": base64.b64encode(self.to_bytes()).decode("ascii")}

    def __repr__(self):
        return (f"CountMin(width={self.width}, depth={self.depth}, seed={self.seed}, "
                f"total={self.total})")


def _cm_partial(width, depth, seed, words, shard):
    sk = CountMin(width, depth, seed=seed)
    if words:
        text_of = getattr(shard, "text", None)
        items = text_of().split() if text_of else [w for line in shard for w in line.split()]
    else:
        items = records_of(shard)
    return sk.update(items)


def countmin(width=1 << 16, depth=5, seed=0, words=False):
    """An Aggregator whose value is the :class:`CountMin` of every line (or word).

    ``words=True`` counts whitespace-separated words instead of whole lines. Cost: one bulk
    update per shard, O(width * depth) per combine.

    >>> countmin(width=256, depth=4).reduce([["x", "y"], ["x"]]).query("x")
    2
    """
    check_int("width", width, 1, _MAX_WIDTH)
    check_int("depth", depth, 1, _MAX_DEPTH)
    check_seed(seed)
    return Aggregator(functools.partial(_cm_partial, width, depth, seed, bool(words)),
                      merge_into, name="countmin")


def _summarize(value, params):
    lines = [f"{value.total:,} records in a {value.depth} x {value.width} count-min sketch; "
             f"each count is exact or over by at most {value.error_bound():,.1f} "
             f"(eps*N) with probability >= {1 - value.delta:.4f}"]
    for item in params.get("_query") or ():
        lines.append(f"{value.query(item):>12,}  {item}")
    return lines


ENTRY = Entry(
    name="countmin",
    summary="count lines (or words) approximately with a count-min sketch; query with --query",
    factory=countmin,
    flags=(
        Flag("--width", type=int, default=1 << 16, help="counters per row (default 65536)"),
        Flag("--depth", type=int, default=5, help="rows (default 5)"),
        Flag("--seed", type=int, default=0, help="hash seed (0..2**32-1)"),
        Flag("--words", action="store_true", default=False,
             help="count whitespace-separated words instead of whole lines"),
        Flag("--query", action="append", default=None, dest="_query",
             help="print the estimated count of this item (repeatable)"),
    ),
    summarize=_summarize,
)
