"""Apache DataSketches' serialized images of HLL, KLL and theta sketches, read and written.

Private to the catalog: the sketches' ``to_datasketches()`` / ``from_datasketches()`` call
these. Written from DataSketches' documented formats (little-endian throughout):

* **HLL** (family 7): a preamble of 2 (list), 3 (set) or 10 (HLL) 32-bit ints. Byte 3 is
  ``lg_k``, byte 5 the flags (4 empty, 8 compact, 16 out of order), byte 7 the mode (low
  two bits: 0 list, 1 set, 2 HLL; next two: 0 HLL_4, 1 HLL_6, 2 HLL_8). List and set
  images hold *coupons* ``value << 26 | slot``; HLL images a HIP accumulator and the two
  ``kxq`` sums (doubles at bytes 8, 16, 24), the count of registers at the current minimum
  (byte 32), the auxiliary count (byte 36), then the registers from byte 40: 8 bits each,
  6 bits packed, or 4 bits plus ``cur_min`` with exceptions (value 15) in an auxiliary
  table of coupons after them.
* **KLL** (family 15): preamble ints (2 empty or one item, 5 otherwise), serial version (1,
  2 for one item), flags (1 empty, 2 level zero sorted, 4 one item), ``k`` (u16), ``m``
  (u8); then ``n`` (u64), ``min_k`` (u16), the number of levels (u8), the level offsets
  into a buffer of the total capacity (u32 each, the last implied), min, max and the
  retained items, level 0 first (32-bit floats or 64-bit doubles).
* **Compact theta** (serial version 3, type 3): preamble longs (1 empty or one hash, 2
  exact, 3 estimating), flags (2 read-only, 4 empty, 8 compact, 16 ordered), the 16-bit
  seed hash at byte 6, the count (u32) at byte 8, theta (u64) at byte 16 when estimating,
  then the 63-bit hashes.

>>> from mergeagg.algorithms.theta import ThetaSketch
>>> sk = ThetaSketch(lg_k=5, hash="datasketches").update(range(100))
>>> theta_from_image(theta_image(sk), lg_k=5) == sk
True
"""

from __future__ import annotations

import struct

import numpy as np

from mergeagg.algorithms._sketch import DS_SEED, HASH_DS, ds_seed_hash

__all__ = ["hll_image", "hll_from_image", "kll_image", "kll_from_image", "theta_image",
           "theta_from_image"]

_HLL_FAMILY, _KLL_FAMILY, _THETA_TYPE = 7, 15, 3
_EMPTY, _COMPACT, _OUT_OF_ORDER = 4, 8, 16
_LIST, _SET, _HLL = 0, 1, 2
_HLL4, _HLL6, _HLL8 = 0, 1, 2
_KEY_MASK_26 = (1 << 26) - 1
_MAX_THETA = (1 << 63) - 1


def _as_bytes(data, what):
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"a DataSketches {what} image must be bytes, got {type(data).__name__}")
    return bytes(data)


def _need(data, n, what):
    if len(data) < n:
        raise ValueError(f"truncated DataSketches {what} image: {len(data)} bytes, need at "
                         f"least {n}")


def _require_ds_hash(sk, what):
    if sk.hash != HASH_DS or (what == "HLL" and sk.seed != DS_SEED):
        raise ValueError(
            f"this {type(sk).__name__} hashes keys with {sk.hash!r} (seed {sk.seed}); a "
            f"DataSketches {what} image must hold DataSketches' hashes, or a union with "
            "DataSketches' own sketches would count shared keys twice: build it with "
            "hash='datasketches'")


# -- HLL --------------------------------------------------------------------------------


def hll_image(sk):
    """A compact ``HLL_8`` image of HyperLogLog ``sk`` (DataSketches hashing, seed 9001).

    The out-of-order flag is set (there is no HIP accumulator to carry), so DataSketches
    estimates from the registers. Cost: O(m).
    """
    _require_ds_hash(sk, "HLL")
    regs = sk.registers
    exps = np.ldexp(1.0, -regs.astype(np.int64))
    low = regs < 32
    kxq0, kxq1 = float(exps[low].sum()), float(exps[~low].sum())
    zeros = int((regs == 0).sum())
    flags = _COMPACT | _OUT_OF_ORDER | (_EMPTY if zeros == regs.shape[0] else 0)
    head = struct.pack("<BBBBBBBBdddII", 10, 1, _HLL_FAMILY, sk.p, 0, flags, 0,
                       _HLL | (_HLL8 << 2), 0.0, kxq0, kxq1, zeros, 0)
    return head + regs.tobytes()


def _coupons_into(regs, coupons):
    coupons = coupons[coupons != 0]
    slots = (coupons & _KEY_MASK_26) & np.uint32(regs.shape[0] - 1)
    np.maximum.at(regs, slots.astype(np.int64), (coupons >> np.uint32(26)).astype(np.uint8))


def hll_from_image(data):
    """The HyperLogLog (``hash="datasketches"``) of a DataSketches HLL image. Cost: O(m)."""
    from mergeagg.algorithms.hyperloglog import HyperLogLog

    data = _as_bytes(data, "HLL")
    _need(data, 8, "HLL")
    pre, ser, family, lg_k, lg_arr, flags, count_byte, mode = struct.unpack_from("<8B", data)
    if family != _HLL_FAMILY:
        raise ValueError(f"not a DataSketches HLL image: family {family} at byte 2, "
                         f"expected {_HLL_FAMILY}")
    if ser != 1:
        raise ValueError(f"unsupported DataSketches HLL serial version {ser} (byte 1)")
    if not 4 <= lg_k <= 18:
        raise ValueError(f"DataSketches HLL lg_k {lg_k} (byte 3): mergeagg's HyperLogLog "
                         "takes p from 4 to 18")
    sk = HyperLogLog(lg_k, hash="datasketches")
    cur_mode, tgt = mode & 3, (mode >> 2) & 3
    compact = bool(flags & _COMPACT)
    if flags & _EMPTY:
        return sk
    if cur_mode == _LIST:
        n = count_byte if compact else 1 << lg_arr
        _need(data, 8 + 4 * n, "HLL list")
        _coupons_into(sk.registers, np.frombuffer(data, "<u4", n, 8).astype(np.uint32))
        return sk
    if cur_mode == _SET:
        _need(data, 12, "HLL set")
        (count,) = struct.unpack_from("<I", data, 8)
        n = count if compact else 1 << lg_arr
        _need(data, 12 + 4 * n, "HLL set")
        _coupons_into(sk.registers, np.frombuffer(data, "<u4", n, 12).astype(np.uint32))
        return sk
    if cur_mode != _HLL or pre != 10:
        raise ValueError(f"unknown DataSketches HLL mode byte {mode} / preamble {pre}")
    cur_min = count_byte
    (aux_count,) = struct.unpack_from("<I", data, 36)
    k = 1 << lg_k
    if tgt == _HLL8:
        _need(data, 40 + k, "HLL_8")
        regs = np.frombuffer(data, np.uint8, k, 40).copy()
    elif tgt == _HLL6:
        size = (k * 3 >> 2) + 1
        _need(data, 40 + size, "HLL_6")
        raw = np.frombuffer(data, np.uint8, size, 40).astype(np.uint16)
        start = np.arange(k) * 6
        pair = raw[start >> 3] | (np.append(raw, 0)[(start >> 3) + 1] << 8)
        regs = ((pair >> (start & 7)) & 0x3F).astype(np.uint8)
    elif tgt == _HLL4:
        size = k >> 1
        _need(data, 40 + size, "HLL_4")
        raw = np.frombuffer(data, np.uint8, size, 40)
        nib = np.empty(k, dtype=np.uint8)
        nib[0::2], nib[1::2] = raw & 0x0F, raw >> 4
        regs = nib + np.uint8(cur_min)
        aux_at = 40 + size
        n_aux = aux_count if compact else (1 << lg_arr if aux_count else 0)
        _need(data, aux_at + 4 * n_aux, "HLL_4 exceptions")
        aux = np.frombuffer(data, "<u4", n_aux, aux_at).astype(np.uint32)
        aux = aux[aux != 0]
        if (nib == 15).sum() != aux.shape[0]:
            raise ValueError(f"corrupt DataSketches HLL_4 image: {(nib == 15).sum()} slots "
                             f"point to exceptions, {aux.shape[0]} exceptions are stored")
        regs[(aux & _KEY_MASK_26).astype(np.int64) & (k - 1)] = (aux >> 26).astype(np.uint8)
    else:
        raise ValueError(f"unknown DataSketches HLL target type {tgt} (mode byte {mode})")
    if regs.size and int(regs.max()) > 63:
        raise ValueError(f"corrupt DataSketches HLL image: a register holds {int(regs.max())}")
    sk.registers = regs
    return sk


# -- KLL --------------------------------------------------------------------------------

_KLL_ITEM = {"float": ("<f4", 4), "double": ("<f8", 8)}


def kll_image(sk):
    """The DataSketches image of KLL ``sk``: ``kll_floats_sketch`` for ``dtype="float"``,
    ``kll_doubles_sketch`` for ``"double"``. Cost: O(retained)."""
    from mergeagg.algorithms.kll import level_capacity

    fmt, size = _KLL_ITEM[sk.dtype]
    if sk.n == 0:
        return struct.pack("<BBBBHBB", 2, 1, _KLL_FAMILY, 1, sk.k, 8, 0)
    if sk.n == 1:
        item = np.concatenate(sk.levels).astype(fmt)
        return struct.pack("<BBBBHBB", 2, 2, _KLL_FAMILY, 4 | 2, sk.k, 8, 0) + item.tobytes()
    num = len(sk.levels)
    capacity = sum(level_capacity(sk.k, num, h) for h in range(num))
    sizes = [lv.shape[0] for lv in sk.levels]
    offsets = np.cumsum([capacity - sum(sizes), *sizes[:-1]]).astype("<u4")
    items = np.concatenate([np.sort(sk.levels[0]), *sk.levels[1:]]).astype(fmt)
    head = struct.pack("<BBBBHBBQHBB", 5, 1, _KLL_FAMILY, 2, sk.k, 8, 0, sk.n, sk.k, num, 0)
    ends = np.array([sk.min, sk.max], dtype=fmt)
    return head + offsets.tobytes() + ends.tobytes() + items.tobytes()


def kll_from_image(data, dtype=None, seed=0):
    """The KLL of a DataSketches ``kll_floats_sketch`` / ``kll_doubles_sketch`` image.

    ``dtype`` (``"float"`` or ``"double"``) is read from the image's size when not given
    (an empty image needs it; it defaults to ``"double"``). Cost: O(retained).
    """
    from mergeagg.algorithms.kll import KLL, level_capacity

    data = _as_bytes(data, "KLL")
    _need(data, 8, "KLL")
    pre, ser, family, flags, k, m, _ = struct.unpack_from("<BBBBHBB", data)
    if family != _KLL_FAMILY:
        raise ValueError(f"not a DataSketches KLL image: family {family} at byte 2, "
                         f"expected {_KLL_FAMILY}")
    if m != 8:
        raise ValueError(f"DataSketches KLL image with m={m} (byte 6): mergeagg keeps m=8")
    if ser not in (1, 2) or pre not in (2, 5):
        raise ValueError(f"unsupported DataSketches KLL serial version {ser} / preamble {pre}")
    if dtype is not None and dtype not in _KLL_ITEM:
        raise ValueError(f"dtype must be 'float' or 'double', got {dtype!r}")
    if flags & 1:
        return KLL(k, dtype or "double", seed)
    if flags & 4:  # a single item
        if dtype is None:
            dtype = {4: "float", 8: "double"}.get(len(data) - 8)
            if dtype is None:
                raise ValueError(f"a one-item KLL image of {len(data)} bytes holds neither "
                                 "a float nor a double")
        fmt, size = _KLL_ITEM[dtype]
        _need(data, 8 + size, "KLL")
        return KLL(k, dtype, seed).update(np.frombuffer(data, fmt, 1, 8).astype(np.float64))
    _need(data, 20, "KLL")
    n, min_k, num = struct.unpack_from("<QHB", data, 8)
    if min_k != k:
        raise ValueError(f"this KLL image merged sketches of different k (min_k {min_k}, k "
                         f"{k}): mergeagg's KLL keeps one k")
    if not 1 <= num <= 61:
        raise ValueError(f"corrupt DataSketches KLL image: {num} levels")
    _need(data, 20 + 4 * num, "KLL")
    offsets = np.frombuffer(data, "<u4", num, 20).astype(np.int64)
    capacity = sum(level_capacity(k, num, h) for h in range(num))
    bounds = np.append(offsets, capacity)
    sizes = np.diff(bounds)
    if (sizes < 0).any() or offsets[0] < 0:
        raise ValueError("corrupt DataSketches KLL image: level offsets are not increasing")
    retained = int(capacity - offsets[0])
    rest = len(data) - 20 - 4 * num
    if dtype is None:
        dtype = {4: "float", 8: "double"}.get(rest // (retained + 2)
                                               if rest % (retained + 2) == 0 else 0)
        if dtype is None:
            raise ValueError(f"a KLL image with {retained} items has {rest} bytes for them "
                             "and min/max: neither floats nor doubles")
    fmt, size = _KLL_ITEM[dtype]
    if rest != size * (retained + 2):
        raise ValueError(f"corrupt DataSketches KLL image: expected {size * (retained + 2)} "
                         f"bytes of items, got {rest}")
    at = 20 + 4 * num
    lo, hi = np.frombuffer(data, fmt, 2, at).astype(np.float64)
    items = np.frombuffer(data, fmt, retained, at + 2 * size)
    sk = KLL(k, dtype, seed)
    np_dtype = np.float32 if dtype == "float" else np.float64
    cuts = np.cumsum(sizes)[:-1]
    sk.levels = [np.sort(part).astype(np_dtype) if h == 0 else part.astype(np_dtype)
                 for h, part in enumerate(np.split(items, cuts))]
    weight = sum(int(s) << h for h, s in enumerate(sizes))
    if weight != n:
        raise ValueError(f"corrupt DataSketches KLL image: the levels weigh {weight} items, "
                         f"n is {n}")
    sk.n, sk.min, sk.max = int(n), float(lo), float(hi)
    return sk


# -- theta ------------------------------------------------------------------------------


def theta_image(sk):
    """A compact, ordered, uncompressed (serial version 3) theta image of ``sk``.

    Cost: O(retained).
    """
    _require_ds_hash(sk, "theta")
    seed_hash = ds_seed_hash(sk.seed)
    flags = 2 | 8 | 16
    count = sk.num_retained
    if sk.is_empty():
        return struct.pack("<BBBHBH", 1, 3, _THETA_TYPE, 0, flags | 4, seed_hash)
    if not sk.is_estimation_mode() and count == 1:
        return struct.pack("<BBBHBHQ", 1, 3, _THETA_TYPE, 0, flags, seed_hash,
                           int(sk.hashes[0]))
    entries = sk.hashes.astype("<u8").tobytes()
    if sk.is_estimation_mode():
        return struct.pack("<BBBHBHIIQ", 3, 3, _THETA_TYPE, 0, flags, seed_hash, count, 0,
                           sk.theta) + entries
    return struct.pack("<BBBHBHII", 2, 3, _THETA_TYPE, 0, flags, seed_hash, count, 0) + entries


def theta_from_image(data, lg_k=12, seed=DS_SEED):
    """The ThetaSketch (``hash="datasketches"``, ``lg_k``) of a compact theta image.

    A compact image does not record its sketch's size: ``lg_k`` is the size to keep (an
    image holding more hashes is trimmed to the ``2**lg_k`` smallest, lowering theta).
    ``seed`` must be the one the image's items were hashed with (its 16-bit hash is
    checked). Cost: O(retained log retained).
    """
    from mergeagg.algorithms.theta import ThetaSketch

    data = _as_bytes(data, "theta")
    _need(data, 8, "theta")
    pre, ser, typ, _, flags, seed_hash = struct.unpack_from("<BBBHBH", data)
    if typ != _THETA_TYPE:
        raise ValueError(f"not a DataSketches compact theta image: type {typ} at byte 2, "
                         f"expected {_THETA_TYPE}")
    if ser != 3:
        raise ValueError(f"unsupported compact theta serial version {ser} (byte 1): mergeagg "
                         "reads version 3 (serialize(compress=False))")
    sk = ThetaSketch(lg_k, seed, "datasketches")
    if flags & 4:
        return sk
    if seed_hash != ds_seed_hash(seed):
        raise ValueError(f"the theta image's seed hash {seed_hash} is not that of seed {seed} "
                         f"({ds_seed_hash(seed)}): pass the seed its keys were hashed with")
    if pre == 1:
        _need(data, 16, "theta")
        theta, hashes = _MAX_THETA, np.frombuffer(data, "<u8", 1, 8)
    elif pre in (2, 3):
        _need(data, 8 * pre, "theta")
        (count,) = struct.unpack_from("<I", data, 8)
        theta = struct.unpack_from("<Q", data, 16)[0] if pre == 3 else _MAX_THETA
        if len(data) != 8 * pre + 8 * count:
            raise ValueError(f"corrupt theta image: {count} hashes need "
                             f"{8 * pre + 8 * count} bytes, got {len(data)}")
        hashes = np.frombuffer(data, "<u8", count, 8 * pre)
    else:
        raise ValueError(f"corrupt theta image: {pre} preamble longs")
    if not 0 < theta <= _MAX_THETA:
        raise ValueError(f"corrupt theta image: theta {theta}")
    hashes = np.unique(hashes.astype(np.uint64))
    if hashes.shape[0] and (int(hashes[-1]) >= theta or int(hashes[0]) == 0):
        raise ValueError("corrupt theta image: a hash is zero or not below theta")
    if hashes.shape[0] > sk.k:  # keep the k smallest, as an update would
        theta, hashes = int(hashes[sk.k]), hashes[:sk.k]
    sk.theta, sk.hashes = int(theta), hashes
    return sk
