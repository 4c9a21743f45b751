"""Inverted index: each word -> the sorted posting list of the documents that contain it.

Documents are either

* **records with ids**: mappings with an id and a text (``id_field``, ``text_field``; by
  default ``"id"`` and ``"text"``, as in JSON-lines or CSV files), or ``(id, text)`` pairs;
* **files**: on plain text files each file is one document whose id is its path (as the
  source names it: absolute). A file may be cut into several splits; its postings merge.

Three kinds of posting (``mode``):

* ``"postings"`` (default): ``word -> [doc, ...]``;
* ``"tf"``: ``word -> [(doc, term frequency), ...]``;
* ``"positions"``: ``word -> [(doc, [position, ...]), ...]``, a position being the token's
  ordinal in its document (0-based). On files, positions need each file whole in one split
  (``mergeagg run`` does that; a split file raises ``ValueError``).

Document ids sort in :func:`~mergeagg.algorithms._keyed.order_key` order, words likewise, so
the result (a dict) is the same whatever the sharding. A document id that occurs in several
records is one document: its frequencies add and its positions merge.

Tokenisation is a replaceable function ``tokenize(text) -> iterable of str``. The default,
:func:`tokenize`, lowercases and takes the runs of Unicode word characters (``\\w+``).
Pass a module-level function (worker processes must be able to import or unpickle it), or
its name ``"package.module:function"`` (on the command line: ``--tokenize``).

>>> docs = [[{"id": 2, "text": "the cat"}], [{"id": 1, "text": "The hat, the cat"}]]
>>> invertedindex().reduce(docs)
{'cat': [1, 2], 'hat': [1], 'the': [1, 2]}
>>> invertedindex(mode="positions").reduce(docs)["the"]
[(1, [0, 2]), (2, [0])]
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import unicodedata
from array import array
from collections import defaultdict, deque
from dataclasses import dataclass
from itertools import islice, repeat
from operator import eq, ge

import numpy as np

from mergeagg import inputs as _inputs
from mergeagg.algorithms._keyed import KeyedFold, order_key
from mergeagg.algorithms.registry import Entry, Flag
from mergeagg.keyed import KeyedJob

__all__ = [
    "invertedindex",
    "tokenize",
    "index_map",
    "MODES",
    "combine_postings",
    "copy_postings",
    "finalize_postings",
    "make_source",
    "load_tokenizer",
    "natural_key",
    "posting_ids",
]

MODES = ("postings", "tf", "positions")
_WORD = re.compile(r"\w+")
_DIGITS = re.compile(r"(\d+)")
_drain = deque(maxlen=0).extend  # runs an iterator to its end, in C
_BIG_ENDIAN = sys.byteorder == "big"


def tokenize(text):
    """The default tokeniser: lowercase, then runs of word characters. Cost: O(len(text)).

    >>> tokenize("It's a Dog-eat-dog world, 2024!")
    ['it', 's', 'a', 'dog', 'eat', 'dog', 'world', '2024']
    """
    return _WORD.findall(text.lower())


_default_tokenize = tokenize


# -- the per-key pieces (what a keyed job needs) ---------------------------------------------


_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_NUMPY_FROM = 64  # posting lists at least this long are sorted / checked in numpy


def _pack(ids):
    """Ints (each within int64) as little-endian int64 bytes."""
    arr = array("q", ids)
    if _BIG_ENDIAN:
        arr.byteswap()
    return arr.tobytes()


def posting_ids(acc):
    """The document ids of a ``"postings"`` accumulator, in order, as a list.

    The accumulator is a list of ids, or their little-endian int64 bytes (what the map
    makes when every id of its shard is an int in the int64 range). Cost: O(ids).

    >>> packed = (7).to_bytes(8, "little") + (2).to_bytes(8, "little")
    >>> posting_ids([3, "a"]), posting_ids(packed), index_map([(7, "x")])["x"] == packed[:8]
    ([3, 'a'], [7, 2], True)
    """
    if type(acc) is not bytes:
        return list(acc)
    arr = array("q")
    arr.frombytes(acc)
    if _BIG_ENDIAN:
        arr.byteswap()
    return arr.tolist()


def _concat(a, b):
    if type(a) is bytes:
        if type(b) is bytes:
            return a + b
        a = posting_ids(a)
    elif type(b) is bytes:
        b = posting_ids(b)
    a.extend(b)
    return a


def _copy_postings(acc):
    return acc if type(acc) is bytes else list(acc)


def _add_tf(a, b):
    for doc, n in b.items():
        a[doc] = a.get(doc, 0) + n
    return a


def _add_positions(a, b):
    for doc, ps in b.items():
        if doc in a:
            a[doc].extend(ps)
        else:
            a[doc] = list(ps)
    return a


def _copy_positions(acc):
    return {doc: list(ps) for doc, ps in acc.items()}


def _sorted_ids(ids):
    """Distinct ids in order_key order (the plain sort when all are ints or all strs).

    Posting lists mostly arrive sorted already, and Python's sort is linear on sorted runs,
    so sort first and remove repeats only if there are any.
    """
    kinds = set(map(type, ids))
    if len(kinds) == 1 and kinds <= {int, str}:
        out = sorted(ids)
    else:
        out = sorted(ids, key=order_key)
    if any(map(eq, out, islice(out, 1, None))):  # equal ids are adjacent once sorted
        out = [x for i, x in enumerate(out) if i == 0 or x != out[i - 1]]
    return out


def _final_postings(acc):
    if type(acc) is not bytes:
        return _sorted_ids(acc)
    if len(acc) == 8:  # one document: most words of a Zipf vocabulary
        return [int.from_bytes(acc, "little", signed=True)]
    if len(acc) < 8 * _NUMPY_FROM:
        ids = posting_ids(acc)
        return sorted(set(ids)) if any(map(ge, ids, islice(ids, 1, None))) else ids
    arr = np.frombuffer(acc, dtype="<i8")
    if not (arr[1:] > arr[:-1]).all():  # the usual case: ids arrive sorted and distinct
        arr = np.unique(arr)
    return arr.tolist()


def _final_tf(acc):
    return [(doc, acc[doc]) for doc in _sorted_ids(acc)]


def _final_positions(acc):
    return [(doc, sorted(acc[doc])) for doc in _sorted_ids(acc)]


_PIECES = {
    "postings": (_concat, _copy_postings, _final_postings),
    "tf": (_add_tf, dict, _final_tf),
    "positions": (_add_positions, _copy_positions, _final_positions),
}


def combine_postings(mode):
    """The per-key combine of ``mode``: merges the second accumulator into the first.

    Cost: O(size of the second accumulator).

    >>> combine_postings("tf")({"d1": 2}, {"d1": 1, "d2": 1})
    {'d1': 3, 'd2': 1}
    """
    return _PIECES[_check_mode(mode)][0]


def copy_postings(mode):
    """The per-key copy of ``mode`` (an accumulator taken from a combine's second operand).

    Cost: O(size of the accumulator).

    >>> copy_postings("positions")({"d": [1]})
    {'d': [1]}
    """
    return _PIECES[_check_mode(mode)][1]


def finalize_postings(mode):
    """The per-key finalize of ``mode``: the sorted posting list.

    Cost: O(n log n), linear when the ids already arrive sorted.

    >>> finalize_postings("postings")(["b", "a", "b"])
    ['a', 'b']
    """
    return _PIECES[_check_mode(mode)][2]


def _check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


# -- the map ---------------------------------------------------------------------------------


def _add_document(index, doc, tokens, mode):
    if mode == "postings":
        for word in dict.fromkeys(tokens):  # each word once, in a deterministic order
            got = index.get(word)
            if got is None:
                index[word] = [doc]
            else:
                got.append(doc)
    elif mode == "tf":
        for word in tokens:
            got = index.get(word)
            if got is None:
                index[word] = {doc: 1}
            else:
                got[doc] = got.get(doc, 0) + 1
    else:
        for pos, word in enumerate(tokens):
            got = index.get(word)
            if got is None:
                index[word] = {doc: [pos]}
            elif doc in got:
                got[doc].append(pos)
            else:
                got[doc] = [pos]


def _record_document(record, id_field, text_field):
    if isinstance(record, dict):
        try:
            return record[id_field], record[text_field]
        except KeyError as exc:
            raise ValueError(f"a document record lacks the field {exc.args[0]!r} "
                             f"(id_field={id_field!r}, text_field={text_field!r}); "
                             f"its fields are {sorted(record)}") from None
    if isinstance(record, (tuple, list)) and len(record) == 2:
        return record[0], record[1]
    raise _inputs.RecordShapeError(
        f"a document must be a mapping with {id_field!r} and {text_field!r} or "
        f"an (id, text) pair, got a {type(record).__name__}")


def index_map(shard, mode="postings", tokenize=tokenize, id_field="id", text_field="text"):
    """One shard's dict word -> per-key accumulator.

    The accumulator is, for ``"postings"``, the word's document ids in record order (an id
    may repeat if a document spans records; finalize removes repeats): their little-endian
    int64 bytes when every id of the shard is an int in the int64 range (the common case:
    bytes pickle, fingerprint and concatenate in C, where lists of ints cost per id), else
    a list (see :func:`posting_ids`). For ``"tf"`` and ``"positions"`` it is a dict
    doc -> term frequency or positions.

    A plain-text file split is one document (its path); any other shard is records.
    Cost: O(characters of the shard) plus one dict update per token.

    >>> index_map([("d", "a b a")], mode="tf")
    {'a': {'d': 2}, 'b': {'d': 1}}
    """
    index = {}
    split = getattr(shard, "split", None)
    if split is not None and split.format == "text":
        if mode == "positions" and split.start != 0:
            raise ValueError(
                f"positions need each file whole in one split, but split {split.id} starts "
                f"at byte {split.start}; use a split size above the largest file")
        if mode == "positions" and split.end < os.path.getsize(split.path):
            raise ValueError(
                f"positions need each file whole in one split, but split {split.id} ends "
                f"before the end of the file; use a split size above the largest file")
        _add_document(index, split.path, tokenize(shard.text()), mode)
        return index
    records = shard if isinstance(shard, (list, tuple)) else list(shard)
    if records and _is_file_line(records[0]):
        # Lines of a file read whole (gzip and other compressed files): one document each.
        for doc, text in _file_documents(records):
            _add_document(index, doc, tokenize(text), mode)
        return index
    if mode == "postings":
        return _postings_map(records, tokenize, id_field, text_field)
    for doc, tokens in _documents(records, tokenize, id_field, text_field):
        _add_document(index, doc, tokens, mode)
    return index


@dataclass(frozen=True)
class _WholeFile:
    """The tag :func:`make_source` puts on the lines of a file that is read whole (a
    compressed file): its lines are one document, whose id is ``path``."""

    path: str


def _is_file_line(record):
    return type(record) is tuple and len(record) == 2 and type(record[0]) is _WholeFile


def _file_documents(records):
    """``(path, text)`` of each file whose tagged lines are in ``records`` (in order).

    The lines of a file are joined by ``\\n``, so positions count from its first token.
    """
    path, lines = None, []
    for record in records:
        if not _is_file_line(record):
            raise TypeError(f"a shard mixes the lines of a whole file with other records "
                            f"(got a {type(record).__name__} after the lines of {path!r})")
        tag, line = record
        if tag.path != path:
            if lines:
                yield path, "\n".join(lines)
            path, lines = tag.path, []
        lines.append(line)
    if lines:
        yield path, "\n".join(lines)


def _documents(shard, tokenize, id_field, text_field):
    """``(doc id, tokens)`` of each record with a text, in order (checked as documented)."""
    for record in shard:
        doc, text = _record_document(record, id_field, text_field)
        if doc is None:
            raise ValueError(f"a document id is null (record {record!r:.80})")
        if not isinstance(text, str):
            if text is None:
                continue
            raise TypeError(f"a document text must be a str, got {type(text).__name__} "
                            f"for document {doc!r}")
        yield doc, tokenize(text)


def _postings_map(shard, tokenize, id_field, text_field):
    """The ``"postings"`` map: each document's distinct words get its id appended in C.

    ``dict.fromkeys`` keeps a document's distinct words in first-seen order; a
    ``defaultdict(list)`` looked up and appended to through ``map`` (no Python loop per
    word) builds exactly the dict of the word-at-a-time loop, same keys in the same order,
    same lists, in about half its time; with int ids each list is then packed as int64
    bytes. Cost: O(tokens).
    """
    lists = defaultdict(list)
    lookup, append = lists.__getitem__, list.append
    ints = True
    for doc, tokens in _documents(shard, tokenize, id_field, text_field):
        _drain(map(append, map(lookup, dict.fromkeys(tokens)), repeat(doc)))
        if ints and not (type(doc) is int and _INT64_MIN <= doc <= _INT64_MAX):
            ints = False
    if ints:
        return {word: _pack(ids) for word, ids in lists.items()}
    return dict(lists)


def load_tokenizer(spec):
    """The function named by ``"package.module:function"`` (the CLI's ``--tokenize``).

    Cost: one import. Raises ``ValueError`` for a malformed name or one that is not found.

    >>> load_tokenizer("mergeagg.algorithms.invertedindex:tokenize")("A b")
    ['a', 'b']
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"a tokenizer is named 'package.module:function', got {spec!r}")
    import importlib

    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load the tokenizer {spec!r}: {exc}") from None
    if not callable(fn):
        raise ValueError(f"the tokenizer {spec!r} is a {type(fn).__name__}, not a function")
    return fn


class _IndexMap:
    """The map with its parameters bound (picklable: no closures)."""

    __slots__ = ("mode", "tokenize", "id_field", "text_field")

    def __init__(self, mode, tokenize, id_field, text_field):
        self.mode, self.tokenize, self.id_field, self.text_field = (
            mode, tokenize, id_field, text_field)

    def __getstate__(self):
        return (self.mode, self.tokenize, self.id_field, self.text_field)

    def __setstate__(self, state):
        self.mode, self.tokenize, self.id_field, self.text_field = state

    def __call__(self, shard):
        return index_map(shard, self.mode, self.tokenize, self.id_field, self.text_field)


def invertedindex(mode="postings", tokenize=tokenize, id_field="id", text_field="text",
                  keyed=False):
    """An Aggregator building an inverted index (a dict word -> sorted posting list).

    ``keyed=True`` gives the same index as a :class:`~mergeagg.KeyedJob`: words shuffled
    into partitions and reduced per word (for indexes too large for one process, or output
    as part files; the result's words are then in partition order, not sorted).

    Cost: O(input characters) in the partials; a combine costs O(postings of the second
    operand); memory O(total postings). Finalize sorts every posting list.

    >>> invertedindex(mode="tf").reduce([[("a", "x x y")], [("b", "x")]])
    {'x': [('a', 2), ('b', 1)], 'y': [('a', 1)]}
    >>> dict(sorted(invertedindex(keyed=True).reduce([[("a", "x y")], [("b", "x")]]).items()))
    {'x': ['a', 'b'], 'y': ['a']}
    """
    _check_mode(mode)
    if tokenize is None:
        tokenize = _default_tokenize
    if isinstance(tokenize, str):
        tokenize = load_tokenizer(tokenize)
    if not callable(tokenize):
        raise TypeError(f"tokenize must be callable, got {type(tokenize).__name__}")
    for label, value in (("id_field", id_field), ("text_field", text_field)):
        if not isinstance(value, str):
            raise TypeError(f"{label} must be a str, got {type(value).__name__}")
    combine, copy, finalize = _PIECES[mode]
    mapper = _IndexMap(mode, tokenize, id_field, text_field)
    if keyed:
        return KeyedJob(mapper, combine, finalize, name="invertedindex")
    return KeyedFold(mapper, combine, copy=copy, finalize=finalize).aggregator("invertedindex")


_RECORD_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}
_COMPRESSED = (".gz", ".bz2", ".xz")


def _format_of(path):
    """The document format a file name says, under any compression suffix."""
    stem, ext = os.path.splitext(os.fspath(path))
    if ext.lower() in _COMPRESSED:
        ext = os.path.splitext(stem)[1]
    return _RECORD_FORMATS.get(ext.lower(), "text")


def make_source(inputs, split_size=None, params=None):
    """The source ``mergeagg run invertedindex`` reads: records or whole-file documents.

    Files ending in ``.jsonl``, ``.ndjson``, ``.json`` or ``.csv`` (also under ``.gz``,
    ``.bz2`` or ``.xz``) are document records, unless ``params["_format"]`` (the CLI's
    ``--format``) says otherwise; others are plain-text documents, one per file, kept whole
    in one split when ``mode="positions"``. A compressed text file is read whole: its lines
    come tagged with the file, so that the map sees one document. Cost: one ``stat`` per
    file.

    >>> import gzip, os, tempfile
    >>> d = tempfile.mkdtemp(); p = os.path.join(d, "a.txt")
    >>> with open(p, "w") as f:
    ...     _ = f.write("x y\\n" * 100)
    >>> len(make_source([p], 64, {})), len(make_source([p], 64, {"mode": "positions"}))
    (7, 1)
    >>> with gzip.open(p + ".gz", "wt") as f:
    ...     _ = f.write("to be\\nor not\\n")
    >>> src = make_source([p + ".gz"])
    >>> invertedindex().reduce(src.read(s) for s in src.splits())["or"] == [p + ".gz"]
    True
    >>> import shutil; shutil.rmtree(d)
    """
    params = params or {}
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    fmt = params.get("_format")
    if fmt is None:
        formats = {_format_of(p) for p in paths}
        if len(formats) > 1:
            raise ValueError(f"mix of document formats {sorted(formats)}: give one kind of "
                             f"file (or --format)")
        fmt = formats.pop()
    if fmt == "text" and params.get("mode") == "positions":
        split_size = 1 << 62  # one split per file
    src = _inputs.files(paths, split_size=split_size, format=fmt)
    if fmt != "text" or all(s.kind == "text" for s in src.splits()):
        return src
    # A split that is not a byte range of a plain file (a compressed file, read whole) comes
    # as a list of lines: tag them with the file, so the map sees one document.
    splits = [s if s.kind == "text" else dataclasses.replace(s, tag=_WholeFile(s.path))
              for s in src.splits()]
    return _inputs.Source(splits, src.description)


def _digit_run(run):
    digits = "".join(str(unicodedata.decimal(c)) for c in run).lstrip("0")
    return len(digits), digits


def natural_key(word):
    """A sort key that orders the digit runs of a str word as numbers: ``w2`` < ``w10``.

    Words that tie as numbers (``7`` and ``07``) are then ordered as strs, so the order is
    total and deterministic; a word that is not a str sorts after the strs, by
    :func:`~mergeagg.algorithms._keyed.order_key`. Cost: O(len(word)).

    >>> sorted(["10", "b", "2", "a10", "a9", "07", "7", "0"], key=natural_key)
    ['0', '2', '07', '7', '10', 'a9', 'a10', 'b']
    """
    if not isinstance(word, str):
        return (1, (), order_key(word))
    parts = _DIGITS.split(word)
    return (0, tuple(_digit_run(p) if i % 2 else p for i, p in enumerate(parts)), word)


def _summarize(value, params):
    if not isinstance(value, dict):  # part files of a keyed job
        value = value.to_dict()
    postings = sum(len(v) for v in value.values())
    lines = [f"{len(value)} words, {postings} postings"]
    top = params.get("_top", 10)
    biggest = sorted(value.items(), key=lambda kv: (-len(kv[1]), natural_key(kv[0])))[:top]
    for word, plist in biggest:
        lines.append(f"{len(plist):>10}  {word}")
    return lines


ENTRY = Entry(
    name="invertedindex",
    summary="word -> sorted posting list of documents (files, or jsonl/csv records)",
    factory=invertedindex,
    flags=(
        Flag("--mode", default="postings", choices=MODES,
             help="postings (default), tf (term frequencies) or positions"),
        Flag("--id-field", default="id", help="document id column / key (records)"),
        Flag("--text-field", default="text", help="document text column / key (records)"),
        Flag("--tokenize", default=None,
             help="tokenizer as package.module:function (default: lowercase \\w+ runs)"),
        Flag("--keyed", action="store_true", default=False,
             help="run as a keyed job: shuffle into --partitions R, reduce per word"),
        Flag("--top", type=int, default=10, help="how many of the commonest words to print",
             dest="_top"),
    ),
    make_source=make_source,
    summarize=_summarize,
)
