"""Exact summation of floats: one big integer, so every sharding gives the same bytes.

Every finite binary64 float is an integer multiple of ``2**-1074``, and so is every sum of
them. :class:`ExactSum` keeps that multiple, shifted by ``SCALE`` bits, as a Python int:
adding and merging are exact integer additions, which are associative and commutative, so
the accumulator itself (not only the rounded result) is the same whatever the sharding, the
tree shape or the order. :meth:`ExactSum.value` rounds once, correctly (CPython's int / int
division is correctly rounded), so the result equals :func:`math.fsum` of all the values.

Non-finite values follow IEEE 754: ``+inf`` and ``-inf`` together give NaN; any NaN gives
NaN (always the canonical ``math.nan``, so its bits never depend on the data). An exact
sum of zero is ``0.0`` (never ``-0.0``), and one too large for a float is ``±inf``.

>>> s = ExactSum()
>>> s.add_floats([0.1] * 10)
>>> s.value(), sum([0.1] * 10)
(1.0, 0.9999999999999999)
>>> t = ExactSum.of([1e100, 1.0, -1e100])
>>> t.value()
1.0

:class:`ExactMoments` keeps the count, the exact sum and the exact sum of squares (every
square of a float is a multiple of ``2**-2148``: one more big integer), so a variance is
computed from exact numbers and rounded once: the same bits for every sharding.

>>> ExactMoments.of([0.1, 0.2, 0.3]).variance(ddof=1)  # of the floats nearest 0.1, 0.2, 0.3
0.009999999999999998
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["ExactSum", "ExactMoments", "SCALE", "SQUARE_SCALE", "exact_square_sum"]

SCALE = 1127  # 1074 (the smallest subnormal's exponent) + 53 (frexp's mantissa bits)
SQUARE_SCALE = 2 * 1074  # every square of a float is a multiple of 2**-2148
_BLOCK = 1 << 26  # values per exact float sum: a bin's sum stays below 2**53 units
_PASS = 1 << 14  # values per numpy pass: the temporaries stay in the cache
_BINS = 1 << 12  # bins of the top 12 bits: sign and exponent
_HIGH_MASK = np.uint64(~((1 << 26) - 1) & ((1 << 64) - 1))  # keeps 27 mantissa bits
_BIN_EXP = np.arange(_BINS) & 0x7FF
_SPECIAL = np.flatnonzero(_BIN_EXP == 0x7FF)  # infinities and NaNs
_EFF_EXP = np.maximum(_BIN_EXP, 1)  # subnormals share the unit of the smallest normals
# A bin of effective biased exponent e counts its rests in units of 2**(e - 1075) and its
# high parts in units of 2**(e - 1049): scaled by 2**SCALE, 1 << (e + 52) and 1 << (e + 78).
_LO_OFFSET, _HI_OFFSET = 52, 78
_BIG, _BIG_SHIFT = 2.0 ** 960, 512  # values this large may overflow a bin's float sum


def _bins_to_int(sums, offset):
    """The sum of the bins' exact float sums, scaled by 2**SCALE, as a Python int.

    A bin of effective exponent ``e`` counts in units of ``2**(e + offset - SCALE)``
    (``offset`` 52 for the rests, 78 for the high parts): its sum in units is an integer
    below 2**53, exact in a float; those are summed per exponent in int64 (at most 32 bins
    share one) and shifted into place, one big-int step per distinct exponent."""
    nz = np.flatnonzero(sums)
    if not len(nz):
        return 0
    eff = _EFF_EXP[nz]
    units = np.ldexp(sums[nz], SCALE - offset - eff).astype(np.int64)
    order = np.argsort(eff, kind="stable")
    eff, units = eff[order], units[order]
    starts = np.flatnonzero(np.diff(eff, prepend=-1))
    total = 0
    for e, u in zip(eff[starts].tolist(), np.add.reduceat(units, starts).tolist()):
        total += u << (e + offset)
    return total


class ExactSum:
    """An exact sum of ints and floats, mergeable; the rounded result is :meth:`value`.

    Cost: O(1) big-int additions per distinct float exponent per 1024 values (numpy does
    the rest), O(size of the integer) per merge; memory: an integer of at most a few
    thousand bits. Standard error: none; the result is the correctly rounded exact sum.

    >>> a, b = ExactSum.of([0.5, 2]), ExactSum.of([0.25])
    >>> a.merge(b).value()
    2.75
    >>> ExactSum.of([3, 4]).value()
    7
    """

    __slots__ = ("scaled", "has_float", "pos_inf", "neg_inf", "nan")

    def __init__(self):
        self.scaled = 0
        self.has_float = False
        self.pos_inf = False
        self.neg_inf = False
        self.nan = False

    @classmethod
    def of(cls, values):
        """An ExactSum of an iterable of ints and floats. Cost: O(n).

        >>> ExactSum.of([1, 0.5]).value()
        1.5
        """
        return _of(cls(), values)

    def add_ints(self, values):
        """Add Python ints (or bools) exactly. Cost: O(n) int additions.

        >>> s = ExactSum(); s.add_ints([2, 3]); s.value()
        5
        """
        self.scaled += sum(values) << SCALE

    def add_floats(self, values):
        """Add floats (any iterable, or a numpy float array) exactly. Cost: O(n) in numpy.

        Each value is split into a high part (its mantissa's top 27 bits) and the exact
        rest; both are summed per bin of sign and exponent by :func:`numpy.bincount`, in
        cache-sized passes. Every value of a bin is a multiple of the bin's unit and below
        2**27 units (high parts) or 2**26 units (rests), so for up to 2**26 values per bin
        the float sums are exact integers of units: nothing is ever rounded. The bins' sums
        then enter the big integer, one step per distinct exponent.

        >>> s = ExactSum(); s.add_floats([1e16, 1.0, -1e16]); s.value()
        1.0
        """
        arr = np.asarray(values if isinstance(values, np.ndarray) else list(values),
                         dtype=np.float64).ravel()
        if arr.size == 0:
            return
        self.has_float = True
        for lo in range(0, arr.size, _BLOCK):
            self.scaled += self._block(np.ascontiguousarray(arr[lo:lo + _BLOCK]))

    def _block(self, arr):
        """The exact sum of at most _BLOCK finite-or-not floats, scaled by 2**SCALE; notes
        any infinity or NaN (which enter no integer)."""
        n = arr.size
        bits = arr.view(np.uint64)
        sums_hi, sums_lo = np.zeros(_BINS), np.zeros(_BINS)
        m = min(n, _PASS)
        ebuf, hbuf, rbuf = np.empty(m, np.uint64), np.empty(m, np.uint64), np.empty(m)
        with np.errstate(invalid="ignore", over="ignore"):  # infinities are noted below
            for lo in range(0, n, _PASS):
                k = min(_PASS, n - lo)
                b = bits[lo:lo + k]
                e = np.right_shift(b, 52, out=ebuf[:k]).view(np.int64)  # sign, exponent
                h = np.bitwise_and(b, _HIGH_MASK, out=hbuf[:k]).view(np.float64)
                r = np.subtract(arr[lo:lo + k], h, out=rbuf[:k])  # exact: 26 low bits
                sums_hi += np.bincount(e, weights=h, minlength=_BINS)
                sums_lo += np.bincount(e, weights=r, minlength=_BINS)
        if sums_hi[_SPECIAL].any() or sums_lo[_SPECIAL].any():
            # An infinity or a NaN (whose bins are not finite): note them, sum the rest.
            finite = np.isfinite(arr)
            bad = arr[~finite]
            self.nan = self.nan or bool(np.isnan(bad).any())
            self.pos_inf = self.pos_inf or bool((bad == np.inf).any())
            self.neg_inf = self.neg_inf or bool((bad == -np.inf).any())
            return self._block(np.ascontiguousarray(arr[finite])) if finite.any() else 0
        if not (np.isfinite(sums_hi).all() and np.isfinite(sums_lo).all()):
            # A bin of huge values overflowed a float: sum those scaled down (exactly, by
            # a power of two) and shift their sum back up.
            big = np.abs(arr) >= _BIG
            return (self._block(np.ascontiguousarray(arr[~big]))
                    + (self._block(np.ascontiguousarray(arr[big]) * 2.0 ** -_BIG_SHIFT)
                       << _BIG_SHIFT))
        return _bins_to_int(sums_hi, _HI_OFFSET) + _bins_to_int(sums_lo, _LO_OFFSET)

    def merge(self, other):
        """Add ``other`` into this sum and return this sum (``other`` is unchanged).

        Raises ``TypeError`` for anything but an ExactSum. Cost: O(size of the integers).

        >>> ExactSum.of([1e20]).merge(ExactSum.of([1.0, -1e20])).value()
        1.0
        """
        if not isinstance(other, ExactSum):
            raise TypeError(f"ExactSum.merge takes an ExactSum, got {type(other).__name__}")
        self.scaled += other.scaled
        self.has_float = self.has_float or other.has_float
        self.pos_inf = self.pos_inf or other.pos_inf
        self.neg_inf = self.neg_inf or other.neg_inf
        self.nan = self.nan or other.nan
        return self

    def _special(self):
        if self.nan or (self.pos_inf and self.neg_inf):
            return math.nan
        if self.pos_inf:
            return math.inf
        if self.neg_inf:
            return -math.inf
        return None

    def value(self):
        """The correctly rounded sum: an int if only ints were added, else a float.

        Cost: one division of the integer (O(its size)).

        >>> ExactSum.of([2, 3]).value(), ExactSum.of([2, 3.0]).value()
        (5, 5.0)
        """
        special = self._special()
        if special is not None:
            return special
        if not self.has_float:
            return self.scaled >> SCALE
        return self.divided(1)

    def divided(self, count):
        """The correctly rounded float of the exact sum divided by ``count`` (a mean).

        Cost: one big-integer division.

        >>> ExactSum.of([0.1, 0.2, 0.3]).divided(3)
        0.2
        """
        special = self._special()
        if special is not None:
            return special
        if self.scaled == 0:
            return 0.0
        try:
            return self.scaled / ((1 << SCALE) * count)
        except OverflowError:
            return math.inf if self.scaled > 0 else -math.inf

    def __eq__(self, other):
        if not isinstance(other, ExactSum):
            return NotImplemented
        return self._state() == other._state()

    __hash__ = None

    def _state(self):
        return (self.scaled, self.has_float, self.pos_inf, self.neg_inf, self.nan)

    def __getstate__(self):
        return self._state()

    def __setstate__(self, state):
        self.scaled, self.has_float, self.pos_inf, self.neg_inf, self.nan = state

    def __mergeagg_fingerprint__(self):
        return ("ExactSum",) + self._state()

    def __repr__(self):
        return f"ExactSum({self.value()!r})"


# -- exact squares and moments ---------------------------------------------------------------

_SPLITTER = float((1 << 27) + 1)  # Veltkamp's constant: splits 53 bits into 26 + 26 and a sign
# Values are scaled by an exact power of two into [2**-400, 2**430), where the three partial
# products of a square neither overflow nor fall below 2**-1074 (their last bits stay exact).
_SMALL, _LARGE = 2.0 ** -400, 2.0 ** 400
_SCALE_UP, _SCALE_DOWN = 674, -600  # tiny values: times 2**674; huge ones: times 2**-600


def _scaled_square_sum(y):
    """The exact sum of ``y*y`` for floats in [2**-400, 2**430) (or zero), as ExactSum's
    scaled integer (units of ``2**-SCALE``).

    Veltkamp's split writes ``y = hi + lo`` with at most 26 significant bits in each, so
    ``hi*hi``, ``2*hi*lo`` and ``lo*lo`` are exact floats whose sum is ``y*y``."""
    c = y * _SPLITTER
    hi = c - (c - y)
    lo = y - hi
    s = ExactSum()
    s.add_floats(np.concatenate((hi * hi, (2.0 * hi) * lo, lo * lo)))
    return s.scaled


def exact_square_sum(values):
    """The exact sum of the squares of finite floats, scaled by ``2**SQUARE_SCALE`` (an int).

    Cost: about four :meth:`ExactSum.add_floats` passes over the values (O(n) in numpy).
    Infinities and NaNs must be removed first (``ValueError`` otherwise).

    >>> from fractions import Fraction
    >>> exact_square_sum([0.1]) == Fraction(0.1) ** 2 * 2 ** SQUARE_SCALE
    True
    >>> exact_square_sum([5e-324, 1e300]) == (
    ...     Fraction(5e-324) ** 2 + Fraction(1e300) ** 2) * 2 ** SQUARE_SCALE
    True
    """
    arr = np.abs(np.asarray(values, dtype=np.float64).ravel())
    if not np.isfinite(arr).all():
        raise ValueError("exact_square_sum takes finite floats; remove infinities and NaNs")
    tiny, huge = arr < _SMALL, arr >= _LARGE
    total = _scaled_square_sum(arr[~(tiny | huge)]) << (SQUARE_SCALE - SCALE)
    for mask, k in ((tiny, _SCALE_UP), (huge, _SCALE_DOWN)):
        if mask.any():
            # sum of (x * 2**k)**2 = 2**(2k) * sum of x*x; the shift below is exact.
            part = _scaled_square_sum(arr[mask] * 2.0 ** k)
            shift = SQUARE_SCALE - SCALE - 2 * k
            total += part << shift if shift >= 0 else part >> -shift
    return total


def _sqrt_ratio(num, den):
    """The correctly rounded float square root of ``num / den`` (ints, ``num >= 0``).

    The integer square root is taken with at least 59 bits and its last bit set when
    inexact (rounding to odd), so the one rounding to a float that follows is correct."""
    if num == 0:
        return 0.0
    s = (120 - num.bit_length() + den.bit_length()) // 2
    if s >= 0:
        q, rem = divmod(num << (2 * s), den)
    else:
        q, rem = divmod(num, den << (-2 * s))
    r = math.isqrt(q)
    if rem or r * r != q:
        r |= 1
    try:
        return r / (1 << s) if s >= 0 else float(r << -s)
    except OverflowError:
        return math.inf


class ExactMoments:
    """Count, exact sum and exact sum of squares of ints and floats; a variance rounded once.

    Cost: about five numpy passes per float added (:func:`exact_square_sum` and
    :meth:`ExactSum.add_floats`); O(size of the integers) per merge; memory: two integers
    of a few thousand bits. The variance is the correctly rounded float of the exact
    variance of the values, so it is the same bits for every sharding, tree and failure.
    Any infinity or NaN makes the variance NaN.

    >>> a, b = ExactMoments.of([1, 2.5]), ExactMoments.of([4])
    >>> whole = a.merge(b)  # the values 1, 2.5 and 4
    >>> whole.variance(ddof=0), whole.variance(ddof=1), whole.variance(ddof=1, stddev=True)
    (1.5, 2.25, 1.5)
    """

    __slots__ = ("n", "total", "squares")

    def __init__(self):
        self.n = 0
        self.total = ExactSum()
        self.squares = 0  # the sum of squares of the finite values, times 2**SQUARE_SCALE

    @classmethod
    def of(cls, values):
        """ExactMoments of an iterable of ints and floats. Cost: O(n).

        >>> ExactMoments.of([3, 5]).variance(ddof=1)
        2.0
        """
        return _of(cls(), values)

    def add_ints(self, values):
        """Add Python ints exactly. Cost: O(n) int multiplications and additions."""
        values = list(values)
        self.n += len(values)
        self.total.add_ints(values)
        self.squares += sum(v * v for v in values) << SQUARE_SCALE

    def add_floats(self, values):
        """Add floats (an iterable or a numpy array) exactly. Cost: O(n) in numpy."""
        arr = np.asarray(values if isinstance(values, np.ndarray) else list(values),
                         dtype=np.float64).ravel()
        if arr.size == 0:
            return
        self.n += int(arr.size)
        self.total.add_floats(arr)
        finite = np.isfinite(arr)
        self.squares += exact_square_sum(arr if finite.all() else arr[finite])

    def merge(self, other):
        """Add ``other`` into these moments and return them (``other`` is unchanged).

        Raises ``TypeError`` for anything but ExactMoments. Cost: O(size of the integers).

        >>> ExactMoments.of([1.0]).merge(ExactMoments.of([3.0])).variance(ddof=1)
        2.0
        """
        if not isinstance(other, ExactMoments):
            raise TypeError(
                f"ExactMoments.merge takes ExactMoments, got {type(other).__name__}")
        self.n += other.n
        self.total.merge(other.total)
        self.squares += other.squares
        return self

    def variance(self, ddof=1, stddev=False):
        """The correctly rounded variance (``stddev``: its correctly rounded square root),
        dividing by ``n - ddof``; ``None`` when ``n <= ddof``. Cost: a few big-int steps.

        >>> from fractions import Fraction
        >>> ExactMoments.of([1e16, 1.0, -1e16]).variance(ddof=0) == float(
        ...     Fraction(2 * 10**32 + 1, 3) - Fraction(1, 9))
        True
        """
        n = self.n
        if n - ddof <= 0:
            return None
        if self.total._special() is not None:
            return math.nan
        # n * sum(x^2) - sum(x)^2, both in units of 2**-(2 * SCALE)
        num = n * (self.squares << (2 * SCALE - SQUARE_SCALE)) - self.total.scaled ** 2
        den = (n * (n - ddof)) << (2 * SCALE)
        if stddev:
            return _sqrt_ratio(num, den)
        if num == 0:
            return 0.0
        try:
            return num / den
        except OverflowError:
            return math.inf

    def __eq__(self, other):
        if not isinstance(other, ExactMoments):
            return NotImplemented
        return self._state() == other._state()

    __hash__ = None

    def _state(self):
        return (self.n, self.total._state(), self.squares)

    def __getstate__(self):
        return self._state()

    def __setstate__(self, state):
        self.n, total, self.squares = state
        self.total = ExactSum()
        self.total.__setstate__(total)

    def __mergeagg_fingerprint__(self):
        return ("ExactMoments",) + self._state()

    def __repr__(self):
        return f"ExactMoments(n={self.n}, variance={self.variance(ddof=0)!r})"


def _of(acc, values):
    """``acc`` (an ExactSum or ExactMoments) with ``values``, ints and floats, added."""
    ints, floats = [], []
    for v in values:
        (floats if isinstance(v, float) else ints).append(v)
    acc.add_ints(ints)
    acc.add_floats(floats)
    return acc
