"""Near-duplicate detection: groups of lines that are equal, or similar above a threshold.

Each non-blank line is a document. The pipeline, all of it a mergeable accumulator:

1. **exact duplicates** by a 64-bit content hash of the raw line: equal lines collapse to one
   distinct document that remembers every place it occurs;
2. **shingling** of each distinct document (default :class:`Shingles`: character 5-grams of
   the lowercased, whitespace-collapsed text; pass any picklable callable ``text -> iterable
   of str`` as ``shingles=`` to replace it);
3. **MinHash** signatures of the shingle sets (:func:`~mergeagg.algorithms.minhash.signatures`,
   vectorised over the shard) indexed in an :class:`~mergeagg.algorithms.minhash.LSHIndex`
   whose bands and rows suit the threshold; combine unions the indexes;
4. at ``finalize``, every LSH candidate pair is **verified**: it joins a group only if its
   estimated Jaccard similarity (from the kept signatures) is at least the threshold.
   Groups are the connected components of exact and verified near-duplicate links.

Documents are named ``path:line`` (1-based line numbers, computed at the end from each
split's line count); in-memory shards may hold ``(key, text)`` pairs to name documents,
and plain strings there are named ``shard-<digest>:<index>`` (so are the lines of ``.gz``
files, which are read whole without their path).

>>> agg = dedup(threshold=0.5)
>>> shard = [("a", "the quick brown fox jumps over the lazy dog"),
...          ("b", "the quick brown fox jumped over the lazy dog"),
...          ("c", "an entirely different sentence about cats"),
...          ("d", "the quick brown fox jumps over the lazy dog")]
>>> result = agg.reduce([shard[:2], shard[2:]])
>>> [g["members"] for g in result["groups"]]
[['a', 'b', 'd']]
"""

from __future__ import annotations

import functools
import re

import mmh3
import numpy as np

from mergeagg.aggregator import Aggregator
from mergeagg.algorithms._sketch import HASH_ID, check_int, check_params, check_seed, hash64
from mergeagg.algorithms.minhash import LSHIndex, signatures
from mergeagg.algorithms.registry import Entry, Flag

__all__ = ["dedup", "Shingles", "DedupState", "find_groups"]

_SPACE = re.compile(r"\s+")
_CONTENT_SEED = 0x5EED0D0C


class Shingles:
    """A document's shingles: ``k``-grams of characters (default) or of words.

    The text is lowercased and runs of whitespace become one space first (``normalize``).
    A text shorter than ``k`` units is one shingle. Cost: O(length of the text).

    >>> Shingles(3)("Ab  cd")
    ['ab ', 'b c', ' cd']
    >>> Shingles(2, words=True)("to be or not")
    ['to be', 'be or', 'or not']
    """

    def __init__(self, k=5, *, words=False, normalize=True):
        self.k = check_int("k", k, 1, 1 << 16)
        self.words = bool(words)
        self.normalize = bool(normalize)

    def __call__(self, text):
        if self.normalize:
            text = _SPACE.sub(" ", text.strip()).lower()
        k = self.k
        if self.words:
            units = text.split()
            if len(units) <= k:
                return [" ".join(units)]
            return list(dict.fromkeys(" ".join(units[i:i + k])
                                      for i in range(len(units) - k + 1)))
        if len(text) <= k:
            return [text]
        return list(dict.fromkeys(text[i:i + k] for i in range(len(text) - k + 1)))

    def __eq__(self, other):
        return isinstance(other, Shingles) and repr(self) == repr(other)

    def __hash__(self):
        return hash(repr(self))

    def __repr__(self):
        return f"Shingles(k={self.k}, words={self.words}, normalize={self.normalize})"


class DedupState:
    """The accumulator: distinct documents, where they occur, signatures and an LSH index.

    Memory: per distinct document one 64-bit key, its locations, a ``4 * num_perm``-byte
    signature and ``bands`` bucket entries. Merge: O(entries of the merged-in state).

    >>> s = DedupState(0.5, 64, 0, Shingles(3)).add_documents(["abcdef", "abcdef"],
    ...                                                      [("k", 0, -1), ("j", 0, -1)])
    >>> len(s.locations), sorted(next(iter(s.locations.values())))
    (1, [('j', 0, -1), ('k', 0, -1)])
    """

    def __init__(self, threshold, num_perm, seed, shingles, bands=None, rows=None):
        self.threshold = threshold
        self.num_perm = num_perm
        self.seed = seed
        self.shingles = shingles
        self.index = LSHIndex(threshold, num_perm, bands=bands, rows=rows, seed=seed)
        self.locations = {}  # content key -> set of (source, start, index) locations
        self.signatures = {}  # content key -> top 32 bits of each signature slot, as bytes
        self.line_counts = {}  # (path, split start) -> lines in that split

    def params(self):
        """The parameters that must match for a merge. Cost: O(1).

        >>> DedupState(0.5, 64, 0, Shingles(3)).params()["shingles"]
        'Shingles(k=3, words=False, normalize=True)'
        """
        return {"threshold": self.threshold, "num_perm": self.num_perm, "seed": self.seed,
                "shingles": repr(self.shingles), "bands": self.index.bands,
                "rows": self.index.rows, "hash": HASH_ID}

    def add_documents(self, texts, locations):
        """Add documents (str) found at ``locations``; returns ``self``.

        Cost: one content hash per document; for each new distinct one, its shingles,
        their MinHash (``num_perm`` multiply-adds each) and ``bands`` bucket inserts.
        """
        if not texts:
            return self
        keys = hash64(texts, _CONTENT_SEED).view(np.int64).tolist()
        fresh = {}
        for key, text, loc in zip(keys, texts, locations):
            places = self.locations.get(key)
            if places is None:
                self.locations[key] = {loc}
                fresh[key] = text
            else:
                places.add(loc)
        if fresh:
            new_keys = list(fresh)
            sig = signatures([self.shingles(t) for t in fresh.values()], self.num_perm,
                             self.seed)
            self.index.insert_signatures(new_keys, sig)
            top = (sig >> np.uint64(32)).astype("<u4")
            for key, row in zip(new_keys, top):
                self.signatures[key] = row.tobytes()
        return self

    def merge(self, other):
        """Merge ``other`` into this state (``other`` is not modified); returns ``self``.

        Cost: O(entries of ``other``). Different parameters raise
        :class:`~mergeagg.errors.IncompatibleMergeError`.

        >>> a = DedupState(0.5, 64, 0, Shingles(3)).add_documents(["xyz"], [("a", 0, -1)])
        >>> b = DedupState(0.5, 64, 0, Shingles(3)).add_documents(["xyz"], [("b", 0, -1)])
        >>> find_groups(a.merge(b))["groups"]
        [{'members': ['a', 'b'], 'exact': True}]
        """
        check_params(self, other)
        for key, places in other.locations.items():
            mine = self.locations.get(key)
            if mine is None:
                self.locations[key] = set(places)
            else:
                mine |= places
        self.signatures.update(other.signatures)
        self.index.merge(other.index)
        self.line_counts.update(other.line_counts)
        return self

    def similarity(self, a, b):
        """Estimated Jaccard similarity of two distinct documents, by content key.

        Cost: O(num_perm).
        """
        x = np.frombuffer(self.signatures[a], dtype="<u4")
        y = np.frombuffer(self.signatures[b], dtype="<u4")
        return float(np.count_nonzero(x == y)) / x.shape[0]

    def __mergeagg_fingerprint__(self):
        return ("DedupState", tuple(self.params().items()),
                {k: frozenset(v) for k, v in self.locations.items()}, self.signatures,
                self.index, {f"{p}\0{s}": n for (p, s), n in self.line_counts.items()})


def _location_names(state):
    """Map each location tuple to its display name (``path:line`` for files)."""
    starts_of = {}
    for (path, start), n in state.line_counts.items():
        starts_of.setdefault(path, []).append((start, n))
    first_line = {}
    for path, pieces in starts_of.items():
        line = 1
        for start, n in sorted(pieces):
            first_line[(path, start)] = line
            line += n

    def name(loc):
        """(sort key, display name): files by path then line number."""
        source, start, idx = loc
        if (source, start) in first_line:
            line = first_line[(source, start)] + idx
            return (source, line), f"{source}:{line}"
        if idx < 0:
            return (source, 0), source
        return (source, idx), f"{source}:{idx}"

    return name


def find_groups(state):
    """The duplicate groups of a :class:`DedupState` (what ``finalize`` returns).

    A dict with ``documents`` (non-blank lines seen), ``distinct`` (distinct contents),
    ``candidates`` (LSH candidate pairs checked), ``verified`` (pairs at or above the
    threshold) and ``groups``: for each group of two or more documents, its ``members``
    (sorted names) and ``exact`` (True when all members are the same text). Cost: the
    candidate pairs (each O(num_perm)) plus a union-find over the distinct documents.
    """
    parent = {k: k for k in state.locations}

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    pairs = state.index.candidate_pairs()
    verified = 0
    for a, b in pairs:
        if state.similarity(a, b) >= state.threshold:
            verified += 1
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    components = {}
    for key in state.locations:
        components.setdefault(find(key), []).append(key)
    name = _location_names(state)
    groups = []
    for keys in components.values():
        places = [loc for k in keys for loc in state.locations[k]]
        if len(places) < 2:
            continue
        groups.append({"members": [shown for _, shown in sorted(map(name, places))],
                       "exact": len(keys) == 1, "first": min(map(name, places))[0]})
    groups.sort(key=lambda g: (g["first"], g["members"]))
    for g in groups:
        del g["first"]
    return {"documents": sum(len(v) for v in state.locations.values()),
            "distinct": len(state.locations), "candidates": len(pairs),
            "verified": verified, "groups": groups}


def _dedup_partial(threshold, num_perm, seed, shingles, bands, rows, shard):
    state = DedupState(threshold, num_perm, seed, shingles, bands, rows)
    split = getattr(shard, "split", None)
    texts, locations = [], []
    if split is not None and split.path is not None:
        lines = list(shard)
        state.line_counts[(split.path, split.start)] = len(lines)
        for i, line in enumerate(lines):
            if not isinstance(line, str):
                raise TypeError(f"dedup reads lines of text; split {split.id} gave a "
                                f"{type(line).__name__} (read the input as text)")
            if line.strip():
                texts.append(line)
                locations.append((split.path, split.start, i))
    else:
        records = list(shard)
        digest = None
        for i, rec in enumerate(records):
            if isinstance(rec, tuple) and len(rec) == 2 and isinstance(rec[1], str):
                key, text = rec
                loc = (str(key), 0, -1)
            elif isinstance(rec, str):
                if digest is None:
                    digest = mmh3.hash_bytes("\n".join(
                        r for r in records if isinstance(r, str)).encode("utf-8",
                                                                          "surrogatepass"))
                text, loc = rec, (f"shard-{digest.hex()[:12]}", 0, i)
            else:
                raise TypeError(f"dedup records are lines (str) or (key, text) pairs; record "
                                f"{i} is a {type(rec).__name__}")
            if text.strip():
                texts.append(text)
                locations.append(loc)
    return state.add_documents(texts, locations)


def _merge_states(a, b):
    return a.merge(b)


def dedup(threshold=0.8, num_perm=128, shingle_size=5, words=False, seed=0, shingles=None,
          bands=None, rows=None):
    """An Aggregator finding exact and near-duplicate lines (see the module docstring).

    ``threshold``: the Jaccard similarity of shingle sets at which two lines count as near
    duplicates. ``shingles`` replaces the default ``Shingles(shingle_size, words=words)``.
    ``bands``/``rows`` override the LSH banding chosen for the threshold. Cost: about
    ``num_perm`` multiply-adds per shingle in the partials; the candidate pairs at the end.

    >>> dedup(threshold=0.9).reduce([["same line", "other", "same line"]])["groups"]
    [{'members': ['shard-...:0', 'shard-...:2'], 'exact': True}]
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a float, got {type(threshold).__name__}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be strictly between 0 and 1, got {threshold!r}")
    check_int("num_perm", num_perm, 1, 1 << 16)
    check_seed(seed)
    if shingles is None:
        shingles = Shingles(shingle_size, words=words)
    elif not callable(shingles):
        raise TypeError(f"shingles must be callable (text -> shingles), got "
                        f"{type(shingles).__name__}")
    probe = LSHIndex(float(threshold), num_perm, bands=bands, rows=rows, seed=seed)
    return Aggregator(
        functools.partial(_dedup_partial, float(threshold), num_perm, seed, shingles,
                          probe.bands, probe.rows),
        _merge_states, find_groups, name="dedup")


def _summarize(value, params):
    groups = value["groups"]
    exact = sum(g["exact"] for g in groups)
    lines = [f"{value['documents']:,} non-blank lines, {value['distinct']:,} distinct; "
             f"{len(groups):,} duplicate groups ({exact:,} exact, {len(groups) - exact:,} "
             f"near); {value['verified']:,} of {value['candidates']:,} LSH candidate pairs "
             "verified"]
    top = params.get("_top", 20)
    for g in groups[:top]:
        kind = "exact" if g["exact"] else "near "
        shown = ", ".join(g["members"][:6]) + (" ..." if len(g["members"]) > 6 else "")
        lines.append(f"{kind} {len(g['members']):>5}  {shown}")
    return lines


ENTRY = Entry(
    name="dedup",
    summary="group exact and near-duplicate lines (MinHash-LSH candidates, verified)",
    factory=dedup,
    flags=(
        Flag("--threshold", type=float, default=0.8,
             help="Jaccard similarity of shingle sets for near duplicates (default 0.8)"),
        Flag("--num-perm", type=int, default=128, help="MinHash permutations (default 128)"),
        Flag("--shingle-size", type=int, default=5, help="k of the k-gram shingles"),
        Flag("--words", action="store_true", default=False,
             help="shingle by word k-grams instead of character k-grams"),
        Flag("--seed", type=int, default=0, help="hash seed (0..2**32-1)"),
        Flag("--top", type=int, default=20, dest="_top", help="groups to print"),
    ),
    summarize=_summarize,
)
