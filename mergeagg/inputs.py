"""Sources and splits: where the records come from, cut into stable, independent pieces.

A *source* knows its *splits*; a split is a small, picklable descriptor with a stable
``id`` that a worker process turns back into records by itself (the master ships
descriptors, never file contents). Every record lands in exactly one split.

* :func:`shards` — an in-memory sequence of shards, one split each.
* :func:`files` — text files given as paths, globs or directories, cut into line-aligned
  byte ranges of ``split_size`` bytes (default 16 MiB). A record is a line without its
  ``\\n`` or ``\\r\\n``. Gzip files (``.gz``) are one split each. ``format="jsonl"`` parses
  each non-blank line as JSON, ``format="csv"`` yields one dict per row keyed by the header.
* :func:`stdin` — standard input as one split (``-`` on the command line).
* :func:`array_rows` — a numpy array (or a ``.npy`` path, memory-mapped by the reader) as
  blocks of rows.

>>> import tempfile, os
>>> d = tempfile.mkdtemp()
>>> with open(os.path.join(d, "a.txt"), "w") as f:
...     _ = f.write("one\\ntwo\\nthree\\n")
>>> src = files(d, split_size=5)
>>> [list(src.read(s)) for s in src.splits()]
[['one', 'two'], ['three'], []]
>>> [s.id for s in src.splits()][0].endswith("a.txt:0-5")
True
"""

from __future__ import annotations

import csv
import glob as _glob
import gzip
import io
import json
import os
import sys
from dataclasses import dataclass, field

import numpy as np

from mergeagg.errors import InputError

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
    "concat",
    "read_split",
]

DEFAULT_SPLIT_SIZE = 16 * 1024 * 1024
_FORMATS = ("text", "jsonl", "csv")


@dataclass(frozen=True)
class Split:
    """One independent piece of input; ``index`` orders it, ``id`` names it stably.

    ``kind`` is ``"memory"``, ``"text"``, ``"gzip"``, ``"rows"`` or ``"npy"``. For byte
    ranges ``start``/``end`` are offsets; for rows, row numbers. ``payload`` holds the data
    of in-memory splits (nothing else carries data). Cost: a few words; picklable.

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

    def __init__(self, splits, description):
        if not splits:
            raise InputError(f"the source is empty: {description} gives no input")
        self._splits = list(splits)
        self.description = description

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


def files(paths, *, split_size=None, format="text", errors="strict", tag=None):
    """A source of text files: paths, globs or directories (walked, hidden files skipped).

    Each file is cut into byte ranges of ``split_size`` (default 16 MiB); a line belongs to
    the split in which it starts, so a line longer than the split size still lands in one
    split. ``errors`` is the UTF-8 decoding policy (``"strict"`` raises
    :class:`~mergeagg.errors.InputError` with the file and byte offset; ``"replace"`` and
    ``"ignore"`` are Python's). ``tag``, when given, makes every record a ``(tag, record)``
    pair (a join tells its two sides apart this way; see :func:`concat`). Cost: one
    ``stat`` per file; nothing is read until a split is.

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with open(os.path.join(d, "long.txt"), "w") as f:
    ...     _ = f.write("a line longer than a split\\nshort\\n")
    >>> src = files(os.path.join(d, "*.txt"), split_size=10)
    >>> [list(src.read(s)) for s in src.splits()]
    [['a line longer than a split'], [], ['short'], []]
    """
    if format not in _FORMATS:
        raise ValueError(f"format must be one of {_FORMATS}, got {format!r}")
    if errors not in ("strict", "replace", "ignore", "surrogateescape", "backslashreplace"):
        raise ValueError(f"unknown errors policy {errors!r}")
    size = DEFAULT_SPLIT_SIZE if split_size is None else parse_size(split_size)
    paths = _expand(paths)
    if not paths:
        raise InputError("no input files were given")
    splits = []
    for path in paths:
        path = os.path.abspath(path)
        n = os.path.getsize(path)
        if path.endswith(".gz"):
            splits.append(Split(len(splits), f"{path}:gzip", "gzip", path, 0, n,
                                format=format, errors=errors, tag=tag))
            continue
        if n == 0:
            splits.append(Split(len(splits), f"{path}:0-0", "text", path, 0, 0,
                                format=format, errors=errors, tag=tag))
            continue
        for start in range(0, n, size):
            end = min(start + size, n)
            splits.append(Split(len(splits), f"{path}:{start}-{end}", "text", path, start,
                                end, format=format, errors=errors, tag=tag))
    return Source(splits, f"{len(paths)} file(s)")


def stdin(*, format="text", errors="strict", stream=None):
    """Standard input (or ``stream``, binary or text) as one in-memory split.

    It is read now, since worker processes cannot see this process's standard input.
    Cost: reads and decodes the whole stream once; holds its records in memory.

    >>> import io
    >>> src = stdin(stream=io.BytesIO(b"a b\\r\\nc\\n"))
    >>> [list(src.read(s)) for s in src.splits()]
    [['a b', 'c']]
    """
    if format not in _FORMATS:
        raise ValueError(f"format must be one of {_FORMATS}, got {format!r}")
    stream = sys.stdin.buffer if stream is None else stream
    data = stream.read()
    if isinstance(data, str):  # a text stream (io.StringIO, sys.stdin): already decoded
        lines = _split_lines(data)
        data = data.encode("utf-8", "surrogateescape")
    else:
        lines = _decode_lines(data, "<stdin>", 0, errors)
    records = list(_parse_records(lines, format, "<stdin>", None))
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


def as_source(obj, *, split_size=None, format="text", errors="strict"):
    """Turn what a user passed to ``run`` into a :class:`Source`.

    A Source passes through; a str or path (or a list of them) means files (``"-"`` means
    standard input); an ndarray means row blocks; any other list or tuple means in-memory
    shards. Cost: that of the source built (one ``stat`` per file).

    >>> as_source([[1, 2], [3]])
    Source(2 in-memory shards, 2 splits)
    >>> as_source(np.zeros((3, 2)))
    Source(array of 3 rows, 1 splits)
    >>> as_source({1, 2})
    Traceback (most recent call last):
    ...
    TypeError: cannot read input from a set: pass file paths, a list of shards, ...
    """
    if isinstance(obj, Source):
        return obj
    if isinstance(obj, np.ndarray):
        return array_rows(obj)
    if isinstance(obj, (str, os.PathLike)):
        if os.fspath(obj) == "-":
            return stdin(format=format, errors=errors)
        return files(obj, split_size=split_size, format=format, errors=errors)
    if isinstance(obj, (list, tuple)) and obj and all(
        isinstance(p, (str, os.PathLike)) for p in obj
    ):
        names = [os.fspath(p) for p in obj]
        if "-" not in names:
            return files(obj, split_size=split_size, format=format, errors=errors)
        rest = [p for p in names if p != "-"]
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


# -- reading ---------------------------------------------------------------------------------


class TextShard:
    """The records of one text split. Iterate it for records, or call :meth:`text`.

    ``text()`` returns the split's whole lines as one string (a fast path for partials
    that tokenise, such as word count); ``bytes_read`` counts what was read from disk.
    Cost: the split's bytes, read and decoded once, on first use; the lines are kept.

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "t.txt")
    >>> with open(path, "wb") as f:
    ...     _ = f.write(b"one two\\r\\nthree\\n")
    >>> shard = read_split(files(path).splits()[0])
    >>> list(shard), shard.text().split(), shard.bytes_read
    (['one two', 'three'], ['one', 'two', 'three'], 15)
    """

    __slots__ = ("split", "_lines", "_text", "bytes_read")

    def __init__(self, split):
        self.split = split
        self._lines = None
        self._text = None
        self.bytes_read = 0

    def text(self):
        """All whole lines of the split, joined by ``\\n`` (CRs of CRLF kept)."""
        if self._text is None:
            data, offset = _read_range(self.split)
            self.bytes_read = len(data)
            self._text = _decode(data, self.split.path, offset, self.split.errors)
        return self._text

    def __iter__(self):
        if self._lines is None:
            text = self.text()
            lines = text.split("\n")
            if lines and lines[-1] == "":
                lines.pop()
            self._lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
            self._lines = list(_parse_records(self._lines, self.split.format,
                                              self.split.path, self.split))
        return iter(self._lines)


class RecordList(list):
    """A list of records that also says how many bytes were read from disk for it.

    Cost: a list's.

    >>> r = RecordList(["a"]); r.bytes_read = 2
    >>> r, r.bytes_read
    (['a'], 2)
    """

    bytes_read = 0


def _read_range(split):
    """Bytes of the whole lines that start in [start, end), and the offset of the first."""
    path, start, end = split.path, split.start, split.end
    if start >= end:
        return b"", start
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"input file disappeared: {path!r} (split {split.id})") from None
    with f:
        if start > 0:
            f.seek(start - 1)
            if f.read(1) != b"\n":
                f.readline()  # the partial line belongs to the previous split
        begin = f.tell()
        if begin >= end:
            return b"", begin
        data = f.read(end - begin)
        if not data.endswith(b"\n"):
            data += f.readline()  # finish the line that starts before `end`
    return data, begin


def _decode(data, path, offset, errors):
    try:
        return data.decode("utf-8", errors)
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path}: invalid UTF-8 at byte offset {offset + exc.start} "
            f"({exc.reason}); pass errors='replace' (or --errors replace) to substitute it"
        ) from None


def _decode_lines(data, path, offset, errors):
    return _split_lines(_decode(data, path, offset, errors))


def _split_lines(text):
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln[:-1] if ln.endswith("\r") else ln for ln in lines]


def _csv_header(path, errors):
    # Only the first line is needed; a header longer than one split is read whole.
    with open(path, "rb") as f:
        first = f.readline()
    (line,) = _decode_lines(first, path, 0, errors) or [""]
    return next(csv.reader([line]), [])


def _parse_records(lines, fmt, path, split):
    if fmt == "text":
        return lines
    if fmt == "jsonl":
        return _parse_jsonl(lines, path, split)
    return _parse_csv(lines, path, split)


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


def _parse_csv(lines, path, split):
    if split is None or split.start == 0 or split.kind == "gzip":
        rows = list(csv.reader(io.StringIO("\n".join(lines))))
        if not rows:
            return []
        header, rows = rows[0], rows[1:]
    else:
        header = _csv_header(path, split.errors)
        rows = list(csv.reader(io.StringIO("\n".join(lines))))
    out = []
    for i, row in enumerate(rows):
        if not row:
            continue
        if len(row) != len(header):
            where = f"split {split.id}" if split is not None else "the input"
            raise InputError(
                f"{path}: CSV row {i + 1} of {where} has {len(row)} fields, "
                f"the header has {len(header)}"
            )
        out.append(dict(zip(header, row)))
    return out


def read_split(split):
    """Records of ``split``; what a worker calls with a descriptor it was sent.

    With a ``tag`` on the split, each record comes as a ``(tag, record)`` pair. Cost: reading
    the split (nothing for in-memory splits; text splits are read on first use).

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
    if kind == "text":
        return TextShard(split)
    if kind == "gzip":
        try:
            with gzip.open(split.path, "rb") as f:
                data = f.read()
        except (OSError, EOFError) as exc:
            raise InputError(f"{split.path}: not a readable gzip file ({exc})") from None
        # Offsets in a decoding error count bytes of the decompressed text.
        lines = _decode_lines(data, f"{split.path} (decompressed)", 0, split.errors)
        records = RecordList(_parse_records(lines, split.format, split.path, split))
        records.bytes_read = split.end - split.start  # the compressed bytes read from disk
        return records
    if kind == "rows":
        return split.payload
    if kind == "npy":
        arr = np.load(split.path, mmap_mode="r")
        return np.asarray(arr[split.start:split.end])
    raise ValueError(f"unknown split kind {kind!r} in split {split.id}")
