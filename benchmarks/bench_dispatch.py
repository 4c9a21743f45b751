"""No-op dispatch: how many empty map tasks per second the full fault-tolerant path runs.

A fold job of N empty map tasks (``partial`` and ``combine`` return ``None``): attempt
tracking, heartbeats, a fingerprint of every output, the combine tree. Job wall time from
call to result, three ways:

* ``mergeagg.run(..., workers=2)`` first in a process: it starts the fork server too (once
  per process);
* ``mergeagg.run(..., workers=2)`` afterwards: it starts and stops its two workers;
* a job on a ``mergeagg.Session(workers=2)`` that already ran one: the session keeps its
  executor and its workers, so the job pays no start-up.

Baselines measured in the same run, alternating with ours: ``concurrent.futures.
ProcessPoolExecutor`` ``submit`` of N no-op calls and ``multiprocessing.Pool.map
(chunksize=1)``; each figure is printed with the load average beside it.

Targets: at least 10,000 map tasks/s (issue 3); 32,000 (issue 13, the figure before the
one start method), met on a warm session.

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
WARM_TARGET = 32_000


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


def bench_session(session, n):
    """One job on a session that keeps its workers between jobs."""
    agg = ma.Aggregator(_none, _none2)
    shards = [[]] * n
    t = time.perf_counter()
    r = session.run(agg, shards, progress=False)
    dt = time.perf_counter() - t
    assert len(r.report.attempts) == n
    return dt


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


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
    n, w = args.tasks, args.workers
    cold = bench_mergeagg(n, w)
    print(f"{'mergeagg.run, first':<28} {n / cold:>10,.0f} tasks/s (starts the fork server)"
          f"  load {loadavg()}")
    names = ("mergeagg.run", "Session job (warm)", "ProcessPoolExecutor.submit",
             "Pool.map(chunksize=1)")
    results = {name: [] for name in names}
    with ma.Session(workers=w) as session:
        bench_session(session, n)  # its first job: the workers are up from here on
        for i in range(args.repeat):
            for name, fn in zip(names, (lambda: bench_mergeagg(n, w),
                                        lambda: bench_session(session, n),
                                        lambda: bench_executor(n, w),
                                        lambda: bench_pool(n, w))):
                dt = fn()
                results[name].append(dt)
                print(f"  rep {i} {name:<28} {n / dt:>10,.0f} tasks/s  load {loadavg()}",
                      flush=True)
    for name in names:
        times = results[name]
        print(f"{name:<28} {n / statistics.median(times):>10,.0f} tasks/s (median of "
              f"{args.repeat}), {n / min(times):,.0f} best")
    base = n / statistics.median(results["ProcessPoolExecutor.submit"])
    run_rate = n / statistics.median(results["mergeagg.run"])
    warm = n / statistics.median(results["Session job (warm)"])
    print(f"ratio mergeagg.run / ProcessPoolExecutor: {run_rate / base:.2f}x; "
          f"warm session / ProcessPoolExecutor: {warm / base:.2f}x")
    print(f"target {TARGET:,} tasks/s (mergeagg.run): {'met' if run_rate >= TARGET else 'NOT met'}"
          f" ({run_rate / TARGET:.2f}x of target)")
    print(f"target {WARM_TARGET:,} tasks/s (warm session): "
          f"{'met' if warm >= WARM_TARGET else 'NOT met'} ({warm / WARM_TARGET:.2f}x of target)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
