"""Word count on the Zipf corpus: mergeagg against the sequential ``Counter`` loop.

Baseline, measured in the same run: ``Counter.update(line.split())`` over the file's lines
in one process (shared/BENCHMARKS.md: 4.7 s for 200 MB here, about 43 MB/s). Contender:
``mergeagg.run(wordcount(), path, workers=N)``. Both answers must have the same fingerprint.
The figure is the ratio baseline time / mergeagg time (above 1: mergeagg is faster); 2
workers on 2 cores can reach about 2x for a CPU-bound job, less the cost of starting the
workers and merging the partial counts.

    python benchmarks/bench_wordcount.py --size 200M     # the reference figure (5 repeats)
    python benchmarks/bench_wordcount.py --smoke         # what CI runs: ~2 MB

The corpus lives in a temporary directory removed at the end; ``MERGEAGG_BENCH_CACHE=DIR``
keeps it in ``DIR`` for the next run (benchmarks/workloads.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from workloads import SMOKE_CORPUS_BYTES, parse_size, scratch, zipf_corpus  # noqa: E402

import mergeagg  # noqa: E402


def sequential_counter(path):
    counts = Counter()
    with open(path, encoding="utf-8") as f:
        for line in f:
            counts.update(line.split())
    return counts


def partial_cache_effect(path, split_size, repeat):
    """The word count partial over the first split, chunked (as shipped) against one
    ``Counter(text.split())`` of the whole split; CPU seconds, medians."""
    from mergeagg.algorithms.wordcount import count_words
    from mergeagg.inputs import files, read_split

    text = read_split(files(path, split_size=split_size).splits()[0]).text()
    shard = type("Shard", (), {"text": lambda self: text})()
    whole, chunked = [], []
    for _ in range(repeat):
        start = time.process_time()
        a = Counter(text.split())
        whole.append(time.process_time() - start)
        start = time.process_time()
        b = count_words(shard)
        chunked.append(time.process_time() - start)
        assert a == b
    w, c = statistics.median(whole), statistics.median(chunked)
    print(f"partial over one {len(text) / 1e6:.1f} MB split: whole-text split {w:.3f}s, "
          f"~4 KiB line-aligned chunks {c:.3f}s ({w / c:.2f}x)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="200M", help="corpus size, e.g. 2M or 200M")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--split-size", default="16M", help="bytes per split (default 16M)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each (default 5)")
    parser.add_argument("--smoke", action="store_true", help="~2 MB, 2 repetitions, for CI")
    args = parser.parse_args(argv)
    size = SMOKE_CORPUS_BYTES if args.smoke else parse_size(args.size)
    repeat = 2 if args.smoke else args.repeat
    split_size = "256K" if args.smoke else args.split_size
    with scratch():
        return measure(zipf_corpus(size), args.workers, split_size, repeat)


def measure(path, workers, split_size, repeat):
    mb = os.path.getsize(path) / 1e6
    agg = mergeagg.algorithms.wordcount()
    print(f"word count: {mb:.1f} MB Zipf corpus ({path}), workers={workers}, "
          f"split size {split_size}, {repeat} repetitions")

    base_times, ours_times, prints = [], [], set()
    for _ in range(repeat):
        start = time.perf_counter()
        expected = sequential_counter(path)
        base_times.append(time.perf_counter() - start)
        prints.add(mergeagg.fingerprint(expected))

        start = time.perf_counter()
        result = mergeagg.run(agg, path, workers=workers, split_size=split_size)
        ours_times.append(time.perf_counter() - start)
        prints.add(result.fingerprint)
    if len(prints) != 1:
        print("ERROR: mergeagg and the Counter loop disagree", file=sys.stderr)
        return 1

    partial_cache_effect(path, split_size, repeat)
    base, ours = statistics.median(base_times), statistics.median(ours_times)
    print(f"{'sequential Counter loop':<28} median {base:8.3f}s  min {min(base_times):8.3f}s"
          f"  {mb / base:7.1f} MB/s")
    print(f"{'mergeagg.run':<28} median {ours:8.3f}s  min {min(ours_times):8.3f}s"
          f"  {mb / ours:7.1f} MB/s")
    print(f"ratio (Counter loop / mergeagg, medians): {base / ours:.2f}x; load average "
          f"{os.getloadavg()[0]:.2f}; "
          f"{len(result.report.attempts)} map tasks, mode {result.report.mode}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
