"""Keyed jobs: word count through the shuffle, shuffle bytes, memory-limited spills, skew.

Four measurements, each against a baseline run in the same process:

1. **Keyed word count** of the Zipf corpus (BENCHMARKS.md), 2 workers, R = 8, against the
   sequential ``collections.Counter`` loop (target ≥ 1.5×) and, with ``--dask``, dask.bag
   ``frequencies()`` on a 2-worker LocalCluster (target ≥ 4×).
2. **Shuffle bytes** of that job with and without the map-side combiner.
3. **Many keys under a memory limit**: ``--keys`` distinct int keys (20 million at full
   size) with ``memory_limit=200M``: every process's peak RSS (sampled with psutil) must
   stay ≤ 400 MB, and the fingerprint must equal an unconstrained run's.
4. **Skew**: values collected per key (the combiner cannot shrink them; it is off), one key
   holding half the records: slowest reduce task against the median, and the job with and
   without salting (targets: ≤ 2× the median, ≥ 1.5× faster).

    python benchmarks/bench_shuffle.py               # full size (minutes)
    python benchmarks/bench_shuffle.py --smoke       # CI

Everything it writes (the corpus, the part files of [3], Dask's worker folders) lives in one
temporary directory removed at the end; ``MERGEAGG_BENCH_CACHE=DIR`` keeps the corpus in
``DIR`` for the next run (benchmarks/workloads.py).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import threading
import time
from collections import Counter

import psutil

import mergeagg as ma

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads  # noqa: E402


def sequential_counter(path):
    counts = Counter()
    with open(path, encoding="utf-8") as f:
        for line in f:
            counts.update(line.split())
    return counts


class PeakRSS:
    """Samples the RSS of this process and all its descendants every 50 ms."""

    def __init__(self):
        self.peak = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            for p in [me, *me.children(recursive=True)]:
                try:
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                self.peak[p.pid] = max(self.peak.get(p.pid, 0), rss)
            self._stop.wait(0.05)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def timed(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def bench_wordcount(path, repeat, workers, with_dask, tmp):
    mb = os.path.getsize(path) / 1e6
    job = ma.algorithms.wordcount(keyed=True)
    with contextlib.ExitStack() as stack:
        client = _dask_client(stack, os.path.join(tmp, "dask")) if with_dask else None
        # Interleaved, so that a burst of load from elsewhere hits every side alike.
        times = {"seq": [], "ma": [], "dask": [], "cpu": []}
        for _ in range(repeat):
            c0 = time.process_time()
            t_seq, ref = timed(lambda: sequential_counter(path), 1)
            c1 = time.process_time()
            t_ma, r = timed(lambda: ma.run(job, path, workers=workers, partitions=8,
                                           progress=False), 1)
            c2 = time.process_time()
            assert r.value == ref, "keyed word count differs from the Counter loop"
            times["seq"].append(t_seq)
            times["ma"].append(t_ma)
            times["cpu"].append((c1 - c0, c2 - c1))
            if client is not None:
                t_dask, dv = timed(lambda: _dask_bag_frequencies(client, path), 1)
                assert dv == dict(ref), "dask.bag differs from the Counter loop"
                times["dask"].append(t_dask)
    t_seq, t_ma = statistics.median(times["seq"]), statistics.median(times["ma"])
    print(f"[1] corpus {mb:.1f} MB; sequential Counter {t_seq:.2f}s ({mb / t_seq:.1f} MB/s); "
          f"{workloads.loadavg()}")
    print(f"    mergeagg keyed, {workers} workers, R=8: {t_ma:.2f}s -> "
          f"{t_seq / t_ma:.2f}x the Counter loop (target >= 1.5x); per run "
          + " ".join(f"{a / b:.2f}x" for a, b in zip(times["seq"], times["ma"])))
    cpu_seq = statistics.median(c[0] for c in times["cpu"])
    cpu_master = statistics.median(c[1] for c in times["cpu"])
    task_seconds = sum(t.seconds for t in r.report.tasks)
    print(f"    CPU seconds: Counter loop {cpu_seq:.2f}, mergeagg's master process "
          f"{cpu_master:.2f}; its tasks ran {task_seconds:.2f}s on the workers (last run; "
          f"{cpu_seq / task_seconds:.2f}x the loop's rate per worker)")
    if client is not None:
        t_dask = statistics.median(times["dask"])
        print(f"    dask.bag frequencies on LocalCluster(2x1): {t_dask:.2f}s; mergeagg is "
              f"{t_dask / t_ma:.2f}x dask.bag (target >= 4x); per run "
              + " ".join(f"{a / b:.2f}x" for a, b in zip(times["dask"], times["ma"]))
              + f"; {workloads.loadavg()}")
    return r


def _dask_client(stack, local_directory):
    import dask
    from dask.distributed import Client, LocalCluster

    # The scheduler's and the workers' folders under the run's scratch directory: Dask
    # leaves a dask-scratch-space (lock files) in the directory it is given.
    stack.enter_context(dask.config.set({"temporary-directory": local_directory}))
    cluster = stack.enter_context(LocalCluster(n_workers=2, threads_per_worker=1,
                                               processes=True, host="127.0.0.1",
                                               dashboard_address=None))
    return stack.enter_context(Client(cluster))


def _dask_bag_frequencies(client, path):
    from dask import bag

    b = bag.read_text(path, blocksize=16 * 2**20).str.split().flatten()
    return dict(b.frequencies().compute(scheduler=client.get))


def word_pairs(lines):
    for line in lines:
        for w in line.split():
            yield w, 1


def bench_combiner(path, workers):
    # A map that emits one (word, 1) per word, so that the combiner has work to do.
    job = ma.KeyedJob(word_pairs, add)
    on = ma.run(job, path, workers=workers, partitions=8, progress=False)
    off = ma.run(job, path, workers=workers, partitions=8, combiner=False, progress=False)
    assert on.fingerprint == off.fingerprint
    a, b = on.report.counters, off.report.counters
    ratio = b["shuffle_bytes_written"] / a["shuffle_bytes_written"]
    print(f"[2] shuffle bytes with the combiner {a['shuffle_bytes_written']:,} "
          f"({a['records_out']:,} records); without {b['shuffle_bytes_written']:,} "
          f"({b['records_out']:,} records): {ratio:.1f}x; {workloads.loadavg()}")


def int_keys(shard):
    lo, hi = shard[0]
    return ((k, 1) for k in range(lo, hi))


def add(a, b):
    return a + b


def bench_memory(n_keys, workers, limit, tmp):
    step = max(1, n_keys // 40)
    shards = [[(lo, min(lo + step, n_keys))] for lo in range(0, n_keys, step)]
    job = ma.KeyedJob(int_keys, add)
    results = {}
    for label, mem in (("unconstrained", None), ("memory_limit", limit)):
        out = os.path.join(tmp, f"memory-{label}")
        with PeakRSS() as rss:
            t = time.perf_counter()
            r = ma.run(job, shards, workers=workers, partitions=8, memory_limit=mem,
                       output=out, output_format="framed", progress=False)
            dt = time.perf_counter() - t
        peak = max(rss.peak.values()) / 2**20
        shutil.rmtree(out)  # part files of 20 million keys: do not keep two copies around
        results[label] = (r.fingerprint, peak, dt, r.report.counters)
        print(f"[3] {n_keys:,} distinct keys, {label} ({mem or '-'}): {dt:.1f}s, peak RSS of any "
              f"process {peak:.0f} MB, spills {r.report.counters.get('spills', 0)}, external "
              f"merges {r.report.counters.get('external_merge', 0)}; {workloads.loadavg()}")
    same = results["unconstrained"][0] == results["memory_limit"][0]
    print(f"    fingerprints equal: {same}; peak RSS under the limit "
          f"{results['memory_limit'][1]:.0f} MB (target <= 400 MB)")
    assert same


def collect(recs):
    return ((k, [v]) for k, v in recs)


def extend(a, b):
    a.extend(b)
    return a


def bench_skew(n_records, workers, repeat):
    half = n_records // 2
    recs = [("hot", i) for i in range(half)] + [(f"k{i % 5000}", i) for i in range(half)]
    shards = [recs[i::16] for i in range(16)]
    del recs
    job = ma.KeyedJob(collect, extend, finalize=len)
    runs = {None: [], True: []}
    for _ in range(repeat):  # interleaved: off, on, off, on, ...
        for salt in (None, True):
            t, r = timed(lambda salt=salt: ma.run(job, shards, workers=workers, partitions=8,
                                                  combiner=False, salt=salt, progress=False),
                         1)
            secs = [x["seconds"] for x in r.report.reducers]
            runs[salt].append((t, max(secs), statistics.median(secs), r.fingerprint,
                               r.report.phases.get("map", 0.0),
                               r.report.phases.get("reduce", 0.0)))
    rows = {}
    for salt, rs in runs.items():
        t = statistics.median(x[0] for x in rs)
        row = sorted(rs, key=lambda x: x[0])[len(rs) // 2]  # the median run
        rows[salt] = row
        print(f"[4] skew, salting {'on ' if salt else 'off'}: job {t:.2f}s (map phase "
              f"{row[4]:.2f}s, reduce phase {row[5]:.2f}s); reduce tasks slowest {row[1]:.2f}s, "
              f"median {row[2]:.2f}s ({row[1] / max(row[2], 1e-9):.1f}x)")
    off, on = rows[None], rows[True]
    assert off[3] == on[3], "salting changed an exact answer"
    ratios = [a[0] / b[0] for a, b in zip(runs[None], runs[True])]
    print(f"    with salting: slowest/median {on[1] / max(on[2], 1e-9):.1f}x (target <= 2x); "
          f"job {statistics.median(ratios):.2f}x faster (target >= 1.5x; per pair "
          + " ".join(f"{x:.2f}x" for x in ratios) + f"); reduce phase "
          f"{off[5] / max(on[5], 1e-9):.2f}x faster; {workloads.loadavg()}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="200M", help="corpus size (default 200M)")
    ap.add_argument("--keys", type=int, default=20_000_000)
    ap.add_argument("--memory-limit", default="200M")
    ap.add_argument("--skew-records", type=int, default=2_000_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dask", action="store_true", help="also time dask.bag frequencies()")
    ap.add_argument("--only", default="1234", help="which measurements to run, e.g. 14")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    args = ap.parse_args(argv)
    if args.smoke:
        args.size, args.keys, args.skew_records, args.repeat = "2M", 200_000, 40_000, 1
        args.memory_limit = "2M"
    with workloads.scratch() as tmp:
        path = workloads.zipf_corpus(workloads.parse_size(args.size))
        if "1" in args.only:
            bench_wordcount(path, args.repeat, args.workers, args.dask, tmp)
        if "2" in args.only:
            bench_combiner(path, args.workers)
        if "3" in args.only:
            bench_memory(args.keys, args.workers, args.memory_limit, tmp)
        if "4" in args.only:
            bench_skew(args.skew_records, args.workers, args.repeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
