"""Theta sketch: distinct counts that take unions, intersections and differences.

Each key is hashed to 63 bits. The sketch keeps ``theta`` (a threshold in ``(0, 2**63)``)
and every distinct hash below it, at most ``k = 2**lg_k`` of them: once more than ``k``
hashes are below theta, theta becomes the ``k + 1``-th smallest and only the ``k``
smallest stay (a *KMV* sketch). The estimate is ``retained / (theta / 2**63)``, with a
relative standard error of about ``1 / sqrt(k)``.

**Order independence.** An updated sketch holds exactly the ``k`` smallest hashes of its
keys, whatever the order they came in; a union keeps the hashes below the smaller theta
and trims to the ``k`` smallest the same way, so every union of the same sketches is the
same sketch, byte for byte, whatever the merge order or tree (DataSketches' update sketch
keeps a hash table of up to about ``2k`` entries whose content depends on the order).
Intersections (:meth:`ThetaSketch.intersection`) and differences
(:meth:`ThetaSketch.a_not_b`) keep the smaller theta and the hashes that pass the set test.

``hash="datasketches"`` hashes keys as Apache DataSketches does (MurmurHash3 x64-128 of the
key's bytes with seed 9001, an int as its 8 bytes), so a sketch exchanged with DataSketches
(:mod:`mergeagg.algorithms._datasketches`) counts shared keys once. It is not the default:
it hashes integers about twice as slowly, skips the empty string, and the default keeps the
one hash identity every other mergeagg sketch uses.

>>> a = ThetaSketch(lg_k=12).update(range(0, 6000))
>>> b = ThetaSketch(lg_k=12).update(range(3000, 9000))
>>> round(a.union(b).estimate()), round(a.intersection(b).estimate())
(8956, 3032)
>>> round(a.jaccard(b), 2)
0.33
"""

from __future__ import annotations

import base64
import functools
import math
import struct

import numpy as np

from mergeagg.aggregator import Aggregator
from mergeagg.algorithms._sketch import (
    DS_SEED,
    HASH_DS,
    HASH_ID,
    Sketch,
    check_hash,
    check_int,
    check_params,
    check_seed,
    hash64,
    hash128_ds,
    iter_hashes,
    merge_into,
    records_of,
)
from mergeagg.algorithms.registry import Entry, Flag

__all__ = ["ThetaSketch", "theta", "MAX_THETA"]

MAX_THETA = (1 << 63) - 1
"""Theta of a sketch that has not sampled: every hash (63 bits, below 2**63) is kept."""
_MIN_LG_K, _MAX_LG_K = 5, 26
_U = np.uint64
_DS_CHUNK = 1 << 16


class ThetaSketch(Sketch):
    """A theta (KMV) sketch keeping up to ``2**lg_k`` hashes (``lg_k`` from 5 to 26).

    Memory: ``8 * 2**lg_k`` bytes at most (32 KiB at the default ``lg_k=12``). Update:
    ~10 ns per int key of a numpy array (hash, then a compare: few keys pass once theta
    has fallen). Relative standard error of :meth:`estimate`: about ``1 / sqrt(2**lg_k)``
    (1.6% at ``lg_k=12``); exact below ``2**lg_k`` keys. Merge (union): O(k).

    >>> a = ThetaSketch(lg_k=5).update(range(100))
    >>> b = ThetaSketch(lg_k=5).update(range(50, 150))
    >>> a.copy().merge(b) == b.copy().merge(a) == ThetaSketch(lg_k=5).update(range(150))
    True
    >>> ThetaSketch().update(["x", "y", "x"]).estimate()
    2.0
    """

    KIND = 5
    HASHES = (HASH_ID, HASH_DS)
    __slots__ = ("lg_k", "seed", "hash", "theta", "hashes")

    def __init__(self, lg_k=12, seed=None, hash="mergeagg"):
        self.lg_k = check_int("lg_k", lg_k, _MIN_LG_K, _MAX_LG_K)
        self.hash = check_hash(hash)
        if seed is None:
            seed = DS_SEED if self.hash == HASH_DS else 0
        self.seed = check_seed(seed)
        self.theta = MAX_THETA
        self.hashes = np.empty(0, dtype=np.uint64)

    def params(self):
        """The parameters that must match for a merge. Cost: O(1).

        >>> ThetaSketch(lg_k=5).params()
        {'lg_k': 5, 'seed': 0, 'hash': 'mm3x64+sm64/1', 'format': 1}
        """
        return {"lg_k": self.lg_k, "seed": self.seed, "hash": self.hash, "format": 1}

    @property
    def k(self):
        """The nominal number of hashes kept, ``2**lg_k``."""
        return 1 << self.lg_k

    def _state(self):
        return (np.array([self.theta], dtype=np.uint64), self.hashes)

    # -- updates -------------------------------------------------------------------------
    def _hash63(self, items):
        if self.hash == HASH_DS:
            return hash128_ds(items, self.seed)[0] >> _U(1)
        return hash64(items, self.seed) >> _U(1)

    def add(self, item):
        """Add one key (str, bytes or int; also float with ``hash="datasketches"``).

        Cost: one hash and O(k) when the hash is kept.

        >>> ThetaSketch().add("a").add("a").estimate()
        1.0
        """
        self._absorb(self._hash63([item]))
        return self

    def update(self, items):
        """Add every key of an iterable or a numpy array; returns ``self``.

        Cost: ~10 ns per int key of a numpy array with the default hash (most hashes
        fail one compare with theta), ~25 ns with ``hash="datasketches"``.

        >>> ThetaSketch(lg_k=5).update(np.arange(1000)).num_retained
        32
        """
        if self.hash == HASH_DS:
            if not isinstance(items, (list, tuple, np.ndarray)):
                items = list(items)
            chunks = (self._hash63(items[lo:lo + _DS_CHUNK])
                      for lo in range(0, len(items), _DS_CHUNK))
        else:
            shift = _U(1)
            chunks = (h >> shift for _, h in iter_hashes(items, self.seed))
        # Hashes below theta wait in ``pending`` until there are k of them: one sort per k
        # candidates, not one per chunk (theta only falls, so a stale theta passes extra
        # hashes and never drops one that belongs).
        pending, waiting = [], 0
        for h in chunks:
            h = h[h < _U(self.theta)]
            if h.shape[0]:
                pending.append(h)
                waiting += h.shape[0]
            if waiting >= self.k:
                self._absorb(np.concatenate(pending))
                pending, waiting = [], 0
        if pending:
            self._absorb(np.concatenate(pending))
        return self

    def _absorb(self, h):
        """Keep the distinct hashes below theta among ``h``, then trim to the k smallest."""
        h = h[(h < _U(self.theta)) & (h != _U(0))]
        if h.shape[0] == 0:
            return
        both = np.union1d(self.hashes, h) if self.hashes.shape[0] else np.unique(h)
        self._set(self.theta, both)

    def _set(self, theta, hashes):
        """Set theta and a sorted distinct hash array below it, trimmed to k hashes."""
        k = self.k
        if hashes.shape[0] > k:
            theta = int(hashes[k])
            hashes = hashes[:k]
        self.theta = int(theta)
        self.hashes = hashes.copy() if hashes.base is not None else hashes

    def _merge(self, other):
        theta = min(self.theta, other.theta)
        mine = self.hashes[self.hashes < _U(theta)]
        theirs = other.hashes[other.hashes < _U(theta)]
        self._set(theta, np.union1d(mine, theirs))

    # -- set operations --------------------------------------------------------------------
    def union(self, other):
        """A new sketch of the union of the two key sets. Cost: O(k).

        Byte-identical for any order and grouping of the same sketches.

        >>> a, b = ThetaSketch().update([1, 2]), ThetaSketch().update([2, 3])
        >>> a.union(b).estimate(), a.estimate()
        (3.0, 2.0)
        """
        return self.copy().merge(other)

    def intersection(self, other):
        """A new sketch of the keys in both: the smaller theta, the hashes in both below it.

        Cost: O(k). Its error grows as the intersection shrinks relative to the union
        (about ``sqrt(union / (k * intersection))`` relative).

        >>> ThetaSketch().update([1, 2, 3]).intersection(ThetaSketch().update([2, 3, 4])
        ...                                             ).estimate()
        2.0
        """
        check_params(self, other)
        theta = min(self.theta, other.theta)
        both = np.intersect1d(self.hashes, other.hashes, assume_unique=True)
        out = self._empty_like()
        out.theta = theta
        out.hashes = both[both < _U(theta)]
        return out

    def a_not_b(self, other):
        """A new sketch of the keys in this sketch and not in ``other``. Cost: O(k).

        >>> ThetaSketch().update([1, 2, 3]).a_not_b(ThetaSketch().update([2])).estimate()
        2.0
        """
        check_params(self, other)
        theta = min(self.theta, other.theta)
        only = np.setdiff1d(self.hashes, other.hashes, assume_unique=True)
        out = self._empty_like()
        out.theta = theta
        out.hashes = only[only < _U(theta)]
        return out

    def jaccard(self, other):
        """Estimated Jaccard similarity ``|A & B| / |A | B|`` (1.0 for two empty sketches).

        Computed on the union's sample: the share of its hashes found in both. Cost: O(k);
        standard error about ``sqrt(J (1 - J) / k)``.

        >>> ThetaSketch().update([1, 2, 3]).jaccard(ThetaSketch().update([2, 3, 4]))
        0.5
        """
        u = self.union(other)
        if u.hashes.shape[0] == 0:
            return 1.0
        both = np.intersect1d(self.hashes, other.hashes, assume_unique=True)
        shared = np.isin(u.hashes, both, assume_unique=True).sum()
        return float(shared) / u.hashes.shape[0]

    def _empty_like(self):
        return ThetaSketch(self.lg_k, self.seed, "datasketches" if self.hash == HASH_DS
                           else "mergeagg")

    # -- queries -------------------------------------------------------------------------
    @property
    def num_retained(self):
        """Hashes kept. Cost: O(1).

        >>> ThetaSketch(lg_k=5).update(range(100)).num_retained
        32
        """
        return int(self.hashes.shape[0])

    @property
    def theta_fraction(self):
        """Theta as a sampling rate in ``(0, 1]``. Cost: O(1).

        >>> ThetaSketch().theta_fraction
        1.0
        """
        return self.theta / MAX_THETA

    def is_empty(self):
        """True when the sketch saw no key (nor sampled any away). Cost: O(1).

        >>> ThetaSketch().is_empty(), ThetaSketch().add(1).is_empty()
        (True, False)
        """
        return self.theta == MAX_THETA and self.hashes.shape[0] == 0

    def is_estimation_mode(self):
        """True when theta has fallen below 1 (the count is an estimate). Cost: O(1).

        >>> ThetaSketch(lg_k=5).update(range(32)).is_estimation_mode()
        False
        """
        return self.theta < MAX_THETA

    def estimate(self):
        """The estimated number of distinct keys. Cost: O(1).

        Exact while fewer than ``2**lg_k`` distinct keys were added.

        >>> ThetaSketch(lg_k=5).update(range(20)).estimate()
        20.0
        """
        return self.num_retained / self.theta_fraction

    def lower_bound(self, num_std=2):
        """A lower bound on the distinct count at ``num_std`` standard deviations (1-3).

        The retained count is binomial with rate ``theta``; the bound is the normal
        approximation of its interval, never below the retained count. Cost: O(1).

        >>> ThetaSketch().update(range(10)).lower_bound()
        10.0
        """
        return self._bound(num_std, -1)

    def upper_bound(self, num_std=2):
        """An upper bound on the distinct count at ``num_std`` standard deviations (1-3).

        Cost: O(1). See :meth:`lower_bound`.

        >>> ThetaSketch().update(range(10)).upper_bound()
        10.0
        """
        return self._bound(num_std, 1)

    def _bound(self, num_std, sign):
        num_std = check_int("num_std", num_std, 1, 3)
        count = self.num_retained
        if not self.is_estimation_mode():
            return float(count)
        p = self.theta_fraction
        est = count / p
        spread = num_std * math.sqrt(max(count, 1) * (1.0 - p)) / p
        if sign < 0:
            return max(float(count), est - spread)
        return est + spread

    def _check(self):
        """Assert every invariant (for tests, after each mutation)."""
        h = self.hashes
        assert h.dtype == np.uint64 and 0 < self.theta <= MAX_THETA
        assert (h[1:] > h[:-1]).all()  # increasing, so distinct
        assert h.shape[0] == 0 or (int(h[-1]) < self.theta and int(h[0]) > 0)

    def __len__(self):
        return round(self.estimate())

    # -- bytes ---------------------------------------------------------------------------
    def _encode(self):
        return (struct.pack("<BQI", self.lg_k, self.theta, self.hashes.shape[0])
                + self.hashes.astype("<u8").tobytes())

    @classmethod
    def _decode(cls, payload, seed, hash=HASH_ID):
        fixed = struct.calcsize("<BQI")
        if len(payload) < fixed:
            raise ValueError("corrupt ThetaSketch bytes: the payload is shorter than its header")
        lg_k, theta_v, count = struct.unpack_from("<BQI", payload)
        if not _MIN_LG_K <= lg_k <= _MAX_LG_K or not 0 < theta_v <= MAX_THETA:
            raise ValueError(f"corrupt ThetaSketch bytes: lg_k {lg_k} or theta {theta_v} out "
                             "of range")
        if len(payload) != fixed + 8 * count:
            raise ValueError(f"corrupt ThetaSketch bytes: expected {fixed + 8 * count} bytes "
                             f"of payload, got {len(payload)}")
        hashes = np.frombuffer(payload, dtype="<u8", offset=fixed).astype(np.uint64)
        sk = cls(lg_k, seed, "datasketches" if hash == HASH_DS else "mergeagg")
        if count and ((np.diff(hashes) <= 0).any() or int(hashes[-1]) >= theta_v
                      or int(hashes[0]) == 0):
            raise ValueError("corrupt ThetaSketch bytes: hashes are not increasing, zero, or "
                             "at or above theta")
        sk.theta, sk.hashes = int(theta_v), hashes
        return sk

    def to_datasketches(self):
        """The sketch as an Apache DataSketches compact theta image (ordered, serial version
        3), which ``datasketches.compact_theta_sketch.deserialize`` reads. Needs
        ``hash="datasketches"``. Cost: O(retained).

        >>> sk = ThetaSketch(lg_k=5, hash="datasketches").update(range(10))
        >>> ThetaSketch.from_datasketches(sk.to_datasketches(), lg_k=5) == sk
        True
        """
        from mergeagg.algorithms._datasketches import theta_image

        return theta_image(self)

    @classmethod
    def from_datasketches(cls, data, lg_k=12, seed=DS_SEED):
        """The sketch in an Apache DataSketches compact theta image, kept at size ``lg_k``
        (an image does not record it), hashed with ``seed`` (checked against the image's
        seed hash). Cost: O(retained log retained).

        >>> ThetaSketch.from_datasketches(b"\\x01\\x03\\x03\\x00\\x00\\x1e\\xcc\\x93").is_empty()
        True
        """
        from mergeagg.algorithms._datasketches import theta_from_image

        return theta_from_image(data, lg_k, seed)

    def to_jsonable(self):
        """A JSON-ready summary: parameters, estimate, bounds and the bytes in base64."""
        return {"kind": "ThetaSketch", "params": self.params(), "estimate": self.estimate(),
                "lower_bound": self.lower_bound(), "upper_bound": self.upper_bound(),
                "theta": self.theta_fraction,
                "bytes_base64": base64.b64encode(self.to_bytes()).decode("ascii")}

    def __repr__(self):
        return (f"ThetaSketch(lg_k={self.lg_k}, seed={self.seed}, estimate="
                f"{self.estimate():.6g}, retained={self.num_retained})")


def _theta_partial(lg_k, seed, hash_name, shard):
    return ThetaSketch(lg_k, seed, hash_name).update(records_of(shard))


def theta(lg_k=12, seed=None, hash="mergeagg"):
    """An Aggregator whose value is the :class:`ThetaSketch` of every record (line).

    Cost: one bulk update per shard, O(k) per combine; the result is byte-identical for
    any split and fold tree.

    >>> theta(lg_k=5).reduce([["a", "b"], ["b", "c"]]).estimate()
    3.0
    """
    check_int("lg_k", lg_k, _MIN_LG_K, _MAX_LG_K)
    check_hash(hash)
    if seed is not None:
        check_seed(seed)
    return Aggregator(functools.partial(_theta_partial, lg_k, seed, hash), merge_into,
                      name="theta")


def _summarize(value, params):
    est = value.estimate()
    if not value.is_estimation_mode():
        return [f"{est:,.0f} distinct records (exact: theta sketch lg_k={value.lg_k})"]
    return [f"~{est:,.0f} distinct records (theta sketch lg_k={value.lg_k}; 95% within "
            f"{value.lower_bound(2):,.0f} .. {value.upper_bound(2):,.0f})"]


ENTRY = Entry(
    name="theta",
    summary="estimate the number of distinct lines with a theta sketch (set operations)",
    factory=theta,
    flags=(
        Flag("--lg-k", type=int, default=12, help="log2 of the hashes kept (5..26)"),
        Flag("--seed", type=int, default=None, help="hash seed (default 0; 9001 with "
                                                    "--hash datasketches)"),
        Flag("--hash", type=str, default="mergeagg", choices=("mergeagg", "datasketches"),
             help="hash keys as mergeagg (default) or as Apache DataSketches does"),
    ),
    summarize=_summarize,
)
