"""No-op dispatch: how many empty map tasks per second the full fault-tolerant path runs.

A fold job of N empty map tasks (``partial`` and ``combine`` return ``None``) through
``mergeagg.run(..., workers=2)``: attempt tracking, heartbeats, a fingerprint of every
output, the combine tree. Job wall time from call to result, which includes starting the
workers. Baselines measured in the same run: ``concurrent.futures.ProcessPoolExecutor``
``submit`` of N no-op calls and ``multiprocessing.Pool.map(chunksize=1)``.

Target (issue 3): at least 10,000 map tasks/s.

    python benchmarks/bench_dispatch.py            # 20,000 tasks, 5 repetitions
    python benchmarks/bench_dispatch.py --smoke    # a few hundred, for CI
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import mergeagg as ma

TARGET = 10_000


def noop(_x=None):
    return None


def _none(_shard):
    return None


def _none2(_a, _b):
    return None


def bench_mergeagg(n, workers):
    agg = ma.Aggregator(_none, _none2)
    shards = [[]] * n
    t = time.perf_counter()
    r = ma.run(agg, shards, workers=workers, progress=False)
    dt = time.perf_counter() - t
    assert len(r.report.attempts) == n
    return dt


def bench_executor(n, workers):
    t = time.perf_counter()
    with ProcessPoolExecutor(workers) as ex:
        futs = [ex.submit(noop, i) for i in range(n)]
        for f in futs:
            f.result()
    return time.perf_counter() - t


def bench_pool(n, workers):
    t = time.perf_counter()
    with mp.get_context("fork").Pool(workers) as pool:
        pool.map(noop, range(n), chunksize=1)
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="tiny run for CI")
    args = ap.parse_args(argv)
    if args.smoke:
        args.tasks, args.repeat = 300, 1
    n = args.tasks
    results = {}
    for name, fn in (("mergeagg.run", bench_mergeagg), ("ProcessPoolExecutor.submit",
                                                       bench_executor),
                     ("Pool.map(chunksize=1)", bench_pool)):
        times = [fn(n, args.workers) for _ in range(args.repeat)]
        results[name] = times
        rate = n / statistics.median(times)
        best = n / min(times)
        print(f"{name:<28} {rate:>10,.0f} tasks/s (median of {args.repeat}), "
              f"{best:,.0f} best")
    ours = n / statistics.median(results["mergeagg.run"])
    base = n / statistics.median(results["ProcessPoolExecutor.submit"])
    print(f"ratio mergeagg / ProcessPoolExecutor: {ours / base:.2f}x")
    print(f"target {TARGET:,} tasks/s: {'met' if ours >= TARGET else 'NOT met'} "
          f"({ours / TARGET:.2f}x of target)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
