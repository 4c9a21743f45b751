"""Sources and splits: where the records come from, cut into stable, independent pieces.

A *source* knows its *splits*; a split is a small, picklable descriptor with a stable
``id`` that a worker process turns back into records by itself (the master ships
descriptors, never file contents). Every record lands in exactly one split.

* :func:`shards` — an in-memory sequence of shards, one split each.
* :func:`files` — files given as paths, globs or directories, cut into record-aligned
  byte ranges of about ``split_size`` bytes (default 16 MiB). ``format="text"``: a record is
  a line without its ``\\n`` or ``\\r\\n``; ``"jsonl"`` parses each non-blank line as JSON;
  ``"csv"`` (``"tsv"``) yields one dict per row keyed by the header, exactly the rows of
  Python's :mod:`csv` (quoted fields may hold line breaks). Without ``format`` each file's
  is inferred from its name (:func:`infer_format`). Compressed files (``.gz``, ``.bz2``,
  ``.xz``) are one split each. A UTF-8 byte-order mark at the start of a file is skipped.
* :func:`stdin` — standard input as one split (``-`` on the command line).
* :func:`array_rows` — a numpy array (or a ``.npy`` path, memory-mapped by the reader) as
  blocks of rows.

>>> import tempfile, os
>>> tmp = tempfile.TemporaryDirectory(); d = tmp.name
>>> with open(os.path.join(d, "a.txt"), "w") as f:
...     _ = f.write("one\\ntwo\\nthree\\n")
>>> src = files(d, split_size=5)
>>> [list(src.read(s)) for s in src.splits()]
[['one', 'two'], ['three']]
>>> [s.id for s in src.splits()][0].endswith("a.txt:0-5")
True
>>> tmp.cleanup()
"""

from __future__ import annotations

import bz2
import codecs
import csv
import glob as _glob
import gzip
import io
import json
import lzma
import mmap
import operator
import os
import re
import sys
import zlib
from dataclasses import dataclass, field

import numpy as np

from mergeagg.errors import InputError
from mergeagg.errors import RecordShapeError as RecordShapeError  # for the catalog's use

__all__ = [
    "Split",
    "Source",
    "shards",
    "files",
    "stdin",
    "array_rows",
    "as_source",
    "parse_size",
    "DEFAULT_SPLIT_SIZE",
    "TextShard",
    "RecordList",
    "line_pieces",
    "concat",
    "read_split",
    "infer_format",
    "require_column",
    "csv_header",
]

DEFAULT_SPLIT_SIZE = 16 * 1024 * 1024
_FORMATS = ("text", "jsonl", "csv", "tsv")
_DELIMITERS = {"csv": ",", "tsv": "\t"}
# Compressed files are one split each, read whole through their codec.
_CODECS = {".gz": ("gzip", gzip.open), ".bz2": ("bz2", bz2.open), ".xz": ("xz", lzma.open)}
_CODEC_OPEN = {kind: opener for kind, opener in _CODECS.values()}
_BY_EXTENSION = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_BOM = codecs.BOM_UTF8


@dataclass(frozen=True)
class Split:
    """One independent piece of input; ``index`` orders it, ``id`` names it stably.

    ``kind`` is ``"memory"``, ``"text"``, ``"gzip"``, ``"bz2"``, ``"xz"``, ``"rows"`` or
    ``"npy"``. For a ``"text"`` split ``start``/``end`` are the exact byte range of the
    records it owns (:func:`files` aligns them on record starts when it plans; the ``id``
    keeps the nominal range); for rows, row numbers. ``format`` is ``"text"``, ``"jsonl"``,
    ``"csv"`` or ``"tsv"``. ``payload`` holds the data of in-memory splits (nothing else
    carries data). Cost: a few words; picklable.

    >>> s = Split(index=0, id="/data/a.txt:0-4096", kind="text", path="/data/a.txt", end=4096)
    >>> s.nbytes, s.id
    (4096, '/data/a.txt:0-4096')
    """

    index: int
    id: str
    kind: str
    path: str | None = None
    start: int = 0
    end: int = 0
    payload: object = field(default=None, compare=False, repr=False)
    format: str = "text"
    errors: str = "strict"
    tag: object = None

    @property
    def nbytes(self):
        """Bytes this split covers in its file (0 for in-memory splits)."""
        return self.end - self.start if self.kind in ("text",) else 0


class Source:
    """A list of splits and the way to read one. Sources are picklable.

    Cost: O(number of splits) memory; reading is done split by split, by :meth:`read`.

    >>> src = shards([["a"], ["b", "c"]])
    >>> len(src), [list(src.read(s)) for s in src.splits()]
    (2, [['a'], ['b', 'c']])
    """

    def __init__(self, splits, description, given=None):
        if not splits:
            raise InputError(f"the source is empty: {description} gives no input")
        self._splits = list(splits)
        self.description = description
        self.given = given  # the paths, globs and directories as given (files only)

    def splits(self):
        """The splits, in index order. Cost: O(number of splits)."""
        return list(self._splits)

    def __len__(self):
        return len(self._splits)

    @staticmethod
    def read(split):
        """The records of ``split`` (an iterable; a :class:`TextShard` for text files)."""
        return read_split(split)

    def __repr__(self):
        return f"Source({self.description}, {len(self._splits)} splits)"


def concat(*sources):
    """One source made of several, their splits renumbered in order (ids keep their names).

    >>> a, b = shards([[1]]), shards([[2], [3]])
    >>> [s.index for s in concat(a, b).splits()]
    [0, 1, 2]
    """
    import dataclasses

    splits = []
    for src in sources:
        if not isinstance(src, Source):
            raise TypeError(f"concat takes Sources, got {type(src).__name__}")
        for sp in src.splits():
            splits.append(dataclasses.replace(sp, index=len(splits)))
    return Source(splits, " + ".join(s.description for s in sources))


def shards(seq):
    """An in-memory source: each element of ``seq`` is one shard (one split).

    >>> src = shards([[1, 2], [3]])
    >>> [list(src.read(s)) for s in src.splits()]
    [[1, 2], [3]]
    """
    if isinstance(seq, (str, bytes)):
        raise TypeError("shards() takes a sequence of shards, not a single str or bytes")
    items = list(seq)
    splits = [Split(index=i, id=f"shard:{i}", kind="memory", payload=s)
              for i, s in enumerate(items)]
    return Source(splits, f"{len(items)} in-memory shards")


def parse_size(text):
    """Parse a byte count with an optional K/M/G suffix (powers of 1024).

    >>> parse_size("16M"), parse_size("512"), parse_size(4096)
    (16777216, 512, 4096)
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    elif isinstance(text, str):
        t = text.strip().upper().removesuffix("B")
        mult = 1
        if t and t[-1] in "KMG":
            mult = 1024 ** ("KMG".index(t[-1]) + 1)
            t = t[:-1]
        try:
            value = int(t) * mult
        except ValueError:
            raise ValueError(
                f"not a byte count: {text!r} (use an integer with an optional K, M or G suffix)"
            ) from None
    else:
        raise TypeError(f"a byte count must be an int or str, got {type(text).__name__}")
    if value <= 0:
        raise ValueError(f"a byte count must be positive, got {text!r}")
    return value


def _expand(paths):
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            found = []
            for root, dirs, names in os.walk(p):
                dirs[:] = [d for d in dirs if not d.startswith(".")]  # skip .git and kin
                found.extend(os.path.join(root, n) for n in names if not n.startswith("."))
            if not found:
                raise InputError(f"directory {p!r} holds no (non-hidden) files")
            out.extend(sorted(found))
        elif os.path.isfile(p):  # before globbing: a real file may have [ or ? in its name
            out.append(p)
        elif any(ch in p for ch in "*?["):
            found = sorted(q for q in _glob.glob(p, recursive=True) if os.path.isfile(q))
            if not found:
                raise InputError(f"the pattern {p!r} matches no files")
            out.extend(found)
        elif os.path.exists(p):
            raise InputError(f"not a regular file or directory: {p!r}")
        else:
            raise InputError(f"no such file or directory: {p!r}")
    return out


def infer_format(path, default="text"):
    """The format a file's name implies: ``.csv`` csv, ``.tsv`` tsv, ``.jsonl`` and
    ``.ndjson`` jsonl (also under ``.gz``, ``.bz2``, ``.xz``); ``default`` otherwise.

    Cost: O(length of the name).

    >>> infer_format("sales.csv"), infer_format("log.ndjson.gz"), infer_format("a.TSV.xz")
    ('csv', 'jsonl', 'tsv')
    >>> infer_format("notes.txt"), infer_format("README")
    ('text', 'text')
    """
    name = os.fspath(path).lower()
    root, ext = os.path.splitext(name)
    if ext in _CODECS:
        root, ext = os.path.splitext(root)
    return _BY_EXTENSION.get(ext, default)


def _codec_of(path):
    return _CODECS.get(os.path.splitext(path)[1].lower(), (None, None))[0]


def files(paths, *, split_size=None, format=None, errors="strict", tag=None):
    """A source of files: paths, globs or directories (walked, hidden files skipped).

    Each file is cut into nominal byte ranges of ``split_size`` (default 16 MiB); a record
    belongs to the range in which it starts, so a record longer than the split size still
    lands in one split, and a range in which no record starts is no split at all (ids keep
    the nominal range, so they are stable). ``format`` is ``"text"`` (a record is a line),
    ``"jsonl"``, ``"csv"`` or ``"tsv"``; ``None`` (default) infers each file's from its
    name (:func:`infer_format`), else text. A CSV record may hold line breaks inside quotes:
    the splits are aligned on true record starts (see ``docs/inputs.md``). Compressed files
    (``.gz``, ``.bz2``, ``.xz``) are one split each. ``errors`` is the UTF-8 decoding policy
    (``"strict"`` raises :class:`~mergeagg.errors.InputError` with the file and byte offset;
    ``"replace"`` and ``"ignore"`` are Python's). ``tag``, when given, makes every record a
    ``(tag, record)`` pair (a join tells its two sides apart this way; see :func:`concat`).

    Cost: one ``stat`` per file, and for a file larger than ``split_size`` a look at the
    bytes near each split boundary (for text, up to the next line break; for CSV, a few
    kilobytes before it too, more only where quotes leave the boundary ambiguous). Records
    are read when a split is.

    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory(); d = tmp.name
    >>> with open(os.path.join(d, "long.txt"), "w") as f:
    ...     _ = f.write("a line longer than a split\\nshort\\n")
    >>> src = files(os.path.join(d, "*.txt"), split_size=10)
    >>> [list(src.read(s)) for s in src.splits()]
    [['a line longer than a split'], ['short']]
    >>> [s.id.rsplit(":", 1)[1] for s in src.splits()], [(s.start, s.end) for s in src.splits()]
    (['0-10', '20-30'], [(0, 27), (27, 33)])
    >>> tmp.cleanup()
    """
    if format is not None and format not in _FORMATS:
        raise ValueError(f"format must be one of {_FORMATS} (or None: by extension), "
                         f"got {format!r}")
    if errors not in ("strict", "replace", "ignore", "surrogateescape", "backslashreplace"):
        raise ValueError(f"unknown errors policy {errors!r}")
    size = DEFAULT_SPLIT_SIZE if split_size is None else parse_size(split_size)
    expanded = _expand(paths)
    if not expanded:
        raise InputError("no input files were given")
    splits = []
    for path in expanded:
        path = os.path.abspath(path)
        fmt = format or infer_format(path)
        n = os.path.getsize(path)
        codec = _codec_of(path)
        if codec is not None:
            splits.append(Split(len(splits), f"{path}:{codec}", codec, path, 0, n,
                                format=fmt, errors=errors, tag=tag))
            continue
        for nominal, start, end in _plan(path, n, size, fmt):
            splits.append(Split(len(splits), f"{path}:{nominal}-{min(nominal + size, n)}",
                                "text", path, start, end, format=fmt, errors=errors, tag=tag))
    given = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    return Source(splits, f"{len(expanded)} file(s)",
                  given=[os.path.abspath(os.fspath(p)) for p in given])


# -- planning: record-aligned byte ranges ------------------------------------------------------

_LF, _CR = 0x0A, 0x0D
# The rest of a quoted field after its opening quote: any bytes but a quote, or a doubled
# quote, up to the closing quote (one not followed by another).
_QUOTED_REST = re.compile(rb'[^"]*(?:""[^"]*)*"(?!")')


def _plan(path, n, size, fmt):
    """``(nominal start, start, end)`` of each split of a file that holds a record start."""
    if n <= size:
        return [(0, 0, n)]
    with open(path, "rb") as f:
        try:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:  # a file that shrank to nothing, a special file
            raise InputError(f"{path}: cannot map the file to plan its splits ({exc})") from None
    with buf:
        n = len(buf)
        first = 3 if buf[:3] == _BOM else 0  # the first record starts after a BOM
        if fmt in _DELIMITERS:
            layout = _CsvLayout(buf, _DELIMITERS[fmt], first)
            next_start = layout.next_record_start
        else:
            next_start = lambda s, lo: _next_line_start(buf, s)  # noqa: E731
        starts = [(0, 0)]  # (nominal, start): the first record belongs to split 0
        k = max(1, -(-(first + 1) // size))  # the first boundary after the first record start
        while k * size < n:
            c = next_start(k * size, starts[-1][1] or first)
            if c >= n:
                break
            j = c // size  # nominal ranges k .. j-1 hold no record start: not splits
            starts.append((j * size, c))
            k = j + 1
    ends = [c for _, c in starts[1:]] + [n]
    return [(nominal, start, end) for (nominal, start), end in zip(starts, ends)]


def _next_line_start(buf, s):
    """The first position >= ``s`` that follows a ``\\n`` (``len(buf)`` if none)."""
    if buf[s - 1] == _LF:
        return s
    i = buf.find(b"\n", s)
    return len(buf) if i < 0 else i + 1


class _CsvLayout:
    """Where records start in the bytes of a CSV file, as Python's :mod:`csv` reads it.

    The dialect is csv's default (``"`` quotes, doubled to escape, no escape character,
    not strict) with the given delimiter, the file opened with ``newline=""``: a line ends
    at ``\\n``, ``\\r\\n`` or a lone ``\\r``; a line start is a record start unless it lies
    inside a quoted field. A quote opens a quoted field only at the start of a field (after
    the delimiter, a line break or the first record's start); a quote elsewhere is a
    literal; a quoted field ends at a quote not followed by another. Bytes are scanned as
    they are: UTF-8 never puts these ASCII bytes inside a multi-byte character.
    """

    window = 1024  # bytes before a boundary tried first; grows 4x while ambiguous ...
    max_window = 1 << 14  # ... up to this, then quote parity, then the exact scan
    parity_chunk = 1 << 24  # bytes of the file in memory at a time for the parity

    def __init__(self, buf, delimiter, first):
        self.buf, self.n, self.first = buf, len(buf), first
        self.delim = ord(delimiter)

    def line_start(self, s):
        """The first line start at or after ``s`` (``n`` if none)."""
        buf, n = self.buf, self.n
        if s <= self.first:
            return self.first
        if s >= n:
            return n
        before = buf[s - 1]
        if before == _LF or (before == _CR and buf[s] != _LF):
            return s
        lf = buf.find(b"\n", s)
        cr = buf.find(b"\r", s, n if lf < 0 else lf)
        if cr < 0:
            return n if lf < 0 else lf + 1
        return cr + 2 if cr + 1 < n and buf[cr + 1] == _LF else cr + 1

    def inside_at(self, p, inside, stop):
        """Whether position ``stop`` (a line start, or ``n``) lies inside a quoted field,
        when position ``p <= stop`` (a line start, or just after a closing quote) does or
        does not (``inside``). Cost: one C search per quote met, skipping the text between.
        """
        buf, delim, first = self.buf, self.delim, self.first
        pos = p
        while pos < stop:
            if inside:
                # A closing quote before `stop` is at most at stop - 2 (stop - 1 is a line
                # break), so its look-ahead never needs the bytes past `stop`.
                m = _QUOTED_REST.match(buf, pos, stop)
                if m is None:
                    return True
                pos, inside = m.end(), False
            else:
                q = buf.find(b'"', pos, stop)
                if q < 0:
                    return False
                if q == first or buf[q - 1] in (delim, _LF, _CR):
                    inside = True
                pos = q + 1
        return inside

    def state_at(self, line, lo):
        """Whether line start ``line`` is inside a quoted field; ``lo <= line`` is a known
        record start. Cost: typically a few kilobytes scanned; see ``docs/inputs.md``.

        1. Both hypotheses (inside, outside) run from a line start a window before ``line``;
           where they agree that is the answer, else the window grows, up to
           ``max_window`` or back to ``lo``.
        2. Quote parity from ``lo`` (vectorised), valid when every quote is where a
           well-formed file has it (:meth:`parity_state`).
        3. Else the exact scan from ``lo``.
        """
        window = self.window
        while window <= self.max_window:
            start = line - window
            if start <= lo:
                break
            p = self.line_start(start)
            if p < line:
                outside_guess = self.inside_at(p, False, line)
                if outside_guess == self.inside_at(p, True, line):
                    return outside_guess
            window *= 4
        by_parity = self.parity_state(lo, line)
        if by_parity is not None:
            return by_parity
        return self.inside_at(lo, False, line)

    def parity_state(self, lo, line):
        """Whether ``line`` is inside a quoted field by the parity of the quotes since
        record start ``lo``, or ``None`` where parity does not decide it.

        Parity is exact while every quote that parity calls opening is at a field start:
        after the delimiter, a line break or ``lo`` — or right after a closing quote, which
        is csv's doubled quote. Then csv's reading and the toggling agree quote by quote (a
        closing quote followed by other text leaves csv mid-field, where the next quote of
        the field fails this test). A quote elsewhere (``a"b``, ``"ab"c"``) is csv's literal,
        and parity gives up (``None``). Cost: O(line - lo) in numpy, a chunk at a time.
        """
        buf, count, chunk = self.buf, 0, self.parity_chunk
        starts = np.array([self.delim, _CR, _LF, ord('"')], dtype=np.uint8)
        for a in range(lo, line, chunk):
            b = min(a + chunk, line)
            a0 = a - 1 if a > lo else a  # one byte of context before
            seg = np.frombuffer(buf[a0:b], dtype=np.uint8)
            pos = np.flatnonzero(seg[a - a0:] == ord('"')) + (a - a0)
            opens = pos[(np.arange(pos.size) + count) % 2 == 0]
            if a == lo and opens.size and opens[0] == 0:
                opens = opens[1:]  # a quote at lo opens: lo is a field start
            if not np.isin(seg[opens - 1], starts).all():
                return None
            count += pos.size
        return count % 2 == 1

    def next_record_start(self, s, lo):
        """The first record start at or after ``s`` (``n`` if none); ``lo <= s`` is a
        record start."""
        line = self.line_start(s)
        if line >= self.n:
            return self.n
        inside = self.state_at(line, lo)
        while inside:
            m = _QUOTED_REST.match(self.buf, line)
            if m is None:  # an unterminated quote runs to the end, as in csv
                return self.n
            line = self.line_start(m.end())
            if line >= self.n:
                return self.n
            inside = self.inside_at(m.end(), False, line)
        return line


def stdin(*, format=None, errors="strict", stream=None):
    """Standard input (or ``stream``, binary or text) as one in-memory split.

    It is read now, since worker processes cannot see this process's standard input.
    ``format=None`` means text. Cost: reads and decodes the whole stream once; holds its
    records in memory.

    >>> import io
    >>> src = stdin(stream=io.BytesIO(b"\\xef\\xbb\\xbfa b\\r\\nc\\n"))
    >>> [list(src.read(s)) for s in src.splits()]
    [['a b', 'c']]
    """
    format = format or "text"
    if format not in _FORMATS:
        raise ValueError(f"format must be one of {_FORMATS}, got {format!r}")
    stream = sys.stdin.buffer if stream is None else stream
    data = stream.read()
    if isinstance(data, str):  # a text stream (io.StringIO, sys.stdin): already decoded
        text, skip = data.removeprefix("\ufeff"), 0
        data = data.encode("utf-8", "surrogateescape")
    else:
        skip = 3 if data[:3] == _BOM else 0
        text = _decode(data[skip:], "<stdin>", skip, errors)
    records = _records_of_text(text, format, "<stdin>", None, skip)
    split = Split(0, "stdin", "memory", "<stdin>", 0, len(data), payload=records)
    return Source([split], "standard input")


def array_rows(array, *, rows=None):
    """A numpy array (or a ``.npy`` path, memory-mapped) as blocks of ``rows`` rows.

    Each split reads to an ndarray of its rows. Default ``rows``: about 16 MiB per block.

    >>> src = array_rows(np.arange(10).reshape(5, 2), rows=2)
    >>> [src.read(s).tolist() for s in src.splits()]
    [[[0, 1], [2, 3]], [[4, 5], [6, 7]], [[8, 9]]]
    """
    if isinstance(array, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(array))
        if not os.path.isfile(path):
            raise InputError(f"no such file: {path!r}")
        arr = np.load(path, mmap_mode="r")
        kind = "npy"
    elif isinstance(array, np.ndarray):
        arr, path, kind = array, None, "rows"
    else:
        raise TypeError(f"array_rows takes an ndarray or a .npy path, got {type(array).__name__}")
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise InputError("the array has no rows")
    if rows is None:
        row_bytes = max(1, arr[:1].nbytes)
        rows = max(1, DEFAULT_SPLIT_SIZE // row_bytes)
    if isinstance(rows, bool) or not isinstance(rows, (int, np.integer)) or rows <= 0:
        raise ValueError(f"rows must be a positive int, got {rows!r}")
    rows = int(rows)
    splits = []
    for i, start in enumerate(range(0, arr.shape[0], rows)):
        end = min(start + rows, arr.shape[0])
        payload = None if kind == "npy" else arr[start:end]
        name = path or "array"
        splits.append(Split(i, f"{name}:rows:{start}-{end}", kind, path, start, end,
                            payload=payload))
    return Source(splits, f"array of {arr.shape[0]} rows")


def as_source(obj, *, split_size=None, format=None, errors="strict"):
    """Turn what a user passed to ``run`` into a :class:`Source`.

    A Source passes through; a str or path (or a list of them) means files (``"-"`` means
    standard input); an ndarray means row blocks; any other list or tuple means in-memory
    shards (so in-memory text is a list of lists of lines, or :func:`shards`). ``format``
    is as for :func:`files` (``None``: by each file's name). Cost: that of the source built
    (one ``stat`` per file).

    >>> as_source([[1, 2], [3]])
    Source(2 in-memory shards, 2 splits)
    >>> as_source(np.zeros((3, 2)))
    Source(array of 3 rows, 1 splits)
    >>> as_source({1, 2})
    Traceback (most recent call last):
    ...
    TypeError: cannot read input from a set: pass file paths, a list of shards, ...
    >>> as_source(["to be or not", "to be"])
    Traceback (most recent call last):
    ...
    mergeagg.errors.InputError: no such file or directory: 'to be or not'; a str ...
    """
    if isinstance(obj, Source):
        return obj
    if isinstance(obj, np.ndarray):
        return array_rows(obj)
    if isinstance(obj, (str, os.PathLike)):
        if os.fspath(obj) == "-":
            return stdin(format=format, errors=errors)
        _check_paths_exist([obj])
        return files(obj, split_size=split_size, format=format, errors=errors)
    if isinstance(obj, (list, tuple)) and obj and all(
        isinstance(p, (str, os.PathLike)) for p in obj
    ):
        names = [os.fspath(p) for p in obj]
        rest = [p for p in names if p != "-"]
        _check_paths_exist([p for p in obj if os.fspath(p) != "-"])
        if "-" not in names:
            return files(obj, split_size=split_size, format=format, errors=errors)
        std = stdin(format=format, errors=errors)
        if not rest:
            return std
        return concat(std, files(rest, split_size=split_size, format=format, errors=errors))
    if isinstance(obj, (list, tuple)):
        if not obj:
            raise InputError("the source is empty: an empty list gives no input")
        return shards(obj)
    raise TypeError(
        f"cannot read input from a {type(obj).__name__}: pass file paths, a list of shards, "
        "an ndarray, or a mergeagg.inputs Source"
    )


def _check_paths_exist(paths):
    """A str that names no file, is no pattern and reads like text (it has white space and
    no path separator): say how in-memory text is passed."""
    for p in paths:
        if (isinstance(p, str) and any(c.isspace() for c in p) and os.sep not in p
                and not os.path.exists(p) and not any(c in p for c in "*?[")):
            raise InputError(
                f"no such file or directory: {p!r}; a str (or a list of str) passed as input "
                "names files. To aggregate in-memory text, pass a list of shards, each a "
                f"list of records ([[{p!r}], ...]) or mergeagg.shards(...)")


# -- reading ---------------------------------------------------------------------------------


class TextShard:
    """The records of one file split. Iterate it for records, or call :meth:`text`.

    ``text()`` returns the split's text, whole lines (a fast path for partials that
    tokenise, such as word count; a byte-order mark at the file's start is left out), and
    ``pieces()`` the same text a few kilobytes of whole lines at a time;
    ``bytes_read`` counts what was read from disk (the compressed bytes of a compressed
    file); ``columns`` is the header of a CSV or TSV file (``None`` for other formats, and
    for an empty file).
    ``consumed()`` says how far the last iteration is (what a progress report reads).
    Cost: the split's bytes, read and decoded once, on first use; the records are kept.

    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory(); path = os.path.join(tmp.name, "t.txt")
    >>> with open(path, "wb") as f:
    ...     _ = f.write(b"one two\\r\\nthree\\n")
    >>> shard = read_split(files(path).splits()[0])
    >>> list(shard), shard.text().split(), shard.bytes_read, shard.columns
    (['one two', 'three'], ['one', 'two', 'three'], 15, None)
    >>> tmp.cleanup()
    """

    __slots__ = ("split", "_records", "_text", "_base", "bytes_read", "_it", "_at")

    def __init__(self, split):
        self.split = split
        self._records = None
        self._text = None
        self._base = 0
        self.bytes_read = 0
        self._it = None
        self._at = None  # characters of the text handed out by pieces(), while it runs

    def text(self):
        """The split's whole lines as one string (line ends kept as in the file)."""
        if self._text is None:
            split = self.split
            if split.kind == "text":
                data, where, base = _read_range(split), split.path, split.start
                self.bytes_read = len(data)
            else:
                data, where, base = _read_compressed(split), f"{split.path} (decompressed)", 0
                self.bytes_read = split.end - split.start  # the compressed bytes read
            if base == 0 and data[:3] == _BOM:
                data, base = data[3:], 3
            self._base = base
            # Offsets in a decoding error count bytes of the file (decompressed, if it was).
            self._text = _decode(data, where, base, split.errors)
        return self._text

    def __iter__(self):
        if self._records is None:
            text = self.text()
            self._records = _records_of_text(text, self.split.format, self.split.path,
                                             self.split, self._base)
        self._it = it = iter(self._records)
        return it

    def pieces(self, size=4096):
        """The split's text (as :meth:`text`) as :func:`line_pieces`, and :meth:`consumed`
        says how far they have got. Cost: O(characters), one slice a piece.

        >>> shard = TextShard.__new__(TextShard); shard._text, shard._it = "ab\\ncd\\nef", None
        >>> list(shard.pieces(1)), shard.consumed()
        (['ab\\n', 'cd\\n', 'ef'], 1.0)
        """
        self._at = 0
        for piece in line_pieces(self.text(), size):
            self._at += len(piece)
            yield piece

    def consumed(self):
        """The share of the records the last iteration has handed out (or of the text
        :meth:`pieces` has), or ``None`` if neither ran (a partial that took :meth:`text`
        whole says nothing of how far it is). Safe to call from another thread. Cost:
        O(1): it reads the list iterator's position (or the pieces' end), so iterating
        costs nothing more.

        >>> shard = TextShard.__new__(TextShard); shard._it = shard._at = None
        >>> shard.consumed() is None
        True
        >>> shard._records = ["a", "b", "c", "d"]; it = iter(shard); _ = next(it)
        >>> shard.consumed()
        0.25
        """
        it = self._it
        if it is None:
            at = self._at
            if at is None:
                return None
            n = len(self._text)
            return 1.0 if n == 0 else at / n
        n = len(self._records)
        return 1.0 if n == 0 else (n - operator.length_hint(it)) / n

    @property
    def columns(self):
        """The CSV / TSV header as a tuple (reads the split), ``None`` for other formats."""
        if self.split.format not in _DELIMITERS:
            return None
        if self._records is None:
            iter(self)
        return self._records.columns


def line_pieces(text, size=4096):
    """``text`` in pieces of whole lines, each ending at the first line end at or after
    ``size`` characters (the last may be shorter; line ends kept): for a partial that
    tokenises, a piece's words are handled while they are still in the CPU cache. Cost:
    O(characters), one slice a piece.

    >>> list(line_pieces("ab\\ncd\\nef", 1))
    ['ab\\n', 'cd\\n', 'ef']
    """
    find = text.find
    n = len(text)
    pos = 0
    while pos < n:
        end = find("\n", pos + size)
        end = n if end < 0 else end + 1
        yield text[pos:end]
        pos = end


class RecordList(list):
    """A list of records that also says how many bytes were read from disk for it, and,
    for CSV rows, the header (``columns``).

    Cost: a list's.

    >>> r = RecordList(["a"]); r.bytes_read = 2
    >>> r, r.bytes_read, r.columns
    (['a'], 2, None)
    """

    bytes_read = 0
    columns = None


def require_column(shard, name):
    """Raise :class:`InputError` if ``shard`` holds CSV rows whose header lacks ``name``.

    For a ``field=`` aggregate: a CSV row has every column of its header, so a name not in
    the header is a mistake, never a column of nulls. Shards that are not CSV pass.
    Cost: O(columns).

    >>> rows = RecordList([{"k": "1", "a": "x"}]); rows.columns = ("k", "a")
    >>> require_column(rows, "k")
    >>> require_column(rows, "kk")
    Traceback (most recent call last):
    ...
    mergeagg.errors.InputError: the CSV input has no column 'kk'; its header has 2: 'k', 'a'
    """
    columns = getattr(shard, "columns", None)
    if columns is None or name in columns:
        return
    split = getattr(shard, "split", None)
    where = f"{split.path}: the CSV file" if split is not None and split.path else "the CSV input"
    raise InputError(f"{where} has no column {name!r}; its header has {len(columns)}: "
                     + ", ".join(repr(c) for c in columns))


def _read_range(split):
    """The bytes ``[start, end)`` of the split's file: exactly the records it owns."""
    path, start, end = split.path, split.start, split.end
    if start >= end:
        return b""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"input file disappeared: {path!r} (split {split.id})") from None
    with f:
        f.seek(start)
        data = f.read(end - start)
    if len(data) != end - start:
        raise InputError(f"{path}: the file is shorter than when the job was planned "
                         f"(split {split.id} needs bytes {start}-{end})")
    return data


def _read_compressed(split):
    try:
        with _CODEC_OPEN[split.kind](split.path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise InputError(f"input file disappeared: {split.path!r} (split {split.id})") from None
    except (OSError, EOFError, lzma.LZMAError, zlib.error) as exc:
        raise InputError(f"{split.path}: not a readable {split.kind} file ({exc})") from None


def _decode(data, path, offset, errors):
    try:
        return data.decode("utf-8", errors)
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}: invalid UTF-8 at byte offset {offset + exc.start} "
            f"({exc.reason}); pass errors='replace' (or --errors replace) to substitute it"
        ) from None


def _split_lines(text):
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def _records_of_text(text, fmt, path, split, base):
    """The records of a split's (or a whole stream's, ``split=None``) decoded text."""
    if fmt == "text":
        return _split_lines(text)
    if fmt == "jsonl":
        return _parse_jsonl(_split_lines(text), path, split)
    holds_header = split is None or split.kind != "text" or split.start == 0
    return _parse_csv(text, _DELIMITERS[fmt], path, split, base, holds_header)


def _parse_jsonl(lines, path, split):
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            where = f"split {split.id}, " if split is not None else ""
            raise InputError(
                f"{path}: invalid JSON on line {i + 1} of {where.rstrip(', ') or 'the input'}: "
                f"{exc.msg} at column {exc.colno}"
            ) from None
    return out


def _csv_line_offset(lines, count, base):
    """The byte offset of the start of line ``count`` (0-based) of a text's ``lines``."""
    return base + sum(len(ln.encode("utf-8", "surrogateescape")) for ln in lines[:count])


def _csv_rows(text, delimiter, path, base):
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        return list(reader)
    except csv.Error as exc:
        lines = list(io.StringIO(text, newline=""))
        offset = _csv_line_offset(lines, max(reader.line_num - 1, 0), base)
        raise InputError(f"{path}: unreadable CSV on the line at byte offset {offset}: "
                         f"{exc}") from None


def _csv_record_offset(text, delimiter, index, base):
    """The byte offset at which row ``index`` of a CSV text starts (for error messages)."""
    lines = list(io.StringIO(text, newline=""))
    reader = csv.reader(iter(lines), delimiter=delimiter)
    consumed = 0
    for i, _row in enumerate(reader):
        if i == index:
            break
        consumed = reader.line_num
    return _csv_line_offset(lines, consumed, base)


def csv_header(path, *, format="csv", errors="strict"):
    """The header of a CSV (``format="tsv"``: TSV) file: its first non-blank row, read as
    :func:`files` reads it (a byte-order mark skipped, quoted fields may span lines).

    Cost: reads the file up to the end of that row (a few kilobytes).

    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory(); path = os.path.join(tmp.name, "t.csv")
    >>> with open(path, "wb") as f:
    ...     _ = f.write(b'\\xef\\xbb\\xbf\\r\\nk,"a\\nb"\\r\\n1,2\\r\\n')
    >>> csv_header(path)
    ['k', 'a\\nb']
    >>> tmp.cleanup()
    """
    if format not in _DELIMITERS:
        raise ValueError(f"format must be 'csv' or 'tsv', got {format!r}")
    path = os.fspath(path)
    try:
        raw = open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"no such file: {path!r}") from None
    with raw:
        f = io.TextIOWrapper(raw, encoding="utf-8-sig", errors=errors, newline="")
        try:
            for row in csv.reader(f, delimiter=_DELIMITERS[format]):
                if row:
                    return row
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}: invalid UTF-8 in the CSV header ({exc.reason}); "
                             "pass errors='replace' (or --errors replace)") from None
        except csv.Error as exc:
            raise InputError(f"{path}: unreadable CSV header: {exc}") from None
    return []


def _parse_csv(text, delimiter, path, split, base, holds_header):
    rows = _csv_rows(text, delimiter, path, base)
    first = 0
    if holds_header:
        while first < len(rows) and not rows[first]:
            first += 1
        header = rows[first] if first < len(rows) else []
        first += 1
    else:
        header = csv_header(path, format=split.format, errors=split.errors)
    width = len(header)
    out = RecordList()
    out.columns = tuple(header) if header else None  # an empty file has no header
    append = out.append
    for i in range(first, len(rows)):
        row = rows[i]
        if len(row) == width:
            append(dict(zip(header, row)))
        elif row:  # a blank line is no row
            where = f" (split {split.id})" if split is not None else ""
            offset = _csv_record_offset(text, delimiter, i, base)
            raise InputError(
                f"{path}: the CSV row at byte offset {offset}{where} has {len(row)} "
                f"field(s), the header has {width}")
    return out


def read_split(split):
    """Records of ``split``; what a worker calls with a descriptor it was sent.

    With a ``tag`` on the split, each record comes as a ``(tag, record)`` pair. Cost: reading
    the split (nothing for in-memory splits; file splits are read on first use).

    >>> [read_split(s) for s in shards([["x"]]).splits()]
    [['x']]
    >>> import dataclasses
    >>> read_split(dataclasses.replace(shards([["x", "y"]]).splits()[0], tag="left"))
    [('left', 'x'), ('left', 'y')]
    """
    records = _read_untagged(split)
    if split.tag is None:
        return records
    tag = split.tag
    tagged = RecordList((tag, r) for r in records)
    tagged.bytes_read = getattr(records, "bytes_read", 0)
    return tagged


def _read_untagged(split):
    kind = split.kind
    if kind == "memory":
        return split.payload
    if kind == "text" or kind in _CODEC_OPEN:
        return TextShard(split)
    if kind == "rows":
        return split.payload
    if kind == "npy":
        arr = np.load(split.path, mmap_mode="r")
        return np.asarray(arr[split.start:split.end])
    raise ValueError(f"unknown split kind {kind!r} in split {split.id}")


def record_location(split, index):
    """Where record ``index`` of ``split`` is, for a message: the file and byte offset of
    a file split's record (of the decompressed bytes for a compressed file), the row of an
    array, the position in an in-memory shard. Cost: reads and scans the split (meant for
    the few records an error names).

    >>> record_location(shards([["a", "b"]]).splits()[0], 1)
    'record 1 of shard:0'
    """
    kind = split.kind
    if kind == "npy":
        return f"{split.path}, row {split.start + index}"
    if kind == "rows":
        return f"row {split.start + index} of {split.id}"
    if kind not in ("text",) and kind not in _CODEC_OPEN:
        return f"record {index} of {split.id}"
    shard = TextShard(split)
    text = shard.text()
    base = shard._base
    if split.format in _DELIMITERS:
        rows = _csv_rows(text, _DELIMITERS[split.format], split.path, base)
        i = 0
        if split.kind != "text" or split.start == 0:
            while i < len(rows) and not rows[i]:
                i += 1
            i += 1  # the header
        seen = -1
        while i < len(rows):
            if rows[i]:
                seen += 1
                if seen == index:
                    break
            i += 1
        offset = _csv_record_offset(text, _DELIMITERS[split.format], i, base)
        return f"{split.path}, byte offset {offset} (CSV row)"
    lines = text.split("\n")
    if split.format == "jsonl":
        numbers = [n for n, ln in enumerate(lines) if ln.strip()]
        line = numbers[index]
    else:
        line = index
    offset = base + sum(len(ln.encode("utf-8", "surrogateescape")) + 1 for ln in lines[:line])
    return f"{split.path}, byte offset {offset}"
