"""Inverted index through mergeagg against a sequential dictionary-of-lists loop.

Workload: documents cut from the shared Zipf corpus (shared/BENCHMARKS.md), ``--lines``
lines each, as JSON lines ``{"id": n, "text": ...}`` (cached; ~200 MB at the reference
size). Both sides do the whole job: read the file, tokenise with the same function
(:func:`mergeagg.algorithms.invertedindex.tokenize`), build word -> sorted document ids, and
write the index out. The baseline is one plain loop appending ids to a dict of lists, then
writing ``word<TAB>id id id...`` lines. mergeagg (``--mode keyed``, the default) runs
``invertedindex(keyed=True)`` over line-aligned splits with ``--workers`` processes: words
are shuffled into ``--partitions`` reduce partitions and each reducer commits its part file
into an ``output=`` directory, so no posting passes through this process; ``--mode fold``
runs the fold instead (every partial merged by the combine tree, the index written here).
Both indexes must be equal (checked outside the timings).

Target (issue 18): with 2 workers, at least 1.6x the sequential loop at 200 MB. Each
repetition runs the loop, then mergeagg, and prints the pair with the 1-minute load average
beside it (a parallel ratio falls as other work takes a core); the summary is
``loop time / mergeagg time`` of the medians. Outputs go to a temporary directory removed
at the end (the workload itself is cached, see ``workloads.cache_dir``).

    python benchmarks/bench_invertedindex.py --size 200M      # the reference figure
    python benchmarks/bench_invertedindex.py --smoke          # what CI runs: ~1 MB
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from workloads import cache_dir, parse_size, zipf_corpus  # noqa: E402

import mergeagg  # noqa: E402
from mergeagg.algorithms.invertedindex import invertedindex, tokenize  # noqa: E402


def documents(size, lines_per_doc=10, directory=None):
    """Path of a JSON-lines file of documents cut from a Zipf corpus of ``size`` bytes."""
    corpus = zipf_corpus(size, cache_dir=directory)
    path = os.path.join(cache_dir(directory),
                        f"docs-{os.path.basename(corpus)}-{lines_per_doc}.jsonl")
    if os.path.exists(path):
        return path
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(corpus, encoding="ascii") as src, open(tmp, "w", encoding="ascii") as out:
        doc_id, buf = 0, []
        for line in src:
            buf.append(line.rstrip("\n"))
            if len(buf) == lines_per_doc:
                out.write(json.dumps({"id": doc_id, "text": "\n".join(buf)}) + "\n")
                doc_id, buf = doc_id + 1, []
        if buf:
            out.write(json.dumps({"id": doc_id, "text": "\n".join(buf)}) + "\n")
    os.replace(tmp, path)
    return path


def sequential_index(path):
    """The baseline: one loop, a dict of lists (ids arrive in increasing order)."""
    index = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            doc = rec["id"]
            for word in set(tokenize(rec["text"])):
                postings = index.get(word)
                if postings is None:
                    index[word] = [doc]
                else:
                    postings.append(doc)
    for postings in index.values():
        postings.sort()
    return index


def write_index(index, path):
    with open(path, "w", encoding="utf-8") as f:
        for word in sorted(index):
            f.write(f"{word}\t{' '.join(map(str, index[word]))}\n")


def cpu_seconds():
    """CPU seconds of this process and of its reaped children (the workers of a finished
    run): on a shared machine, the work done, whatever the load did to the wall time."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def load():
    """The 1-minute load average, for printing beside a figure."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="200M", help="corpus size, e.g. 2M or 200M")
    parser.add_argument("--lines", type=int, default=10, help="lines per document (10)")
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes (default 2; 0 = serial in process)")
    parser.add_argument("--split-size", default="16M", help="bytes per split (default 16M)")
    parser.add_argument("--mode", choices=("keyed", "fold"), default="keyed",
                        help="keyed job with part files (default) or the fold")
    parser.add_argument("--partitions", type=int, default=8, help="reduce partitions (8)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each (default 3)")
    parser.add_argument("--smoke", action="store_true", help="~1 MB, 2 repetitions, for CI")
    args = parser.parse_args(argv)
    size = 1_000_000 if args.smoke else parse_size(args.size)
    repeat = 2 if args.smoke else args.repeat
    split_size = "128K" if args.smoke else args.split_size

    path = documents(size, args.lines)
    mb = os.path.getsize(path) / 1e6
    keyed = args.mode == "keyed"
    agg = invertedindex(keyed=keyed)
    print(f"inverted index: {mb:.1f} MB of JSON-lines documents ({path}), "
          f"workers={args.workers}, split size {split_size}, mode {args.mode}"
          f"{f', R={args.partitions}' if keyed else ''}, {repeat} repetitions; "
          f"load {load():.2f} at start")
    with tempfile.TemporaryDirectory(prefix="mergeagg-bench-index-") as out_dir:
        status, pairs, result = _measure(args, path, agg, keyed, split_size, repeat, out_dir)
    if status:
        return status
    base_times = [b for b, _m, _l in pairs]
    our_times = [m for _b, m, _l in pairs]
    base, mine = statistics.median(base_times), statistics.median(our_times)
    print(f"{'dict-of-lists loop':<24} median {base:8.3f}s  min {min(base_times):8.3f}s"
          f"  {mb / base:7.1f} MB/s")
    print(f"{'mergeagg invertedindex':<24} median {mine:8.3f}s  min {min(our_times):8.3f}s"
          f"  {mb / mine:7.1f} MB/s")
    print(f"ratio (loop time / mergeagg time, medians): {base / mine:.2f}x "
          f"(target >= 1.6x with 2 workers at 200 MB); pairs "
          + ", ".join(f"{b / m:.2f}x [load {ld:.2f}]" for b, m, ld in pairs)
          + f"; {len(result.report.attempts)} map tasks, mode {result.report.mode}")
    return 0


def _measure(args, path, agg, keyed, split_size, repeat, out_dir):
    """Alternate the loop and mergeagg ``repeat`` times; ``(status, pairs, last result)``
    with ``pairs`` of ``(loop seconds, mergeagg seconds, load after the pair)``."""
    pairs = []
    result = None
    for rep in range(repeat):
        start, cpu = time.perf_counter(), cpu_seconds()
        expected = sequential_index(path)
        write_index(expected, os.path.join(out_dir, "index-loop.txt"))
        base = time.perf_counter() - start
        cpu_base = cpu_seconds() - cpu
        load_base = load()

        start, cpu = time.perf_counter(), cpu_seconds()
        if keyed:
            result = mergeagg.run(agg, path, workers=args.workers, split_size=split_size,
                                  format="jsonl", partitions=args.partitions,
                                  output=os.path.join(out_dir, f"index-{rep}"),
                                  output_format="framed")
        else:
            result = mergeagg.run(agg, path, workers=args.workers, split_size=split_size,
                                  format="jsonl")
            write_index(result.value, os.path.join(out_dir, "index-mergeagg.txt"))
        mine = time.perf_counter() - start
        cpu_mine = cpu_seconds() - cpu
        got = result.value if isinstance(result.value, dict) else result.value.to_dict()
        if got != expected:
            print("ERROR: mergeagg and the loop disagree", file=sys.stderr)
            return 1, pairs, result
        del expected, got
        ld = load()
        print(f"  repetition {rep + 1}: loop {base:7.3f}s [load {load_base:.2f}]  mergeagg "
              f"{mine:7.3f}s [load {ld:.2f}]  ratio {base / mine:.2f}x; CPU seconds loop "
              f"{cpu_base:.2f}, mergeagg {cpu_mine:.2f} (all processes)", flush=True)
        pairs.append((base, mine, ld))
    return 0, pairs, result


if __name__ == "__main__":
    sys.exit(main())
