"""Word count: how often each whitespace-separated word occurs. The catalog's first entry.

The accumulator is a :class:`collections.Counter`; ``combine`` adds the second into the
first. On text files the partial tokenises the split's whole text in one call
(``str.split``), which is what makes it fast.

>>> agg = wordcount()
>>> sorted(agg.reduce([["the cat", "the hat"], ["THE end"]]).items())
[('THE', 1), ('cat', 1), ('end', 1), ('hat', 1), ('the', 2)]
>>> wordcount(lowercase=True).reduce([["The the"]])
Counter({'the': 2})
"""

from __future__ import annotations

from collections import Counter

from mergeagg.aggregator import Aggregator
from mergeagg.algorithms.registry import Entry, Flag
from mergeagg.inputs import line_pieces
from mergeagg.keyed import KeyedJob

__all__ = ["wordcount", "count_words", "add_counts"]


def count_words(shard, lowercase=False):
    """Counter of the words in a shard of lines. A file split's text is counted a few
    kilobytes of whole lines at a time (:func:`_count_pieces`), through its ``pieces()``,
    which also lets its attempt report how far it is. Cost: O(characters in the shard)."""
    pieces_of = getattr(shard, "pieces", None)
    if pieces_of is not None:
        return _count_pieces(pieces_of(_CHUNK), lowercase)
    text_of = getattr(shard, "text", None)
    if text_of is not None:
        return _count_pieces(line_pieces(text_of(), _CHUNK), lowercase)
    counts = Counter()
    for line in shard:
        counts.update((line.lower() if lowercase else line).split())
    return counts


_CHUNK = 4096


def _count_pieces(pieces, lowercase=False):
    """Counter of the words of a text given as pieces of whole lines
    (:func:`mergeagg.inputs.line_pieces`).

    One ``text.split()`` of a 16 MB split makes millions of strings before the first is
    counted, and counting them then misses the CPU cache on every one; cut at line ends
    every ~4 KiB, each piece's words are counted while they are still in cache (1.45x
    faster on a quiet machine, 1.05-1.1x when other processes share the cache; see
    ``benchmarks/bench_wordcount.py``). Words never span a line end, so the count is the
    same; nor does lowercasing depend on anything past one (a final sigma is final at a
    line end). Cost: O(characters).

    >>> text = "a b" + chr(10) + "B "
    >>> _count_pieces(line_pieces(text * 3000), True) == Counter(text.lower().split() * 3000)
    True
    """
    counts = Counter()
    update = counts.update
    for piece in pieces:
        update((piece.lower() if lowercase else piece).split())
    return counts


def _count_lower(shard):
    return count_words(shard, lowercase=True)


def add_counts(a, b):
    """Add Counter ``b`` into ``a`` and return ``a`` (``b`` is not modified).

    Cost: O(len(b)).

    >>> add_counts(Counter(x=1), Counter(x=2, y=1))
    Counter({'x': 3, 'y': 1})
    """
    a.update(b)
    return a


def _add(a, b):
    return a + b


def wordcount(lowercase=False, keyed=False):
    """An Aggregator counting words; ``lowercase=True`` folds case first.

    ``keyed=True`` gives the same count as a :class:`~mergeagg.KeyedJob` (word -> count,
    shuffled into partitions and reduced per key: the MapReduce shape, for vocabularies
    too large for one process, or output as part files).

    Cost: O(input characters) for the partials, O(vocabulary) per combine.

    >>> job = wordcount(keyed=True)
    >>> dict(sorted(job.reduce([["b a"], ["a"]]).items()))
    {'a': 2, 'b': 1}
    """
    counter = _count_lower if lowercase else count_words
    if keyed:
        return KeyedJob(counter, _add, name="wordcount")
    return Aggregator(counter, add_counts, name="wordcount")


def _summarize(value, params):
    top = params.get("_top", 10)
    items = value.items()
    if not isinstance(value, dict):  # part files of a keyed job: one pass over them
        value = value.to_dict()
        items = value.items()
    lines = [f"{sum(value.values())} words, {len(value)} distinct"]
    for word, n in sorted(items, key=lambda kv: (-kv[1], kv[0]))[:top]:
        lines.append(f"{n:>10}  {word}")
    return lines


ENTRY = Entry(
    name="wordcount",
    summary="count each whitespace-separated word in text files",
    factory=wordcount,
    flags=(
        Flag("--lowercase", action="store_true", default=False, help="fold case first"),
        Flag("--keyed", action="store_true", default=False,
             help="run as a keyed job: shuffle into --partitions R, reduce per word"),
        Flag("--top", type=int, default=10, help="how many of the most frequent words to print",
             dest="_top"),
    ),
    summarize=_summarize,
)
