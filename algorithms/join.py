"""Equi-joins of two tables: reduce-side (repartition) or broadcast (map-side).

A table is a list of mapping records (in memory, or a list of shards of them) or CSV /
JSON-lines files. :func:`join_source` tags every record with its side and decides the
strategy; :func:`join` is the Aggregator; :func:`join_records` runs both serially.

**Join types** (``how``): ``"inner"``, ``"left"``, ``"right"`` and ``"full"`` (alias
``"outer"``). The result is a list of ``(left_row, right_row)`` pairs; the missing side of an
unmatched row in an outer join is ``None`` (SQL's row of NULLs).

**Keys.** ``on`` names the key column(s) of both sides (a str, or a list or a
comma-separated str for a composite key); ``left_on`` / ``right_on`` name them per side.
Keys match by Python equality (``"1"`` from a CSV does not match ``1`` from JSON). As in
SQL a **null key never matches**, not even another null: a key is null when the column is
missing, ``None``, or a float NaN — and, with ``empty_is_null=True`` (the command line's
default, as CSV cannot write NULL), the empty string. A composite key is null when any
part is. Rows with null keys still appear, unmatched, in the outer joins that keep their
side. Duplicate keys give the full cross product.

**Strategies.** The reduce-side join groups both sides by key (the accumulator is a dict
key -> ``[left rows, right rows]``, which a keyed job shuffles by key) and emits each group's
product at the end. The broadcast join loads the small side whole into a hash table in every
map task and streams the big side past it, so nothing of the big side is grouped; it keeps
the set of small rows that matched, so right / full joins can still emit the unmatched ones.
``strategy="auto"`` broadcasts the smaller side when its input is at most
``broadcast_threshold`` bytes (file sizes; for in-memory tables the size of their pickle;
default 16 MiB), and otherwise repartitions. ``"broadcast"`` and ``"reduce"`` force one.

**Order.** The output is sorted by join key (:func:`~mergeagg.algorithms._keyed.order_key`,
nulls first), then by left row, then by right row (``None`` first): the same list for
either strategy and every sharding.

>>> people = [{"id": 1, "name": "ann"}, {"id": 2, "name": "bob"}, {"id": None, "name": "?"}]
>>> orders = [{"id": 1, "item": "tea"}, {"id": 1, "item": "jam"}, {"id": 3, "item": "oil"}]
>>> for pair in join_records(people, orders, on="id", how="left"):
...     print(pair)
({'id': None, 'name': '?'}, None)
({'id': 1, 'name': 'ann'}, {'id': 1, 'item': 'jam'})
({'id': 1, 'name': 'ann'}, {'id': 1, 'item': 'tea'})
({'id': 2, 'name': 'bob'}, None)
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import gc
import hashlib
import io
import math
import os
import pickle
import re
from bisect import bisect_left
from collections.abc import Sequence
from itertools import compress, repeat
from operator import itemgetter

import numpy as np

from mergeagg import inputs as _inputs
from mergeagg.aggregator import Aggregator
from mergeagg.algorithms._keyed import json_digest, order_key
from mergeagg.algorithms.registry import Entry, Flag
from mergeagg.errors import InputError
from mergeagg.fingerprint import fingerprint, key_hashes
from mergeagg.keyed import KeyedJob

__all__ = [
    "join",
    "join_source",
    "join_records",
    "JOIN_TYPES",
    "STRATEGIES",
    "DEFAULT_BROADCAST_THRESHOLD",
    "LEFT",
    "RIGHT",
    "Broadcast",
    "KeySpec",
    "group_map",
    "combine_group",
    "finalize_group",
    "merge_pair",
    "check_header",
    "JoinRows",
    "join_rows",
    "Group",
    "BUCKETS",
    "Bucket",
    "BucketRows",
    "combine_buckets",
    "join_bucket",
    "key_buckets",
    "run_join",
]

JOIN_TYPES = ("inner", "left", "right", "full")
STRATEGIES = ("auto", "reduce", "broadcast")
DEFAULT_BROADCAST_THRESHOLD = 16 * 1024 * 1024
LEFT, RIGHT = "left", "right"
_SIDE_INDEX = {LEFT: 0, RIGHT: 1}


# -- keys ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class KeySpec:
    """Which columns make the key on each side, and whether ``""`` is null.

    Cost: O(1) to build; :meth:`key` is O(key columns).

    >>> KeySpec(("a", "b"), ("c", "d")).key({"c": 1, "d": 2}, "right")
    (1, 2)
    """

    left: tuple
    right: tuple
    empty_is_null: bool = False

    def key(self, record, side):
        """The record's join key, or ``None`` for a null key. Cost: O(key columns).

        >>> KeySpec(("a",), ("b",)).key({"b": 4}, "right"), KeySpec(("a",), ("a",)).key({}, "left")
        (4, None)
        """
        cols = self.left if side == LEFT else self.right
        if not isinstance(record, dict):
            raise TypeError(f"a {side} join record must be a mapping (a CSV row, a JSON "
                            f"object), got a {type(record).__name__}")
        if len(cols) == 1:
            return self._part(record.get(cols[0]), cols[0], side)
        parts = []
        for col in cols:
            v = self._part(record.get(col), col, side)
            if v is None:
                return None
            parts.append(v)
        return tuple(parts)

    def key_function(self, side):
        """A fast ``record -> key`` for one side (same answers as :meth:`key`).

        Cost: O(key columns) per call.

        >>> KeySpec(("k",), ("k",), empty_is_null=True).key_function("left")({"k": ""}) is None
        True
        """
        cols = self.left if side == LEFT else self.right
        if len(cols) != 1:
            return lambda record: self.key(record, side)
        col, empty, general = cols[0], self.empty_is_null, self._part

        def key(record):
            try:
                v = record.get(col)
            except AttributeError:
                raise TypeError(f"a {side} join record must be a mapping (a CSV row, a JSON "
                                f"object), got a {type(record).__name__}") from None
            t = type(v)
            if t is str:
                return None if (empty and not v) else v
            if t is int:
                return v
            return general(v, col, side)

        return key

    def _part(self, v, col, side):
        if v is None:
            return None
        if isinstance(v, float) and math.isnan(v):
            return None
        if self.empty_is_null and v == "":
            return None
        if isinstance(v, (list, dict, set)):
            raise TypeError(f"the {side} key column {col!r} holds a {type(v).__name__} "
                            f"({v!r:.60}); a join key must be a str, number or other "
                            "hashable value")
        return v


def _columns(value, label):
    if isinstance(value, str) and value:
        return tuple(value.split(","))
    if isinstance(value, (list, tuple)) and value and all(isinstance(c, str) for c in value):
        return tuple(value)
    raise TypeError(f"{label} must be a column name or a non-empty list of them, "
                    f"got {value!r}")


def _key_spec(on, left_on, right_on, empty_is_null):
    if on is not None and (left_on is not None or right_on is not None):
        raise TypeError("give on= or left_on= and right_on=, not both")
    if on is not None:
        cols = _columns(on, "on")
        return KeySpec(cols, cols, bool(empty_is_null))
    if left_on is None or right_on is None:
        raise TypeError("join needs on= (both sides) or left_on= and right_on=")
    lc, rc = _columns(left_on, "left_on"), _columns(right_on, "right_on")
    if len(lc) != len(rc):
        raise ValueError(f"left_on has {len(lc)} column(s) and right_on {len(rc)}; a "
                         "composite key needs the same number on both sides")
    return KeySpec(lc, rc, bool(empty_is_null))


def _check_how(how):
    how = "full" if how == "outer" else how
    if how not in JOIN_TYPES:
        raise ValueError(f"how must be one of {JOIN_TYPES} (or 'outer'), got {how!r}")
    return how


# -- the per-key pieces of the reduce-side join (what a keyed job needs) -----------------------


def group_map(pairs, spec):
    """Group tagged ``(side, record)`` pairs by key: dict key -> ``[left rows, right rows]``.

    Null keys group under ``None`` (and never match). Cost: O(records).

    >>> group_map([("left", {"k": 1}), ("right", {"k": 1}), ("right", {})], KeySpec(("k",), ("k",)))
    {1: [[{'k': 1}], [{'k': 1}]], None: [[], [{}]]}
    """
    groups = {}
    key_of = {LEFT: spec.key_function(LEFT), RIGHT: spec.key_function(RIGHT)}
    for side, record in pairs:
        key = key_of[side](record)
        group = groups.get(key)
        if group is None:
            group = groups[key] = Group(([], []))
        group[_SIDE_INDEX[side]].append(record)
    return groups


def _group_rows(side, keys, rows, header):
    """:func:`group_map` for one side's CSV rows, kept as ``(header, fields)``."""
    groups = {}
    get = groups.get
    for key, row in zip(keys, zip(repeat(header), rows)):
        group = get(key)
        if group is None:
            groups[key] = group = Group(([], []))
        group[side].append(row)
    return groups


class Group(list):
    """One key's ``[left rows, right rows]``: a plain list (a CSV row travels as
    ``(header, fields)`` until the join emits it as a dict; see :func:`finalize_group`).

    It fingerprints as the list of its rows, which the fingerprint encodes in bulk when the
    runtime fingerprints a run of groups it shuffles. Cost of the fingerprint: O(rows).

    >>> Group(([{"k": "1"}], [])) == [[{"k": "1"}], []]
    True
    """

    __slots__ = ()

    def __mergeagg_fingerprint__(self):
        return list(self)


def combine_group(a, b):
    """Merge group ``b`` into group ``a`` (both ``[left rows, right rows]``); returns ``a``.

    Cost: O(rows of ``b``).

    >>> combine_group([[1], []], [[2], [3]])
    [[1, 2], [3]]
    """
    a[0].extend(b[0])
    a[1].extend(b[1])
    return a


def _copy_group(g):
    return Group((list(g[0]), list(g[1]), *g[2:]))


def finalize_group(key, group, how):
    """The joined ``(left, right)`` pairs of one key's group (unsorted). Cost: O(output).

    >>> finalize_group(1, [[{"a": 1}], [{"b": 1}, {"b": 2}]], "inner")
    [({'a': 1}, {'b': 1}), ({'a': 1}, {'b': 2})]
    >>> finalize_group(None, [[{"a": None}], [{}]], "left")
    [({'a': None}, None)]
    """
    left_rows, right_rows = group[0], group[1]
    if key is not None and left_rows and right_rows:
        left_rows, right_rows = _records(left_rows), _records(right_rows)
        return [(lrow, rrow) for lrow in left_rows for rrow in right_rows]
    out = []
    if how in ("left", "full"):
        out.extend((lrow, None) for lrow in _records(left_rows))
    if how in ("right", "full"):
        out.extend((None, rrow) for rrow in _records(right_rows))
    return out


def _records(rows):
    """Rows as records: a CSV row travels as ``(header, fields)`` and becomes its dict here,
    where it is emitted (a mapping record is itself)."""
    if all(type(r) is dict for r in rows):
        return rows
    return [r if type(r) is dict else dict(zip(r[0], r[1])) for r in rows]


# -- the broadcast side ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class _SmallSide:
    """The small side of a broadcast join: files (read by each worker) or records."""

    side: str
    paths: tuple = ()
    format: str = "csv"
    records: tuple | None = None

    def cache_key(self):
        if self.records is not None:
            return None
        stats = tuple((p, os.path.getsize(p), os.path.getmtime(p)) for p in self.paths)
        return (self.side, self.format, stats)

    def check(self, cols):
        """Refuse a CSV small side that lacks a key column (see :func:`check_header`)."""
        if self.format == "csv":
            for path in self.paths:
                check_header(_csv_header(path), cols, self.side, path)

    def load(self):
        if self.records is not None:
            return list(self.records)
        src = _inputs.files(list(self.paths), format=self.format)
        rows = []
        for split in src.splits():
            rows.extend(_inputs.read_split(split))
        return rows


@dataclasses.dataclass(frozen=True, eq=False)
class Broadcast:
    """The tag of a streamed record in a broadcast join: which side streams, what is small.

    A record tagged with a Broadcast and ``None`` for the record only announces the small
    side (the source has one such split, so that finalize always knows it). Cost: O(1); it
    carries paths, or (in-memory tables) the small side's records.

    >>> join_source([{"k": 1}] * 9, [{"k": 1}], strategy="broadcast").splits()[0].tag.stream
    'left'
    """

    stream: str
    small: _SmallSide


def _widths_ok(text, commas, skip_first):
    """Does every non-blank line of ``text`` (past the first, if ``skip_first``) hold exactly
    ``commas`` commas? Counted in numpy over the UTF-8 bytes (no multi-byte character
    contains the byte of ``,`` or of a newline). Cost: a few passes over the bytes."""
    b = np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    ends = np.flatnonzero(b == 10)
    if len(b) and b[-1] != 10:
        ends = np.append(ends, len(b))
    starts = np.concatenate(([0], ends[:-1] + 1))
    at = np.flatnonzero(b == 44)
    per_line = np.searchsorted(at, ends) - np.searchsorted(at, starts)
    full = ends > starts
    if skip_first and len(full):
        full[0] = False
    return bool((per_line[full] == commas).all())


@contextlib.contextmanager
def _gc_paused():
    """Hold off the cyclic garbage collector while a split's rows are built: they are
    acyclic, and the collections that hundreds of thousands of live lists trigger would
    otherwise cost twice the parsing (measured: 1.0 s against 0.3 s for 670k rows)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _cut_field(text, n, col, width):
    """Field ``col`` of each of the ``n`` newline-separated lines of ``text`` (no quotes),
    or ``None`` unless every line has exactly ``width`` fields. ASCII text is cut by comma
    and newline positions found in numpy (one slice per line); other text by a regular
    expression. Cost: a few passes over the bytes, plus one slice per line.

    >>> _cut_field("a,b,c\\nd,e,f", 2, 1, 3), _cut_field("a,b,c\\nd,e", 2, 1, 3)
    (['b', 'e'], None)
    """
    data = text.encode("utf-8", "surrogatepass")
    if len(data) != len(text):
        keys = _field_re(col, width).findall(text)
        return keys if len(keys) == n else None
    b = np.frombuffer(data, dtype=np.uint8)
    ends = np.append(np.flatnonzero(b == 10), len(b))
    commas = np.flatnonzero(b == 44)
    if len(ends) != n or len(commas) != n * (width - 1):
        return None
    if width > 1:
        at = commas.reshape(n, width - 1)
        if n > 1 and not (at[1:, 0] > ends[:-1]).all() or not (at[:, -1] < ends).all():
            return None  # the right number of commas, not on the right lines
    starts = np.concatenate(([0], ends[:-1] + 1))
    lo = starts if col == 0 else at[:, col - 1] + 1
    hi = ends if col == width - 1 else at[:, col]
    return [text[a:z] for a, z in zip(lo.tolist(), hi.tolist())]


@functools.lru_cache(maxsize=64)
def _field_re(col, width):
    """A pattern whose ``findall`` over newline-joined CSV lines (no quotes) gives field
    ``col`` of each line that has exactly ``width`` fields, and nothing for any other line.

    >>> _field_re(1, 3).findall("a,b,c\\nd,e\\nf,g,h")
    ['b', 'g']
    """
    field = r"[^,\n]*"
    return re.compile(f"^(?:{field},){{{col}}}({field})(?:,{field}){{{width - 1 - col}}}$",
                      re.MULTILINE)


def check_header(header, cols, side, path):
    """Raise :class:`InputError` unless every key column ``cols`` is in a CSV ``header``;
    the message names the missing column, the side, the file and the header. Cost: O(cols).

    >>> check_header(("id", "k"), ("kk",), "left", "l.csv")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mergeagg.errors.InputError: the left side has no column 'kk' to join on (l.csv; its ...
    """
    missing = [c for c in cols if c not in header]
    if missing:
        listed = ", ".join(header) if header else "(empty)"
        raise InputError(f"the {side} side has no column {missing[0]!r} to join on ({path}; "
                         f"its header: {listed})")


class _CsvPiece:
    """A split of a CSV file that the join reads and parses itself (``read_split`` hands it
    over as is: it is the payload of an in-memory split, a descriptor, never data).

    The worker reads the byte range, splits lines and fields in bulk (``str.split`` when
    the text has no quote and no CR outside CRLF, else the ``csv`` module), and the join
    keeps a row as ``(header, fields)`` until it emits it: a dict per row only where one is
    output.
    ``tag`` is the side's name (reduce side) or a :class:`Broadcast` (streamed side).
    """

    __slots__ = ("split", "tag", "header", "skip_first", "bytes_read")

    def __init__(self, split, tag, header, skip_first):
        self.split, self.tag, self.header, self.skip_first = split, tag, header, skip_first
        self.bytes_read = 0

    def __getstate__(self):
        return (self.split, self.tag, self.header, self.skip_first)

    def __setstate__(self, state):
        self.split, self.tag, self.header, self.skip_first = state
        self.bytes_read = 0

    def side(self):
        return self.tag.stream if isinstance(self.tag, Broadcast) else self.tag

    def _text(self):
        shard = _inputs.TextShard(self.split)
        text = shard.text()
        self.bytes_read = shard.bytes_read
        return text

    def _read(self):
        text = self._text()
        if '"' not in text and "\r" in text:
            text = text.replace("\r\n", "\n")  # CRLF line ends (the csv module writes them)
        return text

    def hit_lines(self, col, wanted):
        """``(keys, lines)`` of the lines whose field ``col`` is one of ``wanted`` (see
        :func:`_wanted_keys`), found in numpy over the split's bytes: no str is made for a
        line that does not match. ``None`` when the text takes another path
        (quotes, non-ASCII or NUL bytes, a CR outside CRLF, a key field over 64 bytes) or a
        line has another width than the header (the other path reports it)."""
        text = self._text()
        if '"' in text or "\0" in text:
            return None
        data = text.encode("utf-8", "surrogatepass")
        if len(data) != len(text):
            return None
        b = np.frombuffer(data, dtype=np.uint8)
        nl = np.flatnonzero(b == 10)
        starts = np.concatenate(([0], nl + 1))
        ends = nl.copy()
        if len(b) and b[-1] != 10:
            ends = np.append(ends, len(b))
        else:
            starts = starts[:-1]
        cr = np.flatnonzero(b == 13)
        if len(cr):
            if cr[-1] == len(b) - 1 or not (b[cr + 1] == 10).all():
                return None  # a CR that does not end a line
            ends[:len(nl)] -= (b[np.maximum(nl - 1, 0)] == 13) & (nl > 0)
        if self.skip_first:
            starts, ends = starts[1:], ends[1:]
        full = ends > starts  # blank lines are no rows
        starts, ends = starts[full], ends[full]
        if not len(starts):
            return [], []
        width = len(self.header)
        commas = np.flatnonzero(b == 44)
        first = np.searchsorted(commas, starts)
        if not (np.searchsorted(commas, ends) - first == width - 1).all():
            return None
        if width > 1:
            at = commas[first[:, None] + np.arange(width - 1)]
            kstart = starts if col == 0 else at[:, col - 1] + 1
            kend = ends if col == width - 1 else at[:, col]
        else:
            kstart, kend = starts, ends
        size = kend - kstart
        w = max(8, int(size.max()))
        if w > 64:
            return None
        window = np.lib.stride_tricks.sliding_window_view(
            np.concatenate((b, np.zeros(w, dtype=np.uint8))), w)
        cut = window[kstart]  # n x w bytes: each key field, then what follows it
        cut[np.arange(w) >= size[:, None]] = 0
        if w == 8:  # fields of at most 8 bytes, matched as 64-bit integers
            hit = _members(cut.view("<u8").ravel(), wanted[1])
        else:
            hit = _members(cut.view(f"S{w}").ravel(), wanted[0])
        ks, ke, ls, le = (a[hit].tolist() for a in (kstart, kend, starts, ends))
        return ([text[x:y] for x, y in zip(ks, ke)], [text[x:y] for x, y in zip(ls, le)])

    def key_lines(self, col):
        """``(keys, lines)``: the split's lines (as :meth:`lines`) and field ``col`` of each,
        cut out, every line's width checked in the same pass (:func:`_cut_field`); ``None``
        when the text needs the csv module (quotes, CR)."""
        lines = self.lines(check=False)
        if lines is None:
            return None
        if not lines:
            return [], lines
        keys = _cut_field("\n".join(lines), len(lines), col, len(self.header))
        if keys is None:  # some line has another number of fields
            self._bad_width(ln.split(",") for ln in lines)
        return keys, lines

    def lines(self, check=True):
        """The split's lines when every one is its fields joined by commas (no quote, no
        CR), the header line and blank lines left out, each checked to have the header's
        width (unless ``check`` is false); else ``None`` (use :meth:`rows`)."""
        text = self._read()
        if '"' in text or "\r" in text:
            return None
        lines = text.split("\n")
        if self.skip_first:
            del lines[0]
        if lines and not lines[-1]:
            lines.pop()  # after the last line's end
        if "" in lines:
            lines = [ln for ln in lines if ln]
        if check and lines and not _widths_ok(text, len(self.header) - 1, self.skip_first):
            self._bad_width(ln.split(",") for ln in lines)
        return lines

    def rows(self):
        """The split's rows as lists of fields, the header line skipped; each checked to
        have the header's width (an :class:`InputError` names the first that has not)."""
        lines = self.lines()
        if lines is not None:
            return [ln.split(",") for ln in lines]
        rows = [r for r in csv.reader(io.StringIO(self._read())) if r]
        if self.skip_first and rows:
            del rows[0]
        if rows and set(map(len, rows)) != {len(self.header)}:
            self._bad_width(rows)
        return rows

    def _bad_width(self, rows):
        width = len(self.header)
        row = next(r for r in rows if len(r) != width)
        raise InputError(f"a CSV row of the {self.side()} side has {len(row)} fields, the "
                         f"header has {width}: {row!r:.80} ({self.split.path}, split "
                         f"{self.split.id})")

    def key_column(self, spec):
        """The index of the side's one key column in the header, or ``None`` when the key
        is composite (the general path handles it); an :class:`InputError` naming the
        column and the header when a key column is missing."""
        cols = self._key_columns(spec)
        if len(cols) == 1:
            return self.header.index(cols[0])
        return None

    def _key_columns(self, spec):
        cols = spec.left if self.side() == LEFT else spec.right
        check_header(self.header, cols, self.side(), self.split.path)
        return cols

    def keyed_rows(self, spec):
        """``(kind, keys, rows)`` of the split for the keyed join: its plain lines and their
        key fields cut out (``kind`` 0), else its rows as field lists (``kind`` 1)."""
        col = self.key_column(spec)
        if col is not None:
            found = self.key_lines(col)
            if found is not None:
                keys, lines = found
                if spec.empty_is_null and "" in keys:
                    keys = [k or None for k in keys]
                return _LINE, keys, lines
        rows = self.rows()
        return _FIELDS, self.keys(rows, spec), rows

    def keys(self, rows, spec):
        """Each row's join key (``None`` when null), in row order."""
        cols = self._key_columns(spec)
        header = self.header
        where = [header.index(c) for c in cols]
        if len(where) == 1:
            keys = list(map(itemgetter(where[0]), rows))
            if spec.empty_is_null and "" in keys:
                keys = [k or None for k in keys]
            return keys
        get = itemgetter(*where)
        keys = list(map(get, rows))
        if spec.empty_is_null:
            keys = [None if "" in k else k for k in keys]
        return keys


_TABLE_CACHE = {}


class _JoinAcc:
    """A join's accumulator: reduce-side groups, broadcast pairs by key, matched small rows.

    ``groups`` maps a key to ``[left rows, right rows]`` (reduce side); ``pairs`` maps a key
    to the ``(left, right)`` pairs a broadcast probe produced; ``None`` is the null key.
    """

    __slots__ = ("groups", "pairs", "matched", "small")

    def __init__(self):
        self.groups = {}
        self.pairs = {}
        self.matched = set()
        self.small = None

    def __getstate__(self):
        return (self.groups, self.pairs, self.matched, self.small)

    def __setstate__(self, state):
        self.groups, self.pairs, self.matched, self.small = state

    def __mergeagg_fingerprint__(self):
        small = None if self.small is None else [self.small.side, list(self.small.paths)]
        rows = [r for g in self.groups.values() for r in (*g[0], *g[1])]
        rows += [r for ps in self.pairs.values() for p in ps for r in p]
        if _plain_keys(self.groups) and _plain_keys(self.pairs) and _row_kinds(rows)[0]:
            # Only when every row is a dict of str keys to JSON scalars, which JSON renders
            # exactly; fingerprinting millions of small dicts one by one is much slower.
            groups = [[key, g[0], g[1]] for key, g in self.groups.items()]
            pairs = [[key, ps] for key, ps in self.pairs.items()]
            return json_digest("JoinAcc", [groups, pairs, sorted(self.matched), small])
        return (self.groups, self.pairs, self.matched, small)


_PLAIN = frozenset((str, int, float, bool, type(None)))


def _row_kinds(rows):
    """``(plain, all_str)`` over rows (``None`` allowed): are all rows dicts of str keys to
    JSON scalars, and to str only? One pass, mostly in C (a plain loop for a few rows)."""
    if isinstance(rows, list) and len(rows) <= 16:
        return _few_row_kinds(rows)
    key_types, value_types = set(), set()
    for row in rows:
        if row is None:
            continue
        if type(row) is not dict:
            return False, False
        key_types.update(map(type, row))
        value_types.update(map(type, row.values()))
    if not key_types <= {str}:
        return False, False
    return value_types <= _PLAIN, value_types <= {str}


def _few_row_kinds(rows):
    all_str = True
    for row in rows:
        if row is None:
            continue
        if type(row) is not dict:
            return False, False
        for k, v in row.items():
            if type(k) is not str:
                return False, False
            t = type(v)
            if t is not str:
                if t not in _PLAIN:
                    return False, False
                all_str = False
    return True, all_str


def _pair_rows(pairs):
    for lrow, rrow in pairs:
        yield lrow
        yield rrow


def _plain_keys(groups):
    for key in groups:
        if type(key) in _PLAIN:
            continue
        if type(key) is tuple and _PLAIN.issuperset(map(type, key)):
            continue
        return False
    return True


class JoinRows(list):
    """A join's result: a plain list of ``(left, right)`` pairs.

    It fingerprints as that list (the fingerprint encodes runs of them in bulk). The fold,
    the broadcast join and :func:`join_rows` of the keyed join give equal lists, so equal
    fingerprints. Cost of the fingerprint: O(rows).

    >>> rows = JoinRows([({"k": "1"}, None)])
    >>> rows == [({"k": "1"}, None)], isinstance(rows, list)
    (True, True)
    """

    __slots__ = ()

    def __mergeagg_fingerprint__(self):
        return list(self)


class _Join:
    """partial / combine / finalize of a join (picklable, no closures)."""

    __slots__ = ("spec", "how")

    def __init__(self, spec, how):
        self.spec, self.how = spec, how

    def __getstate__(self):
        return (self.spec, self.how)

    def __setstate__(self, state):
        self.spec, self.how = state

    def _table(self, small):
        key = small.cache_key()
        if key is not None:
            key = (key, self.spec)
            hit = _TABLE_CACHE.get(key)
            if hit is not None:
                return hit
        small.check(self.spec.left if small.side == LEFT else self.spec.right)
        rows = small.load()
        table = {}
        key_of = self.spec.key_function(small.side)
        for i, row in enumerate(rows):
            k = key_of(row)
            if k is not None:
                table.setdefault(k, []).append(i)
        built = (rows, table)
        if key is not None:
            _TABLE_CACHE.clear()  # keep one table per process
            _TABLE_CACHE[key] = built
        return built

    def partial(self, shard):
        acc = _JoinAcc()
        if type(shard) is _CsvPiece:
            tag = shard.tag
            if isinstance(tag, Broadcast):
                acc.small = tag.small
                self._probe_piece(shard, self._prober(acc, tag))
                return acc
            with _gc_paused():
                rows = shard.rows()
                keys = shard.keys(rows, self.spec)
                acc.groups = _group_rows(_SIDE_INDEX[tag], keys, rows, shard.header)
            return acc
        reduce_side = []
        probe = None
        for tag, record in shard:
            if isinstance(tag, Broadcast):
                if probe is None:
                    acc.small = tag.small
                    probe = self._prober(acc, tag)
                if record is not None:
                    probe(record)
            elif tag in _SIDE_INDEX:
                reduce_side.append((tag, record))
            else:
                raise ValueError(f"a join record must be tagged 'left' or 'right' (see "
                                 f"join_source), got the tag {tag!r}")
        if reduce_side:
            acc.groups = group_map(reduce_side, self.spec)
        return acc

    def _probe_piece(self, piece, probe):
        """Probe a streamed CSV split. When only matching rows are emitted, its lines are
        probed by key alone (the key field cut out of each line) and split in full only
        when they match; otherwise every row is parsed and probed."""
        col = piece.key_column(self.spec)
        found = None
        if col is not None and not probe.keep_unmatched:
            found = piece.hit_lines(col, probe.wanted)
            if found is None:
                found = piece.key_lines(col)
        if found is not None:
            keys, lines = found
            probe.lines(keys, lines, piece.header)
            return
        with _gc_paused():
            rows = piece.rows()
            probe.rows(piece.keys(rows, self.spec), rows, piece.header)
            del rows  # before the collector runs again

    def _prober(self, acc, tag):
        """The function that joins one streamed record against the small side's table."""
        rows, table = self._table(tag.small)
        stream = tag.stream
        key_of = self.spec.key_function(stream)
        keep_unmatched = self.how in ("full", stream)
        track = self.how in ("full", tag.small.side)
        pairs, matched = acc.pairs, acc.matched

        def probe_rows(keys, rows, header):
            """Probe CSV rows given as their keys and fields (a dict only if emitted)."""
            if keep_unmatched:
                for key, fields in zip(keys, rows):
                    emit(key, dict(zip(header, fields)))
                return
            # Only rows whose key is in the table are emitted: pick them out in C. A null
            # key is None, never in the table.
            hits = compress(zip(keys, rows), map(table.__contains__, keys))
            for key, fields in hits:
                emit(key, dict(zip(header, fields)))

        def probe_lines(keys, lines, header):
            """Probe plain CSV lines by their keys; only a hit is split into its fields.
            (Only when unmatched streamed rows are not kept; an empty key is never in the
            table when it is null.)"""
            hits = compress(zip(keys, lines), map(table.__contains__, keys))
            for key, line in hits:
                emit(key, dict(zip(header, line.split(","))))

        def probe(record):
            emit(key_of(record), record)

        def emit(key, record):
            hits = table.get(key) if key is not None else None
            if hits:
                out = pairs.get(key)
                if out is None:
                    out = pairs[key] = []
                if stream == LEFT:
                    out.extend((record, rows[i]) for i in hits)
                else:
                    out.extend((rows[i], record) for i in hits)
                if track:
                    matched.update(hits)
            elif keep_unmatched:
                out = pairs.get(key)
                if out is None:
                    out = pairs[key] = []
                out.append((record, None) if stream == LEFT else (None, record))

        probe.rows, probe.lines, probe.keep_unmatched = probe_rows, probe_lines, keep_unmatched
        probe.wanted = _wanted_keys(table) if not keep_unmatched else None
        return probe

    @staticmethod
    def combine(a, b):
        groups = a.groups
        for key, group in b.groups.items():
            if key in groups:
                combine_group(groups[key], group)
            else:
                groups[key] = _copy_group(group)
        pairs = a.pairs
        for key, more in b.pairs.items():
            if key in pairs:
                pairs[key].extend(more)
            else:
                pairs[key] = list(more)
        a.matched |= b.matched
        if a.small is None:
            a.small = b.small
        return a

    def finalize(self, acc):
        by_key = {key: list(ps) for key, ps in acc.pairs.items()}
        for key, group in acc.groups.items():
            joined = finalize_group(key, group, self.how)
            if joined:
                by_key.setdefault(key, []).extend(joined)
        small = acc.small
        if small is not None and self.how in ("full", small.side):
            rows, _table = self._table(small)
            key_of = self.spec.key_function(small.side)
            for i, row in enumerate(rows):
                if i not in acc.matched:
                    pair = (row, None) if small.side == LEFT else (None, row)
                    by_key.setdefault(key_of(row), []).append(pair)
        # Sort the keys once; sort rows only within a key that has several pairs. This is
        # the documented order (key, then left row, then right row): all pairs of a key
        # share its place, and distinct keys never tie under order_key.
        all_str = _row_kinds(r for ps in by_key.values() for p in ps for r in p)[1]
        row_key = _str_row_key if all_str else order_key
        out = JoinRows()
        for key in sorted(by_key, key=order_key):
            pairs = by_key[key]
            if len(pairs) > 1:
                pairs.sort(key=lambda p: (row_key(p[0]), row_key(p[1])))
            out.extend(pairs)
        return out


def _wanted_keys(table):
    """The table's str keys that plain ASCII CSV text can hold (other keys never equal a
    field of such text), for :meth:`_CsvPiece.hit_lines`: a sorted numpy bytes array, and
    the keys of at most 8 bytes as sorted 64-bit integers (zero-padded bytes)."""
    keys = sorted(k.encode("ascii") for k in table
                  if type(k) is str and k.isascii() and "\0" not in k)
    as_bytes = np.array(keys, dtype=f"S{max(1, max(map(len, keys), default=1))}")
    short = np.array([k for k in keys if len(k) <= 8], dtype="S8")
    return as_bytes, np.sort(short.view("<u8"))


def _members(values, wanted):
    """Positions of ``values`` found in the sorted array ``wanted``. Cost: a binary search
    per value, in numpy."""
    if not len(wanted):
        return np.empty(0, dtype=np.intp)
    at = np.minimum(np.searchsorted(wanted, values), len(wanted) - 1)
    return np.flatnonzero(wanted[at] == values)


def _str_row_key(row):
    """order_key's order for None and dicts of str to str, computed faster."""
    if row is None:
        return (0,)
    return (6, tuple(sorted(row.items())))


def join(on, how="inner", *, left_on=None, right_on=None, empty_is_null=False, keyed=False):
    """An Aggregator joining the tagged records of :func:`join_source` (either strategy).

    ``on`` is required: the key column(s), or ``None`` with ``left_on`` and ``right_on``.
    ``keyed=True`` gives the reduce-side join as a :class:`~mergeagg.KeyedJob` (both sides
    shuffled by key into partitions, each key joined by its reducer; for a
    ``strategy="reduce"`` source): its result maps each key (``None`` for the null key) to
    that key's sorted pairs, and :func:`join_rows` flattens it into the fold's list.

    Cost: O(records) in the partials plus, for the reduce side, O(rows of the second
    operand) per combine; finalize is O(output log output) (it sorts). Memory: the grouped
    rows (reduce side) or the small table per map task (broadcast).

    >>> src = join_source([{"k": 1, "a": 1}], [{"k": 1, "b": 2}, {"k": 2, "b": 3}])
    >>> join(on="k", how="right").reduce(src.read(s) for s in src.splits())
    [({'k': 1, 'a': 1}, {'k': 1, 'b': 2}), (None, {'k': 2, 'b': 3})]
    """
    spec = _key_spec(on, left_on, right_on, empty_is_null)
    how = _check_how(how)
    if keyed:
        return KeyedJob(_KeyedBuckets(spec), combine_buckets, _BucketJoin(how),
                        name=f"join({how})")
    impl = _Join(spec, how)
    return Aggregator(impl.partial, impl.combine, impl.finalize, name=f"join({impl.how})")


_NOT_REPARTITIONED = ("a keyed join repartitions both sides: build its source with "
                      "join_source(..., strategy='reduce')")

BUCKETS = 256
"""How many buckets the keyed join shuffles: a join key goes to bucket
``key_hashes([key]) % BUCKETS`` (a null key to the bucket of ``0``)."""

_LINE, _FIELDS, _RECORD = 0, 1, 2  # how a segment holds its rows


def key_buckets(keys):
    """Each join key's bucket (``None``, a null key, goes with ``0``), as an int64 array.

    A stable hash (:func:`mergeagg.fingerprint.key_hashes`), the same in every process.
    Cost: O(total key size), vectorised for str, int and float keys.

    >>> key_buckets(["a", "a", None]).tolist() == key_buckets(["a", "a", 0]).tolist()
    True
    """
    if not len(keys):
        return np.empty(0, dtype=np.int64)
    if None in keys:
        keys = [0 if k is None else k for k in keys]
    return (key_hashes(list(keys)) % np.uint64(BUCKETS)).astype(np.int64)


@dataclasses.dataclass(slots=True, eq=False)
class Bucket:
    """One bucket's rows of both sides, as they travel in a keyed join's shuffle.

    ``left`` and ``right`` are lists of segments ``(kind, header, keys, rows)``: one per map
    task and side, a run of rows with their join keys (``None`` when null). ``kind`` says
    how the rows are held: CSV lines (``0``, split on ``,`` only when emitted), CSV field
    lists (``1``) or mapping records (``2``, ``header`` is ``None``). A bucket's join is one
    vectorised pass (:func:`join_bucket`), whatever number of keys it holds. Its lines and
    keys pickle and fingerprint as one string per run. Cost: O(bytes) to pickle and to
    fingerprint.

    >>> b = Bucket([(0, ("k", "x"), ["1"], ["1,a"])], [])
    >>> combine_buckets(b, Bucket([], [(2, None, ["1"], [{"k": "1"}])])).right
    [(2, None, ['1'], [{'k': '1'}])]
    """

    left: list
    right: list
    packed: tuple | None = dataclasses.field(default=None, repr=False)

    def _packed(self):
        # The map fingerprints a bucket and then pickles it: pack once for both.
        if self.packed is None:
            self.packed = (_packed_segments(self.left), _packed_segments(self.right))
        return self.packed

    def __reduce__(self):
        return (_unpacked_bucket, self._packed())

    def __mergeagg_fingerprint__(self):
        return [[(kind, header, _digest(keys), _digest(rows)) for kind, header, keys, rows
                 in side] for side in self._packed()]


def _digest(packed):
    """A packed run's stand-in in a fingerprint: the SHA-256 of its text (one pass in C)."""
    if type(packed) is tuple:
        return ("\n", hashlib.sha256(packed[1].encode("utf-8", "surrogatepass")).digest())
    return packed


def _pack(items):
    """A list of str as one ``("\\n", text)`` when no item holds a newline (CSV lines and
    their key fields), so that it pickles and fingerprints as one string, at C speed; any
    other list as itself. Cost: one join and one count over the text."""
    if items and type(items) is list and type(items[0]) is str:
        try:
            text = "\n".join(items)  # a TypeError unless every item is a str
        except TypeError:
            return items
        if text.count("\n") == len(items) - 1 and type(items[-1]) is str:
            return ("\n", text)
    return items


def _unpack(packed):
    return packed[1].split("\n") if type(packed) is tuple else packed


def _packed_segments(segments):
    return [(kind, header, _pack(keys), _pack(rows)) for kind, header, keys, rows in segments]


def _unpacked_bucket(left, right):
    return Bucket([(k, h, _unpack(keys), _unpack(rows)) for k, h, keys, rows in left],
                  [(k, h, _unpack(keys), _unpack(rows)) for k, h, keys, rows in right])


def combine_buckets(a, b):
    """Merge bucket ``b`` into bucket ``a`` (their segments, in order); returns ``a``.

    ``b`` is unchanged, and no segment is ever modified once made. Cost: O(segments of b).

    >>> combine_buckets(Bucket([1], []), Bucket([2], [3]))
    Bucket(left=[1, 2], right=[3])
    """
    a.left.extend(b.left)
    a.right.extend(b.right)
    a.packed = None
    return a


def _bucketed(sides):
    """``{bucket: Bucket}`` for all BUCKETS buckets from ``(side, kind, header, keys, rows)``
    runs; a bucket without rows is empty, so every map task emits every bucket."""
    out = {b: Bucket([], []) for b in range(BUCKETS)}
    for side, kind, header, keys, rows in sides:
        if not keys:
            continue
        where = key_buckets(keys)
        order = np.argsort(where, kind="stable")
        ends = np.cumsum(np.bincount(where, minlength=BUCKETS)).tolist()
        keys = _objects(keys)[order]
        rows = _objects(rows)[order]
        start = 0
        for b, end in enumerate(ends):
            if end > start:
                seg = (kind, header, keys[start:end].tolist(), rows[start:end].tolist())
                (out[b].left if side == 0 else out[b].right).append(seg)
            start = end
    return out


def _objects(items):
    """A list as a 1-D object array (never a nested array of field lists)."""
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr


class _KeyedBuckets:
    """The keyed join's map: a shard's rows, by side, cut into buckets (picklable)."""

    __slots__ = ("spec",)

    def __init__(self, spec):
        self.spec = spec

    def __call__(self, shard):
        if type(shard) is _CsvPiece:
            if shard.tag not in _SIDE_INDEX:
                raise ValueError(_NOT_REPARTITIONED)
            with _gc_paused():
                kind, keys, rows = shard.keyed_rows(self.spec)
                return _bucketed([(_SIDE_INDEX[shard.tag], kind, shard.header, keys, rows)])
        runs = {LEFT: ([], []), RIGHT: ([], [])}
        key_of = {LEFT: self.spec.key_function(LEFT), RIGHT: self.spec.key_function(RIGHT)}
        for tag, record in shard:
            run = runs.get(tag) if type(tag) is str else None
            if run is None:
                if isinstance(tag, Broadcast):
                    raise ValueError(_NOT_REPARTITIONED)
                raise ValueError(f"a join record must be tagged 'left' or 'right' (see "
                                 f"join_source), got the tag {tag!r}")
            run[0].append(key_of[tag](record))
            run[1].append(record)
        return _bucketed([(_SIDE_INDEX[tag], _RECORD, None, keys, rows)
                          for tag, (keys, rows) in runs.items()])


class _BucketSide:
    """One side of a bucket at the reducer: its keys, and its rows kept raw (a CSV line, a
    field list or a record) with the segment each comes from."""

    __slots__ = ("keys", "segments", "bounds")

    def __init__(self, segments):
        self.segments = segments
        self.keys, self.bounds = [], []
        for seg in segments:
            self.keys.extend(seg[2])
            self.bounds.append(len(self.keys))

    def raw(self, index):
        """``(rows, heads, seg)`` of the rows at the sorted positions ``index`` (a list):
        the raw rows in that order, the distinct ``(kind, header)`` of their segments and
        each row's position in ``heads`` (``None`` when there is one)."""
        rows, seg_of, heads, where = [], [], [], {}
        lo = pos = 0
        for seg, hi in zip(self.segments, self.bounds):
            stop = bisect_left(index, hi, pos)
            if stop > pos:
                kind, header, _keys, seg_rows = seg
                h = where.setdefault((kind, header), len(heads))
                if h == len(heads):
                    heads.append((kind, header))
                rows.extend([seg_rows[i - lo] for i in index[pos:stop]])
                seg_of.append((h, stop - pos))
                pos = stop
            lo = hi
        if len(heads) <= 1:
            return rows, tuple(heads), None
        seg = np.repeat([h for h, _n in seg_of], [n for _h, n in seg_of]).astype(np.int32)
        return rows, tuple(heads), seg


def _raw_records(rows, heads, seg):
    """Records of raw rows (see :class:`_BucketSide`): a CSV row's dict is built here."""
    if seg is None:
        if not heads:
            return []
        kind, header = heads[0]
        if kind == _LINE:
            return [dict(zip(header, line.split(","))) for line in rows]
        if kind == _FIELDS:
            return [dict(zip(header, fields)) for fields in rows]
        return list(rows)
    out = []
    for row, h in zip(rows, seg.tolist()):
        kind, header = heads[h]
        if kind == _LINE:
            row = dict(zip(header, row.split(",")))
        elif kind == _FIELDS:
            row = dict(zip(header, row))
        out.append(row)
    return out


def _row_keys(rows, heads, seg):
    """Sort keys of raw rows giving the documented row order (order_key of each record).

    When every row is a CSV row under headers with one set of distinct column names, a
    record's order_key compares its values in column-name order: that tuple is the key,
    built from the fields without a dict. Otherwise the records' own keys."""
    names = {tuple(sorted(h)) for k, h in heads if k != _RECORD and len(set(h)) == len(h)}
    if len(names) == 1 and len(heads) == 1 and heads[0][0] != _RECORD:
        kind, header = heads[0]
        fields = rows if kind == _FIELDS else [line.split(",") for line in rows]
        if list(header) == sorted(header):
            return fields  # lists compare as the tuples would
        return list(map(itemgetter(*np.argsort(header, kind="stable").tolist()), fields))
    if len(names) == 1 and all(k != _RECORD for k, _h in heads):
        perms = [itemgetter(*np.argsort(h, kind="stable").tolist()) if len(h) > 1 else None
                 for _k, h in heads]
        hs = [0] * len(rows) if seg is None else seg.tolist()
        out = []
        for row, h in zip(rows, hs):
            kind = heads[h][0]
            fields = row.split(",") if kind == _LINE else row
            perm = perms[h]
            out.append(tuple(perm(fields)) if perm is not None else tuple(fields))
        return out
    records = _raw_records(rows, heads, seg)
    row_key = _str_row_key if _row_kinds(records)[1] else order_key
    return [row_key(r) for r in records]


def _sorted_keys(keys):
    """Distinct keys in order_key order (plain ``sorted`` when that is the same order)."""
    kinds = set(map(type, keys))
    if kinds <= {str} or kinds <= {int, float, bool}:
        return sorted(keys)
    return sorted(keys, key=order_key)


def join_bucket(left, right, how):
    """Join one bucket's segments: its pairs in the documented order, as :class:`BucketRows`.

    Keys are ranked once; matches, cross products and unmatched rows are index arithmetic
    in numpy; rows stay raw (a CSV line is split only to order the rows of a repeated key),
    and are ordered within a key only where the key has several. Cost: O(rows + output)
    plus a sort of the keys and of the rows of repeated keys.

    >>> seg = [(2, None, ["a", "b", None], [{"k": "a"}, {"k": "b"}, {"x": 1}])]
    >>> join_bucket(seg, [(2, None, ["a"], [{"k": "a", "v": 1}])], "left")
    [({'x': 1}, None), ({'k': 'a'}, {'k': 'a', 'v': 1}), ({'k': 'b'}, None)]
    """
    lside, rside = _BucketSide(left), _BucketSide(right)
    lkeys, rkeys = lside.keys, rside.keys
    distinct = dict.fromkeys(lkeys)
    distinct.update(dict.fromkeys(rkeys))
    distinct.pop(None, None)
    ordered = _sorted_keys(list(distinct))
    rank = {k: i for i, k in enumerate(ordered)}
    n_keys = len(ordered)
    lc = np.fromiter(map(rank.get, lkeys, repeat(-1)), dtype=np.int64, count=len(lkeys))
    rc = np.fromiter(map(rank.get, rkeys, repeat(-1)), dtype=np.int64, count=len(rkeys))
    lcount = np.bincount(lc[lc >= 0], minlength=n_keys + 1)
    rcount = np.bincount(rc[rc >= 0], minlength=n_keys + 1)
    keep_left, keep_right = how in ("left", "full"), how in ("right", "full")
    # Which rows are emitted: matched ones, and unmatched ones of a kept side.
    lmatch = (lc >= 0) & (rcount[np.maximum(lc, 0)] > 0)
    rmatch = (rc >= 0) & (lcount[np.maximum(rc, 0)] > 0)
    lemit = np.ones_like(lmatch) if keep_left else lmatch
    remit = np.ones_like(rmatch) if keep_right else rmatch
    lraw, lorder, ltie = _emitted(lc, lemit, lside)
    rraw, rorder, rtie = _emitted(rc, remit, rside)
    # Sorted rows of each side, by (key rank, row): positions into lorder / rorder.
    lcode, rcode = lc[lorder], rc[rorder]
    lm, rm = lmatch[lorder], rmatch[rorder]
    # Matched: each left row of a key repeated once per right row of that key.
    rstart = np.zeros(n_keys + 1, dtype=np.int64)
    rfirst = np.flatnonzero(rm)
    if len(rfirst):
        rstart = np.searchsorted(rcode[rfirst], np.arange(n_keys + 1))
    ml = np.flatnonzero(lm)
    reps = rcount[lcode[ml]] if len(ml) else np.empty(0, dtype=np.int64)
    li = np.repeat(ml, reps)
    total = int(reps.sum())
    first = np.repeat(rstart[lcode[ml]] - np.concatenate(([0], np.cumsum(reps)[:-1])), reps) \
        if len(ml) else np.empty(0, dtype=np.int64)
    rj = rfirst[first + np.arange(total)] if total else np.empty(0, dtype=np.int64)
    if total:
        # By left row, right row, then (between equal rows) input order.
        o = np.lexsort((rj, li, rtie[rj], ltie[li]))
        li, rj = li[o], rj[o]
    parts_l, parts_r, parts_key, parts_kind = [li], [rj], [lcode[li]], [np.ones(total)]
    if keep_left:
        un = np.flatnonzero(~lm)
        parts_l.append(un)
        parts_r.append(np.full(len(un), -1))
        parts_key.append(lcode[un])
        parts_kind.append(np.full(len(un), 2.0))
    if keep_right:
        un = np.flatnonzero(~rm)
        parts_l.append(np.full(len(un), -1))
        parts_r.append(un)
        parts_key.append(rcode[un])
        parts_kind.append(np.zeros(len(un)))
    li = np.concatenate(parts_l).astype(np.int64)
    rj = np.concatenate(parts_r).astype(np.int64)
    key = np.concatenate(parts_key)
    # Null key (-1) first; in it the (None, right) pairs before the (left, None) ones; in a
    # group, the streams are already in row order.
    order = np.lexsort((np.arange(len(li)), np.concatenate(parts_kind), key))
    li, rj, key = li[order], rj[order], key[order]
    # Runs of one key: for join_rows, which orders the buckets' runs by key.
    if len(key):
        starts = np.concatenate(([0], np.flatnonzero(np.diff(key)) + 1)).astype(np.int64)
        run_keys = [None if c < 0 else ordered[c] for c in key[starts].tolist()]
        ends = np.append(starts[1:], len(key)).tolist()
    else:
        run_keys, ends = [], []
    return BucketRows(lraw, rraw, li.astype(np.int32), rj.astype(np.int32), run_keys, ends)


def _emitted(codes, emit, side):
    """The raw rows of a side's emitted rows, ordered by (key, row).

    Returns ``(raw, order, tie)``: ``raw`` is ``(rows, heads, seg)`` (see
    :meth:`_BucketSide.raw`) in sorted order, ``order`` the row indices in that order, and
    ``tie[p]`` the first position of the rows equal to ``p``'s (``p`` when none)."""
    idx = np.flatnonzero(emit)
    # By key rank (nulls, -1, first); rows of one key keep their input order for now.
    idx = idx[np.argsort(codes[idx], kind="stable")]
    by_position = np.argsort(idx, kind="stable")
    rows, heads, seg = side.raw(idx[by_position].tolist())
    inverse = np.empty_like(by_position)
    inverse[by_position] = np.arange(len(idx))
    rows = [rows[p] for p in inverse.tolist()]
    if seg is not None:
        seg = seg[inverse]
    c = codes[idx]
    tie = np.arange(len(c))
    if len(c) > 1:
        dup = np.flatnonzero(c[1:] == c[:-1])
        if len(dup):
            # Order the rows of each repeated key (null rows too) by the documented row order.
            many = np.zeros(len(c), dtype=bool)
            many[dup] = True
            many[dup + 1] = True
            at = np.flatnonzero(many).tolist()
            picked = [rows[p] for p in at]
            keys = _row_keys(picked, heads, None if seg is None else seg[at])
            cs = c[at].tolist()
            sub = [j for _c, _k, j in sorted(zip(cs, keys, range(len(at))))]
            # Rows of one key stay in their key's span, so sorting the flagged positions
            # among themselves by (key, row) reorders each span in place.
            perm = np.arange(len(c))
            perm[at] = [at[j] for j in sub]
            idx = idx[perm]
            rows = [rows[p] for p in perm.tolist()]
            if seg is not None:
                seg = seg[perm]
            # Rows equal in that order share a tie rank (their pairs then interleave, as a
            # stable sort of the key's pairs would put them).
            for n in range(1, len(at)):
                a, b = sub[n - 1], sub[n]
                if cs[a] == cs[b] and keys[a] == keys[b]:
                    tie[at[n]] = tie[at[n - 1]]
    return (rows, heads, seg), idx, tie


class _BucketJoin:
    """The keyed join's per-bucket finalize (picklable)."""

    __slots__ = ("how",)

    def __init__(self, how):
        self.how = how

    def __call__(self, bucket):
        with _gc_paused():
            return join_bucket(bucket.left, bucket.right, self.how)


class BucketRows(Sequence):
    """One bucket's joined pairs, in the documented order (a keyed join's per-bucket value).

    Held in columnar form, as written to part files: each side's emitted rows raw (CSV
    lines or field lists with their headers, or records), and two int32 arrays saying which
    left and right row each pair joins (``-1`` for ``None``). A pair's records are built
    when it is first read. ``keys`` and ``ends`` describe its runs (the pairs of one join
    key end at ``ends[i]``), so that :func:`join_rows` orders the buckets' runs by key. It
    fingerprints as its columns. Cost: O(1) per pair read after the first (which builds
    every record once); pickle and fingerprint are O(raw bytes).

    >>> b = join_bucket([(0, ("k", "x"), ["1"], ["1,a"])], [(0, ("k",), ["1"], ["1"])], "inner")
    >>> list(b), b.keys, len(b)
    ([({'k': '1', 'x': 'a'}, {'k': '1'})], ['1'], 1)
    """

    __slots__ = ("left", "right", "li", "rj", "keys", "ends", "_pairs")

    def __init__(self, left, right, li, rj, keys=(), ends=()):
        self.left, self.right, self.li, self.rj = left, right, li, rj
        self.keys, self.ends = list(keys), list(ends)
        self._pairs = None

    def __reduce__(self):
        return (_unpacked_rows, (_packed_side(self.left), _packed_side(self.right), self.li,
                                 self.rj, self.keys, self.ends))

    def pairs(self):
        """The ``(left, right)`` pairs as a list (built once). Cost: O(pairs)."""
        if self._pairs is None:
            lrows = _raw_records(*self.left)
            rrows = _raw_records(*self.right)
            lrows.append(None)
            rrows.append(None)
            self._pairs = list(zip(map(lrows.__getitem__, self.li.tolist()),
                                   map(rrows.__getitem__, self.rj.tolist())))
        return self._pairs

    def to_jsonable(self):
        """What a committed JSON-lines part file holds for this bucket: ``{"keys",
        "ends", "pairs"}``, the pairs as ``[left row or null, right row or null]``; read
        back, :func:`join_rows` orders it as it does the bucket. Cost: O(pairs)."""
        return {"keys": self.keys, "ends": self.ends,
                "pairs": [[left, right] for left, right in self.pairs()]}

    def __len__(self):
        return len(self.li)

    def __getitem__(self, i):
        return self.pairs()[i]

    def __iter__(self):
        return iter(self.pairs())

    def __eq__(self, other):
        if isinstance(other, (BucketRows, list)):
            return self.pairs() == list(other)
        return NotImplemented

    __hash__ = None

    def __repr__(self):
        return repr(self.pairs())

    def __mergeagg_fingerprint__(self):
        (lrows, lheads, lseg), (rrows, rheads, rseg) = (_packed_side(self.left),
                                                          _packed_side(self.right))
        return [(_digest(lrows), lheads, lseg), (_digest(rrows), rheads, rseg), self.li,
                self.rj]


def _packed_side(side):
    rows, heads, seg = side
    return (_pack(rows), heads, seg)


def _unpacked_rows(left, right, li, rj, keys, ends):
    return BucketRows((_unpack(left[0]), *left[1:]), (_unpack(right[0]), *right[1:]), li, rj,
                      keys, ends)


class _BucketFromJson:
    """A bucket as :meth:`BucketRows.to_jsonable` wrote it, read back."""

    __slots__ = ("keys", "ends", "_pairs")

    def __init__(self, doc):
        self.keys, self.ends = doc["keys"], doc["ends"]
        self._pairs = [(left, right) for left, right in doc["pairs"]]

    def pairs(self):
        return self._pairs


def join_rows(value):
    """The keyed join's result (a dict bucket -> :class:`BucketRows`, or its part files) as
    the fold's list, with the same fingerprint.

    Runs of one key are ordered by key (:func:`~mergeagg.algorithms._keyed.order_key`,
    nulls first). Cost: O(keys log keys) plus the pairs, plus reading the parts.

    >>> job = join("k", how="left", keyed=True)
    >>> src = join_source([{"k": 1}, {"k": None}], [{"k": 1, "v": 2}], strategy="reduce")
    >>> join_rows(job.reduce(src.read(s) for s in src.splits()))
    [({'k': None}, None), ({'k': 1}, {'k': 1, 'v': 2})]
    """
    if not isinstance(value, dict):
        value = value.to_dict()
    runs = []  # (key, bucket rows, start, end)
    nulls = []
    for rows in value.values():
        if isinstance(rows, dict):  # a bucket read back from a JSON-lines part file
            rows = _BucketFromJson(rows)
        start = 0
        for key, end in zip(rows.keys, rows.ends):
            (nulls if key is None else runs).append((key, rows, start, end))
            start = end
    ordered = _sorted_keys([r[0] for r in runs])
    by_key = {r[0]: r for r in runs}
    out = JoinRows()
    for _key, rows, start, end in nulls + [by_key[k] for k in ordered]:
        out.extend(rows.pairs()[start:end])
    return out


# -- sources ---------------------------------------------------------------------------------

_RECORD_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}


def _format_of(paths, given):
    if given is not None:
        return given
    fmts = {_RECORD_FORMATS.get(os.path.splitext(p)[1].lower()) for p in paths}
    if None in fmts or len(fmts) != 1:
        raise ValueError(f"cannot tell the format of {list(paths)!r} from the file names; "
                         "name them .csv or .jsonl, or pass format='csv' or 'jsonl'")
    return fmts.pop()


def _is_paths(side):
    if isinstance(side, (str, os.PathLike)):
        return True
    return (isinstance(side, (list, tuple)) and bool(side)
            and all(isinstance(p, (str, os.PathLike)) for p in side))


class _Side:
    """One side as given: files, or in-memory shards of records."""

    def __init__(self, name, side, split_size, fmt):
        self.name = name
        if _is_paths(side):
            self.source = _inputs.files(side, split_size=split_size,
                                        format=_format_of(_expand(side), fmt))
            self.paths = tuple(sp.path for sp in self.source.splits())
            self.paths = tuple(dict.fromkeys(self.paths))
            self.format = self.source.splits()[0].format
            self.shards = None
            self.nbytes = sum(os.path.getsize(p) for p in self.paths)
        elif isinstance(side, (list, tuple)):
            items = list(side)
            if items and all(isinstance(s, (list, tuple)) for s in items):
                self.shards = [list(s) for s in items]  # a list of shards
            else:
                self.shards = [items]
            self.source = _inputs.shards(self.shards)
            self.paths = ()
            self.format = None
            self.nbytes = len(pickle.dumps(self.shards, protocol=pickle.HIGHEST_PROTOCOL))
        else:
            raise TypeError(f"the {name} side must be file paths or a list of records "
                            f"(or of shards of records), got a {type(side).__name__}")

    def small(self):
        if self.shards is not None:
            rows = tuple(r for shard in self.shards for r in shard)
            return _SmallSide(self.name, records=rows)
        return _SmallSide(self.name, paths=self.paths, format=self.format)

    def tagged(self, tag):
        """This side's splits, its records tagged with ``tag`` (a side's name or a
        :class:`Broadcast`). A CSV file's splits become :class:`_CsvPiece` descriptors, so
        that the join reads and parses them itself and builds a dict only for a row it
        emits; other records come as ``(tag, record)`` pairs."""
        if self.format != "csv":
            splits = [dataclasses.replace(sp, tag=tag) for sp in self.source.splits()]
            return _inputs.Source(splits, f"{self.name}: {self.source.description}")
        headers = {}
        splits = []
        for sp in self.source.splits():
            if sp.kind != "text":
                splits.append(dataclasses.replace(sp, tag=tag))
                continue
            if sp.path not in headers:
                headers[sp.path] = _csv_header(sp.path)
            piece = _CsvPiece(sp, tag, headers[sp.path], sp.start == 0)
            splits.append(_inputs.Split(index=sp.index, id=sp.id, kind="memory", path=sp.path,
                                        start=sp.start, end=sp.end, payload=piece,
                                        format="csv", errors=sp.errors))
        return _inputs.Source(splits, f"{self.name}: {self.source.description}")

    streamed = tagged


def _csv_header(path):
    # As the splits read it: a byte-order mark skipped, a quoted name may span lines.
    from mergeagg.inputs import csv_header

    return tuple(csv_header(path))


def _expand(side):
    paths = [side] if isinstance(side, (str, os.PathLike)) else list(side)
    return [os.fspath(p) for p in paths]


def _choose(strategy, left, right, threshold):
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "reduce":
        return "reduce", None
    small = left if left.nbytes < right.nbytes else right
    if strategy == "broadcast" or small.nbytes <= threshold:
        return "broadcast", small
    return "reduce", None


def join_source(left, right, *, strategy="auto", broadcast_threshold=None, split_size=None,
                format=None):
    """The source of a join: both sides' records tagged, or the big side tagged to broadcast.

    ``left`` and ``right`` are CSV / JSON-lines file paths (the format from the extension
    unless ``format`` is given), a list of mapping records, or a list of shards of them.
    With ``strategy="broadcast"`` (or ``"auto"`` and the smaller side within
    ``broadcast_threshold`` bytes) only the other side is split; each split's tag carries the
    small side (its paths, or its records), and one extra split announces it to finalize.
    ``source.strategy`` says which was chosen. Cost: a ``stat`` per file (in-memory sides
    are pickled once to measure them).

    >>> join_source([{"k": 1}], [{"k": 1}] * 3, strategy="reduce").strategy
    'reduce'
    >>> len(join_source([{"k": 1}], [[{"k": 1}], [{"k": 2}]]))
    3
    """
    threshold = (DEFAULT_BROADCAST_THRESHOLD if broadcast_threshold is None
                 else _inputs.parse_size(broadcast_threshold))
    lside = _Side(LEFT, left, split_size, format)
    rside = _Side(RIGHT, right, split_size, format)
    chosen, small = _choose(strategy, lside, rside, threshold)
    if chosen == "reduce":
        src = _inputs.concat(lside.tagged(LEFT), rside.tagged(RIGHT))
    else:
        big = rside if small is lside else lside
        tag = Broadcast(big.name, small.small())
        announce = _inputs.shards([[(tag, None)]])
        src = _inputs.concat(big.streamed(tag), announce)
        src.description = f"broadcast {small.name} ({small.nbytes} bytes) to {big.name}"
    src.strategy = chosen
    return src


def join_records(left, right, on=None, how="inner", *, left_on=None, right_on=None,
                 strategy="auto", empty_is_null=False, broadcast_threshold=None):
    """Join two tables serially, in this process: the reference and a convenience.

    Cost: as :func:`join`.

    >>> join_records([{"k": "x"}], [{"k": "x", "v": 1}, {"k": "", "v": 2}], on="k",
    ...              how="full", empty_is_null=True, strategy="broadcast")
    [(None, {'k': '', 'v': 2}), ({'k': 'x'}, {'k': 'x', 'v': 1})]
    """
    agg = join(on, how, left_on=left_on, right_on=right_on, empty_is_null=empty_is_null)
    src = join_source(left, right, strategy=strategy, broadcast_threshold=broadcast_threshold)
    return agg.reduce(src.read(s) for s in src.splits())


def merge_pair(left, right, suffixes=("_left", "_right")):
    """One flat row of a joined pair: columns of both sides, clashing names suffixed.

    ``None`` for a side contributes nothing. Cost: O(columns).

    >>> merge_pair({"id": 1, "v": "a"}, {"id": 1, "v": "b", "w": 0})
    {'id_left': 1, 'v_left': 'a', 'id_right': 1, 'v_right': 'b', 'w': 0}
    """
    left = left or {}
    right = right or {}
    out = {}
    for col, v in left.items():
        out[col + suffixes[0] if col in right else col] = v
    for col, v in right.items():
        out[col + suffixes[1] if col in left else col] = v
    return out


# -- the catalog entry -----------------------------------------------------------------------


def _make_source(inputs, split_size, params):
    if len(inputs) != 2:
        raise ValueError(f"join takes exactly two inputs, LEFT and RIGHT; got {len(inputs)}")
    strategy = "reduce" if params.get("keyed") else params.get("_strategy", "auto")
    src = join_source(inputs[0], inputs[1], strategy=strategy,
                      broadcast_threshold=params.get("_broadcast_threshold"),
                      split_size=split_size)
    # A misspelled key column fails here, before any task runs (the tasks check it too).
    spec = _key_spec(params.get("on"), params.get("left_on"), params.get("right_on"), False)
    for side, path in ((LEFT, inputs[0]), (RIGHT, inputs[1])):
        if _is_paths(path):
            for p in _expand(path):
                if _RECORD_FORMATS.get(os.path.splitext(p)[1].lower()) == "csv":
                    check_header(_csv_header(p), spec.left if side == LEFT else spec.right,
                                 side, p)
    return src


def run_join(job, source, **options):
    """The CLI's runner: :func:`mergeagg.run`, and for a keyed join the value the user
    gets (the list of pairs, :func:`join_rows`) with that list's fingerprint, so that the
    fold, the broadcast join and the keyed join at any ``--partitions`` print one
    fingerprint for one list. Cost: the run, plus for a keyed join one pass over its output.

    >>> src = join_source([{"k": 1}], [{"k": 1, "v": 2}], strategy="reduce")
    >>> a = run_join(join("k"), src, workers=0)
    >>> b = run_join(join("k", keyed=True), src, workers=0, partitions=3)
    >>> a.value == b.value, a.fingerprint == b.fingerprint == fingerprint(b.value)
    (True, True)
    """
    import mergeagg

    result = mergeagg.run(job, source, **options)
    if isinstance(job, KeyedJob):
        value = join_rows(result.value)
        result = dataclasses.replace(result, value=value, fingerprint=fingerprint(value))
    return result


def _summarize(value, params):
    if not isinstance(value, list):
        value = join_rows(value)
    lines = [f"{len(value)} rows"]
    for lrow, rrow in value[: params.get("_top", 10)]:
        lines.append(f"{lrow!r} | {rrow!r}")
    return lines


def _jsonable(value):
    if not isinstance(value, list):
        value = join_rows(value)
    return [[lrow, rrow] for lrow, rrow in value]


ENTRY = Entry(
    name="join",
    summary="join two CSV / JSON-lines tables on a key (inner/left/right/full; reduce-side "
            "or broadcast)",
    factory=join,
    flags=(
        Flag("--on", default=None, help="key column(s) of both sides, comma-separated"),
        Flag("--left-on", default=None, help="key column(s) of the left side"),
        Flag("--right-on", default=None, help="key column(s) of the right side"),
        Flag("--how", default="inner", choices=("inner", "left", "right", "full", "outer"),
             help="join type (default inner)"),
        Flag("--keep-empty", action="store_false", default=True, dest="empty_is_null",
             help="let empty-string keys match (by default an empty key is null)"),
        Flag("--strategy", default="auto", choices=STRATEGIES, dest="_strategy",
             help="reduce-side, broadcast, or auto (broadcast the smaller side if it is "
                  "within --broadcast-threshold)"),
        Flag("--broadcast-threshold", default=None, dest="_broadcast_threshold",
             help="largest side to broadcast, bytes with K/M/G (default 16M)"),
        Flag("--keyed", action="store_true", default=False,
             help="run the reduce-side join as a keyed job (shuffled into --partitions R)"),
        Flag("--top", type=int, default=10, help="how many rows to print", dest="_top"),
    ),
    make_source=_make_source,
    summarize=_summarize,
    jsonable=_jsonable,
    runner=run_join,
)
