"""Shared machinery of the sketches: 64-bit hashing, parameter checks, the byte format.

Private to the catalog (not scanned by the registry). Each sketch module defines a
subclass of :class:`Sketch`; this module owns everything they have in common, so no
sketch re-implements ``update``/``merge``/``copy``/``==``/serialisation.

**Hash identity** ``"mm3x64+sm64/1"``: a str is hashed as its UTF-8 bytes (lone surrogates
via ``surrogatepass``), so ``"a"`` and ``b"a"`` are the same key; bytes as the first 64-bit
half of MurmurHash3 x64-128 with the sketch's 32-bit seed (exactly ``mmh3.hash64(key, seed,
signed=False)[0]``, computed in numpy for batches); an integer by its 64-bit two's complement
value (so ``-1`` and ``2**64 - 1`` are one key) through a seeded splitmix64 mix. Batches and
single items hash identically, whatever the container.

>>> hash64_one(b"abc", 7) == int(hash64([b"abc"], 7)[0]) == int(hash64(["abc"], 7)[0])
True
>>> hash64_one(5, 0) == int(hash64(np.array([5], dtype=np.uint8), 0)[0])
True
"""

from __future__ import annotations

import struct
import zlib

import mmh3
import numpy as np

from mergeagg.errors import IncompatibleMergeError

__all__ = [
    "HASH_ID",
    "HASH_DS",
    "DS_SEED",
    "hash128_ds",
    "ds_seed_hash",
    "check_hash",
    "FORMAT_VERSION",
    "Sketch",
    "hash64",
    "hash64_one",
    "iter_hashes",
    "seed_stream",
    "check_seed",
    "check_int",
    "check_not_scalar",
    "check_params",
    "load",
    "merge_into",
    "records_of",
]

HASH_ID = "mm3x64+sm64/1"
HASH_DS = "datasketches"
"""DataSketches' item hashing: MurmurHash3 x64-128 (both halves) of the item's bytes, a str
as UTF-8 (the empty str skipped, as DataSketches skips it), an int as its 8 little-endian
two's complement bytes, a float as its 8 IEEE-754 bytes (``-0.0`` as ``0.0``, every NaN as
Java's canonical NaN), with a 64-bit seed (DataSketches' default 9001)."""
DS_SEED = 9001
FORMAT_VERSION = 1
_HASH_CODES = {HASH_ID: 1, HASH_DS: 2}
_HASH_NAMES = {"mergeagg": HASH_ID, HASH_ID: HASH_ID, HASH_DS: HASH_DS}

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_C1 = 0x87C37B91114253D5
_C2 = 0x4CF5AD432745937F
_F1 = 0xFF51AFD7ED558CCD
_F2 = 0xC4CEB9FE1A85EC53
_S1 = 0xBF58476D1CE4E5B9
_S2 = 0x94D049BB133111EB

_CHUNK = 1 << 13  # keys per vectorised step: temporaries stay in the CPU cache (and under
# the 128 KiB above which malloc maps fresh pages for every temporary)
_BATCH = 1 << 18  # str/bytes/list keys hashed per call when a sketch is updated
_VEC_MIN = 8  # fewer keys of one length than this are hashed by mmh3 one by one
_VEC_MAX_LEN = 512  # longer keys are hashed by mmh3 one by one

_u = np.uint64


# -- seeds and parameters -----------------------------------------------------------------


def check_int(name, value, lo, hi):
    """``value`` as an int in ``[lo, hi]``; ``TypeError``/``ValueError`` naming ``name``.

    >>> check_int("p", 14, 4, 18)
    14
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def check_seed(seed):
    """A seed is an int in ``[0, 2**32)`` (MurmurHash3's seed is 32 bits).

    >>> check_seed(1)
    1
    """
    return check_int("seed", seed, 0, (1 << 32) - 1)


def _splitmix_scalar(z):
    z = (z + _GOLDEN) & _M64
    z = ((z ^ (z >> 30)) * _S1) & _M64
    z = ((z ^ (z >> 27)) * _S2) & _M64
    return z ^ (z >> 31)


def seed_stream(seed, n, salt=0):
    """``n`` deterministic 64-bit ints drawn from ``seed`` (a splitmix64 sequence).

    Part of the format: sketch parameters (permutations, row hashes) derive from it, never
    from numpy's generators, whose streams may change between numpy versions.

    >>> seed_stream(1, 2) == seed_stream(1, 2) != seed_stream(2, 2)
    True
    """
    state = (seed * 0x100000001B3 + salt * _GOLDEN + 0x632BE59BD9B4E019) & _M64
    out = []
    for _ in range(n):
        state = (state + _GOLDEN) & _M64
        out.append(_splitmix_scalar(state))
    return out


# -- hashing ------------------------------------------------------------------------------


def _int_key(seed):
    return _splitmix_scalar(seed ^ 0x5851F42D4C957F2D)


def _mix_ints(x, seed, out=None, tmp=None):
    """splitmix64 of ``x + key(seed)`` over a uint64 array, in chunks of ``_CHUNK``.

    ``out`` and ``tmp`` (uint64, at least ``len(x)`` long) avoid allocating.
    """
    n = x.shape[0]
    out = np.empty(n, dtype=np.uint64) if out is None else out[:n]
    k = _u(_int_key(seed))
    s1, s2 = _u(_S1), _u(_S2)
    b30, b27, b31 = _u(30), _u(27), _u(31)
    for lo in range(0, n, _CHUNK):
        z = out[lo:lo + _CHUNK]
        t = np.empty_like(z) if tmp is None else tmp[: z.shape[0]]
        np.add(x[lo:lo + _CHUNK], k, out=z)
        np.right_shift(z, b30, out=t)
        z ^= t
        z *= s1
        np.right_shift(z, b27, out=t)
        z ^= t
        z *= s2
        np.right_shift(z, b31, out=t)
        z ^= t
    return out


def iter_hashes(items, seed):
    """Yield ``(offset, hashes)`` for consecutive chunks of ``items`` (see :func:`hash64`).

    Integer arrays are hashed ``_CHUNK`` keys at a time into one reused buffer, so a
    consumer that updates its sketch from each chunk before asking for the next stays in
    the CPU cache; other batches come in chunks of ``_BATCH`` keys.

    >>> [(o, h.shape[0]) for o, h in iter_hashes(np.arange(5), 0)]
    [(0, 5)]
    """
    check_not_scalar(items)
    if isinstance(items, range) and -(1 << 63) <= min(items.start, items.stop) and max(
            items.start, items.stop) < (1 << 63):
        items = np.arange(items.start, items.stop, items.step, dtype=np.int64)
    if isinstance(items, np.ndarray) and items.ndim == 1 and items.dtype.kind in "iu":
        x = items.astype(np.int64 if items.dtype.kind == "i" else np.uint64, copy=False)
        x = x.view(np.uint64)
        n = x.shape[0]
        out = np.empty(min(n, _CHUNK), dtype=np.uint64)
        tmp = np.empty_like(out)
        for lo in range(0, n, _CHUNK):
            yield lo, _mix_ints(x[lo:lo + _CHUNK], seed, out, tmp)
        return
    if not isinstance(items, (list, tuple, np.ndarray)):
        items = list(items)
    if len(items) == 0:
        yield 0, np.empty(0, dtype=np.uint64)
    for lo in range(0, len(items), _BATCH):
        yield lo, hash64(items[lo:lo + _BATCH], seed)


def _rotl(x, r):
    return (x << _u(r)) | (x >> _u(64 - r))


def _fmix(k):
    k ^= k >> _u(33)
    k *= _u(_F1)
    k ^= k >> _u(33)
    k *= _u(_F2)
    k ^= k >> _u(33)
    return k


def _windows(buf):
    """Every unaligned little-endian 8-byte word of ``buf``: element i is bytes i .. i+7.

    ``buf`` is copied with 8 zero bytes appended, so words past the end read zeros.
    """
    padded = np.zeros(buf.shape[0] + 8, dtype=np.uint8)
    padded[: buf.shape[0]] = buf
    return np.ndarray(shape=(buf.shape[0] + 1,), dtype="<u8", buffer=padded, strides=(1,))


def _murmur_at(win, starts, length, seed):
    """First half of MurmurHash3 x64-128 of the ``length``-byte keys at ``starts``.

    ``win`` is :func:`_windows` of the buffer the keys live in. Vectorised over the keys,
    in chunks; exactly ``mmh3.hash64(key, seed, signed=False)[0]`` for each key.
    """
    n = starts.shape[0]
    c1, c2 = _u(_C1), _u(_C2)
    nblocks, tail = divmod(length, 16)
    tail_mask = _u((1 << (8 * (tail % 8))) - 1) if tail % 8 else None
    out = np.empty(n, dtype=np.uint64)

    def word(j, at):
        w = win[at + 8 * j]
        if tail_mask is not None and j == (length - 1) // 8:
            w &= tail_mask
        return w

    for lo in range(0, n, _CHUNK):
        at = starts[lo:lo + _CHUNK]
        h1 = np.full(at.shape[0], seed, dtype=np.uint64)
        h2 = h1.copy()
        for b in range(nblocks):
            k1 = word(2 * b, at)
            k1 *= c1
            k1 = _rotl(k1, 31)
            k1 *= c2
            h1 ^= k1
            h1 = _rotl(h1, 27)
            h1 += h2
            h1 *= _u(5)
            h1 += _u(0x52DCE729)
            k2 = word(2 * b + 1, at)
            k2 *= c2
            k2 = _rotl(k2, 33)
            k2 *= c1
            h2 ^= k2
            h2 = _rotl(h2, 31)
            h2 += h1
            h2 *= _u(5)
            h2 += _u(0x38495AB5)
        if tail > 8:
            k2 = word(2 * nblocks + 1, at)
            k2 *= c2
            k2 = _rotl(k2, 33)
            k2 *= c1
            h2 ^= k2
        if tail > 0:
            k1 = word(2 * nblocks, at)
            k1 *= c1
            k1 = _rotl(k1, 31)
            k1 *= c2
            h1 ^= k1
        h1 ^= _u(length)
        h2 ^= _u(length)
        h1 += h2
        h2 += h1
        h1 = _fmix(h1)
        h2 = _fmix(h2)
        h1 += h2
        out[lo:lo + _CHUNK] = h1
    return out


def _length_groups(lens):
    """(length, indices or None for all) for each distinct length in ``lens``."""
    n = lens.shape[0]
    lmin, lmax = int(lens.min()), int(lens.max())
    if lmin == lmax:
        return [(lmin, None)]
    present = np.flatnonzero(np.bincount(lens - lmin)) + lmin
    if present.shape[0] <= 16:
        return [(int(length), np.flatnonzero(lens == length)) for length in present]
    order = np.argsort(lens, kind="stable")
    sorted_lens = lens[order]
    cuts = np.flatnonzero(np.diff(sorted_lens)) + 1
    return [(int(sorted_lens[a]), order[a:b]) for a, b in zip(np.r_[0, cuts], np.r_[cuts, n])]


def _hash_concat(buf, lens, seed):
    """Hashes of the keys laid end to end in ``buf`` (uint8) with lengths ``lens``."""
    n = lens.shape[0]
    out = np.empty(n, dtype=np.uint64)
    if n == 0:
        return out
    starts = np.cumsum(lens) - lens
    win = None
    raw = None
    for length, idx in _length_groups(lens):
        count = n if idx is None else idx.shape[0]
        if count < _VEC_MIN or length > _VEC_MAX_LEN:
            if raw is None:
                raw = buf.tobytes()
            for i in (range(n) if idx is None else idx.tolist()):
                s = int(starts[i])
                out[i] = mmh3.hash64(raw[s:s + length], seed, signed=False)[0]
            continue
        if win is None:
            win = _windows(buf)
        if idx is None:
            out[:] = _murmur_at(win, starts, length, seed)
        else:
            out[idx] = _murmur_at(win, starts[idx], length, seed)
    return out


def _hash_bytes_list(items, seed):
    n = len(items)
    lens = np.fromiter(map(len, items), dtype=np.int64, count=n)
    buf = np.frombuffer(b"".join(items), dtype=np.uint8)
    return _hash_concat(buf, lens, seed)


def _hash_str_list(items, seed, joined=None):
    if joined is None:
        joined = "".join(items)
    if joined.isascii():
        n = len(items)
        lens = np.fromiter(map(len, items), dtype=np.int64, count=n)
        buf = np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
        return _hash_concat(buf, lens, seed)
    return _hash_bytes_list([s.encode("utf-8", "surrogatepass") for s in items], seed)


def _hash_fixed_bytes_array(arr, seed):
    """An ``S<w>`` array: each element is its bytes without trailing NULs (numpy's view)."""
    n, width = arr.shape[0], arr.dtype.itemsize
    mat = np.ascontiguousarray(arr).view(np.uint8).reshape(n, width)
    short = np.flatnonzero(mat[:, -1] == 0)  # elements shorter than the width
    starts = np.arange(n, dtype=np.int64) * width
    if short.shape[0] == 0:
        return _murmur_at(_windows(mat.reshape(-1)), starts, width, seed)
    out = np.empty(n, dtype=np.uint64)
    full = np.ones(n, dtype=bool)
    full[short] = False
    out[full] = _murmur_at(_windows(mat.reshape(-1)), starts[full], width, seed)
    out[short] = _hash_bytes_list(arr[short].tolist(), seed)
    return out


def _bad_item(item):
    return TypeError(
        f"cannot hash a {type(item).__name__} ({item!r:.60}): sketch keys are str, bytes "
        "or integers (hash anything else to one of those first)"
    )


def hash64_one(item, seed):
    """The 64-bit hash of one key, as a Python int. Cost: one mmh3 call or ~1 us.

    >>> hash64_one("abc", 0) == hash64_one(b"abc", 0)
    True
    """
    if isinstance(item, str):
        item = item.encode("utf-8", "surrogatepass")
    if isinstance(item, (bytes, bytearray, memoryview)):
        return mmh3.hash64(bytes(item), seed, signed=False)[0]
    if isinstance(item, (int, np.integer)) and not isinstance(item, np.bool_):
        v = int(item)
        if not -(1 << 63) <= v <= _M64:
            raise ValueError(f"integer keys must fit in 64 bits, got {v}")
        return _splitmix_scalar(((v & _M64) + _int_key(seed) - _GOLDEN) & _M64)
    if isinstance(item, np.bytes_):
        return hash64_one(bytes(item), seed)
    raise _bad_item(item)


def check_not_scalar(items):
    """``TypeError`` for a bare str/bytes where an iterable of keys is expected."""
    if isinstance(items, (str, bytes, bytearray, memoryview)):
        raise TypeError(
            f"update() takes an iterable of keys, not a single {type(items).__name__}: "
            "call add(key) for one key, or wrap it in a list (hashing its characters one "
            "by one is never what was meant)"
        )


def hash64(items, seed):
    """64-bit hashes of a batch of keys as a uint64 array (see the module for the rules).

    Vectorised for numpy integer arrays, ``S<w>`` byte-string arrays, and lists of ints,
    of str or of bytes (keys of one length are hashed together in numpy); anything else
    falls back to one :func:`hash64_one` per key. Cost: ~10 ns per integer key, ~30-60 ns
    per short str/bytes key from a list.

    >>> hash64([1, 2], 0).dtype
    dtype('uint64')
    >>> hash64("abc", 0)
    Traceback (most recent call last):
    ...
    TypeError: update() takes an iterable of keys, not a single str: call add(key) ...
    """
    check_not_scalar(items)
    if isinstance(items, np.ndarray):
        if items.ndim != 1:
            raise ValueError(f"a key array must be one-dimensional, got shape {items.shape}")
        kind = items.dtype.kind
        if kind in "iu":
            x = items.astype(np.int64) if kind == "i" else items.astype(np.uint64)
            return _mix_ints(x.view(np.uint64), seed)
        if kind == "S":
            return _hash_fixed_bytes_array(items, seed)
        if kind in "UO":
            items = items.tolist()
        else:
            raise TypeError(
                f"cannot hash a numpy array of dtype {items.dtype}: keys are integers, "
                "str or bytes (convert floats to ints or bytes first)"
            )
    elif not isinstance(items, (list, tuple)):
        items = list(items)
    n = len(items)
    if n == 0:
        return np.empty(0, dtype=np.uint64)
    first = type(items[0])
    if first is bytes or first is str:
        # join() checks every element's type in C: a faster test than collecting types.
        try:
            joined = (b"" if first is bytes else "").join(items)
        except TypeError:
            pass
        else:
            if first is bytes:
                return _hash_concat(np.frombuffer(joined, dtype=np.uint8),
                                    np.fromiter(map(len, items), dtype=np.int64, count=n),
                                    seed)
            return _hash_str_list(items, seed, joined)
    types = set(map(type, items))
    if types <= {int, bool}:
        try:
            x = np.array(items, dtype=np.int64).view(np.uint64)
        except OverflowError:
            x = np.fromiter((int(v) & _M64 if -(1 << 63) <= v <= _M64 else _too_big(v)
                             for v in items), dtype=np.uint64, count=n)
        return _mix_ints(x, seed)
    if types == {str}:
        return _hash_str_list(items, seed)
    if types == {bytes}:
        return _hash_bytes_list(items, seed)
    if len(types) == 1 and issubclass(next(iter(types)), np.integer):
        return hash64(np.array(items, dtype=next(iter(types))), seed)
    if types <= {str, bytes}:
        return _hash_bytes_list(
            [x.encode("utf-8", "surrogatepass") if type(x) is str else x for x in items], seed)
    return np.fromiter((hash64_one(x, seed) for x in items), dtype=np.uint64, count=n)


def _too_big(v):
    raise ValueError(f"integer keys must fit in 64 bits, got {v}")


# -- DataSketches' hashing ------------------------------------------------------------------


def check_hash(name):
    """The hash identity a sketch's ``hash=`` names: ``"mergeagg"`` (:data:`HASH_ID`, the
    default) or ``"datasketches"`` (:data:`HASH_DS`).

    >>> check_hash("mergeagg") == HASH_ID, check_hash("datasketches")
    (True, 'datasketches')
    """
    try:
        return _HASH_NAMES[name]
    except (KeyError, TypeError):
        raise ValueError(f"hash must be 'mergeagg' or 'datasketches', got {name!r}") from None


def ds_seed_hash(seed):
    """The 16-bit seed hash DataSketches stores in theta images: the low 16 bits of the
    first half of MurmurHash3 x64-128 (seed 0) of the seed's 8 little-endian bytes.

    >>> ds_seed_hash(9001)
    37836
    """
    return mmh3.hash64(struct.pack("<Q", seed), 0, signed=False)[0] & 0xFFFF


def _words_ds(words, seed):
    """Both halves of MurmurHash3 x64-128 of each uint64 as its 8 little-endian bytes."""
    c1, c2 = _u(_C1), _u(_C2)
    n = words.shape[0]
    h1 = np.full(n, seed, dtype=np.uint64)
    k1 = words * c1
    k1 = _rotl(k1, 31)
    k1 *= c2
    h1 ^= k1
    h2 = np.full(n, seed ^ 8, dtype=np.uint64)
    h1 ^= _u(8)
    h1 += h2
    h2 += h1
    h1 = _fmix(h1)
    h2 = _fmix(h2)
    h1 += h2
    h2 += h1
    return h1, h2


def _canonical_double_bits(x):
    x = np.asarray(x, dtype=np.float64) + 0.0  # -0.0 + 0.0 is 0.0
    bits = x.view(np.uint64).copy()
    bits[np.isnan(x)] = _u(0x7FF8000000000000)
    return bits


def hash128_ds(items, seed=DS_SEED):
    """``(h1, h2)``: both halves of MurmurHash3 x64-128 of each item, hashed the way Apache
    DataSketches hashes it (see :data:`HASH_DS`), as two uint64 arrays.

    Numbers are hashed in numpy; str and bytes one by one with ``mmh3``. Empty str and bytes
    are dropped (DataSketches ignores them). Cost: ~10 ns per number of a numpy array,
    ~0.3 us per str/bytes item.

    >>> h1, h2 = hash128_ds([b"abc"], 7)
    >>> (int(h1[0]), int(h2[0])) == mmh3.hash64(b"abc", 7, signed=False)
    True
    >>> int(hash128_ds(np.array([5]))[0][0]) == mmh3.hash64((5).to_bytes(8, "little"),
    ...                                                        9001, signed=False)[0]
    True
    """
    check_not_scalar(items)
    if isinstance(items, range):
        items = np.arange(items.start, items.stop, items.step, dtype=np.int64)
    if isinstance(items, np.ndarray):
        if items.ndim != 1:
            raise ValueError(f"a key array must be one-dimensional, got shape {items.shape}")
        kind = items.dtype.kind
        if kind in "iu":
            words = items.astype(np.int64 if kind == "i" else np.uint64).view(np.uint64)
            return _words_ds(words, seed)
        if kind == "f":
            return _words_ds(_canonical_double_bits(items), seed)
        items = items.tolist()
    elif not isinstance(items, (list, tuple)):
        items = list(items)
    if items and set(map(type, items)) <= {int}:
        try:
            return hash128_ds(np.array(items, dtype=np.int64), seed)
        except OverflowError:
            pass  # keys of 2**63 and above: one by one below
    h1 = np.empty(len(items), dtype=np.uint64)
    h2 = np.empty(len(items), dtype=np.uint64)
    keep = np.ones(len(items), dtype=bool)
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = item.encode("utf-8", "surrogatepass")
        if isinstance(item, (bytes, bytearray, memoryview, np.bytes_)):
            if len(item) == 0:
                keep[i] = False
                h1[i] = h2[i] = 0
                continue
            h1[i], h2[i] = mmh3.hash64(bytes(item), seed, signed=False)
            continue
        if isinstance(item, (bool, np.bool_)):
            raise _bad_item(item)
        if isinstance(item, (int, np.integer)):
            v = int(item)
            if not -(1 << 63) <= v <= _M64:
                raise ValueError(f"integer keys must fit in 64 bits, got {v}")
            w = np.array([v & _M64], dtype=np.uint64)
        elif isinstance(item, (float, np.floating)):
            w = _canonical_double_bits([float(item)])
        else:
            raise _bad_item(item)
        a, b = _words_ds(w, seed)
        h1[i], h2[i] = a[0], b[0]
    if not keep.all():
        return h1[keep], h2[keep]
    return h1, h2


# -- the byte format ----------------------------------------------------------------------

_MAGIC = b"MGSK"
_HEAD = struct.Struct("<4sBBBBI")  # magic, version, kind, hash code, reserved, seed
_KINDS = {}  # kind code -> Sketch subclass


def load(data):
    """Any sketch from its bytes (see :meth:`Sketch.to_bytes` for the format).

    >>> load(b"nonsense")
    Traceback (most recent call last):
    ...
    ValueError: not a mergeagg sketch: 8 bytes, too short for the 12-byte header and checksum
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"a sketch's bytes must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < _HEAD.size + 4:
        raise ValueError(
            f"not a mergeagg sketch: {len(data)} bytes, too short for the 12-byte header "
            "and checksum")
    magic, version, kind, hcode, _reserved, seed = _HEAD.unpack_from(data)
    if magic != _MAGIC:
        raise ValueError(f"not a mergeagg sketch: the bytes start with {magic!r}, not {_MAGIC!r}")
    (crc,) = struct.unpack_from("<I", data, len(data) - 4)
    if zlib.crc32(data[:-4]) != crc:
        raise ValueError("corrupt sketch bytes: the CRC-32 checksum does not match "
                         "(truncated or modified data)")
    if version != FORMAT_VERSION:
        raise ValueError(f"unsupported sketch format version {version} "
                         f"(this mergeagg reads version {FORMAT_VERSION})")
    names = {code: name for name, code in _HASH_CODES.items()}
    if hcode not in names:
        raise ValueError(f"unknown hash code {hcode} (this mergeagg knows "
                         + ", ".join(f"{c} = {n}" for n, c in _HASH_CODES.items()) + ")")
    cls = _KINDS.get(kind)
    if cls is None:
        raise ValueError(f"unknown sketch kind {kind}; known: "
                         + ", ".join(f"{k} = {c.__name__}" for k, c in sorted(_KINDS.items())))
    if names[hcode] == HASH_ID:
        return cls._decode(data[_HEAD.size:-4], seed)
    if HASH_DS not in cls.HASHES:
        raise ValueError(f"corrupt sketch bytes: a {cls.__name__} has no {names[hcode]!r} "
                         "hash mode")
    return cls._decode(data[_HEAD.size:-4], seed, hash=names[hcode])


def check_params(mine, theirs):
    """Raise unless ``theirs`` has the type and ``params()`` of ``mine``.

    ``TypeError`` for another type; :class:`~mergeagg.errors.IncompatibleMergeError` that
    lists each differing parameter with both values otherwise.

    >>> from mergeagg.algorithms.hyperloglog import HyperLogLog
    >>> check_params(HyperLogLog(p=10), HyperLogLog(p=12, seed=1))
    Traceback (most recent call last):
    ...
    mergeagg.errors.IncompatibleMergeError: cannot merge HyperLogLog sketches with different \
parameters (p: 10 != 12; seed: 0 != 1); build both with the same parameters
    """
    if type(theirs) is not type(mine):
        raise TypeError(f"cannot merge a {type(theirs).__name__} into a {type(mine).__name__}")
    a, b = mine.params(), theirs.params()
    diffs = [f"{k}: {a[k]!r} != {b[k]!r}" for k in a if a[k] != b.get(k)]
    if diffs:
        raise IncompatibleMergeError(
            f"cannot merge {type(mine).__name__} sketches with different parameters ("
            + "; ".join(diffs) + "); build both with the same parameters")


class Sketch:
    """Base of the sketches: the parts every sketch shares, derived from four hooks.

    A subclass sets ``KIND`` (its code in the byte format), defines ``params()`` (name ->
    value, the merge-compatibility contract), ``_state()`` (its numpy arrays),
    ``_update_hashes(h)``, ``_merge(other)``, ``_encode()``/``_decode(payload, seed)``.
    """

    KIND = 0
    HASHES = (HASH_ID,)  # the hash identities the class can be built with
    __slots__ = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.KIND:
            _KINDS[cls.KIND] = cls

    # hooks --------------------------------------------------------------------------
    def params(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _state(self):  # pragma: no cover - abstract
        raise NotImplementedError

    # shared API -----------------------------------------------------------------------
    def add(self, item):
        """Add one key (str, bytes or int); returns ``self``. Cost: one hash plus O(row).

        >>> from mergeagg.algorithms.minhash import MinHash
        >>> MinHash(num_perm=4).add("k") == MinHash(num_perm=4).update(["k"])
        True
        """
        self._update_hashes(np.array([hash64_one(item, self.seed)], dtype=np.uint64))
        return self

    def update(self, items):
        """Add every key of an iterable or a numpy array; returns ``self``.

        A bare str/bytes is a ``TypeError``. Cost: the sketch's per-key cost, vectorised
        (see each class).

        >>> from mergeagg.algorithms.hyperloglog import HyperLogLog
        >>> round(HyperLogLog(p=8).update(iter(["a", "b", b"a"])).count())
        2
        """
        for _, h in iter_hashes(items, self.seed):
            self._update_hashes(h)
        return self

    def check_compatible(self, other):
        """Raise unless ``other`` is the same kind of sketch with the same parameters.

        ``TypeError`` for another type; :class:`~mergeagg.errors.IncompatibleMergeError`
        listing every differing parameter with both values otherwise.
        """
        check_params(self, other)

    def merge(self, other):
        """Merge ``other`` into this sketch (``other`` is not modified); returns ``self``.

        Cost: O(size of the sketch). Raises as :meth:`check_compatible` does.

        >>> from mergeagg.algorithms.hyperloglog import HyperLogLog
        >>> a, b = HyperLogLog(p=6).update([1]), HyperLogLog(p=6).update([2])
        >>> round(a.merge(b).count()), round(b.count())
        (2, 1)
        """
        self.check_compatible(other)
        self._merge(other)
        return self

    def copy(self):
        """An independent copy. Cost: O(memory).

        >>> from mergeagg.algorithms.countmin import CountMin
        >>> a = CountMin(8, 2).update([1])
        >>> b = a.copy().update([1])
        >>> a.query(1), b.query(1)
        (1, 2)
        """
        return type(self)._clone(self)

    @classmethod
    def _clone(cls, other):
        new = object.__new__(cls)
        for name in _all_slots(cls):
            value = getattr(other, name)
            setattr(new, name, value.copy() if hasattr(value, "copy") else value)
        return new

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self.params() == other.params() and all(
            np.array_equal(a, b) for a, b in zip(self._state(), other._state()))

    __hash__ = None

    def __mergeagg_fingerprint__(self):
        return (type(self).__name__, tuple(self.params().items()), self._state())

    def __getstate__(self):
        return {name: getattr(self, name) for name in _all_slots(type(self))}

    def __setstate__(self, state):
        for name, value in state.items():
            setattr(self, name, value)

    def to_bytes(self):
        """The sketch in the versioned byte format (documented in docs/sketches.md).

        Layout, little-endian: ``b"MGSK"``, format version (u8), kind (u8: 1 HyperLogLog,
        2 CountMin, 3 MinHash, 4 KLL, 5 ThetaSketch, 6 BloomFilter), hash code (u8: 1 =
        ``HASH_ID``, 2 = ``HASH_DS``), reserved (u8), seed (u32),
        the kind's parameters and arrays, then a CRC-32 of everything before it (u32).
        Cost: O(size of the sketch).

        >>> from mergeagg.algorithms.hyperloglog import HyperLogLog
        >>> data = HyperLogLog(p=4).to_bytes()
        >>> data[:4], data[4], data[5], len(data)
        (b'MGSK', 1, 1, 33)
        """
        code = _HASH_CODES[getattr(self, "hash", HASH_ID)]
        body = _HEAD.pack(_MAGIC, FORMAT_VERSION, self.KIND, code, 0, self.seed)
        body += self._encode()
        return body + struct.pack("<I", zlib.crc32(body))

    @classmethod
    def from_bytes(cls, data):
        """The sketch that :meth:`to_bytes` wrote; ``ValueError`` for anything else.

        Cost: O(len(data)), with a CRC-32 check.

        >>> from mergeagg.algorithms.minhash import MinHash
        >>> m = MinHash(num_perm=8).update(["a"])
        >>> MinHash.from_bytes(m.to_bytes()) == m
        True
        """
        sk = load(data)
        if type(sk) is not cls:
            raise ValueError(f"the bytes hold a {type(sk).__name__}, not a {cls.__name__}")
        return sk


def _all_slots(cls):
    names = []
    for klass in reversed(cls.__mro__):
        names.extend(getattr(klass, "__slots__", ()))
    return names


def expect_len(payload, n, what):
    """Raise ``ValueError`` unless ``payload`` holds exactly ``n`` bytes."""
    if len(payload) != n:
        raise ValueError(f"corrupt {what} bytes: expected {n} bytes of payload, got "
                         f"{len(payload)}")


def merge_into(a, b):
    """Merge sketch ``b`` into ``a`` and return ``a``: the combine of every sketch entry.

    >>> from mergeagg.algorithms.hyperloglog import HyperLogLog
    >>> merge_into(HyperLogLog(p=4).update([1]), HyperLogLog(p=4).update([2])).count() > 1
    True
    """
    return a.merge(b)


def records_of(shard):
    """The records of a shard as a list or array (a text split's lines, or the shard)."""
    return shard if isinstance(shard, (list, tuple, np.ndarray)) else list(shard)
