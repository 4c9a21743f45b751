"""PageRank by power iteration, two ways on the same code: a MapReduce chain through disk,
or a dataset cached in the workers' memory.

Each iteration is the same mergeable aggregation: every edge split contributes the dense
vector ``bincount(dst, weights=(x / outdeg)[src])``, and the vectors are added **in split
order** (left to right). The driver then applies damping, the dangling nodes' mass and the
teleport vector exactly as ``networkx.pagerank`` does, with its convergence rule (stop when
the L1 change is below ``N * tol``; fail after ``max_iter`` iterations).

* ``mode="disk"``: each iteration is its own keyed job (:class:`mergeagg.KeyedJob`) that
  re-reads the edge files, the node table, the out-degrees and the previous iteration's
  rank file from disk; the reducers add the contribution blocks and the driver writes the
  next rank file: ``T`` iterations read the ``D`` edge bytes ``T`` times.
* ``mode="cached"``: the edge splits are persisted once (parsed into numpy arrays on the
  workers, then mapped to node ids, a dataset derived from the first), and each iteration
  ships the current ranks to the workers, where each cached partition computes its
  contribution vector, and folds the vectors in split order: ``D`` bytes read once.
  A worker that dies takes its partitions with it; they are rebuilt from their lineage
  (split, parse, id mapping) on another worker and the ranks keep their bytes.

Both modes fold the same per-split vectors in the same order, so their ranks are bitwise
identical. Edge lists are text, ``src dst`` per line, tokens separated by whitespace
(space and ASCII control characters) and kept as strings (as ``networkx.read_edgelist``
keeps them), ``#`` comments and blank lines
allowed; parallel edges count with their multiplicity (as in a ``MultiDiGraph``). The
parser is vectorised (numpy over the bytes; a token is packed into a 64-bit key and looked
up in an open-addressing hash table built once from the sorted node keys).

The iteration driver takes the way to run jobs as a parameter (``session=``, ``run=``), so
this module never imports the runtime:

>>> import mergeagg as ma, networkx as nx
>>> from mergeagg import Session
>>> g = nx.DiGraph([(1, 2), (2, 3), (3, 1), (3, 4)])
>>> with Session(workers=0) as s:
...     r = pagerank(g, mode="cached", session=s)
>>> ref = nx.pagerank(g)
>>> max(abs(r.ranks[n] - ref[n]) for n in g) < 1e-9, r.converged
(True, True)
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field

import mmh3
import numpy as np

from mergeagg.aggregator import Aggregator
from mergeagg.algorithms.registry import Entry, Flag
from mergeagg.errors import InputError, MergeaggError
from mergeagg.fingerprint import fingerprint
from mergeagg.inputs import Source, files
from mergeagg.keyed import KeyedJob

__all__ = [
    "pagerank",
    "PageRankResult",
    "NotConverged",
    "EdgeBlock",
    "TokenTable",
    "parse_edges",
    "parse_edge_ids",
    "load_edges",
    "PageRankJob",
    "pagerank_job",
    "run_pagerank",
    "DEFAULT_SPLIT_SIZE",
    "ENTRY",
]

DEFAULT_SPLIT_SIZE = 2 * 1024 * 1024
_MODES = ("disk", "cached")
_SIDE = "side_bytes_read"  # the disk job's extra key: bytes of the side files its maps read

_LOW = np.array([0] + [(1 << (8 * n)) - 1 for n in range(1, 8)] + [2**64 - 1], dtype=np.uint64)
_COMMENT = re.compile(rb"#[^\n]*")


class NotConverged(MergeaggError):
    """PageRank did not converge within ``max_iter`` iterations (networkx raises
    ``PowerIterationFailedConvergence`` there); ``result`` holds the last iterate."""

    def __init__(self, message, result):
        super().__init__(message)
        self.result = result


# -- parsing -----------------------------------------------------------------------------


@dataclass
class EdgeBlock:
    """The edges of one split as token keys: ``src[i] -> dst[i]``, in file order.

    Keys are ``uint64`` (a token of up to 8 bytes, its bytes little-endian) or, when a
    token is longer, fixed-width ``bytes_`` arrays (``S`` dtype). Cost: 16 bytes per edge.

    >>> b = parse_edges("a b\\nb c\\n")
    >>> len(b), b.src.dtype.name
    (2, 'uint64')
    """

    src: np.ndarray
    dst: np.ndarray

    def __len__(self):
        return len(self.src)


def parse_edges(data, where="the input"):
    """Parse edge-list text (``bytes`` or ``str``) into an :class:`EdgeBlock`.

    Cost: O(bytes), vectorised: a few numpy passes over the bytes and one gather per
    token (well over 50 MB/s). A line with other than two tokens raises
    :class:`~mergeagg.errors.InputError` naming ``where`` and the line.

    >>> b = parse_edges(b"# a comment\\na b\\n\\nb  c # trailing\\n")
    >>> [k.tobytes().rstrip(b"\\0") for k in b.src], len(b)
    ([b'a', b'b'], 2)
    """
    chunks = list(_chunk_keys(data, where))
    if not chunks:
        return EdgeBlock(np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint64))
    if len({c.dtype for c in chunks}) > 1:  # long tokens somewhere: bytes keys everywhere
        width = max(8, *(c.dtype.itemsize for c in chunks if c.dtype.kind == "S"))
        chunks = [_as_bytes_keys(c, width) for c in chunks]
    keys = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    return EdgeBlock(keys[0::2].copy(), keys[1::2].copy())


def parse_edge_ids(data, table, where="the input"):
    """Parse edge-list text straight to node ids ``(src, dst)`` through ``table`` (a
    :class:`TokenTable`), chunk by chunk, each chunk's keys looked up while in cache: what
    disk mode's map does every iteration. Cost: :func:`parse_edges` plus one lookup per
    token; ``KeyError`` for a token not in the table.

    >>> t = TokenTable(np.unique(parse_edges("a b\\nb c\\n").src))
    >>> [ids.tolist() for ids in parse_edge_ids("b a\\na b\\n", t)]
    [[1, 0], [0, 1]]
    """
    ids = [table.lookup(keys) for keys in _chunk_keys(data, where)]
    if not ids:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    both = ids[0] if len(ids) == 1 else np.concatenate(ids)
    return both[0::2].copy(), both[1::2].copy()


def _chunk_keys(data, where):
    """The token keys (src and dst interleaved) of ~1 MB of whole lines at a time (the
    passes then stay in cache)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if b"\0" in data:
        raise InputError(f"{where}: a NUL byte in an edge list; node ids are text tokens")
    if b"#" in data:
        data = _COMMENT.sub(b"", data)
    pos, n = 0, len(data)
    while pos < n:
        end = data.find(b"\n", min(pos + _PARSE_CHUNK, n - 1))
        end = n if end < 0 else end + 1
        try:
            keys = _parse_chunk(data[pos:end], where)
        except _BadLine as bad:
            line = data.count(b"\n", 0, pos) + bad.line
            raise InputError(f"{where}: line {line + 1} (counting from the split's first "
                             f"line) has {bad.tokens} token(s); an edge list needs 'src dst' "
                             "per line") from None
        if len(keys):
            yield keys
        pos = end


_PARSE_CHUNK = 1 << 20


class _BadLine(Exception):
    def __init__(self, line, tokens):
        super().__init__(line, tokens)
        self.line = line
        self.tokens = tokens


def _parse_chunk(data, where):
    """The token keys of whole lines ``data``, src and dst interleaved."""
    n = len(data)
    buf = np.zeros(n + 9, dtype=np.uint8)  # 8 bytes of padding for the key gather
    buf[:n] = np.frombuffer(data, dtype=np.uint8)
    bounds = _one_separator_bounds(buf, n)
    if bounds is not None:
        return _token_keys(buf, *bounds)
    flags = np.zeros(n + 2, dtype=np.int8)
    np.greater(buf[:n], 32, out=flags[1:-1].view(bool))  # space and controls separate
    bounds = np.flatnonzero(flags[1:] != flags[:-1])
    starts, ends = bounds[0::2].copy(), bounds[1::2].copy()  # contiguous: faster gathers
    _check_lines(buf, starts, ends, where)
    return _token_keys(buf, starts, ends)


def _one_separator_bounds(buf, n):
    """``(starts, ends)`` of the tokens when every line of ``buf[:n]`` is ``src``, one
    separator byte, ``dst``, a newline (the usual edge list), else ``None``.

    One pass over the bytes finds the separators (bytes <= 32), half as many positions as
    token bounds; the line check is then on them alone: they alternate between a non-newline
    and a newline, and no two are adjacent (no empty token, no blank line).
    """
    sep = np.flatnonzero(buf[:n] <= 32)
    m = len(sep)
    if m == 0 or m % 2 or sep[0] == 0 or sep[-1] != n - 1:
        return None
    nl = buf[sep]
    if (nl[0::2] == 10).any() or not (nl[1::2] == 10).all():
        return None
    if m > 1 and (sep[1:] - sep[:-1]).min() < 2:
        return None
    starts = np.empty(m, dtype=sep.dtype)
    starts[0] = 0
    np.add(sep[:-1], 1, out=starts[1:])
    return starts, sep


def _check_lines(buf, starts, ends, where):
    """Every non-blank line holds exactly two tokens: the gap after an even token has no
    newline, the gap after an odd one has one (each gap is scanned, usually one byte)."""
    if len(starts) == 0:
        return
    gap_start = ends[:-1]
    gap_len = starts[1:] - gap_start
    has_newline = buf[gap_start] == 10
    for k in range(1, min(8, int(gap_len.max(initial=1)))):
        has_newline |= (buf[gap_start + k] == 10) & (gap_len > k)
    long = np.flatnonzero(gap_len > 8)
    if len(long):  # blank lines, indentation: count the newlines of the long gaps
        newlines = np.flatnonzero(buf == 10)
        lo = np.searchsorted(newlines, gap_start[long])
        has_newline[long] = np.searchsorted(newlines, gap_start[long] + gap_len[long]) > lo
    if (len(starts) % 2 == 0 and not has_newline[0::2].any()
            and bool(has_newline[1::2].all())):
        return
    line = np.searchsorted(np.flatnonzero(buf[:ends[-1]] == 10), starts)
    counts = np.bincount(line)
    bad = int(np.flatnonzero((counts != 0) & (counts != 2))[0])
    raise _BadLine(bad, int(counts[bad]))


def _token_keys(buf, starts, ends):
    lens = ends - starts
    if len(lens) == 0:
        return np.zeros(0, dtype=np.uint64)
    width = int(lens.max())
    if width <= 8:
        # Element i of this (unaligned) view is the 8 bytes starting at byte i.
        at = np.ndarray(shape=(len(buf) - 8,), dtype="<u8", buffer=buf, strides=(1,))
        return at[starts] & _LOW[lens]
    out = np.zeros((len(starts), width), dtype=np.uint8)
    for k in range(width):
        col = buf[np.minimum(starts + k, len(buf) - 1)]
        col[lens <= k] = 0
        out[:, k] = col
    return out.view(f"S{width}").ravel()


def _as_bytes_keys(keys, width=None):
    """Keys as an ``S`` array (uint64 keys are their own little-endian bytes)."""
    if keys.dtype == np.uint64:
        keys = np.ascontiguousarray(keys).view("S8")
    return keys if width is None else keys.astype(f"S{width}")


def _common(a, b):
    """Two key arrays in one dtype (uint64 stays uint64; else both ``S``)."""
    if a.dtype == b.dtype:
        return a, b
    width = max(8, a.dtype.itemsize if a.dtype.kind == "S" else 8,
                b.dtype.itemsize if b.dtype.kind == "S" else 8)
    return _as_bytes_keys(a, width), _as_bytes_keys(b, width)


def _text_of(records):
    """``(text, where)`` of a split's records (a ``TextShard``), or of text / lines."""
    if hasattr(records, "text"):
        split = getattr(records, "split", None)
        return records.text(), (f"split {split.id}" if split is not None else "a split")
    if isinstance(records, (str, bytes)):
        return records, "the input"
    return "\n".join(records) + "\n", "the input"


def load_edges(records):
    """A persisted partition's load function: a split's records -> :class:`EdgeBlock`.

    ``records`` is a text split (a ``TextShard``: its bytes are parsed in one piece), or
    text / bytes. Cost: that of :func:`parse_edges`.

    >>> len(load_edges("1 2\\n2 3\\n"))
    2
    """
    if isinstance(records, EdgeBlock):
        return records
    text, where = _text_of(records)
    return parse_edges(text, where)


# -- the node table ------------------------------------------------------------------------


class TokenTable:
    """Token key -> node id (its position in the sorted unique ``keys``).

    ``uint64`` keys go through an open-addressing hash table of node ids (linear probing,
    load factor at most 1/4; a probe compares ``keys[id]`` with the key), built and probed
    with vectorised numpy passes. When the tokens read as distinct decimal numbers of a
    dense enough range (node ids ``0..n-1``, say), a key's number, computed with a few
    64-bit word operations, indexes an array of ids instead (then checked the same way).
    ``S`` keys go through binary search. Cost: O(n) to build; O(1) expected per key
    looked up.

    >>> keys = np.unique(parse_edges("5 9\\n12 5\\n").src)
    >>> t = TokenTable(keys)
    >>> t.lookup(parse_edges("12 5\\n5 5\\n").src).tolist(), t.dense is not None
    ([1, 0], True)
    >>> words = TokenTable(np.unique(parse_edges("alpha beta\\ngamma alpha\\n").src))
    >>> words.lookup(parse_edges("gamma alpha\\n").src).tolist(), words.dense is None
    ([1], True)
    """

    _MUL = np.uint64(0x9E3779B97F4A7C15)

    def __init__(self, keys):
        self.keys = keys
        self.n = len(keys)
        self.dense = None
        if keys.dtype != np.uint64:
            return
        if self.n:
            values = _decimal_values(keys)
            top = int(values.max())
            if top < 16 * self.n + 1024 and len(_unique(values)) == self.n:
                self.dense = np.full(top + 1, -1, dtype=np.int32)  # small: stays in cache
                self.dense[values.view(np.int64)] = np.arange(self.n, dtype=np.int32)
                return
        bits = max(4, int(np.ceil(np.log2(max(self.n, 1) * 4))))
        self.size = 1 << bits
        self.shift = np.uint64(64 - bits)
        self.slot_ids = np.full(self.size, -1, dtype=np.int32)
        pos = self._hash(keys)
        todo = np.arange(self.n, dtype=np.int32)
        while len(todo):
            # Keys whose slot is free all write their id there; one write per slot stays
            # (any one: a key's id is its position in ``keys`` wherever it lands); the
            # others, and keys whose slot was taken, probe the next slot.
            p = pos[todo]
            free = self.slot_ids[p] < 0
            self.slot_ids[p[free]] = todo[free]
            placed = self.slot_ids[p] == todo
            todo = todo[~placed]
            pos[todo] = (pos[todo] + 1) & (self.size - 1)

    def _hash(self, k):
        h = np.multiply(k, self._MUL)
        np.right_shift(h, self.shift, out=h)
        return h.view(np.int64)  # < 2**63 after the shift: the same values, no copy

    def lookup(self, k):
        """Node ids (``intp``, what ``bincount`` and indexing take without a copy) of the
        keys ``k``; ``KeyError`` naming a token not in the table."""
        if self.keys.dtype != np.uint64 or k.dtype != np.uint64:
            table, k = _common(self.keys, k)
            ids = np.searchsorted(table, k)
            ok = (ids < self.n) & (table[np.minimum(ids, self.n - 1)] == k)
            if not ok.all():
                raise KeyError(f"node {_names(k[~ok][:1])[0]!r} is not in the node table")
            return ids.astype(np.intp)
        if self.dense is not None:
            ids = np.empty(len(k), dtype=np.intp)
            top = np.uint64(len(self.dense) - 1)
            for lo in range(0, len(k), _DECIMAL_CHUNK):  # each chunk's passes in cache
                values = _decimal_values(k[lo:lo + _DECIMAL_CHUNK])
                np.minimum(values, top, out=values)
                ids[lo:lo + _DECIMAL_CHUNK] = self.dense[values.view(np.int64)]
            bad = self.keys[ids] != k  # an id of -1 reads the last key: checked below
            bad |= ids < 0
            if bad.any():
                raise KeyError(f"node {_names(k[bad][:1])[0]!r} is not in the node table")
            return ids
        pos = self._hash(k)
        ids = self.slot_ids[pos]
        todo = np.flatnonzero((ids < 0) | (self.keys[ids] != k))
        while len(todo):
            hole = ids[todo] < 0  # an empty slot ends the probe: the key is not there
            if hole.any():
                raise KeyError(f"node {_names(k[todo[hole]][:1])[0]!r} is not in the "
                               "node table")
            p = (pos[todo] + 1) & (self.size - 1)
            pos[todo] = p
            found = self.slot_ids[p]
            ids[todo] = found
            todo = todo[(found < 0) | (self.keys[found] != k[todo])]
        return ids.astype(np.intp)


_BYTE_HIGH = np.uint64(0x8080808080808080)
_BYTE_LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)
_SWAR = ((np.uint64(8), np.uint64(10), np.uint64(0x00FF00FF00FF00FF)),
         (np.uint64(16), np.uint64(100), np.uint64(0x0000FFFF0000FFFF)),
         (np.uint64(32), np.uint64(10000), np.uint64(0xFFFFFFFF)))


_DECIMAL_CHUNK = 32768


def _decimal_values(k, chunk=_DECIMAL_CHUNK):
    """The number each packed key spells if it is decimal digits (garbage otherwise, which
    the table's check against the keys rejects): SWAR over the 8 bytes of each key, in
    place, ``chunk`` keys at a time (the dozen passes then stay in cache)."""
    if len(k) > chunk:
        out = np.empty(len(k), dtype=np.uint64)
        for lo in range(0, len(k), chunk):
            out[lo:lo + chunk] = _decimal_values(k[lo:lo + chunk], chunk)
        return out
    t = np.bitwise_and(k, _BYTE_LOW7)
    t += _BYTE_LOW7
    t |= k
    t &= _BYTE_HIGH  # the high bit of every used byte
    shift = np.bitwise_count(t).astype(np.uint64)
    t >>= np.uint64(7)
    t *= np.uint64(0x30)
    d = np.subtract(k, t)  # '0' off every used byte; unused bytes stay 0
    np.subtract(np.uint64(8), shift, out=shift)
    shift <<= np.uint64(3)
    d <<= shift  # the digits to the top: the unused bytes become leading zeros
    for bits, scale, mask in _SWAR:  # pairs, then quads, then all eight digits
        np.right_shift(d, bits, out=t)
        d *= scale
        d += t
        d &= mask
    return d


def _names(keys):
    """Node ids (str) of token keys."""
    return [b.decode("utf-8") for b in _as_bytes_keys(keys).tolist()]


def _unique(a):
    """Sorted distinct values of ``a``, by a sort (numpy 2's ``unique`` hashes, and is far
    slower on these arrays). Cost: O(n log n).

    >>> _unique(np.array([3, 1, 3], dtype=np.uint64)).tolist()
    [1, 3]
    """
    s = np.sort(a)
    keep = np.ones(len(s), dtype=bool)
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def _node_degrees(block):
    """Partial of the node-discovery job: ``(sorted unique keys, out-degrees)``."""
    keys = _unique(np.concatenate([block.src, block.dst]))
    src = np.sort(block.src)
    starts = np.flatnonzero(np.r_[True, src[1:] != src[:-1]]) if len(src) else src[:0]
    deg = np.zeros(len(keys), dtype=np.int64)
    deg[np.searchsorted(keys, src[starts])] = np.diff(np.r_[starts, len(src)])
    return keys, deg


def _text_degrees(records):
    return _node_degrees(load_edges(records))


def _merge_degrees(a, b):
    """Combine of the node-discovery job: union of the keys, out-degrees added."""
    ka, kb = _common(a[0], b[0])
    keys = _unique(np.concatenate([ka, kb]))
    deg = np.zeros(len(keys), dtype=np.int64)
    deg[np.searchsorted(keys, ka)] += a[1]
    deg[np.searchsorted(keys, kb)] += b[1]
    return keys, deg


@dataclass
class _IdBlock:
    src: np.ndarray
    dst: np.ndarray


class _ToIds:
    """Load function of the derived dataset: an EdgeBlock's keys -> node ids."""

    def __init__(self, keys):
        self.keys = keys
        self._table = None

    def __getstate__(self):
        return self.keys

    def __setstate__(self, keys):
        self.keys = keys
        self._table = None

    def __call__(self, block):
        if self._table is None:
            self._table = TokenTable(self.keys)
        src, dst = self._table.lookup(block.src), self._table.lookup(block.dst)
        # Edges by destination, stably: ``bincount`` then writes its output in order (far
        # fewer cache misses), and each node still adds its in-edges in file order, so the
        # sums keep their bits.
        order = np.argsort(dst, kind="stable")
        return _IdBlock(src[order], dst[order])


# -- one iteration's aggregation ---------------------------------------------------------


class _Contributions:
    """A task's dense float64 vector of rank contributions (``.array``); fingerprinting it
    costs O(n) at a few GB/s.

    The runtime fingerprints every task output to compare a task's completions; for this
    value the fingerprint stands on a 128-bit MurmurHash3 of the array's bytes (the
    ``__mergeagg_fingerprint__`` hook), the digest ``mergeagg.fingerprint`` itself uses per
    str and bytes entry, rather than SHA-256 over the bytes, which took as long as the
    task's arithmetic (3.5 ms for 800 kB on the reference machine, twice per cached
    iteration). Like the fingerprint's order-free sums, it guards against accidents, not
    against an adversary. Both modes return it, so both pay the same.

    >>> from mergeagg import fingerprint
    >>> zeros = fingerprint(_Contributions(np.zeros(3)))
    >>> zeros == fingerprint(_Contributions(np.zeros(3)))
    True
    >>> zeros == fingerprint(_Contributions(np.array([0.0, 0.0, 1.0])))
    False
    """

    __slots__ = ("array",)

    def __init__(self, array):
        self.array = array

    def __reduce__(self):
        return _Contributions, (self.array,)

    def __mergeagg_fingerprint__(self):
        a = self.array
        return a.dtype.str, a.shape, mmh3.hash_bytes(np.ascontiguousarray(a).tobytes())

    def __repr__(self):
        return f"_Contributions({len(self.array)} nodes)"


class _Contrib:
    """Cached mode's partial: a split's contribution vector for the scaled ranks ``xw``."""

    def __init__(self, xw):
        self.xw = xw

    def __call__(self, ids):
        # float64 even for a split without edges (bincount of nothing counts in int64)
        return _Contributions(np.bincount(ids.dst, weights=self.xw[ids.src],
                                         minlength=len(self.xw)).astype(np.float64,
                                                                        copy=False))


def _add(a, b):
    """The combine of contributions: ``a + b``, in place in ``a``'s array."""
    if isinstance(a, _Contributions):
        np.add(a.array, b.array, out=a.array)
        return a
    return a + b


def _read_npy(path):
    with open(path, "rb") as f:
        data = f.read()
    return np.load(io.BytesIO(data), allow_pickle=False), len(data)


class _DiskMap:
    """Disk mode's map: parse the split, read the chain's side files, emit the split's
    contribution vector cut into ``blocks`` keyed blocks (and the side bytes read)."""

    def __init__(self, directory, ranks_file, bounds):
        self.directory = directory
        self.ranks_file = ranks_file
        self.bounds = bounds

    def __call__(self, records):
        keys, n1 = _read_npy(os.path.join(self.directory, "nodes.npy"))
        invdeg, n2 = _read_npy(os.path.join(self.directory, "invdeg.npy"))
        x, n3 = _read_npy(os.path.join(self.directory, self.ranks_file))
        text, where = _text_of(records)
        src, dst = parse_edge_ids(text, TokenTable(keys), where)
        xw = x * invdeg
        c = np.bincount(dst, weights=xw[src], minlength=len(xw)).astype(np.float64, copy=False)
        out = {b: _Contributions(c[lo:hi].copy())
               for b, (lo, hi) in enumerate(zip(self.bounds[:-1], self.bounds[1:]))}
        out[_SIDE] = n1 + n2 + n3
        return out


# -- the driver ----------------------------------------------------------------------------


@dataclass
class PageRankResult:
    """What :func:`pagerank` returns.

    ``ranks`` maps node -> rank; ``vector`` holds them in ``nodes`` order (sorted token
    keys; compare two runs' ``vector.tobytes()`` for bitwise equality). ``setup_bytes`` is
    what loading read from disk (edges persisted, or the node-discovery pass);
    ``iteration_bytes[k]`` what iteration ``k``'s tasks read (edges and side files in disk
    mode, rebuilt partitions in cached mode), all measured by the readers.
    ``iteration_seconds`` and ``setup_seconds`` are wall times; ``cache`` sums the
    iteration jobs' cache counters; ``reports`` are the jobs' reports.
    """

    ranks: dict
    vector: np.ndarray
    nodes: list
    mode: str
    iterations: int
    converged: bool
    setup_seconds: float = 0.0
    setup_bytes: int = 0
    iteration_seconds: list = field(default_factory=list)
    iteration_bytes: list = field(default_factory=list)
    iteration_edge_bytes: list = field(default_factory=list)
    cache: dict = field(default_factory=dict)
    reports: list = field(default_factory=list, repr=False)

    @property
    def bytes_read(self):
        """Every byte read from disk, loading included."""
        return self.setup_bytes + sum(self.iteration_bytes)

    def top(self, k=10):
        """The ``k`` highest-ranked ``(node, rank)`` pairs (ties by node order). Cost:
        O(n log n).

        >>> r = PageRankResult({}, np.array([0.2, 0.5, 0.3]), ["a", "b", "c"], "cached", 1,
        ...                    True)
        >>> r.top(2)
        [('b', 0.5), ('c', 0.3)]
        """
        order = np.argsort(-self.vector, kind="stable")[:k]
        return [(self.nodes[i], float(self.vector[i])) for i in order.tolist()]

    def __repr__(self):
        state = "converged" if self.converged else "not converged"
        return (f"PageRankResult({len(self.nodes)} nodes, {self.mode}, {self.iterations} "
                f"iterations, {state})")


def _edge_source(edges, split_size, scratch):
    """``(source, labels, extra keys)``: labels maps token names to the caller's nodes
    (graphs are written as an edge list of node indices, isolated nodes kept as extras)."""
    size = DEFAULT_SPLIT_SIZE if split_size is None else split_size
    if hasattr(edges, "nodes") and hasattr(edges, "edges") and callable(edges.edges):
        nodes = list(edges.nodes)
        index = {node: i for i, node in enumerate(nodes)}
        path = os.path.join(scratch, "graph.edges")
        with open(path, "w", encoding="ascii") as f:
            f.write("# node indices of an in-memory graph\n")
            f.write("".join(f"{index[u]} {index[v]}\n" for u, v in edges.edges()))
        extra = np.array([str(i).encode() for i in range(len(nodes))], dtype="S")
        labels = dict(zip((str(i) for i in range(len(nodes))), nodes))
        return files(path, split_size=size), labels, _narrow(extra)
    if isinstance(edges, Source):
        return edges, None, None
    return files(edges, split_size=size), None, None


def _narrow(keys):
    """``S`` keys of at most 8 bytes as uint64 keys (the fast table)."""
    if keys.dtype.kind == "S" and keys.dtype.itemsize <= 8:
        return np.ascontiguousarray(keys.astype("S8")).view("<u8")
    return keys


def _with_extra(keys, deg, extra):
    if extra is None or len(extra) == 0:
        return keys, deg
    return _merge_degrees((keys, deg), (_unique(extra), np.zeros(len(extra), np.int64)))


def _vector(values, names, labels, what):
    nodes = names if labels is None else [labels[n] for n in names]
    v = np.array([float(values.get(n, 0)) for n in nodes], dtype=float)
    total = v.sum()
    if total == 0:
        raise ZeroDivisionError(f"the {what} values sum to zero over the graph's nodes")
    return v / total


def pagerank(edges, *, mode="cached", session=None, run=None, alpha=0.85,
             personalization=None, max_iter=100, tol=1.0e-6, nstart=None, dangling=None,
             split_size=None, partitions=None, workdir=None, strict=True):
    """PageRank of the directed graph ``edges``: edge-list file path(s), a Source of edge
    text, or an in-memory graph (networkx-like: ``.nodes``, ``.edges()``; isolated nodes
    count). Returns a :class:`PageRankResult`; its ``ranks`` equal
    ``networkx.pagerank(G, alpha, personalization, max_iter, tol, nstart, weight=None,
    dangling)`` within 1e-9 in L1 norm, with the same convergence rule.

    ``mode="cached"`` needs ``session`` (an object with ``persist``, ``run`` and
    ``collect``, such as ``mergeagg.Session``); ``mode="disk"`` runs its jobs with
    ``run(job, source, **kw)`` (``mergeagg.run``; a session's ``run`` when only ``session``
    is given). ``partitions``
    is the disk job's reducer count (default 2). ``workdir`` keeps the disk chain's files
    (nodes, out-degrees, one rank file per iteration); by default a temporary directory
    is used and removed. ``strict=False`` returns the last iterate instead of raising
    :class:`NotConverged` after ``max_iter`` iterations.

    Cost per iteration: O(edges + nodes) over the workers, plus O(nodes) in the driver;
    disk mode also parses the edge text every iteration, cached mode once.

    >>> import networkx as nx
    >>> from mergeagg import Session
    >>> g = nx.DiGraph([("a", "b"), ("b", "c"), ("c", "a"), ("c", "c")])
    >>> g.add_node("lonely")
    >>> with Session(workers=0) as s:
    ...     disk = pagerank(g, mode="disk", session=s)
    ...     cached = pagerank(g, mode="cached", session=s)
    >>> disk.vector.tobytes() == cached.vector.tobytes(), disk.setup_bytes > 0
    (True, True)
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if not 0 < alpha <= 1 or isinstance(alpha, bool):
        raise ValueError(f"alpha must be within (0, 1], got {alpha!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    if not tol > 0:
        raise ValueError(f"tol must be positive, got {tol!r}")
    if mode == "cached" and session is None:
        raise TypeError("mode='cached' needs session= (e.g. mergeagg.Session(workers=2)): "
                        "the edges stay in its workers' memory")
    if run is None:
        if session is None:
            raise TypeError("mode='disk' needs run= (e.g. mergeagg.run with workers bound) "
                            "or session=")
        run = session.run
    scratch = workdir if workdir is not None else tempfile.mkdtemp(prefix="mergeagg-pr-")
    os.makedirs(scratch, exist_ok=True)
    try:
        return _iterate(edges, mode, session, run, alpha, personalization, max_iter, tol,
                        nstart, dangling, split_size, partitions, scratch, strict)
    finally:
        if workdir is None:
            shutil.rmtree(scratch, ignore_errors=True)


def _iterate(edges, mode, session, run, alpha, personalization, max_iter, tol, nstart,
             dangling, split_size, partitions, scratch, strict):
    t0 = time.perf_counter()
    src, labels, extra = _edge_source(edges, split_size, scratch)
    nsplits = len(src)
    fan_in = max(2, nsplits)
    reports = []
    if mode == "cached":
        raw = session.persist(src, load=load_edges)
        setup_bytes = raw.counters["cache_bytes_read"]
        res = session.run(Aggregator(_node_degrees, _merge_degrees), raw, fan_in=fan_in)
    else:
        res = run(Aggregator(_text_degrees, _merge_degrees), src, fan_in=fan_in)
        setup_bytes = res.report.bytes_read
    reports.append(res.report)
    keys, deg = _with_extra(*res.value, extra)
    n = len(keys)
    if n == 0:
        raise InputError(f"{src.description}: the graph has no nodes")
    names = _names(keys)
    invdeg = np.zeros(n)
    invdeg[deg > 0] = 1.0 / deg[deg > 0]
    dangling_ids = np.flatnonzero(deg == 0)
    x = np.repeat(1.0 / n, n) if nstart is None else _vector(nstart, names, labels, "nstart")
    p = (np.repeat(1.0 / n, n) if personalization is None
         else _vector(personalization, names, labels, "personalization"))
    dw = p if dangling is None else _vector(dangling, names, labels, "dangling")
    teleport = (1 - alpha) * p
    if mode == "cached":
        ids = session.persist(raw, load=_ToIds(keys))
        setup_bytes += ids.counters["cache_bytes_read"]
    else:
        blocks = partitions or 2
        bounds = [n * b // blocks for b in range(blocks + 1)]
        np.save(os.path.join(scratch, "nodes.npy"), keys)
        np.save(os.path.join(scratch, "invdeg.npy"), invdeg)
    result = PageRankResult({}, x, [], mode, 0, False, reports=reports)
    result.setup_seconds = time.perf_counter() - t0
    result.setup_bytes = setup_bytes
    cache = {}
    for it in range(max_iter):
        t = time.perf_counter()
        if mode == "cached":
            res = session.collect(_Contrib(x * invdeg), ids)
            c = res.values[0]
            for v in res.values[1:]:  # left to right in split order, as a reducer folds
                c = _add(c, v)
            c = c.array
            side = 0
            for k, v in res.report.counters.items():
                if k.startswith("cache_"):
                    cache[k] = cache.get(k, 0) + v
        else:
            ranks_file = f"ranks-{it:04d}.npy"
            np.save(os.path.join(scratch, ranks_file), x)
            job = KeyedJob(_DiskMap(scratch, ranks_file, bounds), _add, name="pagerank")
            res = run(job, src, partitions=blocks)
            value = dict(res.value.items())
            side = int(value.pop(_SIDE))
            c = np.concatenate([value[b].array for b in range(blocks)])
        reports.append(res.report)
        # x = alpha * (c + sum(xlast[dangling]) * dw) + (1 - alpha) * p, the same
        # operations on the same operands as networkx's update, in place (the driver's
        # share of a cached iteration).
        xlast = x
        x = np.multiply(dw, np.sum(xlast[dangling_ids]))
        x += c
        x *= alpha
        x += teleport
        np.subtract(x, xlast, out=c)
        err = np.absolute(c, out=c).sum()
        result.iteration_seconds.append(time.perf_counter() - t)
        result.iteration_edge_bytes.append(res.report.bytes_read)
        result.iteration_bytes.append(res.report.bytes_read + side)
        result.iterations = it + 1
        if err < n * tol:
            result.converged = True
            break
    if mode == "disk":
        np.save(os.path.join(scratch, f"ranks-{result.iterations:04d}.npy"), x)
    result.vector = x
    result.nodes = names if labels is None else [labels[s] for s in names]
    result.ranks = dict(zip(result.nodes, x.tolist()))
    result.cache = cache
    if not result.converged and strict:
        raise NotConverged(f"PageRank did not converge within max_iter={max_iter} "
                           f"iterations (tol={tol:g}); pass strict=False for the last "
                           "iterate", result)
    return result


# -- the catalog entry ---------------------------------------------------------------------


@dataclass(frozen=True)
class PageRankJob:
    """The CLI's job description: the mode and networkx's parameters."""

    mode: str = "cached"
    alpha: float = 0.85
    tol: float = 1.0e-6
    max_iter: int = 100


def pagerank_job(mode="cached", alpha=0.85, tol=1.0e-6, max_iter=100):
    """The catalog factory: a :class:`PageRankJob` (run it with :func:`run_pagerank`).

    >>> pagerank_job(mode="disk").mode
    'disk'
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    return PageRankJob(mode, alpha, tol, max_iter)


@dataclass
class _Run:
    value: PageRankResult
    fingerprint: str
    report: object


def run_pagerank(job, source, *, workers=None, progress=None, backend="local", **options):
    """The CLI's runner: :func:`pagerank` on a session of ``workers`` worker processes, or
    on a Dask cluster when ``backend`` is a scheduler address or client.

    ``options`` are the CLI's runtime knobs (``max_attempts``, ``backups``, ...); the
    session is looked up through the facade at call time. Returns an object with
    ``value`` (the :class:`PageRankResult`), ``fingerprint`` (of the ranks) and ``report``
    (the last job's). Cost: that of :func:`pagerank`.
    """
    import mergeagg

    options.pop("fan_in", None)
    faults = options.pop("faults", None)
    verify = options.pop("verify", 0.0)
    if faults is not None or verify:
        raise ValueError("pagerank runs many jobs on one session; --faults and --verify "
                         "are not supported here")
    if backend not in ("local", None):
        workers = None  # a Dask session's workers are the cluster's
    with mergeagg.Session(workers=workers, backend=backend, **options) as session:
        result = pagerank(source, mode=job.mode, session=session, alpha=job.alpha,
                          tol=job.tol, max_iter=job.max_iter, strict=False)
    return _Run(result, fingerprint(result.ranks), result.reports[-1])


def _make_source(inputs, split_size, params):
    return files(list(inputs), split_size=split_size or DEFAULT_SPLIT_SIZE)


def _summarize(value, params):
    state = "converged" if value.converged else "did NOT converge"
    secs = value.iteration_seconds
    lines = [f"pagerank ({value.mode}): {len(value.nodes)} nodes, {value.iterations} "
             f"iterations, {state}",
             f"bytes read: {value.bytes_read} ({value.setup_bytes} loading, "
             f"{sum(value.iteration_bytes)} in iterations)",
             f"loading {value.setup_seconds:.3f}s; per iteration: median "
             f"{float(np.median(secs)) if secs else 0.0:.4f}s, total {sum(secs):.3f}s"]
    if value.cache:
        lines.append("cache " + ", ".join(f"{k[6:]} {v}" for k, v in sorted(value.cache.items())))
    lines.append("top nodes:")
    lines += [f"  {node}\t{rank:.6g}" for node, rank in value.top(10)]
    return lines


def _jsonable(value):
    return {str(k): v for k, v in value.ranks.items()}


ENTRY = Entry(
    name="pagerank",
    summary="PageRank of an edge-list graph ('src dst' lines), disk-chained or cached",
    factory=pagerank_job,
    flags=(
        Flag("--mode", default="cached", choices=_MODES,
             help="disk: a MapReduce job per iteration re-reading the edges; cached: edges "
                  "kept in the workers' memory (default)"),
        Flag("--alpha", type=float, default=0.85, help="damping factor (default 0.85)"),
        Flag("--tol", type=float, default=1.0e-6,
             help="stop when the L1 change < N * tol (default 1e-6)"),
        Flag("--max-iter", type=int, default=100, help="at most this many iterations"),
    ),
    make_source=_make_source,
    summarize=_summarize,
    jsonable=_jsonable,
    runner=run_pagerank,
)
