"""Ring versus tree all-reduce of float64 vectors over worker processes, against memcpy.

Workload: each of ``p`` processes holds a float64 vector of ``n`` elements (uniform [0, 1),
seed ``SEED + rank``, generated inside the process so nothing big crosses the master); the
collective leaves every process holding the element-wise sum. Sizes 10^3 .. 10^8 elements
(10^8 x 8 B = 800 MB per process), p = 2 and 4 (p = 4 oversubscribes a 2-core machine).

The ring runs twice, over its two transports: ``shm`` (a shared-memory mailbox per ring
edge, a 16-byte token and ack through pipes) and ``pipe`` (the chunks themselves through
pipes); the tree sends pickled vectors (out-of-band buffers) through pipes.

Printed for each (n, p, algorithm): the collective's seconds (median over repetitions of the
slowest process; process start and the partials are not timed), the bytes sent by the
busiest process and the textbook figure (ring: 2 (p-1)/p N; tree: the root sends N to each
child, (p-1) N for p <= fan_in), the algorithm bandwidth ``N / seconds`` and its ratio to
the memory-copy rate of numpy's copy of the same array (``np.copyto``, N bytes read and N
written) measured in this run. A ratio of 1.0 means the all-reduce delivered the combined
vector as fast as one process copies it.

    python benchmarks/bench_allreduce.py                      # 10^3 .. 10^8, p = 2, 4
    python benchmarks/bench_allreduce.py --max-size 10000000  # stop at 10^7
    python benchmarks/bench_allreduce.py --smoke              # what CI runs: tiny, ~10 s
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from workloads import loadavg  # noqa: E402

import mergeagg  # noqa: E402
from mergeagg.runtime.allreduce import allreduce, ring_reference  # noqa: E402

SEED = 20240801


def vector(spec):
    """The partial: a float64 vector of ``n`` uniform values from ``seed``."""
    n, seed = spec
    return np.random.default_rng(seed).random(n)


def add(a, b):
    a += b
    return a


AGG = mergeagg.Aggregator(vector, add, name="vector")
CONFIGS = [("ring (shm)", "ring", "shm"), ("ring (pipe)", "ring", "pipe"),
           ("tree", "tree", "shm")]


def copy_rate(n, repeat):
    """Bytes per second of ``np.copyto`` of an n-element float64 array (the median of at
    least five copies and of at least 0.2 s of copying)."""
    src = np.random.default_rng(SEED).random(n)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # touch the pages first
    times = []
    while len(times) < max(repeat, 5) or sum(times) < 0.2:  # small copies: many, for a steady
        t0 = time.perf_counter()                              # median on a busy machine
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    return src.nbytes / statistics.median(times), statistics.median(times)


def measure(n, p, algorithm, transport, repeat, check):
    specs = [(n, SEED + r) for r in range(p)]
    result = allreduce(AGG, specs, algorithm=algorithm, transport=transport, repeat=repeat,
                       return_value=check, timeout=600)
    if check:
        parts = [vector(s) for s in specs]
        if algorithm == "ring":
            ok = np.array_equal(result.value, ring_reference(parts))
        else:
            ok = np.array_equal(result.value, mergeagg.runtime.tree.fold_fixed(parts, add, 8))
        if not ok:
            raise SystemExit(f"{algorithm} n={n} p={p}: the result is not the documented "
                             "order's sum")
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=str, default="3,4,5,6,7,8",
                        help="powers of ten of the vector length (default 3,4,5,6,7,8)")
    parser.add_argument("--max-size", type=float, default=None,
                        help="skip vectors longer than this many elements")
    parser.add_argument("--procs", type=str, default="2,4", help="process counts (2,4)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="timed collectives per configuration (default 3)")
    parser.add_argument("--smoke", action="store_true", help="10^3..10^5, 2 repetitions")
    args = parser.parse_args(argv)
    sizes = [10 ** int(k) for k in args.sizes.split(",")]
    procs = [int(k) for k in args.procs.split(",")]
    repeat = args.repeat
    if args.smoke:
        sizes, repeat = [10 ** 3, 10 ** 4, 10 ** 5], 2
    if args.max_size is not None:
        sizes = [n for n in sizes if n <= args.max_size]
    print(f"all-reduce of float64 vectors: sizes {sizes}, processes {procs}, "
          f"{repeat} repetitions (medians); {loadavg()}")
    print("| n | p | algorithm | seconds | bytes sent (busiest process) | textbook | "
          "algbw GB/s | copy GB/s | algbw / copy | load (1, 5, 15 min) |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---|")
    start = time.perf_counter()
    for n in sizes:
        rate, _t = copy_rate(n, repeat)
        for p in procs:
            for label, algorithm, transport in CONFIGS:
                result = measure(n, p, algorithm, transport, repeat, check=n <= 10 ** 6)
                secs = statistics.median(result.seconds)
                busiest = max(range(p), key=lambda r: result.bytes_sent[r])
                algbw = n * 8 / secs
                print(f"| {n:.0e} | {p} | {label} | {secs:.4g} | "
                      f"{result.bytes_sent[busiest]:,} | {round(result.textbook[busiest]):,} | "
                      f"{algbw / 1e9:.3g} | {rate / 1e9:.3g} | {algbw / rate:.3g} | "
                      f"{loadavg().removeprefix('load ')} |", flush=True)
    print(f"total {time.perf_counter() - start:.1f} s; {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
