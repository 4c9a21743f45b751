"""MinHash signatures and an LSH index: set similarity in ``8 * num_perm`` bytes per set.

A :class:`MinHash` keeps, for each of ``num_perm`` seeded permutations of the 64-bit key
hashes (``x -> a*x + b mod 2**64`` with odd ``a``: a bijection, so it adds no collisions),
the smallest permuted value seen. Two signatures agree in a slot with probability equal to
the Jaccard similarity of their sets, so the fraction of agreeing slots estimates it with
standard error ``sqrt(J (1 - J) / num_perm)``. Merge is the element-wise minimum: the
signature of a union is exactly the merge of the signatures.

:class:`LSHIndex` cuts signatures into ``bands`` of ``rows`` slots; two sets share a bucket
in some band with probability ``1 - (1 - J**rows)**bands`` (the S-curve). Bands and rows
are chosen for a Jaccard threshold by weighing false positives against false negatives
(:func:`optimal_bands`), and bucket tables merge by union, so an index is itself built as a
mergeable aggregation.

>>> a = MinHash(num_perm=128).update([f"w{i}" for i in range(100)])
>>> b = MinHash(num_perm=128).update([f"w{i}" for i in range(20, 120)])
>>> abs(a.jaccard(b) - 80 / 120) < 3 * (2 / 9 / 128) ** 0.5
True
>>> lsh = LSHIndex(threshold=0.5, num_perm=128)
>>> sorted(lsh.insert("a", a).insert("b", b).query(b))
['a', 'b']
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import functools
import itertools
import json
import math
import os
import struct

import numpy as np

from mergeagg import inputs as _inputs
from mergeagg.aggregator import Aggregator
from mergeagg.algorithms._sketch import (
    HASH_ID,
    Sketch,
    check_int,
    check_params,
    check_seed,
    expect_len,
    hash64,
    merge_into,
    records_of,
    seed_stream,
)
from mergeagg.algorithms.registry import Entry, Flag

__all__ = ["MinHash", "LSHIndex", "signatures", "optimal_bands", "s_curve", "minhash",
           "similarity", "similarity_source", "Similarity"]

_EMPTY = np.uint64((1 << 64) - 1)
_BLOCK = 1 << 12  # hashes per (num_perm x block) step: about 4 MiB at 128 permutations
_MAX_PERM = 1 << 16


@functools.lru_cache(maxsize=32)
def _permutations(num_perm, seed):
    stream = seed_stream(seed, 2 * num_perm, salt=3)
    a = np.array([v | 1 for v in stream[::2]], dtype=np.uint64)[:, None]
    b = np.array(stream[1::2], dtype=np.uint64)[:, None]
    a.flags.writeable = False
    b.flags.writeable = False
    return a, b


def _permuted(h, a, b, buf):
    """``a*h + b`` as a (k, len(h)) array written into the scratch buffer ``buf``."""
    m = buf[: a.shape[0] * h.shape[0]].reshape(a.shape[0], h.shape[0])
    np.multiply(a, h[None, :], out=m)
    m += b
    return m


def _min_permuted(h, a, b, buf=None):
    """Per permutation, the minimum of ``a*h + b`` over the hashes ``h`` (shape (k,))."""
    out = np.full(a.shape[0], _EMPTY, dtype=np.uint64)
    if buf is None:
        buf = np.empty(a.shape[0] * min(_BLOCK, h.shape[0]), dtype=np.uint64)
    for lo in range(0, h.shape[0], _BLOCK):
        m = _permuted(h[lo:lo + _BLOCK], a, b, buf)
        np.minimum(out, m.min(axis=1), out=out)
    return out


def signatures(docs, num_perm=128, seed=0):
    """MinHash signatures of many documents at once, as a ``(len(docs), num_perm)`` array.

    Each document is an iterable of keys (str, bytes or int: shingles, tokens, ids). All
    keys of all documents are hashed in one vectorised call, then every permutation is
    applied to a block of keys at a time and reduced per document (``minimum.reduceat``).
    Cost: ~2-3 ns per key and permutation, plus hashing; an empty document gets the
    all-``2**64 - 1`` signature of an empty MinHash.

    >>> sig = signatures([["a", "b"], ["b", "a"], []], num_perm=4)
    >>> bool((sig[0] == sig[1]).all()), sig.shape
    (True, (3, 4))
    """
    num_perm = check_int("num_perm", num_perm, 1, _MAX_PERM)
    seed = check_seed(seed)
    if isinstance(docs, (str, bytes)):
        raise TypeError("signatures() takes a list of documents (each an iterable of keys)")
    docs = [d if isinstance(d, (list, tuple, np.ndarray)) else list(d) for d in docs]
    n = len(docs)
    lens = np.fromiter(map(len, docs), dtype=np.int64, count=n)
    out = np.full((n, num_perm), _EMPTY, dtype=np.uint64)
    if n == 0 or not lens.any():
        return out
    if all(isinstance(d, np.ndarray) for d in docs):
        h = hash64(np.concatenate(docs), seed)
    else:
        h = hash64(list(itertools.chain.from_iterable(docs)), seed)
    a, b = _permutations(num_perm, seed)
    buf = np.empty(num_perm * min(_BLOCK, h.shape[0]), dtype=np.uint64)
    starts = np.cumsum(lens) - lens
    nonempty = np.flatnonzero(lens)
    # Blocks of whole documents, about _BLOCK keys each (a longer document is one block).
    i = 0
    while i < nonempty.shape[0]:
        first = start = int(starts[nonempty[i]])
        j = i
        while j < nonempty.shape[0] and (j == i or int(starts[nonempty[j]]) + int(
                lens[nonempty[j]]) - first <= _BLOCK):
            j += 1
        docs_here = nonempty[i:j]
        end = int(starts[docs_here[-1]] + lens[docs_here[-1]])
        if j == i + 1 and end - start > _BLOCK:
            out[docs_here[0]] = _min_permuted(h[start:end], a, b, buf)
        else:
            m = _permuted(h[start:end], a, b, buf)
            out[docs_here] = np.minimum.reduceat(m, starts[docs_here] - start, axis=1).T
        i = j
    return out


class MinHash(Sketch):
    """A MinHash signature of ``num_perm`` 64-bit minima.

    Memory: ``8 * num_perm`` bytes (1 KiB at 128). Update: ~2-3 ns per key and permutation
    for batches (about 0.3-0.4 us per key at 128 permutations), plus hashing. Jaccard
    estimate: standard error ``sqrt(J (1 - J) / num_perm)``. Merge: O(num_perm).

    >>> a = MinHash(num_perm=16, seed=2).update(["x", "y"])
    >>> b = MinHash(num_perm=16, seed=2).update(["y", "z"])
    >>> a.copy().merge(b) == MinHash(num_perm=16, seed=2).update(["x", "y", "z"])
    True
    >>> a.jaccard(a)
    1.0
    """

    KIND = 3
    __slots__ = ("num_perm", "seed", "hashvalues")

    def __init__(self, num_perm=128, seed=0):
        self.num_perm = check_int("num_perm", num_perm, 1, _MAX_PERM)
        self.seed = check_seed(seed)
        self.hashvalues = np.full(self.num_perm, _EMPTY, dtype=np.uint64)

    def params(self):
        """The parameters that must match for a merge or a comparison. Cost: O(1).

        >>> MinHash(num_perm=8).params()
        {'num_perm': 8, 'seed': 0, 'hash': 'mm3x64+sm64/1', 'format': 1}
        """
        return {"num_perm": self.num_perm, "seed": self.seed, "hash": HASH_ID, "format": 1}

    def _state(self):
        return (self.hashvalues,)

    def _update_hashes(self, h):
        a, b = _permutations(self.num_perm, self.seed)
        np.minimum(self.hashvalues, _min_permuted(h, a, b), out=self.hashvalues)

    def _merge(self, other):
        np.minimum(self.hashvalues, other.hashvalues, out=self.hashvalues)

    def _check(self):
        """Assert every invariant (for tests, after each mutation)."""
        assert self.hashvalues.dtype == np.uint64 and self.hashvalues.shape == (self.num_perm,)

    def is_empty(self):
        """True if no key was ever added. Cost: O(num_perm).

        >>> MinHash(num_perm=4).is_empty()
        True
        """
        return bool((self.hashvalues == _EMPTY).all())

    def jaccard(self, other):
        """Estimated Jaccard similarity with ``other`` (same parameters, else an error).

        Cost: O(num_perm). Two empty signatures compare as 1.0.

        >>> MinHash(num_perm=8).update([1, 2]).jaccard(MinHash(num_perm=8).update([3, 4]))
        0.0
        """
        check_params(self, other)
        return float(np.count_nonzero(self.hashvalues == other.hashvalues)) / self.num_perm

    def count(self):
        """Estimated number of distinct keys (about ``1/sqrt(num_perm)`` relative error).

        >>> est = MinHash(num_perm=256).update(range(1000)).count()
        >>> abs(est - 1000) < 3 * 1000 / 16
        True
        """
        if self.is_empty():
            return 0.0
        u = (self.hashvalues.astype(np.float64) + 1.0) / 2.0**64
        return float(self.num_perm / u.sum() - 1.0)

    @classmethod
    def bulk(cls, docs, num_perm=128, seed=0):
        """One MinHash per document (each an iterable of keys), computed in one batch.

        Cost: as :func:`signatures`, plus one small object per document.

        >>> [m.is_empty() for m in MinHash.bulk([["a"], []], num_perm=4)]
        [False, True]
        """
        sig = signatures(docs, num_perm, seed)
        out = []
        for row in sig:
            m = cls(num_perm, seed)
            m.hashvalues = row.copy()
            out.append(m)
        return out

    def _encode(self):
        return struct.pack("<I", self.num_perm) + self.hashvalues.astype("<u8").tobytes()

    @classmethod
    def _decode(cls, payload, seed):
        if len(payload) < 4:
            raise ValueError("corrupt MinHash bytes: the payload is shorter than its size")
        (num_perm,) = struct.unpack_from("<I", payload)
        if not 1 <= num_perm <= _MAX_PERM:
            raise ValueError(f"corrupt MinHash bytes: num_perm {num_perm} out of range")
        expect_len(payload, 4 + 8 * num_perm, "MinHash")
        sk = cls(num_perm, seed)
        sk.hashvalues = np.frombuffer(payload, dtype="<u8", offset=4).astype(np.uint64)
        return sk

    def to_jsonable(self):
        """A JSON-ready summary: parameters, distinct-count estimate, bytes in base64."""
        return {"kind": "MinHash", "params": self.params(), "estimate": self.count(),
                "bytes_base64": base64.b64encode(self.to_bytes()).decode("ascii")}

    def __repr__(self):
        return f"MinHash(num_perm={self.num_perm}, seed={self.seed})"


# -- LSH ----------------------------------------------------------------------------------


def s_curve(j, bands, rows):
    """Probability that two sets of Jaccard ``j`` share a bucket: ``1-(1-j**r)**b``.

    >>> round(float(s_curve(0.8, 16, 8)), 3)
    0.947
    """
    return 1.0 - (1.0 - np.asarray(j, dtype=np.float64) ** rows) ** bands


def optimal_bands(threshold, num_perm, fp_weight=0.5, fn_weight=0.5, *, recall=0.975,
                  margin=0.1):
    """``(bands, rows)`` with ``bands * rows <= num_perm`` minimising the weighted error.

    The error is ``fp_weight * FP + fn_weight * FN``, where FP is the area under the
    S-curve below ``threshold`` (pairs below it that become candidates) and FN the area
    above the curve beyond it (pairs above it that are missed). Among the choices, only
    those whose S-curve reaches ``recall`` at ``threshold + margin`` are considered (if any
    does), so pairs clearly above the threshold are found. Cost: O(num_perm log num_perm)
    curve evaluations on a 512-point grid (cached).

    >>> optimal_bands(0.8, 128)
    (10, 11)
    >>> round(float(s_curve(0.9, 10, 11)), 3)
    0.977
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a float, got {type(threshold).__name__}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be strictly between 0 and 1, got {threshold!r}")
    num_perm = check_int("num_perm", num_perm, 1, _MAX_PERM)
    if fp_weight < 0 or fn_weight < 0 or fp_weight + fn_weight <= 0:
        raise ValueError("fp_weight and fn_weight must be >= 0 and not both 0")
    return _optimal_bands(float(threshold), num_perm, float(fp_weight), float(fn_weight),
                          float(recall), float(margin))


def _area(y, x):
    """The trapezoid-rule integral of ``y`` over the grid ``x`` (any numpy version)."""
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0)


@functools.lru_cache(maxsize=64)
def _optimal_bands(threshold, num_perm, fp_weight, fn_weight, recall, margin):
    lo = np.linspace(0.0, threshold, 512)
    hi = np.linspace(threshold, 1.0, 512)
    target = min(1.0, threshold + margin)
    best = {True: (None, math.inf), False: (None, math.inf)}
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = _area(s_curve(lo, b, r), lo)
            fn = _area(1.0 - s_curve(hi, b, r), hi)
            err = fp_weight * fp + fn_weight * fn
            ok = bool(s_curve(target, b, r) >= recall)
            if err < best[ok][1] - 1e-15:
                best[ok] = ((b, r), err)
    return best[True][0] or best[False][0]


def _band_keys(sig, bands, rows):
    """One 64-bit key per (signature, band): a splitmix fold of the band's ``rows`` values."""
    n = sig.shape[0]
    v = sig[:, : bands * rows].reshape(n, bands, rows)
    acc = np.zeros((n, bands), dtype=np.uint64)
    acc += np.arange(bands, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    for j in range(rows):
        acc ^= v[:, :, j]
        acc *= np.uint64(0xBF58476D1CE4E5B9)
        acc ^= acc >> np.uint64(31)
    return acc


class LSHIndex:
    """A banded MinHash LSH index: keys (any hashable) by signature, queried by signature.

    Memory: one bucket entry per (key, band). Insert and query: O(num_perm) plus the bucket
    sizes. ``bands`` and ``rows`` default to :func:`optimal_bands` for the threshold;
    ``query`` recall for a set at Jaccard ``j`` is ``s_curve(j, bands, rows)``. Merge is
    the union of the bucket tables (a commutative, associative, idempotent operation).

    >>> x = LSHIndex(threshold=0.7, num_perm=64)
    >>> (x.bands, x.rows)
    (10, 5)
    >>> m = MinHash(num_perm=64).update(["a", "b", "c"])
    >>> sorted(x.insert(1, m).merge(LSHIndex(0.7, 64).insert(2, m)).query(m))
    [1, 2]
    """

    def __init__(self, threshold=0.8, num_perm=128, *, bands=None, rows=None, seed=0,
                 fp_weight=0.5, fn_weight=0.5):
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise TypeError(f"threshold must be a float, got {type(threshold).__name__}")
        self.threshold = float(threshold)
        self.num_perm = check_int("num_perm", num_perm, 1, _MAX_PERM)
        self.seed = check_seed(seed)
        if (bands is None) != (rows is None):
            raise TypeError("give both bands and rows, or neither (to choose them for the "
                            "threshold)")
        if bands is None:
            bands, rows = optimal_bands(self.threshold, self.num_perm, fp_weight, fn_weight)
        self.bands = check_int("bands", bands, 1, self.num_perm)
        self.rows = check_int("rows", rows, 1, self.num_perm)
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands * rows = {self.bands * self.rows} exceeds num_perm = "
                             f"{self.num_perm}")
        self.tables = [{} for _ in range(self.bands)]

    def params(self):
        """The parameters that must match for a merge. Cost: O(1).

        >>> LSHIndex(0.5, 16, bands=4, rows=4).params()["bands"]
        4
        """
        return {"threshold": self.threshold, "num_perm": self.num_perm, "bands": self.bands,
                "rows": self.rows, "seed": self.seed, "hash": HASH_ID}

    def _check_minhash(self, m):
        if not isinstance(m, MinHash):
            raise TypeError(f"expected a MinHash, got {type(m).__name__}")
        if (m.num_perm, m.seed) != (self.num_perm, self.seed):
            raise ValueError(
                f"this index takes MinHash(num_perm={self.num_perm}, seed={self.seed}); got "
                f"num_perm={m.num_perm}, seed={m.seed}")

    def insert(self, key, minhash):
        """Index ``minhash`` under ``key``; returns ``self``. Cost: O(num_perm + bands).

        >>> LSHIndex(0.5, 16).insert("k", MinHash(16).update([1])).keys()
        {'k'}
        """
        self._check_minhash(minhash)
        return self.insert_signatures([key], minhash.hashvalues[None, :])

    def insert_signatures(self, keys, sig):
        """Index rows of a signature matrix (from :func:`signatures`) under ``keys``.

        Cost: O(num_perm) per row, vectorised, plus one dict/set insert per band.

        >>> x = LSHIndex(0.5, num_perm=8)
        >>> len(x.insert_signatures(["a", "b"], signatures([[1], [1]], 8)).candidate_pairs())
        1
        """
        keys = list(keys)
        sig = np.asarray(sig, dtype=np.uint64)
        if sig.ndim != 2 or sig.shape != (len(keys), self.num_perm):
            raise ValueError(f"expected a ({len(keys)}, {self.num_perm}) signature matrix, "
                             f"got shape {sig.shape}")
        bk = _band_keys(sig, self.bands, self.rows).T.tolist()
        for table, col in zip(self.tables, bk):
            for key, bucket in zip(keys, col):
                found = table.get(bucket)
                if found is None:
                    table[bucket] = {key}
                else:
                    found.add(key)
        return self

    def query(self, minhash):
        """Keys sharing at least one bucket with ``minhash`` (candidates, unverified).

        Cost: O(num_perm) plus the sizes of the buckets it falls in.

        >>> m = MinHash(16).update([1, 2])
        >>> LSHIndex(0.5, 16).insert("k", m).query(MinHash(16).update([3, 4]))
        set()
        """
        self._check_minhash(minhash)
        bk = _band_keys(minhash.hashvalues[None, :], self.bands, self.rows)[0].tolist()
        out = set()
        for table, bucket in zip(self.tables, bk):
            out |= table.get(bucket, set())
        return out

    def candidate_pairs(self):
        """Every pair of keys sharing a bucket, as 2-tuples ordered by ``repr``.

        Cost: O(sum over buckets of size**2).

        >>> m = MinHash(16).update([1, 2])
        >>> LSHIndex(0.5, 16).insert("b", m).insert("a", m).candidate_pairs()
        {('a', 'b')}
        """
        pairs = set()
        for table in self.tables:
            for bucket in table.values():
                if len(bucket) > 1:
                    members = sorted(bucket, key=repr)
                    for i, x in enumerate(members):
                        for y in members[i + 1:]:
                            pairs.add((x, y))
        return pairs

    def merge(self, other):
        """Union ``other``'s buckets into this index (``other`` is not modified).

        Cost: O(entries of ``other``). Raises ``IncompatibleMergeError`` when the
        parameters differ.

        >>> m = MinHash(16).update([1])
        >>> x = LSHIndex(0.5, 16).insert(1, m).merge(LSHIndex(0.5, 16).insert(2, m))
        >>> sorted(x.keys())
        [1, 2]
        """
        check_params(self, other)
        for mine, theirs in zip(self.tables, other.tables):
            for bucket, members in theirs.items():
                found = mine.get(bucket)
                if found is None:
                    mine[bucket] = set(members)
                else:
                    found |= members
        return self

    def _check(self):
        """Assert every invariant: every band holds every key, in non-empty buckets."""
        assert len(self.tables) == self.bands and self.bands * self.rows <= self.num_perm
        everyone = self.keys()
        for table in self.tables:
            assert all(table.values())
            assert set().union(*table.values()) == everyone

    def keys(self):
        """Every key in the index. Cost: O(entries in the first band).

        >>> LSHIndex(0.5, 16).keys()
        set()
        """
        out = set()
        for members in self.tables[0].values():
            out |= members
        return out

    def __eq__(self, other):
        if not isinstance(other, LSHIndex):
            return NotImplemented
        return self.params() == other.params() and self.tables == other.tables

    __hash__ = None

    def __mergeagg_fingerprint__(self):
        return ("LSHIndex", tuple(self.params().items()),
                [{k: frozenset(v) for k, v in t.items()} for t in self.tables])

    def __repr__(self):
        return (f"LSHIndex(threshold={self.threshold}, num_perm={self.num_perm}, "
                f"bands={self.bands}, rows={self.rows}, keys={len(self.keys())})")


# -- comparing inputs: the catalog entry ---------------------------------------------------


def _mh_partial(num_perm, seed, shard):
    return MinHash(num_perm, seed).update(records_of(shard))


def minhash(num_perm=128, seed=0):
    """An Aggregator whose value is the :class:`MinHash` of the set of records (lines).

    Every record of every shard goes into one signature (the union of the inputs); to
    compare inputs, see :func:`similarity`. Cost: one bulk update per shard, O(num_perm)
    per combine.

    >>> agg = minhash(num_perm=64)
    >>> x = agg.reduce([["a", "b"], ["c"]])
    >>> x == MinHash(num_perm=64).update(["c", "b", "a"])
    True
    """
    check_int("num_perm", num_perm, 1, _MAX_PERM)
    check_seed(seed)
    return Aggregator(functools.partial(_mh_partial, num_perm, seed), merge_into,
                      name="minhash")


class _Announce(enum.Enum):
    """The record of the extra split that names every input (so an input that gives no
    record at all is still in the result)."""

    INPUT = "input"


@dataclasses.dataclass(frozen=True)
class _Input:
    """The tag on each record of input ``index`` of a comparison; ``names`` names them all
    (so the result knows every input, even one that gives no record)."""

    index: int
    names: tuple


def similarity_source(inputs, *, split_size=None, format="text", errors="strict"):
    """The source of :func:`similarity`: each input's records tagged with that input.

    ``inputs`` is a list; each item is one set: a path, glob or directory (all its files'
    lines), ``"-"`` for standard input, or an in-memory list of records (one shard). Each
    is split as :func:`mergeagg.inputs.as_source` would split it; one more in-memory split
    announces every input (so an empty one is still compared). Cost: one ``stat`` per
    file.

    >>> src = similarity_source([["x", "y"], ["y"]])
    >>> [len(list(src.read(s))) for s in src.splits()]
    [2, 1, 2]
    """
    if isinstance(inputs, (str, bytes, os.PathLike)):
        raise TypeError("similarity_source takes a list of inputs (each one set), not a "
                        "single path")
    items = list(inputs)
    if not items:
        raise ValueError("similarity_source needs at least one input")
    names = tuple(os.fspath(x) if isinstance(x, (str, os.PathLike)) else f"input {i}"
                  for i, x in enumerate(items))
    sources = []
    for i, item in enumerate(items):
        if isinstance(item, (str, os.PathLike)):
            one = _inputs.as_source(item, split_size=split_size, format=format, errors=errors)
        else:
            one = _inputs.shards([item])
        tag = _Input(i, names)
        sources.append(_inputs.Source([dataclasses.replace(sp, tag=tag) for sp in one.splits()],
                                      f"{names[i]!r}: {one.description}"))
    announce = _inputs.shards([[(_Input(i, names), _Announce.INPUT) for i in range(len(names))]])
    return _inputs.concat(*sources, announce)


@dataclasses.dataclass(frozen=True)
class Similarity:
    """The value of :func:`similarity`: a MinHash per input and, if asked, exact counts.

    ``names[i]`` names input ``i`` and ``signatures[i]`` is the MinHash of its set of
    records; ``distinct[i]`` is its exact number of distinct records and ``exact`` holds
    ``(i, j, |A & B|, |A | B|)`` for every pair ``i < j`` (both ``None`` unless
    ``exact=True``). Cost: O(inputs x num_perm) memory, plus O(inputs**2) pairs.

    >>> src = similarity_source([["a", "b", "c"], ["b", "c", "d"]])
    >>> sim = similarity(num_perm=256, exact=True).reduce(src.read(s) for s in src.splits())
    >>> sim.exact_jaccard(0, 1), abs(sim.jaccard(0, 1) - 0.5) < 3 * (0.25 / 256) ** 0.5
    (0.5, True)
    """

    names: tuple
    signatures: tuple
    distinct: tuple | None = None
    exact: tuple | None = None

    def jaccard(self, i, j):
        """The MinHash estimate of the Jaccard similarity of inputs ``i`` and ``j``.

        Standard error ``sqrt(J (1 - J) / num_perm)``; two empty inputs compare as 1.0.
        Cost: O(num_perm).
        """
        return self.signatures[i].jaccard(self.signatures[j])

    def standard_error(self, i, j):
        """The standard error of :meth:`jaccard` at its own estimate. Cost: O(num_perm).

        >>> same = tuple(MinHash(16).update([1]) for _ in "ab")
        >>> Similarity(("a", "b"), same).standard_error(0, 1)
        0.0
        """
        jac = self.jaccard(i, j)
        return math.sqrt(jac * (1.0 - jac) / self.signatures[i].num_perm)

    def exact_jaccard(self, i, j):
        """The exact Jaccard similarity ``|A & B| / |A | B|`` (1.0 for two empty sets).

        Raises ``ValueError`` unless the comparison was run with ``exact=True``. Cost: O(pairs).
        """
        if self.exact is None:
            raise ValueError("the exact Jaccard similarity needs similarity(exact=True) "
                             "(--exact on the command line)")
        a, b = min(i, j), max(i, j)
        if a == b:
            return 1.0
        for x, y, inter, union in self.exact:
            if (x, y) == (a, b):
                return inter / union if union else 1.0
        raise IndexError(f"no inputs {i} and {j} in a comparison of {len(self.names)}")

    def pairs(self):
        """Every pair ``(i, j)``, ``i < j``, in order. Cost: O(inputs**2).

        >>> Similarity(("a", "b", "c"), ()).pairs()
        [(0, 1), (0, 2), (1, 2)]
        """
        n = len(self.names)
        return [(i, j) for i in range(n) for j in range(i + 1, n)]

    def to_jsonable(self):
        """A JSON-ready summary: the inputs, their signatures and every pair's figures."""
        out = {"inputs": [{"name": name, "signature": sig.to_jsonable(),
                           **({"distinct": self.distinct[i]} if self.distinct else {})}
                          for i, (name, sig) in enumerate(zip(self.names, self.signatures))],
               "pairs": []}
        for i, j in self.pairs():
            pair = {"a": self.names[i], "b": self.names[j], "estimate": self.jaccard(i, j),
                    "standard_error": self.standard_error(i, j)}
            if self.exact is not None:
                pair["exact"] = self.exact_jaccard(i, j)
            out["pairs"].append(pair)
        return out


@dataclasses.dataclass(slots=True)
class _Sets:
    """The accumulator of :func:`similarity`: per input index, its MinHash and (exact mode)
    its set of records; ``names`` comes from the records' tags."""

    names: tuple
    parts: dict


def _record_key(record):
    # Lines (text input) are keys as they are; a CSV / JSON record is its canonical JSON.
    if isinstance(record, (str, bytes)):
        return record
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _similarity_partial(num_perm, seed, exact, shard):
    groups = {}
    names = ()
    for record in shard:
        if not (type(record) is tuple and len(record) == 2 and type(record[0]) is _Input):
            raise TypeError(
                f"similarity() needs records tagged with their input, as similarity_source() "
                f"makes them; got a {type(record).__name__}")
        tag, value = record
        names = tag.names
        lines = groups.get(tag.index)
        if lines is None:
            groups[tag.index] = lines = []
        if value is not _Announce.INPUT:
            lines.append(value)
    parts = {}
    for index, lines in groups.items():
        if lines and not isinstance(lines[0], str):
            lines = [_record_key(r) for r in lines]
        parts[index] = [MinHash(num_perm, seed).update(lines), set(lines) if exact else None]
    return _Sets(names, parts)


def _similarity_combine(a, b):
    if a.names and b.names and a.names != b.names:
        raise ValueError(f"records of two different comparisons meet: inputs {a.names} and "
                         f"{b.names}")
    a.names = a.names or b.names
    for index, (sig, lines) in b.parts.items():
        mine = a.parts.get(index)
        if mine is None:
            a.parts[index] = [sig.copy(), None if lines is None else set(lines)]
        else:
            mine[0].merge(sig)
            if lines is not None:
                mine[1] |= lines
    return a


def _similarity_finalize(num_perm, seed, exact, acc):
    n = len(acc.names)
    empty = [MinHash(num_perm, seed), set()]
    parts = [acc.parts.get(i, empty) for i in range(n)]
    sigs = tuple(p[0] for p in parts)
    if not exact:
        return Similarity(acc.names, sigs)
    sets = [p[1] for p in parts]
    pairs = []
    for i in range(n):
        for j in range(i + 1, n):
            small, big = sorted((sets[i], sets[j]), key=len)
            inter = sum(1 for x in small if x in big)
            pairs.append((i, j, inter, len(sets[i]) + len(sets[j]) - inter))
    return Similarity(acc.names, sigs, tuple(map(len, sets)), tuple(pairs))


def similarity(num_perm=128, seed=0, exact=False):
    """An Aggregator comparing inputs: one MinHash per input, their Jaccard similarities.

    It reads the records of :func:`similarity_source` (each tagged with its input); its
    value is a :class:`Similarity`. With ``exact=True`` each input's set of records is kept
    as well, for the exact Jaccard similarity of every pair: O(distinct records) memory.
    Lines are keys as they are; CSV or JSON records by their canonical JSON. Cost: as
    :func:`minhash` per record (plus a set insert when exact); a combine is O(num_perm) per
    input (plus the smaller set, when exact).

    >>> src = similarity_source([["to", "be"], ["to", "be", "or"], []])
    >>> sim = similarity(num_perm=64, exact=True).reduce(src.read(s) for s in src.splits())
    >>> sim.names, sim.distinct, [round(sim.exact_jaccard(*p), 3) for p in sim.pairs()]
    (('input 0', 'input 1', 'input 2'), (2, 3, 0), [0.667, 0.0, 0.0])
    """
    check_int("num_perm", num_perm, 1, _MAX_PERM)
    check_seed(seed)
    if not isinstance(exact, bool):
        raise TypeError(f"exact must be a bool, got {type(exact).__name__}")
    return Aggregator(functools.partial(_similarity_partial, num_perm, seed, exact),
                      _similarity_combine,
                      functools.partial(_similarity_finalize, num_perm, seed, exact),
                      name="minhash-similarity")


def _make_source(inputs, split_size, params):
    return similarity_source(list(inputs), split_size=split_size,
                             format=params.get("_format") or "text")


def _summarize(value, params):
    if not value.names:
        return ["no records in any input"]
    num_perm = value.signatures[0].num_perm
    lines = []
    if len(value.names) == 1:
        sig = value.signatures[0]
        head = " ".join(f"{int(v):016x}" for v in sig.hashvalues[:4])
        lines += [f"MinHash of the set of lines: num_perm={num_perm}, seed={sig.seed}, "
                  f"~{sig.count():,.0f} distinct lines",
                  f"signature begins {head} ...",
                  f"bytes (base64): {sig.to_jsonable()['bytes_base64'][:60]}..."]
        if value.distinct is not None:
            lines.append(f"exact: {value.distinct[0]:,} distinct lines")
        lines.append("(give two or more inputs to compare them)")
        return lines
    for k, (i, j) in enumerate(value.pairs()):
        line = (f"Jaccard({value.names[i]}, {value.names[j]}) ~ {value.jaccard(i, j):.4f} "
                f"(MinHash estimate, standard error {value.standard_error(i, j):.4f})")
        if value.exact is not None:
            inter, union = value.exact[k][2:]
            line += f"; exact {value.exact_jaccard(i, j):.4f} ({inter:,} of {union:,} lines)"
        lines.append(line)
    for i, name in enumerate(value.names):
        sig = value.signatures[i]
        exact = f" (exact {value.distinct[i]:,})" if value.distinct is not None else ""
        lines.append(f"{name}: ~{sig.count():,.0f} distinct lines{exact}")
    lines.append(f"num_perm={num_perm}, seed={value.signatures[0].seed}")
    return lines


ENTRY = Entry(
    name="minhash",
    summary="compare inputs' sets of lines: Jaccard similarity by MinHash (--exact also "
            "computes it exactly)",
    factory=similarity,
    flags=(
        Flag("--num-perm", type=int, default=128, help="permutations (default 128)"),
        Flag("--seed", type=int, default=0, help="hash seed (0..2**32-1)"),
        Flag("--exact", action="store_true", default=False,
             help="also keep each input's set of lines for the exact Jaccard similarity"),
    ),
    make_source=_make_source,
    summarize=_summarize,
    jsonable=Similarity.to_jsonable,
)
