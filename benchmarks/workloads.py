"""Shared, deterministic benchmark workloads (see shared/BENCHMARKS.md), and where they live.

Every generator takes its size and a seed, and writes its output once under
:func:`cache_dir`: the same arguments give the same bytes on every machine, so figures stay
comparable from one change to the next.

Where the files go. A benchmark's ``main`` runs inside :func:`scratch`, a fresh temporary
directory (``mergeagg-bench-*``) that holds the run's workloads and outputs and is removed
when the run ends, however it ends. Nothing survives a run unless you ask for it: set
``MERGEAGG_BENCH_CACHE=DIR`` (for instance ``~/.cache/mergeagg-bench``) and the workloads
are kept in ``DIR`` and reused by the next run, whose full-size inputs then cost a ``stat``
instead of seconds to minutes of generation (outputs still go to the scratch directory).
Code that asks for :func:`cache_dir` outside any :func:`scratch` gets one for the whole
process, removed when the interpreter exits.

* :func:`zipf_corpus` — ASCII text, a 50,000-word vocabulary of random lowercase words of
  2–10 letters, words drawn with Zipf exponent 1.0 (p(rank) ∝ 1/rank), lines of 5–15 words
  separated by single spaces. The reference size is 200 MB; CI runs ~2 MB.
* :func:`str_int_dict` — a dict of ``n`` distinct str keys to int values, like a word count.
* :func:`loadavg` — the machine's load, to print beside every figure.

>>> with scratch() as d:
...     path = zipf_corpus(20_000)
...     again = zipf_corpus(20_000)
...     with open(path) as f:
...         lines = f.read().splitlines()
...     inside = os.path.dirname(path) == d
>>> path == again and inside and all(5 <= len(line.split(" ")) <= 15 for line in lines)
True
>>> os.path.exists(d)
False
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import tempfile

import numpy as np

__all__ = ["CACHE_ENV", "scratch", "cache_dir", "loadavg", "parse_size", "vocabulary",
           "zipf_corpus", "str_int_dict", "REFERENCE_CORPUS_BYTES", "SMOKE_CORPUS_BYTES"]

CACHE_ENV = "MERGEAGG_BENCH_CACHE"
REFERENCE_CORPUS_BYTES = 200_000_000
SMOKE_CORPUS_BYTES = 2_000_000
VOCABULARY_SIZE = 50_000
ZIPF_SEED = 20240229

_open_scratches = []     # the directories of the scratch() blocks now open, innermost last
_process_scratch = None  # (pid, TemporaryDirectory) made by cache_dir() outside any block


@contextlib.contextmanager
def scratch(prefix="mergeagg-bench-"):
    """A fresh temporary directory for one benchmark run, removed when the block ends.

    While the block is open, :func:`cache_dir` (without ``$MERGEAGG_BENCH_CACHE``) returns
    it, so the workloads generated during the run are removed with it.

    Cost: one ``mkdtemp``; on exit, removing what the run left in it.

    >>> with scratch() as d:
    ...     cache_dir() == d
    True
    >>> os.path.exists(d)
    False
    """
    with tempfile.TemporaryDirectory(prefix=prefix) as path:
        _open_scratches.append(path)
        try:
            yield path
        finally:
            _open_scratches.remove(path)


def cache_dir(path=None):
    """The directory where workloads are written and looked up (created if missing).

    ``path`` if given, else ``$MERGEAGG_BENCH_CACHE`` (kept between runs), else the
    innermost open :func:`scratch` directory, else a directory of this process's own that is
    removed when the interpreter exits.
    """
    global _process_scratch
    path = path or os.environ.get(CACHE_ENV) or (_open_scratches[-1] if _open_scratches
                                                  else None)
    if path is None:
        if _process_scratch is None or _process_scratch[0] != os.getpid():
            tmp = tempfile.TemporaryDirectory(prefix="mergeagg-bench-")
            _process_scratch = (os.getpid(), tmp)
            atexit.register(_remove_process_scratch, os.getpid(), tmp)
        path = _process_scratch[1].name
    os.makedirs(path, exist_ok=True)
    return path


_cache_dir = cache_dir  # zipf_corpus's keyword argument shadows the function's name


def _remove_process_scratch(pid, tmp):
    if os.getpid() == pid:  # not in a forked child that inherited the registration
        tmp.cleanup()


def loadavg():
    """The load averages over 1, 5 and 15 minutes, as ``"load 1.02 0.87 0.66"``.

    Read from ``/proc/loadavg`` where there is one, else from :func:`os.getloadavg`. A
    parallel figure means little without it: on 2 cores a load of 2 takes a core from the
    workers, not from the sequential baseline.

    >>> loadavg().startswith("load ")
    True
    """
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            fields = f.read().split()[:3]
    except OSError:
        fields = [f"{x:.2f}" for x in os.getloadavg()]
    return "load " + " ".join(fields)


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
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
        os.replace(tmp, path)
    except BaseException:  # an interrupted run leaves no half-written file behind
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def zipf_corpus(size=REFERENCE_CORPUS_BYTES, *, seed=ZIPF_SEED, cache_dir=None):
    """Path of a Zipf text corpus of at most ``size`` bytes (whole lines), made once.

    Cost: the first call generates it (about 10 s per 100 MB); later calls are a ``stat``.
    """
    size = parse_size(size)
    directory = _cache_dir(cache_dir)
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
