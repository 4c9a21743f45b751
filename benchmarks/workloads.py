"""Shared, deterministic benchmark workloads (see shared/BENCHMARKS.md), cached on disk.

Every generator takes its size and a seed, and writes its output under a cache directory
(``$MERGEAGG_BENCH_CACHE`` or ``<tmp>/mergeagg-bench``) once: the same arguments give the
same bytes on every machine, so figures stay comparable from one change to the next.

* :func:`zipf_corpus` — ASCII text, a 50,000-word vocabulary of random lowercase words of
  2–10 letters, words drawn with Zipf exponent 1.0 (p(rank) ∝ 1/rank), lines of 5–15 words
  separated by single spaces. The reference size is 200 MB; CI runs ~2 MB.
* :func:`str_int_dict` — a dict of ``n`` distinct str keys to int values, like a word count.

>>> import tempfile
>>> d = tempfile.mkdtemp()
>>> path = zipf_corpus(20_000, cache_dir=d)
>>> path == zipf_corpus(20_000, cache_dir=d) and os.path.getsize(path) <= 20_000
True
>>> lines = open(path).read().splitlines()
>>> all(5 <= len(line.split(" ")) <= 15 for line in lines)
True
"""

from __future__ import annotations

import hashlib
import os
import tempfile

import numpy as np

__all__ = ["cache_dir", "parse_size", "vocabulary", "zipf_corpus", "str_int_dict",
           "REFERENCE_CORPUS_BYTES", "SMOKE_CORPUS_BYTES"]

REFERENCE_CORPUS_BYTES = 200_000_000
SMOKE_CORPUS_BYTES = 2_000_000
VOCABULARY_SIZE = 50_000
ZIPF_SEED = 20240229


def cache_dir(path=None):
    """The directory where workloads are cached (created if missing)."""
    path = path or os.environ.get("MERGEAGG_BENCH_CACHE") or os.path.join(
        tempfile.gettempdir(), "mergeagg-bench")
    os.makedirs(path, exist_ok=True)
    return path


def parse_size(text):
    """Bytes from ``"200M"``, ``"2M"``, ``"500K"`` or a plain number (powers of 1000).

    >>> parse_size("2M"), parse_size("500K"), parse_size(1234)
    (2000000, 500000, 1234)
    """
    if isinstance(text, int):
        return text
    t = str(text).strip().upper()
    mult = {"K": 10**3, "M": 10**6, "G": 10**9}.get(t[-1:], 1)
    number = t[:-1] if mult != 1 else t
    try:
        value = int(float(number) * mult)
    except ValueError:
        raise ValueError(f"not a size: {text!r} (use e.g. 2M or 200M)") from None
    if value <= 0:
        raise ValueError(f"a size must be positive, got {text!r}")
    return value


def vocabulary(size=VOCABULARY_SIZE, seed=ZIPF_SEED):
    """``size`` distinct random lowercase words of 2–10 letters, in rank order.

    Cost: O(size) with a few numpy calls.
    """
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    words, seen = [], set()
    while len(words) < size:
        n = size - len(words)
        lengths = rng.integers(2, 11, size=2 * n)
        codes = letters[rng.integers(0, 26, size=int(lengths.sum()))].tobytes().decode()
        pos = 0
        for length in lengths.tolist():
            w = codes[pos:pos + length]
            pos += length
            if w not in seen:
                seen.add(w)
                words.append(w)
                if len(words) == size:
                    break
    return words


def _atomic_write(path, chunks):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
    os.replace(tmp, path)


def zipf_corpus(size=REFERENCE_CORPUS_BYTES, *, seed=ZIPF_SEED, cache_dir=None):
    """Path of a Zipf text corpus of at most ``size`` bytes (whole lines), made once.

    Cost: the first call generates it (about 10 s per 100 MB); later calls are a ``stat``.
    """
    size = parse_size(size)
    directory = globals()["cache_dir"](cache_dir)
    path = os.path.join(directory, f"zipf-s1.0-v{VOCABULARY_SIZE}-{size}-{seed}.txt")
    if os.path.exists(path):
        return path
    words = np.array(vocabulary(seed=seed), dtype=object)
    ranks = np.arange(1, len(words) + 1, dtype=np.float64)
    cdf = np.cumsum(1.0 / ranks)
    cdf /= cdf[-1]
    rng = np.random.default_rng(seed + 1)

    def chunks():
        written = 0
        while True:
            n_lines = 20_000
            per_line = rng.integers(5, 16, size=n_lines)
            picks = np.minimum(np.searchsorted(cdf, rng.random(int(per_line.sum()))),
                               len(words) - 1)
            drawn = words[picks].tolist()
            lines, pos = [], 0
            for k in per_line.tolist():
                lines.append(" ".join(drawn[pos:pos + k]))
                pos += k
            data = ("\n".join(lines) + "\n").encode("ascii")
            if written + len(data) >= size:
                cut = data.rfind(b"\n", 0, size - written + 1)
                if cut >= 0:
                    yield data[:cut + 1]
                return
            written += len(data)
            yield data

    _atomic_write(path, chunks())
    return path


def str_int_dict(n, *, seed=7):
    """A dict of ``n`` distinct word-like str keys (ASCII) to ints in [1, 10**6).

    >>> d = str_int_dict(1000)
    >>> len(d), d == str_int_dict(1000)
    (1000, True)
    """
    rng = np.random.default_rng(seed)
    values = rng.integers(1, 10**6, size=n).tolist()
    digest = hashlib.sha256(str(seed).encode()).hexdigest()[:4]
    return {f"w{digest}{i:x}": v for i, v in enumerate(values)}
