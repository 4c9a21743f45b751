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
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["ExactSum", "SCALE"]

SCALE = 1127  # 1074 (the smallest subnormal's exponent) + 53 (frexp's mantissa bits)
_CHUNK = 1024  # |mantissa| < 2**53, so 1024 of them sum within int64


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
        s = cls()
        ints, floats = [], []
        for v in values:
            (floats if isinstance(v, float) else ints).append(v)
        s.add_ints(ints)
        s.add_floats(floats)
        return s

    def add_ints(self, values):
        """Add Python ints (or bools) exactly. Cost: O(n) int additions.

        >>> s = ExactSum(); s.add_ints([2, 3]); s.value()
        5
        """
        self.scaled += sum(values) << SCALE

    def add_floats(self, values):
        """Add floats (any iterable, or a numpy float array) exactly. Cost: O(n) in numpy.

        >>> s = ExactSum(); s.add_floats([1e16, 1.0, -1e16]); s.value()
        1.0
        """
        arr = np.asarray(values if isinstance(values, np.ndarray) else list(values),
                         dtype=np.float64).ravel()
        if arr.size == 0:
            return
        self.has_float = True
        finite = np.isfinite(arr)
        if not finite.all():
            bad = arr[~finite]
            self.nan = self.nan or bool(np.isnan(bad).any())
            self.pos_inf = self.pos_inf or bool((bad == np.inf).any())
            self.neg_inf = self.neg_inf or bool((bad == -np.inf).any())
            arr = arr[finite]
            if arr.size == 0:
                return
        mant, exp = np.frexp(arr)
        mant = np.ldexp(mant, 53).astype(np.int64)
        total = 0
        for lo in range(0, arr.size, _CHUNK):
            m, e = mant[lo:lo + _CHUNK], exp[lo:lo + _CHUNK]
            order = np.argsort(e, kind="stable")
            e, m = e[order], m[order]
            starts = np.concatenate(([0], np.flatnonzero(np.diff(e)) + 1))
            sums = np.add.reduceat(m, starts)
            for ex, sm in zip(e[starts].tolist(), sums.tolist()):
                if sm:
                    total += sm << (ex + 1074)
        self.scaled += total

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
