"""Joins through mergeagg against a sequential hash join in plain Python.

Workload: generated CSV tables (cached), fixed seeds. ``left.csv`` has ``--rows`` rows
``id,k,payload`` with ``k`` uniform in [0, rows); the reduce-side case joins it with a right
table of as many rows ``k,value`` (keys uniform in the same range, so about one match per
row); the broadcast case joins it with a small right table of ``--small-rows`` rows whose
keys are uniform in [0, 2 * small-rows). Both sides do the whole job: read the CSV files,
join on ``k`` (inner), and write every joined row to a CSV file. The baseline builds a
dict of the right table's rows by key and streams the left table past it, writing one CSV
file. mergeagg's reduce-side join runs ``join("k", keyed=True)`` (``--reduce-mode keyed``,
the default): both tables shuffled by key into ``--partitions`` partitions, each reducer
joining its keys and committing a part file into an ``output=`` directory, so no row passes
through this process; ``--reduce-mode fold`` runs the fold join and writes the CSV here.
The broadcast join runs the fold over ``join_source(..., strategy="broadcast")`` and writes
the CSV here. Both outputs must hold the same rows (checked outside the timings by count
and an order-free digest).

Targets (issue 18), 2 workers: reduce-side join of 2 million x 2 million rows >= 1.3x the
hash join; broadcast join of 2 million x 10 thousand rows >= 1.8x. The printed figure is
``hash-join time / mergeagg time`` (medians), with ``/proc/loadavg`` beside it (the machine
is shared: a figure means little at a load above the number of cores). Every file the
benchmark writes goes to one temporary directory, removed at the end.

    python benchmarks/bench_join.py                      # 2M x 2M and 2M x 10k
    python benchmarks/bench_join.py --workers 0          # serial, in process
    python benchmarks/bench_join.py --smoke              # what CI runs: tiny tables
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from workloads import cache_dir  # noqa: E402

import mergeagg  # noqa: E402
from mergeagg.algorithms.join import join, join_rows, join_source, merge_pair  # noqa: E402

SEED = 20240303
OUT_COLUMNS = ["id", "k_left", "payload", "k_right", "value"]


def _write_table(path, columns, rows):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", newline="", encoding="ascii") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(rows)
    os.replace(tmp, path)


def tables(rows, small_rows, directory=None):
    """Paths of (left, big right, small right) CSV tables, generated once."""
    d = cache_dir(directory)
    left = os.path.join(d, f"join-left-{rows}-{SEED}.csv")
    right = os.path.join(d, f"join-right-{rows}-{SEED}.csv")
    small = os.path.join(d, f"join-small-{small_rows}-{SEED}.csv")
    rng = np.random.default_rng(SEED)
    if not os.path.exists(left):
        keys = rng.integers(0, rows, size=rows).tolist()
        pay = rng.integers(0, 10**9, size=rows).tolist()
        _write_table(left, ["id", "k", "payload"],
                     ((i, k, f"p{p:x}") for i, (k, p) in enumerate(zip(keys, pay))))
    if not os.path.exists(right):
        keys = np.random.default_rng(SEED + 1).integers(0, rows, size=rows).tolist()
        _write_table(right, ["k", "value"], ((k, f"v{i}") for i, k in enumerate(keys)))
    if not os.path.exists(small):
        keys = np.random.default_rng(SEED + 2).integers(0, 2 * small_rows, size=small_rows)
        _write_table(small, ["k", "value"], ((k, f"s{i}") for i, k in enumerate(keys.tolist())))
    return left, right, small


def hash_join(left_path, right_path):
    """The baseline: a dict of right rows by key, the left table streamed past it."""
    table = {}
    with open(right_path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            table.setdefault(row["k"], []).append(row)
    out = []
    with open(left_path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            k = row["k"]
            if k != "":
                for match in table.get(k, ()):
                    out.append((row, match))
    return out


def _digest(pairs):
    """(count, order-free digest) of joined pairs, as flat rows."""
    digest = 0
    for lrow, rrow in pairs:
        flat = merge_pair(lrow, rrow)
        line = [flat[c] for c in OUT_COLUMNS]
        h = hashlib.blake2b("\x1f".join(line).encode(), digest_size=8).digest()
        digest = (digest + int.from_bytes(h, "little")) % (1 << 64)
    return len(pairs), digest


def write_rows(pairs, path):
    """Write joined pairs as flat CSV rows."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(OUT_COLUMNS)
        for lrow, rrow in pairs:
            flat = merge_pair(lrow, rrow)
            w.writerow([flat[c] for c in OUT_COLUMNS])


def measure(label, left, right, strategy, workers, split_size, repeat, out_dir, keyed,
            partitions):
    base_times, our_times = [], []
    agg = join("k", how="inner", empty_is_null=True, keyed=keyed)
    for rep in range(repeat):
        start = time.perf_counter()
        pairs = hash_join(left, right)
        write_rows(pairs, os.path.join(out_dir, "hash.csv"))
        base_times.append(time.perf_counter() - start)
        expected = _digest(pairs)
        del pairs

        start = time.perf_counter()
        src = join_source(left, right, strategy=strategy, split_size=split_size)
        if keyed:
            result = mergeagg.run(agg, src, workers=workers, partitions=partitions,
                                  output=os.path.join(out_dir, f"{label}-{rep}"),
                                  output_format="framed")
        else:
            result = mergeagg.run(agg, src, workers=workers)
            write_rows(result.value, os.path.join(out_dir, f"{label}-{rep}.csv"))
        our_times.append(time.perf_counter() - start)
        got = _digest(join_rows(result.value) if keyed else result.value)
        for name in os.listdir(out_dir):
            path = os.path.join(out_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
        if got != expected:
            print(f"ERROR: {label}: mergeagg wrote {got[0]} rows, the hash join {expected[0]} "
                  "(or their digests differ)", file=sys.stderr)
            return None
    base, mine = statistics.median(base_times), statistics.median(our_times)
    print(f"  {'hash join':<22} median {base:8.3f}s  min {min(base_times):8.3f}s  "
          f"(each: {', '.join(f'{t:.2f}' for t in base_times)})")
    name = f"mergeagg {src.strategy}{' keyed' if keyed else ''}"
    print(f"  {name:<22} median {mine:8.3f}s  min {min(our_times):8.3f}s"
          f"  ({len(result.report.attempts)} map tasks, mode {result.report.mode}, "
          f"{expected[0]} rows out; each: {', '.join(f'{t:.2f}' for t in our_times)})")
    return base / mine


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows per big table")
    parser.add_argument("--small-rows", type=int, default=10_000, help="rows of the small one")
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes (default 2; 0 = serial in process)")
    parser.add_argument("--split-size", default="16M", help="bytes per split (default 16M)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each (default 3)")
    parser.add_argument("--reduce-mode", choices=("keyed", "fold"), default="keyed",
                        help="the reduce-side join as a keyed job with part files "
                             "(default) or as the fold")
    parser.add_argument("--partitions", type=int, default=8, help="reduce partitions (8)")
    parser.add_argument("--only", choices=("reduce", "broadcast"), default=None,
                        help="run one of the two cases")
    parser.add_argument("--smoke", action="store_true", help="tiny tables, for CI")
    args = parser.parse_args(argv)
    rows, small_rows = (5_000, 500) if args.smoke else (args.rows, args.small_rows)
    repeat = 2 if args.smoke else args.repeat
    split_size = "64K" if args.smoke else args.split_size
    if args.smoke:
        args.partitions = 2

    left, right, small = tables(rows, small_rows)
    out_dir = tempfile.mkdtemp(prefix="mergeagg-bench-join-")
    try:
        return _run(args, left, right, small, rows, small_rows, repeat, split_size, out_dir)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def loadavg():
    """The first three fields of /proc/loadavg (or ``n/a`` where there is none)."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def _run(args, left, right, small, rows, small_rows, repeat, split_size, out_dir):
    print(f"join: {rows} x {rows} rows (reduce-side) and {rows} x {small_rows} rows "
          f"(broadcast), inner on k, workers={args.workers}, split size {split_size}, "
          f"{repeat} repetitions")
    status = 0
    cases = [("reduce", right, "1.3x"), ("broadcast", small, "1.8x")]
    for strategy, other, target in cases:
        if args.only and args.only != strategy:
            continue
        print(f"{strategy}:")
        keyed = strategy == "reduce" and args.reduce_mode == "keyed"
        ratio = measure(strategy, left, other, strategy, args.workers, split_size, repeat,
                        out_dir, keyed, args.partitions)
        if ratio is None:
            status = 1
            continue
        print(f"  ratio (hash-join time / mergeagg time, medians): {ratio:.2f}x "
              f"(target >= {target} with 2 workers; loadavg {loadavg()})")
    return status


if __name__ == "__main__":
    sys.exit(main())
