"""Canonical fingerprints: one SHA-256 hex string per value, the same in every process.

The runtime fingerprints every task output to prove that retries, backups and different
tree shapes did not change the answer; users compare a fingerprint computed one way with one
computed another. So :func:`fingerprint` is

* **canonical** — a type-tagged encoding, never Python's salted ``hash()`` and never pickle:
  the same value gives the same string in every process, on every run, on every machine;
* **typed** — ``1``, ``1.0`` and ``True`` differ, a list differs from a tuple; but a
  ``Counter``, ``defaultdict`` or ``OrderedDict`` is the plain ``dict`` with the same items,
  and a numpy scalar is the Python scalar of the same kind and value;
* **order-free where order is meaningless** — dicts, sets and frozensets are combined from
  per-entry digests by a sum modulo 2**64 in each of two lanes, so nothing is sorted;
* **streaming** — one pass, memory bounded by a fixed chunk beyond the value itself.
  Long or nested lists and tuples of plain values (None, bool, int, float, str, bytes,
  lists, tuples, hooked objects) are encoded 4,096 items at a time by a vectorised
  encoder that writes exactly the bytes the rules below give, item by item.

Rules, in full:

=====================  ==================================================================
value                  encoded as
=====================  ==================================================================
None, bool             a tag byte each
int                    tag + 8 bytes (two's complement) or tag + length + bytes if larger
float                  tag + its IEEE-754 binary64 bits (so ``0.0`` and ``-0.0`` differ)
complex                tag + the bits of both parts
str / bytes            tag + length + UTF-8 (``surrogatepass``) / the bytes
bytearray              like bytes, with its own tag
list, tuple            tag + length + each item in order (a namedtuple is a tuple)
dict (and subclasses)  tag + length + the 128-bit sum of per-entry digests
set / frozenset        tag + length + the 128-bit sum of per-element digests
numpy.ndarray          tag + dtype string + shape + the C-ordered bytes (object arrays
                       item by item)
numpy scalar           as the Python scalar of the same kind and value
fractions.Fraction     tag + numerator + denominator
decimal.Decimal        tag + its ``str``
dataclass instance     tag + qualified class name + each field's name and value
anything else          ``obj.__mergeagg_fingerprint__()`` if defined (the opt-in hook: return
                       a supported value that stands for the object), else ``TypeError``
=====================  ==================================================================

A per-entry digest is MurmurHash3 x64-128 of a str's UTF-8 or of bytes, xor a tag per type;
a splitmix64 mix of an int's or float's 64 bits; or the first 16 bytes of the SHA-256 of
any other value's encoding. The order-free sums protect against accidents, not against an
adversary who chooses keys to collide.

>>> fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
True
>>> from collections import Counter
>>> fingerprint(Counter("abca")) == fingerprint({"a": 2, "b": 1, "c": 1})
True
>>> len({fingerprint(1), fingerprint(1.0), fingerprint(True)})
3
>>> fingerprint([1, 2]) == fingerprint((1, 2))
False
>>> fingerprint({"x": object()})
Traceback (most recent call last):
...
TypeError: cannot fingerprint a value of type object at value['x']; ...
"""

from __future__ import annotations

import dataclasses
import decimal
import fractions
import hashlib
import struct
from itertools import chain, islice

import mmh3
import numpy as np

__all__ = ["fingerprint", "Fingerprinter", "MappingDigest", "key_hashes"]

_CHUNK = 1 << 15
_MASK = (1 << 64) - 1
_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1

# Seeds and constants of the per-entry digests. Changing any of them changes every
# fingerprint ever published: they are part of the format.
_STR_TAG = (np.uint64(0x5EED0001), np.uint64(0x5EED0011))
_BYTES_TAG = (np.uint64(0x5EED0002), np.uint64(0x5EED0022))
_INT_K = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xD1B54A32D192ED03))
_FLOAT_K = (np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9))
_ENTRY_K = (np.uint64(0x27D4EB2F165667C5), np.uint64(0x85EBCA77C2B2AE63))

# Digest bytes are read as little-endian words on every machine (the format's byte order).
_LE_U64 = np.dtype("<u8")

_pack_q = struct.Struct("<q").pack
_pack_Q = struct.Struct("<Q").pack
_pack_d = struct.Struct("<d").pack
_pack_dd = struct.Struct("<dd").pack


def _smix(z):
    """splitmix64's finaliser over a uint64 array (numpy wraps array arithmetic mod 2**64)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class _Unsupported(Exception):
    """Raised inside the encoder; carries the offending type and the path to it."""

    def __init__(self, typ, segments=()):
        super().__init__(typ)
        self.typ = typ
        self.segments = list(segments)


def _numpy_scalar_to_python(x):
    """A numpy scalar as the Python scalar of the same kind and value."""
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.complexfloating):
        return complex(x)
    if isinstance(x, np.str_):
        return str(x)
    if isinstance(x, np.bytes_):
        return bytes(x)
    return x.item()


def _mix_lanes(bits, keys):
    out = np.empty((bits.shape[0], 2), dtype=np.uint64)
    out[:, 0] = _smix(bits + keys[0])
    out[:, 1] = _smix(bits + keys[1])
    return out


def _hash_strs(items, tag):
    """128-bit digests, as an (n, 2) uint64 array, of a list of str or of bytes.

    MurmurHash3 x64-128 of the bytes (a str as UTF-8 with ``surrogatepass``), xor ``tag``,
    which tells str from bytes.
    """
    if tag is _STR_TAG and not "".join(items).isascii():
        # Encode non-ASCII text ourselves: mmh3 must never see a lone surrogate.
        items = [x.encode("utf-8", "surrogatepass") for x in items]
    joined = b"".join(map(mmh3.hash_bytes, items))
    out = np.frombuffer(joined, dtype=_LE_U64).reshape(-1, 2)
    return out ^ np.array(tag, dtype=np.uint64)


_HEADER = np.dtype([("t", "S1"), ("n", "<u8")])
_EMPTY = np.zeros(0, dtype=np.uint8)
_NO_LENS = np.zeros(0, dtype=np.int64)
_BULK_CHUNK = 4096  # items per bulk-encoded piece of a long sequence
_SHA_E = hashlib.sha256(b"e")  # a nested per-entry digest hashes "e" + the encoding


class _NotBulk(Exception):
    """A value the bulk encoder does not handle; the caller encodes item by item."""


def _splice(heads, data, seg_lens):
    """``head_0 seg_0 head_1 seg_1 ...`` as one uint8 array, and each item's length.

    ``heads`` is an ``(n, w)`` (or ``(1, w)``, shared) uint8 array, ``data`` the segments
    back to back, ``seg_lens`` their lengths. Cost: O(n * w + len(data)), in numpy.
    """
    n, width = len(seg_lens), heads.shape[1]
    lens = seg_lens + width
    if n == 0:
        return _EMPTY, lens
    if width > 1 and len(data) % width == 0 and not (seg_lens % width).any():
        # Every segment is whole rows of the header's width (runs of ints or floats, say):
        # place rows, not bytes.
        rows = seg_lens // width + 1
        at = np.zeros(n, dtype=np.int64)
        np.cumsum(rows[:-1], out=at[1:])
        out = np.empty((int(at[-1] + rows[-1]), width), dtype=np.uint8)
        out[at] = heads
        if len(data):
            keep = np.ones(len(out), dtype=bool)
            keep[at] = False
            out[keep] = data.reshape(-1, width)
        return out.reshape(-1), lens
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    total = int(starts[-1] + lens[-1])
    out = np.empty(total, dtype=np.uint8)
    if width:
        where = (starts[:, None] + np.arange(width, dtype=np.int64)).ravel()
        out[where] = np.broadcast_to(heads, (n, width)).ravel()
        if len(data):
            keep = np.ones(total, dtype=bool)
            keep[where] = False
            out[keep] = data
    else:
        out[:] = data
    return out, lens


def _headers(tags, counts):
    """``(n, 9)`` uint8 headers: a tag byte (one, or one per item) and a uint64 count."""
    h = np.empty(len(counts), dtype=_HEADER)
    h["t"] = tags
    h["n"] = counts
    return h.view(np.uint8).reshape(-1, 9)


def _bulk_str(items, tag):
    """Encodings of a run of str (or of bytes): tag, length, UTF-8 (or the bytes)."""
    n = len(items)
    if tag == b"b":
        data = b"".join(items)
        nbytes = np.fromiter(map(len, items), dtype=np.int64, count=n)
    else:
        joined = "".join(items)
        if joined.isascii():
            data = joined.encode("ascii")
            nbytes = np.fromiter(map(len, items), dtype=np.int64, count=n)
        else:
            parts = [x.encode("utf-8", "surrogatepass") for x in items]
            data = b"".join(parts)
            nbytes = np.fromiter(map(len, parts), dtype=np.int64, count=n)
    return _splice(_headers(tag, nbytes), np.frombuffer(data, dtype=np.uint8), nbytes)


def _bulk_number(items, kind, tag):
    try:
        values = np.array(items, dtype=kind)
    except OverflowError:
        raise _NotBulk from None
    out = np.empty((len(items), 9), dtype=np.uint8)
    out[:, 0] = ord(tag)
    out[:, 1:] = values.view(np.uint8).reshape(-1, 8)
    return out.reshape(-1), np.full(len(items), 9, dtype=np.int64)


def _bulk_sequence(items, tags):
    """Encodings of lists / tuples: tag, length, then each item's encoding (recursively)."""
    n = len(items)
    counts = np.fromiter(map(len, items), dtype=np.int64, count=n)
    data, child_lens = _bulk(list(chain.from_iterable(items)))
    ends = np.zeros(len(child_lens) + 1, dtype=np.int64)
    np.cumsum(child_lens, out=ends[1:])
    bounds = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=bounds[1:])
    return _splice(_headers(tags, counts), data, ends[bounds[1:]] - ends[bounds[:-1]])


def _bulk_hooked(items, t):
    """Encodings of objects of one class with ``__mergeagg_fingerprint__``."""
    name = f"{t.__module__}.{t.__qualname__}".encode("utf-8", "surrogatepass")
    prefix = b"H" + b"s" + _pack_Q(len(name)) + name
    data, lens = _bulk([x.__mergeagg_fingerprint__() for x in items])
    return _splice(np.frombuffer(prefix, dtype=np.uint8)[None, :], data, lens)


# Types whose subclasses _encode encodes as the type itself, never through a hook (it
# tests them with isinstance before it looks for one): the bulk encoder leaves them alone.
_NOT_HOOKED = (str, int, float, tuple, dict, np.ndarray, np.generic, fractions.Fraction,
               decimal.Decimal)


def _lane_sums(d0, d1, counts):
    """Per-group sums mod 2**64 of two digest lanes, groups given by their sizes."""
    n = len(counts)
    s0 = np.zeros(n, dtype=np.uint64)
    s1 = np.zeros(n, dtype=np.uint64)
    full = counts > 0
    if full.any():
        starts = (np.cumsum(counts) - counts)[full]
        s0[full] = np.add.reduceat(d0, starts)
        s1[full] = np.add.reduceat(d1, starts)
    return s0, s1


def _sums_record(tag, counts, s0, s1):
    rec = np.empty(len(counts), dtype=[("t", "S1"), ("n", "<u8"), ("a", "<u8"), ("b", "<u8")])
    rec["t"], rec["n"], rec["a"], rec["b"] = tag, counts, s0, s1
    return rec.view(np.uint8), np.full(len(counts), 25, dtype=np.int64)


def _bulk_dict(items):
    """Encodings of mappings: tag, length, the two lane sums of their entries' digests."""
    counts = np.fromiter(map(len, items), dtype=np.int64, count=len(items))
    keys = list(chain.from_iterable(items))
    values = list(chain.from_iterable(x.values() for x in items))
    if len(keys) != len(values):  # pragma: no cover - a mapping that iterates oddly
        raise _NotBulk
    f = Fingerprinter()
    try:
        kd, vd = f._digests(keys), f._digests(values)
    except _Unsupported:
        raise _NotBulk from None  # the item-by-item path says where
    e0 = _smix(kd[:, 0] ^ _smix(vd[:, 0] + _ENTRY_K[0]))
    e1 = _smix(kd[:, 1] ^ _smix(vd[:, 1] + _ENTRY_K[1]))
    return _sums_record(b"d", counts, *_lane_sums(e0, e1, counts))


def _bulk_set(items, tag):
    counts = np.fromiter(map(len, items), dtype=np.int64, count=len(items))
    try:
        d = Fingerprinter()._digests(list(chain.from_iterable(items)))
    except _Unsupported:
        raise _NotBulk from None
    return _sums_record(tag, counts, *_lane_sums(d[:, 0], d[:, 1], counts))


def _bulk_one_type(items, t):
    if t is str:
        return _bulk_str(items, b"s")
    if t is int:
        return _bulk_number(items, "<i8", b"i")
    if t is float:
        return _bulk_number(items, "<f8", b"f")
    if t is list:
        return _bulk_sequence(items, b"l")
    if t is tuple:
        return _bulk_sequence(items, b"t")
    if t is type(None):
        return np.full(len(items), ord("N"), dtype=np.uint8), np.ones(len(items), np.int64)
    if t is bool:
        flags = np.fromiter(items, dtype=bool, count=len(items))
        return (np.where(flags, ord("T"), ord("F")).astype(np.uint8),
                np.ones(len(items), np.int64))
    if t is bytes:
        return _bulk_str(items, b"b")
    if issubclass(t, dict):
        return _bulk_dict(items)
    if t is set or t is frozenset:
        return _bulk_set(items, b"S" if t is set else b"Z")
    if not issubclass(t, _NOT_HOOKED) and hasattr(t, "__mergeagg_fingerprint__"):
        return _bulk_hooked(items, t)
    raise _NotBulk


def _positions_by_type(items, types):
    """``(type, positions)`` for each type present among ``items`` (positions ascending)."""
    code = {t: i for i, t in enumerate(types)}
    codes = np.fromiter(map(code.__getitem__, map(type, items)), dtype=np.int64,
                        count=len(items))
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(code) + 1))
    return [(t, order[bounds[i]:bounds[i + 1]]) for t, i in code.items()]


def _bulk(items):
    """The canonical encodings of ``items`` back to back, and each one's length.

    Byte for byte what :class:`Fingerprinter` writes for each item, but built a whole run
    at a time: nested lists and tuples are flattened level by level (``itertools.chain``),
    each level's scalars are encoded by type in numpy, and headers are spliced in. Handles
    None, bool, int (int64 range), float, str, bytes, list, tuple and objects with
    ``__mergeagg_fingerprint__`` (whose stand-ins it encodes likewise); raises
    :class:`_NotBulk` for anything else, and the caller encodes item by item.
    Cost: O(total size), a few numpy passes per nesting level.
    """
    n = len(items)
    if n == 0:
        return _EMPTY, _NO_LENS
    types = set(map(type, items))
    if len(types) == 1:
        return _bulk_one_type(items, type(items[0]))
    # Mixed types: encode each type's run, then gather the encodings back into order.
    parts, lens = [], np.empty(n, dtype=np.int64)
    src_start = np.empty(n, dtype=np.int64)
    offset = 0
    for t, idx in _positions_by_type(items, types):
        data, tl = _bulk_one_type(list(map(items.__getitem__, idx.tolist())), t)
        lens[idx] = tl
        starts = np.zeros(len(tl), dtype=np.int64)
        np.cumsum(tl[:-1], out=starts[1:])
        src_start[idx] = starts + offset
        offset += len(data)
        parts.append(data)
    pool = np.concatenate(parts)
    out_start = np.zeros(n, dtype=np.int64)
    np.cumsum(lens[:-1], out=out_start[1:])
    gather = np.repeat(src_start - out_start, lens) + np.arange(offset, dtype=np.int64)
    return pool[gather], lens


class Fingerprinter:
    """A streaming canonical encoder feeding SHA-256; :func:`fingerprint` is its usual face.

    Cost: O(size of the value) time, O(1) memory beyond it (dicts and sets are digested in
    chunks of 32,768 entries). Use it directly to fingerprint several values as one stream:

    >>> f = Fingerprinter()
    >>> f.update("a"); f.update(1)
    >>> f.hexdigest() == Fingerprinter().update_many(["a", 1]).hexdigest()
    True
    """

    __slots__ = ("_h", "_buf", "_broken")

    def __init__(self):
        self._h = hashlib.sha256()
        self._buf = bytearray()
        self._broken = False

    def update(self, value):
        """Append ``value``'s canonical encoding to the stream. Cost: O(size of value).

        A ``TypeError`` (an unsupported type inside ``value``) leaves part of ``value``
        encoded, so the Fingerprinter refuses further use rather than give a wrong digest.
        """
        self._check_usable()
        try:
            self._encode(value)
        except _Unsupported as exc:
            self._broken = True
            path = "value" + "".join(reversed(exc.segments))
            name = exc.typ.__qualname__
            if exc.typ.__module__ != "builtins":
                name = f"{exc.typ.__module__}.{name}"
            raise TypeError(
                f"cannot fingerprint a value of type {name} at {path}; supported: None, bool, "
                "int, float, complex, str, bytes, list, tuple, dict, set, frozenset, numpy "
                "arrays and scalars, Fraction, Decimal, dataclasses, or any object with a "
                "__mergeagg_fingerprint__() method"
            ) from None
        self._flush(force=False)

    def update_many(self, values):
        """Append each value in turn; returns ``self`` so calls chain. Cost: O(total size)."""
        for v in values:
            self.update(v)
        return self

    def hexdigest(self):
        """The SHA-256 hex digest of everything encoded so far (64 characters). Cost: O(1)."""
        self._check_usable()
        self._flush(force=True)
        return self._h.hexdigest()

    # -- internals -------------------------------------------------------------------------

    def _check_usable(self):
        if self._broken:
            raise ValueError(
                "this Fingerprinter raised TypeError on an earlier value and holds a partial "
                "encoding; start a new Fingerprinter"
            )

    def _flush(self, force):
        if self._buf and (force or len(self._buf) >= 1 << 16):
            self._h.update(self._buf)
            self._buf.clear()

    def _encode(self, x):
        buf = self._buf
        t = type(x)
        if t is str:
            b = x.encode("utf-8", "surrogatepass")
            buf += b"s"
            buf += _pack_Q(len(b))
            buf += b
        elif t is int:
            if _I64_MIN <= x <= _I64_MAX:
                buf += b"i"
                buf += _pack_q(x)
            else:
                b = x.to_bytes((x.bit_length() + 8) // 8, "little", signed=True)
                buf += b"I"
                buf += _pack_Q(len(b))
                buf += b
        elif t is float:
            buf += b"f"
            buf += _pack_d(x)
        elif x is None:
            buf += b"N"
        elif t is bool:
            buf += b"T" if x else b"F"
        elif t is bytes:
            buf += b"b"
            buf += _pack_Q(len(x))
            buf += x
        elif t is list or t is tuple:
            self._encode_sequence(b"l" if t is list else b"t", x)
        elif isinstance(x, dict):
            self._encode_dict(x)
        elif t is set or t is frozenset:
            buf += b"S" if t is set else b"Z"
            buf += _pack_Q(len(x))
            buf += self._unordered_sum(x)
        elif isinstance(x, np.ndarray):
            self._encode_array(x)
        elif isinstance(x, np.generic):
            self._encode(_numpy_scalar_to_python(x))
        else:
            self._encode_other(x, t)
        if len(buf) >= 1 << 16:
            self._flush(force=False)

    def _encode_other(self, x, t):
        buf = self._buf
        if isinstance(x, bool):  # pragma: no cover - bool cannot be subclassed
            buf += b"T" if x else b"F"
        elif isinstance(x, str):
            self._encode(str(x))
        elif isinstance(x, int):
            self._encode(int(x))
        elif isinstance(x, float):
            self._encode(float(x))
        elif t is complex:
            buf += b"c"
            buf += _pack_dd(x.real, x.imag)
        elif t is bytearray:
            buf += b"y"
            buf += _pack_Q(len(x))
            buf += x
        elif isinstance(x, tuple):
            self._encode_sequence(b"t", x)
        elif isinstance(x, fractions.Fraction):
            buf += b"q"
            self._encode(x.numerator)
            self._encode(x.denominator)
        elif isinstance(x, decimal.Decimal):
            buf += b"m"
            self._encode(str(x))
        elif hasattr(t, "__mergeagg_fingerprint__"):
            buf += b"H"
            self._encode(f"{t.__module__}.{t.__qualname__}")
            try:
                self._encode(x.__mergeagg_fingerprint__())
            except _Unsupported as exc:
                exc.segments.append(".__mergeagg_fingerprint__()")
                raise
        elif dataclasses.is_dataclass(x) and not isinstance(x, type):
            fields = dataclasses.fields(x)
            buf += b"D"
            self._encode(f"{t.__module__}.{t.__qualname__}")
            buf += _pack_Q(len(fields))
            for f in fields:
                self._encode(f.name)
                try:
                    self._encode(getattr(x, f.name))
                except _Unsupported as exc:
                    exc.segments.append(f".{f.name}")
                    raise
        else:
            raise _Unsupported(t)

    def _encode_sequence(self, tag, seq):
        buf = self._buf
        buf += tag
        n = len(seq)
        buf += _pack_Q(n)
        done = 0
        if n >= 16:
            # Whole runs at a time, byte for byte the item-by-item encoding; a run the bulk
            # encoder declines (an unsupported type somewhere) goes item by item.
            try:
                for done in range(0, n, _BULK_CHUNK):
                    data, _lens = _bulk(seq[done:done + _BULK_CHUNK])
                    buf += memoryview(data)
                    self._flush(force=False)
                return
            except _NotBulk:
                pass
        for i in range(done, n):
            item = seq[i]
            try:
                self._encode(item)
            except _Unsupported as exc:
                exc.segments.append(f"[{i}]")
                raise

    def _encode_dict(self, d):
        buf = self._buf
        buf += b"d"
        buf += _pack_Q(len(d))
        acc0, acc1 = self._dict_sums(d)
        buf += _pack_Q(acc0)
        buf += _pack_Q(acc1)

    def _dict_sums(self, d):
        """The two 64-bit lane sums of a mapping's per-entry digests."""
        n = len(d)
        acc0 = acc1 = 0
        kit, vit = iter(d.keys()), iter(d.values())
        for _ in range(0, n, _CHUNK):
            ks = list(islice(kit, _CHUNK))
            vs = list(islice(vit, _CHUNK))
            try:
                kd = self._digests(ks)
            except _Unsupported as exc:
                exc.segments.append(f" (a key, {ks[exc.index]!r})" if hasattr(exc, "index")
                                    else " (a key)")
                raise
            try:
                vd = self._digests(vs)
            except _Unsupported as exc:
                if hasattr(exc, "index"):
                    exc.segments.append(f"[{ks[exc.index]!r}]")
                raise
            e0 = _smix(kd[:, 0] ^ _smix(vd[:, 0] + _ENTRY_K[0]))
            e1 = _smix(kd[:, 1] ^ _smix(vd[:, 1] + _ENTRY_K[1]))
            acc0 = (acc0 + int(e0.sum(dtype=np.uint64))) & _MASK
            acc1 = (acc1 + int(e1.sum(dtype=np.uint64))) & _MASK
        return acc0, acc1

    def _unordered_sum(self, items):
        acc0 = acc1 = 0
        it = iter(items)
        for _ in range(0, len(items), _CHUNK):
            chunk = list(islice(it, _CHUNK))
            try:
                d = self._digests(chunk)
            except _Unsupported as exc:
                if hasattr(exc, "index"):
                    exc.segments.append(f" (an element, {chunk[exc.index]!r})")
                raise
            acc0 = (acc0 + int(d[:, 0].sum(dtype=np.uint64))) & _MASK
            acc1 = (acc1 + int(d[:, 1].sum(dtype=np.uint64))) & _MASK
        return _pack_Q(acc0) + _pack_Q(acc1)

    def _digests(self, items):
        """Per-item 128-bit digests as an (n, 2) uint64 array; runs of one type at a time.

        Each type's items are digested together (str, bytes, int, float vectorised; other
        values' encodings built by the bulk encoder and hashed one by one), then scattered
        back into place. Identical to :meth:`_digest_one` item by item.
        """
        types = set(map(type, items))
        if len(types) == 1:
            try:
                return self._digest_run(items, type(items[0]))
            except _NotBulk:
                return self._digest_each(items, range(len(items)))
        out = np.empty((len(items), 2), dtype=np.uint64)
        for t, idx in _positions_by_type(items, types):
            where = idx.tolist()
            try:
                out[idx] = self._digest_run(list(map(items.__getitem__, where)), t)
            except _NotBulk:
                out[idx] = self._digest_each(items, where)
        return out

    def _digest_run(self, items, t):
        """Digests of items all of type ``t``; raises _NotBulk where it cannot batch."""
        try:
            if t is str:
                return _hash_strs(items, _STR_TAG)
            if t is int:
                return _mix_lanes(np.array(items, dtype=np.int64).view(np.uint64), _INT_K)
            if t is float:
                return _mix_lanes(np.array(items, dtype=np.float64).view(np.uint64), _FLOAT_K)
            if t is bytes:
                return _hash_strs(items, _BYTES_TAG)
        except OverflowError:
            raise _NotBulk from None
        if len(items) < 8 or issubclass(t, np.generic):
            raise _NotBulk
        # The first 16 bytes of SHA-256("e" + encoding), one hash per item over one buffer.
        data, lens = _bulk(items)
        ends = np.cumsum(lens).tolist()
        view = memoryview(data)
        base = _SHA_E.copy
        digests = []
        start = 0
        for end in ends:
            h = base()
            h.update(view[start:end])
            digests.append(h.digest()[:16])
            start = end
        return np.frombuffer(b"".join(digests), dtype=_LE_U64).reshape(-1, 2)

    def _digest_each(self, items, where):
        out = np.empty((len(where), 2), dtype=np.uint64)
        for j, i in enumerate(where):
            try:
                out[j] = self._digest_one(items[i])
            except _Unsupported as exc:
                exc.index = i
                raise
        return out

    def _digest_one(self, x):
        if isinstance(x, np.generic):
            x = _numpy_scalar_to_python(x)
        t = type(x)
        if t is str:
            return _hash_strs([x], _STR_TAG)[0]
        elif t is bytes:
            return _hash_strs([x], _BYTES_TAG)[0]
        elif t is int and _I64_MIN <= x <= _I64_MAX:
            return _mix_lanes(np.array([x], dtype=np.int64).view(np.uint64), _INT_K)[0]
        elif t is float:
            return _mix_lanes(np.array([x], dtype=np.float64).view(np.uint64), _FLOAT_K)[0]
        sub = Fingerprinter()
        sub._buf += b"e"
        sub._encode(x)
        sub._flush(force=True)
        return np.frombuffer(sub._h.digest()[:16], dtype=_LE_U64)

    def _encode_array(self, a):
        buf = self._buf
        if a.dtype.hasobject:
            buf += b"A"
            buf += _pack_Q(a.ndim)
            for dim in a.shape:
                buf += _pack_Q(dim)
            for i, item in enumerate(a.flat):
                try:
                    self._encode(item)
                except _Unsupported as exc:
                    exc.segments.append(f".flat[{i}]")
                    raise
            return
        buf += b"a"
        # dtype.str says kind, byte order and item size; a structured dtype also needs its
        # field names and types, which only its descr holds.
        self._encode(a.dtype.str if a.dtype.names is None else repr(a.dtype.descr))
        buf += _pack_Q(a.ndim)
        for dim in a.shape:
            buf += _pack_Q(dim)
        self._flush(force=True)
        if a.size:
            # A uint8 view hashes any fixed-size dtype without a copy (datetime64 and
            # timedelta64 have no buffer format of their own); an empty array adds no bytes.
            flat = np.ascontiguousarray(a).view(np.uint8).reshape(-1)
            self._h.update(memoryview(flat))


def fingerprint(value) -> str:
    """The canonical SHA-256 fingerprint of ``value``, as 64 hex characters.

    Cost: O(size of the value), one streaming pass; dicts and sets are never sorted. About
    3 million ``str -> int`` dict entries per second on a 2-core machine (see
    ``benchmarks/bench_fingerprint.py``).

    >>> fingerprint([1, 2, 3])[:16]
    'c9d216d50eeea08f'
    >>> import numpy as np
    >>> fingerprint(np.int64(7)) == fingerprint(7)
    True
    """
    f = Fingerprinter()
    f.update(value)
    return f.hexdigest()


class MappingDigest:
    """The fingerprint of a mapping assembled from disjoint parts (partitions, part files).

    A dict's fingerprint depends only on its length and an order-free sum of per-entry
    digests, so the parts of a mapping split by key can be digested where they are and
    added up: ``fingerprint()`` equals :func:`fingerprint` of the union. Cost: O(entries)
    per ``update``, O(1) per ``merge``.

    >>> a, b = MappingDigest(), MappingDigest()
    >>> a.update({"x": 1}); b.update({"y": 2})
    >>> a.merge(b).fingerprint() == fingerprint({"x": 1, "y": 2})
    True
    """

    __slots__ = ("n", "s0", "s1")

    def __init__(self, n=0, s0=0, s1=0):
        self.n, self.s0, self.s1 = n, s0, s1

    def update(self, mapping):
        """Add the entries of ``mapping`` (keys must not repeat across updates)."""
        if not isinstance(mapping, dict):
            mapping = dict(mapping)
        a0, a1 = Fingerprinter()._dict_sums(mapping)
        self.n += len(mapping)
        self.s0 = (self.s0 + a0) & _MASK
        self.s1 = (self.s1 + a1) & _MASK

    def merge(self, other):
        """Add another part's digest; returns ``self``."""
        self.n += other.n
        self.s0 = (self.s0 + other.s0) & _MASK
        self.s1 = (self.s1 + other.s1) & _MASK
        return self

    def state(self):
        """``(n, s0, s1)``: a small, picklable summary."""
        return (self.n, self.s0, self.s1)

    def fingerprint(self):
        """The fingerprint of the union of every part added."""
        f = Fingerprinter()
        f._buf += b"d" + _pack_Q(self.n) + _pack_Q(self.s0) + _pack_Q(self.s1)
        return f.hexdigest()


def key_hashes(keys):
    """Stable 64-bit hashes of keys (a list), from their canonical digests, as uint64.

    The same in every process (never Python's salted ``hash()``): what the shuffle
    partitions by. Cost: O(total key size), vectorised for str, bytes, int and float keys.

    >>> int(key_hashes(["a"])[0]) == int(key_hashes(["a"])[0])
    True
    """
    if not keys:
        return np.empty(0, dtype=np.uint64)
    try:
        return np.ascontiguousarray(Fingerprinter()._digests(list(keys))[:, 0])
    except _Unsupported as exc:
        raise TypeError(
            f"a key of type {exc.typ.__qualname__} cannot be hashed canonically: "
            f"{keys[getattr(exc, 'index', 0)]!r}"
        ) from None

