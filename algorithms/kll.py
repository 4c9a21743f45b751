"""KLL quantiles: ranks and quantiles of a stream within about 1.33% of n, in a few KiB.

Karnin, Lang and Liberty's sketch (2016), laid out as Apache DataSketches lays it out: items
live in *levels*; an item at level ``h`` stands for ``2**h`` items of the stream. Level ``h``
holds at most ``max(m, round(k * (2/3)**d))`` items, ``d`` levels below the top (``m = 8``).
When the sketch is full, the lowest level at capacity is *compacted*: sorted, and every
other item (the odd or the even ones, by a coin) moves up one level, so the item count
halves while each rank moves by at most the level's weight.

**Deterministic compaction.** The coin is not drawn from a generator: it is a seeded hash
of the compacted items' bits and of the level (``seed`` is a parameter), so the same
updates and merges give the same bytes every time, whatever worker ran them, failed or
raced. A merge puts each level of the other sketch beside the same level of this one and
compacts; levels are kept sorted, so ``a.merge(b)`` and ``b.merge(a)`` are byte-identical.
Merges are not associative in their bytes (a different tree compacts at other moments),
so a parallel run is reproducible at a fixed split layout, which mergeagg's fixed fold
tree gives.

Error (DataSketches' published constants, which this layout shares): the normalized rank
error at confidence 99% is ``2.296 / k**0.9723`` for one query (1.33% at ``k = 200``) and
``2.446 / k**0.9433`` for all of a PMF or CDF's points (1.65%).

>>> kll = KLL(k=200).update(np.arange(100_000, dtype=np.float64))
>>> abs(kll.quantile(0.5) - 50_000) < kll.rank_error() * 100_000
True
>>> kll.n, kll.min, kll.max
(100000, 0.0, 99999.0)
"""

from __future__ import annotations

import base64
import functools
import math
import struct

import numpy as np

from mergeagg.aggregator import Aggregator
from mergeagg.algorithms._sketch import (
    Sketch,
    check_int,
    check_seed,
    merge_into,
)
from mergeagg.algorithms.basic import numbers
from mergeagg.algorithms.registry import Entry, Flag

__all__ = ["KLL", "quantiles", "normalized_rank_error", "level_capacity"]

_M = 8  # the smallest level capacity (DataSketches' default m)
_MAX_LEVELS = 61
_CHUNK = 1 << 15  # items inserted at level 0 at a time by a bulk update
_DTYPES = {"double": np.dtype(np.float64), "float": np.dtype(np.float32)}
_DTYPE_CODES = {"double": 8, "float": 4}
_M64 = (1 << 64) - 1


def normalized_rank_error(k, pmf=False):
    """DataSketches' published rank error at 99% confidence for a KLL of size ``k``.

    ``2.296 / k**0.9723`` for one rank or quantile query, ``2.446 / k**0.9433`` for every
    point of a PMF or CDF at once (``pmf=True``). Cost: O(1).

    >>> round(normalized_rank_error(200), 5), round(normalized_rank_error(200, pmf=True), 5)
    (0.01329, 0.01652)
    """
    return 2.446 / k ** 0.9433 if pmf else 2.296 / k ** 0.9723


def level_capacity(k, num_levels, height):
    """Items level ``height`` may hold in a sketch of ``num_levels`` levels. Cost: O(depth).

    ``max(8, round(k * (2/3)**depth))`` with ``depth = num_levels - height - 1``, computed
    in integers (``round(2k * 2**d / 3**d / 2)``), as DataSketches computes it.

    >>> [level_capacity(200, 4, h) for h in range(4)]
    [59, 89, 133, 200]
    """
    depth = num_levels - height - 1
    if depth > 60:
        return _M
    cap = ((2 * k << depth) // 3 ** depth + 1) >> 1
    return max(_M, cap)


@functools.lru_cache(maxsize=4096)
def _capacities(k, num_levels):
    caps = tuple(level_capacity(k, num_levels, h) for h in range(num_levels))
    return caps, sum(caps)


def _mix(z):
    z = (z + 0x9E3779B97F4A7C15) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


class KLL(Sketch):
    """A KLL quantiles sketch of ``float`` (32-bit) or ``double`` (64-bit) items.

    Memory: about ``3 * k`` retained items at most (4.8 KiB of doubles at ``k = 200``).
    Update: ~10 ns per item of a numpy array (bulk), ~5 us for :meth:`add`. Rank error:
    :func:`normalized_rank_error` (1.33% of n at ``k = 200``, 99% confidence). Merge: O(k
    log k). NaNs are skipped, as DataSketches skips them.

    >>> a = KLL(k=100).update([1.0, 2.0, 3.0])
    >>> b = KLL(k=100).update([4.0])
    >>> a.merge(b).quantiles([0.0, 0.5, 1.0]).tolist()
    [1.0, 2.0, 4.0]
    >>> a == KLL(k=100).update([4.0]).merge(KLL(k=100).update([1.0, 2.0, 3.0]))
    True
    """

    KIND = 4
    __slots__ = ("k", "dtype", "seed", "n", "levels", "min", "max")

    def __init__(self, k=200, dtype="double", seed=0):
        self.k = check_int("k", k, _M, 65535)
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be 'double' or 'float', got {dtype!r}")
        self.dtype = dtype
        self.seed = check_seed(seed)
        self.n = 0
        self.levels = [np.empty(0, dtype=_DTYPES[dtype])]
        self.min = math.nan
        self.max = math.nan

    def params(self):
        """The parameters that must match for a merge. Cost: O(1).

        >>> KLL(k=50).params()
        {'k': 50, 'm': 8, 'dtype': 'double', 'seed': 0, 'format': 1}
        """
        return {"k": self.k, "m": _M, "dtype": self.dtype, "seed": self.seed, "format": 1}

    @classmethod
    def _clone(cls, other):
        new = super()._clone(other)
        new.levels = [lv.copy() for lv in other.levels]
        return new

    def _state(self):
        sizes = np.array([lv.shape[0] for lv in self.levels], dtype=np.int64)
        items = np.concatenate([np.sort(self.levels[0]), *self.levels[1:]])
        return (np.array([self.n], dtype=np.uint64), sizes,
                np.array([self.min, self.max], dtype=np.float64), items)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        a, b = self._state(), other._state()
        return self.params() == other.params() and all(
            np.array_equal(x, y, equal_nan=x.dtype.kind == "f") for x, y in zip(a, b))

    __hash__ = None

    # -- sizes ---------------------------------------------------------------------------
    @property
    def num_retained(self):
        """Items kept, over all levels. Cost: O(levels).

        >>> KLL().update(range(10)).num_retained
        10
        """
        return sum(lv.shape[0] for lv in self.levels)

    def is_empty(self):
        """True when no item was added. Cost: O(1).

        >>> KLL().is_empty(), KLL().add(1.0).is_empty()
        (True, False)
        """
        return self.n == 0

    def rank_error(self, pmf=False):
        """This sketch's normalized rank error at 99% confidence (see
        :func:`normalized_rank_error`). Cost: O(1).

        >>> round(KLL(k=200).rank_error(), 4)
        0.0133
        """
        return normalized_rank_error(self.k, pmf)

    def _capacity(self):
        return _capacities(self.k, len(self.levels))[1]

    # -- updates -------------------------------------------------------------------------
    def add(self, item):
        """Add one number. Cost: O(k) worst case, ~5 us.

        >>> KLL().add(2.5).add(1).quantile(1.0)
        2.5
        """
        if isinstance(item, (bool, np.bool_)) or not isinstance(
                item, (int, float, np.integer, np.floating)):
            raise TypeError(f"KLL items are numbers, got {type(item).__name__} {item!r:.40}")
        return self.update(np.array([item], dtype=_DTYPES[self.dtype]))

    def update(self, items):
        """Add every number of a numpy array or an iterable; returns ``self``.

        NaNs are skipped. Cost: ~10 ns per item for a numpy float array (it is sorted in
        chunks of 32,768 items and halved level by level), ~50 ns per item from a list.
        The result depends on the chunking only through the compaction coins: the same
        calls give the same bytes.

        >>> KLL().update(np.array([3.0, np.nan, 1.0])).n
        2
        """
        dt = _DTYPES[self.dtype]
        if isinstance(items, (str, bytes)):
            raise TypeError(f"update() takes numbers, not a {type(items).__name__}")
        if not isinstance(items, np.ndarray):
            items = np.fromiter(items, dtype=np.float64) if not isinstance(
                items, (list, tuple)) else np.asarray(items, dtype=np.float64)
        if items.ndim != 1:
            raise ValueError(f"an item array must be one-dimensional, got shape {items.shape}")
        if items.dtype.kind not in "fiu":
            raise TypeError(f"KLL items are numbers, got an array of dtype {items.dtype}")
        for lo in range(0, items.shape[0], _CHUNK):
            chunk = items[lo:lo + _CHUNK].astype(dt)
            if chunk.dtype.kind == "f":
                nan = np.isnan(chunk)
                if nan.any():
                    chunk = chunk[~nan]
            if chunk.shape[0] == 0:
                continue
            lo_v, hi_v = float(chunk.min()), float(chunk.max())
            self.min = lo_v if self.n == 0 else min(self.min, lo_v)
            self.max = hi_v if self.n == 0 else max(self.max, hi_v)
            self.n += int(chunk.shape[0])
            level0 = self.levels[0]
            self.levels[0] = np.concatenate([level0, chunk]) if level0.shape[0] else chunk
            self._compress()
        return self

    def _merge(self, other):
        if other.n == 0:
            return
        while len(self.levels) < len(other.levels):
            self.levels.append(np.empty(0, dtype=_DTYPES[self.dtype]))
        for h, lv in enumerate(other.levels):
            if lv.shape[0]:
                mine = self.levels[h]
                both = np.concatenate([mine, lv])
                # Sorted: the result is the same whichever sketch was merged into which.
                both.sort(kind="stable" if h else "quicksort")
                self.levels[h] = both
        self.min = other.min if self.n == 0 else min(self.min, other.min)
        self.max = other.max if self.n == 0 else max(self.max, other.max)
        self.n += other.n
        self._compress()
        self.levels[0] = np.sort(self.levels[0])

    def _coin(self, items, height):
        bits = items.view(np.uint64 if items.dtype.itemsize == 8 else np.uint32)
        total = int(bits.sum(dtype=np.uint64))
        key = _mix(self.seed ^ (height << 40) ^ (items.shape[0] << 8))
        return _mix(total ^ key) >> 63

    def _compress(self):
        """Compact the lowest level at capacity until the sketch fits its capacity."""
        levels = self.levels
        while True:
            num = len(levels)
            caps, total = _capacities(self.k, num)
            sizes = [lv.shape[0] for lv in levels]
            if sum(sizes) <= total:
                return
            for h in range(num):
                if sizes[h] >= caps[h]:
                    break
            if h + 1 == num:
                if num >= _MAX_LEVELS:  # pragma: no cover - needs 2**61 items
                    raise OverflowError("a KLL sketch holds at most 2**61 levels of items")
                self.levels.append(np.empty(0, dtype=self.levels[0].dtype))
            self._compact(h)

    def _compact(self, h):
        lv = self.levels[h]
        if h == 0:
            lv = np.sort(lv)
        keep = lv.shape[0] & 1  # an odd count leaves the smallest item where it is
        pairs = lv[keep:]
        up = pairs[self._coin(pairs, h)::2]
        self.levels[h] = lv[:keep].copy()
        above = self.levels[h + 1]
        if above.shape[0]:
            up = np.concatenate([above, up])
            up.sort(kind="stable")
        else:
            up = up.copy()
        self.levels[h + 1] = up

    # -- queries -------------------------------------------------------------------------
    def _sorted_view(self):
        items = np.concatenate(self.levels).astype(np.float64)
        weights = np.concatenate([np.full(lv.shape[0], 1 << h, dtype=np.int64)
                                  for h, lv in enumerate(self.levels)])
        order = np.argsort(items, kind="stable")
        return items[order], np.cumsum(weights[order])

    def _need_items(self, what):
        if self.n == 0:
            raise ValueError(f"{what} of an empty KLL sketch is undefined (no items added)")

    def rank(self, value, inclusive=True):
        """The estimated fraction of items ``<= value`` (``< value`` if not inclusive).

        Cost: O(retained log retained). Error: :meth:`rank_error`.

        >>> KLL().update([1.0, 2.0, 3.0, 4.0]).rank(2.0)
        0.5
        """
        self._need_items("the rank")
        items, cum = self._sorted_view()
        side = "right" if inclusive else "left"
        i = int(np.searchsorted(items, float(value), side=side))
        return float(cum[i - 1]) / self.n if i else 0.0

    def quantile(self, q, inclusive=True):
        """The item at normalized rank ``q`` in ``[0, 1]``. Cost: as :meth:`quantiles`.

        >>> KLL().update(np.arange(1, 11.0)).quantile(0.5)
        5.0
        """
        return float(self.quantiles([q], inclusive)[0])

    def quantiles(self, qs, inclusive=True):
        """The items at normalized ranks ``qs``: for each q the smallest retained item whose
        cumulative weight reaches ``ceil(q * n)`` (``inclusive``, the default, as in
        DataSketches' Java and C++; its Python binding defaults to exclusive) or exceeds
        ``floor(q * n)``.

        Cost: O(retained log retained + len(qs)). Error: each is an item whose true rank is
        within :meth:`rank_error` of ``q`` (99% confidence).

        >>> KLL().update([5.0, 1.0, 3.0]).quantiles([0, 0.5, 1]).tolist()
        [1.0, 3.0, 5.0]
        """
        self._need_items("a quantile")
        qs = np.asarray(qs, dtype=np.float64)
        if qs.ndim != 1:
            qs = qs.reshape(-1)
        if np.isnan(qs).any() or (qs < 0).any() or (qs > 1).any():
            raise ValueError(f"normalized ranks must be in [0, 1], got {qs.tolist()}")
        items, cum = self._sorted_view()
        # DataSketches' rule, to the bit: the target weight is ceil(q * n) (inclusive) or
        # floor(q * n); past the last cumulative weight, the last item.
        if inclusive:
            idx = np.searchsorted(cum, np.ceil(qs * self.n), side="left")
        else:
            idx = np.searchsorted(cum, np.floor(qs * self.n), side="right")
        return items[np.minimum(idx, items.shape[0] - 1)]

    def cdf(self, split_points, inclusive=True):
        """Estimated fractions of items ``<=`` each split point, then 1.0 (one more value).

        Cost: O(retained log retained + len(split_points)). Error: every point within
        ``rank_error(pmf=True)`` at once (99%).

        >>> KLL().update([1.0, 2.0, 3.0, 4.0]).cdf([2.0, 3.0]).tolist()
        [0.5, 0.75, 1.0]
        """
        self._need_items("the CDF")
        points = self._split_points(split_points)
        items, cum = self._sorted_view()
        idx = np.searchsorted(items, points, side="right" if inclusive else "left")
        ranks = np.where(idx > 0, cum[np.maximum(idx - 1, 0)], 0) / self.n
        return np.append(ranks, 1.0)

    def pmf(self, split_points, inclusive=True):
        """Estimated fractions of items in each interval the split points cut (one more
        value than points): ``(-inf, s0], (s0, s1], ..., (s_last, +inf)`` when inclusive.

        Cost: as :meth:`cdf`.

        >>> KLL().update([1.0, 2.0, 3.0, 4.0]).pmf([2.0]).tolist()
        [0.5, 0.5]
        """
        return np.diff(self.cdf(split_points, inclusive), prepend=0.0)

    @staticmethod
    def _split_points(points):
        arr = np.asarray(points, dtype=np.float64).reshape(-1)
        if np.isnan(arr).any() or (np.diff(arr) <= 0).any():
            raise ValueError("split points must be increasing and not NaN, got "
                             f"{arr.tolist()[:10]}")
        return arr

    def _check(self):
        """Assert every invariant (for tests, after each mutation)."""
        num = len(self.levels)
        assert 1 <= num <= _MAX_LEVELS
        weight = sum(lv.shape[0] << h for h, lv in enumerate(self.levels))
        assert weight == self.n, (weight, self.n)
        assert self.num_retained <= self._capacity()
        for h, lv in enumerate(self.levels):
            assert lv.dtype == _DTYPES[self.dtype]
            if h:
                assert (np.diff(lv) >= 0).all()
            if lv.shape[0]:
                assert self.min <= lv.min() and lv.max() <= self.max

    # -- bytes ---------------------------------------------------------------------------
    def _encode(self):
        dt = _DTYPES[self.dtype].newbyteorder("<")
        head = struct.pack("<HBBQB", self.k, _M, _DTYPE_CODES[self.dtype], self.n,
                           len(self.levels))
        sizes = np.array([lv.shape[0] for lv in self.levels], dtype="<u4").tobytes()
        ends = np.array([self.min, self.max], dtype=dt).tobytes()
        items = np.concatenate([np.sort(self.levels[0]), *self.levels[1:]]).astype(dt)
        return head + sizes + ends + items.tobytes()

    @classmethod
    def _decode(cls, payload, seed):
        fixed = struct.calcsize("<HBBQB")
        if len(payload) < fixed:
            raise ValueError("corrupt KLL bytes: the payload is shorter than its header")
        k, m, code, n, num = struct.unpack_from("<HBBQB", payload)
        names = {v: name for name, v in _DTYPE_CODES.items()}
        if code not in names or m != _M or not _M <= k or not 1 <= num <= _MAX_LEVELS:
            raise ValueError(f"corrupt KLL bytes: k={k}, m={m}, item size {code}, {num} "
                             "levels is not a KLL sketch this mergeagg writes")
        dt = _DTYPES[names[code]].newbyteorder("<")
        sizes = np.frombuffer(payload, dtype="<u4", count=num, offset=fixed).astype(np.int64)
        at = fixed + 4 * num
        want = at + dt.itemsize * (2 + int(sizes.sum()))
        if len(payload) != want:
            raise ValueError(f"corrupt KLL bytes: expected {want} bytes of payload, got "
                             f"{len(payload)}")
        lo, hi = np.frombuffer(payload, dtype=dt, count=2, offset=at).astype(np.float64)
        items = np.frombuffer(payload, dtype=dt, offset=at + 2 * dt.itemsize)
        sk = cls(k, names[code], seed)
        cuts = np.cumsum(sizes)[:-1]
        sk.levels = [part.astype(_DTYPES[names[code]]) for part in np.split(items, cuts)]
        sk.n, sk.min, sk.max = int(n), float(lo), float(hi)
        weight = sum(int(s) << h for h, s in enumerate(sizes))
        if weight != n or any((np.diff(lv) < 0).any() for lv in sk.levels):
            raise ValueError(f"corrupt KLL bytes: the levels weigh {weight} items, the "
                             f"header says {n}, or a level is not sorted")
        return sk

    def to_datasketches(self):
        """The sketch as an Apache DataSketches KLL image: ``kll_floats_sketch`` for
        ``dtype="float"``, ``kll_doubles_sketch`` for ``"double"`` (same levels, so the
        same quantiles there). Cost: O(retained).

        >>> import datasketches
        >>> sk = KLL(k=50, dtype="float").update(np.arange(1000.0))
        >>> theirs = datasketches.kll_floats_sketch.deserialize(sk.to_datasketches())
        >>> theirs.get_quantile(0.5) == sk.quantile(0.5), theirs.n
        (True, 1000)
        """
        from mergeagg.algorithms._datasketches import kll_image

        return kll_image(self)

    @classmethod
    def from_datasketches(cls, data, dtype=None, seed=0):
        """The KLL in an Apache DataSketches ``kll_floats_sketch`` / ``kll_doubles_sketch``
        image (``dtype`` read from its size unless given; ``seed`` for later compactions).
        Cost: O(retained).

        >>> KLL.from_datasketches(KLL(k=20).update([1.0, 2.0]).to_datasketches()).n
        2
        """
        from mergeagg.algorithms._datasketches import kll_from_image

        return kll_from_image(data, dtype, seed)

    def to_jsonable(self):
        """A JSON-ready summary: parameters, n, min, max, deciles and the bytes in base64."""
        doc = {"kind": "KLL", "params": self.params(), "n": self.n,
               "rank_error": self.rank_error(),
               "bytes_base64": base64.b64encode(self.to_bytes()).decode("ascii")}
        if self.n:
            doc.update(min=self.min, max=self.max,
                       deciles=self.quantiles(np.linspace(0, 1, 11)).tolist())
        return doc

    def __repr__(self):
        return (f"KLL(k={self.k}, dtype={self.dtype!r}, seed={self.seed}, n={self.n}, "
                f"retained={self.num_retained})")


def _kll_partial(k, dtype, seed, field, shard):
    sk = KLL(k, dtype, seed)
    if isinstance(shard, np.ndarray) and field is None and shard.dtype.kind in "fiu":
        return sk.update(shard.ravel())
    ints, floats = numbers(shard, field)
    if len(ints):
        sk.update(np.array(ints, dtype=np.float64))
    if len(floats):
        sk.update(np.asarray(floats, dtype=np.float64))
    return sk


def quantiles(k=200, field=None, dtype="double", seed=0):
    """An Aggregator whose value is the :class:`KLL` sketch of every record's number.

    Records are numbers or text, or mappings (CSV rows, JSON objects) whose ``field`` is
    one (nulls skipped, as :mod:`~mergeagg.algorithms.basic` skips them). Cost: one bulk
    update per shard, O(k log k) per combine.

    >>> round(quantiles(k=100).reduce([["1", "2"], ["3", "4", "5"]]).quantile(0.5))
    3
    """
    check_int("k", k, _M, 65535)
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be 'double' or 'float', got {dtype!r}")
    check_seed(seed)
    if field is not None and not isinstance(field, str):
        raise TypeError(f"field must be a str or None, got {type(field).__name__}")
    return Aggregator(functools.partial(_kll_partial, k, dtype, seed, field), merge_into,
                      name="quantiles")


def _parse_qs(text):
    """``--q``: comma-separated normalized ranks; checked when the command line is read."""
    import argparse

    if not isinstance(text, str):
        return list(text)
    try:
        qs = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        qs = None
    if not qs or any(not 0 <= q <= 1 for q in qs):
        raise argparse.ArgumentTypeError(
            f"--q takes comma-separated ranks in [0, 1], like 0.5,0.9,0.99; got {text!r}")
    return qs


def _summarize(value, params):
    if value.n == 0:
        return ["no numbers in the input"]
    qs = _parse_qs(params.get("_q") or "0.5,0.9,0.99")
    err = value.rank_error()
    lines = [f"{value.n:,} numbers, min {value.min:g}, max {value.max:g} (KLL k={value.k}, "
             f"rank error {100 * err:.2f}% at 99% confidence)"]
    for q, x in zip(qs, value.quantiles(qs)):
        lines.append(f"  q={q:<6g} {x:.6g}")
    return lines


ENTRY = Entry(
    name="quantiles",
    summary="approximate quantiles (p50, p99, ...) of numbers with a KLL sketch",
    factory=quantiles,
    flags=(
        Flag("--k", type=int, default=200, help="KLL size parameter (rank error ~1.33%% at "
                                                "200)"),
        Flag("--field", type=str, default=None,
             help="take the number from this column / key (use with --format csv or jsonl)"),
        Flag("--dtype", type=str, default="double", choices=("double", "float"),
             help="item type kept: double (64-bit, default) or float (32-bit)"),
        Flag("--seed", type=int, default=0, help="compaction coin seed (0..2**32-1)"),
        Flag("--q", type=_parse_qs, default="0.5,0.9,0.99", dest="_q",
             help="comma-separated ranks to print (default 0.5,0.9,0.99)"),
    ),
    summarize=_summarize,
)
