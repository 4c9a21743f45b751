"""Bloom filter: "have I seen this key?" with no false negatives, mergeable by OR.

A *split-block* Bloom filter (Putze, Sanders and Singler's blocked filter, in the shape
Parquet and Impala use): ``num_blocks`` blocks of 256 bits, each eight 32-bit words. A key's
64-bit hash, read as four 16-bit fields, gives ten bits per field, five per word, to pick
one bit in each of the block's eight words; the block is the top 24 bits of the hash times
an odd constant (so up to 2**24 blocks), scaled to the number of blocks.
Adding sets those eight bits, a query checks them: one cache line per key, whatever the
filter's size.

Sized from the number of keys it must hold and the false-positive rate wanted
(``BloomFilter(capacity=, fpp=)``): the fewest blocks whose expected false-positive rate,
with ``capacity / num_blocks`` keys per block on average (Poisson), is at most ``fpp``.
:meth:`BloomFilter.false_positive_rate` computes the rate of the filter as it is, from its
bits: the chance that a key never added finds its eight bits set.

Merge is the bitwise OR, so the filter of a union is exactly the merge of the filters,
byte for byte, in any order and tree.

>>> bf = BloomFilter(capacity=10_000, fpp=0.01)
>>> bf.update(np.arange(10_000)).contains(5), bf.contains(-5)
(True, False)
>>> bf.false_positive_rate() < 0.01
True
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
    check_seed,
    expect_len,
    hash64,
    iter_hashes,
    merge_into,
    records_of,
)
from mergeagg.algorithms.registry import Entry, Flag

__all__ = ["BloomFilter", "bloom", "blocks_for", "expected_fpp"]

_WORDS = 8  # 32-bit words per block: 256 bits, one bit set per word
_MAX_BLOCKS = 1 << 24
_U = np.uint64
_BLOCK = np.dtype((np.void, 32))  # one block as a single element, copied whole


def _pair_masks():
    """For each 10-bit field, the two words' masks it selects, as one uint64 (two uint32
    words in memory order, so the view matches the filter's words on any byte order)."""
    field = np.arange(1024, dtype=np.uint32)
    pairs = np.empty((1024, 2), dtype=np.uint32)
    pairs[:, 0] = np.left_shift(np.uint32(1), field & np.uint32(31))
    pairs[:, 1] = np.left_shift(np.uint32(1), field >> np.uint32(5))
    return pairs.view(np.uint64).reshape(1024)


_PAIRS = _pair_masks()
_FIELD = np.uint16(1023)
_MIX = _U(0x9E3779B97F4A7C15)  # odd: the block comes from every bit of the hash
_ALL_FOUR = np.frombuffer(b"\x01\x01\x01\x01", dtype=np.uint32)[0]


def expected_fpp(keys_per_block):
    """The expected false-positive rate at ``keys_per_block`` keys per block on average.

    Keys land on blocks as a Poisson process; a block holding ``x`` keys has each of a
    word's 32 bits set with probability ``1 - (31/32)**x``, and a query needs one set bit
    in each of the eight words. Cost: O(sqrt(keys_per_block)) terms of the Poisson mass.

    >>> round(expected_fpp(256 / 10), 4)   # 10 bits per key
    0.0126
    """
    lam = float(keys_per_block)
    if lam <= 0:
        return 0.0
    spread = 12 * math.sqrt(lam) + 30
    lo, hi = max(0, int(lam - spread)), int(lam + spread)
    total = 0.0
    for x in range(lo, hi + 1):  # the Poisson mass outside is below 1e-30
        mass = math.exp(x * math.log(lam) - lam - math.lgamma(x + 1))
        total += mass * (1.0 - (31.0 / 32.0) ** x) ** _WORDS
    return total


def blocks_for(capacity, fpp):
    """The fewest 256-bit blocks that hold ``capacity`` keys at a false-positive rate of at
    most ``fpp``. Cost: O(log capacity) evaluations of :func:`expected_fpp`.

    >>> blocks_for(1_000_000, 0.01)
    41130
    """
    capacity = check_int("capacity", capacity, 1, 1 << 40)
    if isinstance(fpp, bool) or not isinstance(fpp, (int, float)) or not 0 < fpp < 1:
        raise ValueError(f"fpp must be a float strictly between 0 and 1, got {fpp!r}")
    lo, hi = 1, max(1, capacity // 64)  # 4 bits per key: never enough below fpp 0.3
    while expected_fpp(capacity / hi) > fpp:
        hi *= 2
        if hi > _MAX_BLOCKS:
            raise ValueError(f"{capacity:,} keys at fpp={fpp} need more than 2**24 blocks "
                             "(512 MiB): split the keys over several filters")
    while lo < hi:
        mid = (lo + hi) // 2
        if expected_fpp(capacity / mid) <= fpp:
            hi = mid
        else:
            lo = mid + 1
    return lo


class BloomFilter(Sketch):
    """A split-block Bloom filter: ``BloomFilter(capacity=, fpp=)`` or ``BloomFilter(
    num_blocks=)``.

    Memory: ``32 * num_blocks`` bytes (1.3 MB for a million keys at 1%: 10.5 bits per
    key). Add: ~100-200 ns per int key of a numpy array (one 32-byte block read and
    written), query ~50-80 ns (measured on a loaded 2-core machine). False negatives:
    none. False positives: :meth:`false_positive_rate` (at most ``fpp`` up to ``capacity``
    distinct keys, in expectation). Merge: O(num_blocks).

    >>> a = BloomFilter(num_blocks=64).update(["x", "y"])
    >>> b = BloomFilter(num_blocks=64).update(["z"])
    >>> a.merge(b).contains_many(["x", "z", "w"]).tolist()
    [True, True, False]
    """

    KIND = 6
    __slots__ = ("num_blocks", "seed", "blocks")

    def __init__(self, capacity=None, fpp=None, *, num_blocks=None, seed=0):
        if num_blocks is None:
            if capacity is None or fpp is None:
                raise TypeError("BloomFilter needs capacity and fpp, or num_blocks")
            num_blocks = blocks_for(capacity, fpp)
        elif capacity is not None or fpp is not None:
            raise TypeError("give either capacity and fpp, or num_blocks, not both")
        self.num_blocks = check_int("num_blocks", num_blocks, 1, _MAX_BLOCKS)
        self.seed = check_seed(seed)
        self.blocks = np.zeros((self.num_blocks, _WORDS), dtype=np.uint32)

    def params(self):
        """The parameters that must match for a merge. Cost: O(1).

        >>> BloomFilter(num_blocks=4).params()
        {'num_blocks': 4, 'seed': 0, 'hash': 'mm3x64+sm64/1', 'format': 1}
        """
        return {"num_blocks": self.num_blocks, "seed": self.seed, "hash": HASH_ID,
                "format": 1}

    @property
    def num_bits(self):
        """Bits in the filter, ``256 * num_blocks``."""
        return 256 * self.num_blocks

    def _state(self):
        return (self.blocks,)

    def _locate(self, h):
        """(block index, the block's mask as four uint64 per key) of hashes ``h``."""
        block = (((h * _MIX) >> _U(40)) * _U(self.num_blocks)) >> _U(24)
        fields = h.astype("<u8", copy=False).view("<u2").reshape(-1, 4) & _FIELD
        return block.view(np.int64), np.take(_PAIRS, fields.astype(np.intp))

    def update(self, items):
        """Add every key of an iterable or a numpy array; returns ``self``.

        Cost: ~100-200 ns per int key of a numpy array (hash, one 32-byte block read and
        written), more for str/bytes keys (hashing); a scratch int32 per block while it
        runs (an eighth of the filter's memory).

        >>> BloomFilter(num_blocks=16).update(range(10)).contains_many(range(10)).all().item()
        True
        """
        last = None
        for _, h in iter_hashes(items, self.seed):
            if last is None and h.shape[0] > 1:
                last = np.empty(self.num_blocks, dtype=np.int32)
            self._add(h, last)
        return self

    def _update_hashes(self, h):
        self._add(h, np.empty(self.num_blocks, dtype=np.int32) if h.shape[0] > 1 else None)

    def _add(self, h, last):
        block, masks = self._locate(h)
        words = self.blocks.view(np.uint64)  # (num_blocks, 4)
        rows = np.take(words, block, axis=0)
        rows |= masks
        np.put(self.blocks.view(_BLOCK).reshape(-1), block, rows.view(_BLOCK).reshape(-1))
        if last is None:  # one key: no block written twice
            return
        # A block chosen twice in one batch keeps the row its last key wrote: mark each
        # block's last writer in ``last`` and set the bits of the others one at a time.
        order = np.arange(h.shape[0], dtype=np.int32)
        np.put(last, block, order)
        lost = np.take(last, block) != order
        if lost.any():
            at = (block[lost, None] * 4 + np.arange(4)).ravel()
            np.bitwise_or.at(words.reshape(-1), at, masks[lost].ravel())

    def _merge(self, other):
        np.bitwise_or(self.blocks, other.blocks, out=self.blocks)

    def _test(self, h):
        block, masks = self._locate(h)
        rows = np.take(self.blocks.view(np.uint64), block, axis=0)
        rows &= masks
        # four equal words per key, as four bools read as one uint32
        return (rows == masks).view(np.uint32).reshape(-1) == _ALL_FOUR

    def contains(self, item):
        """True if ``item`` may have been added; False if it certainly was not.

        Cost: one hash and one block read (~1 us).

        >>> BloomFilter(num_blocks=8).add("a").contains("a")
        True
        """
        return bool(self._test(hash64([item], self.seed))[0])

    __contains__ = contains

    def contains_many(self, items):
        """``contains`` for every key of ``items``, as a bool array. Cost: ~50 ns per key
        of a numpy integer array (one block read).

        >>> BloomFilter(num_blocks=8).update([1, 2]).contains_many(np.array([1, 2])).tolist()
        [True, True]
        """
        out = [self._test(h) for _, h in iter_hashes(items, self.seed)]
        return np.concatenate(out) if out else np.empty(0, dtype=bool)

    def fill_ratio(self):
        """The fraction of bits set. Cost: O(num_blocks).

        >>> BloomFilter(num_blocks=1).add(1).fill_ratio()
        0.03125
        """
        return float(_popcount(self.blocks).sum()) / self.num_bits

    def false_positive_rate(self):
        """The chance that a key never added is reported present, from the bits as they are:
        the mean over blocks of the product over its words of (bits set / 32).

        Cost: O(num_blocks). Exact for ideal hashing; tested against measured rates.

        >>> BloomFilter(num_blocks=16).false_positive_rate()
        0.0
        """
        share = _popcount(self.blocks) / 32.0
        return float(np.prod(share, axis=1).mean())

    def _check(self):
        """Assert every invariant (for tests, after each mutation)."""
        assert self.blocks.dtype == np.uint32 and self.blocks.shape == (self.num_blocks, _WORDS)

    def _encode(self):
        return struct.pack("<I", self.num_blocks) + self.blocks.astype("<u4").tobytes()

    @classmethod
    def _decode(cls, payload, seed):
        if len(payload) < 4:
            raise ValueError("corrupt BloomFilter bytes: the payload is shorter than its size")
        (num_blocks,) = struct.unpack_from("<I", payload)
        if not 1 <= num_blocks <= _MAX_BLOCKS:
            raise ValueError(f"corrupt BloomFilter bytes: {num_blocks} blocks is out of range")
        expect_len(payload, 4 + 32 * num_blocks, "BloomFilter")
        sk = cls(num_blocks=num_blocks, seed=seed)
        sk.blocks = np.frombuffer(payload, dtype="<u4", offset=4).reshape(
            num_blocks, _WORDS).astype(np.uint32)
        return sk

    def to_jsonable(self):
        """A JSON-ready summary: parameters, fill, false-positive rate, bytes in base64."""
        return {"kind": "BloomFilter", "params": self.params(), "fill": self.fill_ratio(),
                "false_positive_rate": self.false_positive_rate(),
                "bytes_base64": base64.b64encode(self.to_bytes()).decode("ascii")}

    def __repr__(self):
        return (f"BloomFilter(num_blocks={self.num_blocks}, seed={self.seed}, "
                f"fill={self.fill_ratio():.4f})")


def _popcount(words):
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words)
    as_bytes = words.view(np.uint8).reshape(*words.shape, 4)  # pragma: no cover - numpy < 2
    return np.unpackbits(as_bytes, axis=-1).sum(axis=-1)  # pragma: no cover


def _bloom_partial(capacity, fpp, seed, shard):
    return BloomFilter(capacity, fpp, seed=seed).update(records_of(shard))


def bloom(capacity=1_000_000, fpp=0.01, seed=0):
    """An Aggregator whose value is the :class:`BloomFilter` of every record (line).

    Cost: one bulk add per shard, O(num_blocks) per combine; byte-identical for any split.

    >>> bloom(capacity=100, fpp=0.01).reduce([["a"], ["b"]]).contains("b")
    True
    """
    blocks_for(capacity, fpp)
    check_seed(seed)
    return Aggregator(functools.partial(_bloom_partial, capacity, fpp, seed), merge_into,
                      name="bloom")


def _summarize(value, params):
    lines = [f"Bloom filter of {value.num_blocks:,} blocks ({value.num_bits // 8:,} bytes), "
             f"{100 * value.fill_ratio():.2f}% of bits set, false-positive rate now "
             f"{100 * value.false_positive_rate():.4f}%"]
    for item in params.get("_query") or ():
        verdict = "maybe present" if value.contains(item) else "absent"
        lines.append(f"{verdict:>13}  {item}")
    return lines


ENTRY = Entry(
    name="bloom",
    summary="a Bloom filter of the lines (membership, no false negatives); query with --query",
    factory=bloom,
    flags=(
        Flag("--capacity", type=int, default=1_000_000, help="distinct lines to hold"),
        Flag("--fpp", type=float, default=0.01, help="false-positive rate at capacity"),
        Flag("--seed", type=int, default=0, help="hash seed (0..2**32-1)"),
        Flag("--query", action="append", default=None, dest="_query",
             help="print whether this line may be in the input (repeatable)"),
    ),
    summarize=_summarize,
)
