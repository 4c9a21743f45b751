"""Word count of the Zipf corpus on a 2-worker Dask LocalCluster: mergeagg against dask.bag.

Measured in the same run, on the same corpus (benchmarks/workloads.py) and the same
LocalCluster (2 worker processes x 1 thread, loopback):

* ``sequential``: ``Counter.update(line.split())`` over the lines in one process, the
  reference (shared/BENCHMARKS.md: 4.7 s for 200 MB here);
* ``dask.bag``: ``read_text(path, blocksize=split).str.split().flatten().frequencies()``
  computed on the cluster (about 0.34x the sequential loop here);
* ``mergeagg dask``: ``mergeagg.run(wordcount(), path, backend=client)``;
* ``mergeagg local``: the same aggregator on mergeagg's own 2 worker processes;
* ``mergeagg dask keyed``: word count as a keyed job (``wordcount(keyed=True)``, R = 8) on
  the cluster: map-side combine, spill files on the workers' disks, one bucket per reducer
  fetched through Dask (no target; printed beside the rest).

Every answer must have the sequential loop's fingerprint. The figure of issue 9 is
``mergeagg dask / dask.bag`` in speed (ratio of the medians; the median of the ratios within
each repetition is printed beside it): the target is at least 3x.

    python benchmarks/bench_dask.py --size 200M --repeat 3   # the reference figure
    python benchmarks/bench_dask.py --smoke                  # what CI runs: ~2 MB

The corpus and the Dask workers' folders live in one temporary directory removed at the
end; ``MERGEAGG_BENCH_CACHE=DIR`` keeps the corpus in ``DIR`` for the next run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_wordcount import sequential_counter  # noqa: E402
from workloads import (  # noqa: E402
    SMOKE_CORPUS_BYTES,
    loadavg,
    parse_size,
    scratch,
    zipf_corpus,
)

import mergeagg  # noqa: E402


def mergeagg_on_dask(client, path, split_size):
    agg = mergeagg.algorithms.wordcount()
    return mergeagg.run(agg, path, backend=client, split_size=split_size).fingerprint


def mergeagg_keyed_on_dask(client, path, split_size):
    job = mergeagg.algorithms.wordcount(keyed=True)
    return mergeagg.run(job, path, backend=client, split_size=split_size,
                        partitions=8).fingerprint


def dask_bag(client, path, split_size):
    import dask.bag as db

    bag = db.read_text(path, blocksize=parse_size(split_size))
    pairs = bag.str.split().flatten().frequencies().compute(scheduler=client)
    return mergeagg.fingerprint(Counter(dict(pairs)))


def mergeagg_local(path, split_size, workers):
    agg = mergeagg.algorithms.wordcount()
    return mergeagg.run(agg, path, workers=workers, split_size=split_size).fingerprint


def run_all(path, split_size, repeat, local_directory):
    """Each contender ``repeat`` times, interleaved: ({name: seconds}, {name: fingerprints})."""
    import dask
    from distributed import Client, LocalCluster

    # The scheduler's and the workers' folders under the run's scratch directory: Dask
    # leaves a dask-scratch-space (lock files) in the directory it is given.
    with dask.config.set({"temporary-directory": local_directory}), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                         dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster, set_as_default=False) as client:
        contenders = {
            "sequential": lambda: mergeagg.fingerprint(sequential_counter(path)),
            "dask.bag": lambda: dask_bag(client, path, split_size),
            "mergeagg dask": lambda: mergeagg_on_dask(client, path, split_size),
            "mergeagg local": lambda: mergeagg_local(path, split_size, 2),
            "mergeagg dask keyed": lambda: mergeagg_keyed_on_dask(client, path, split_size),
        }
        times = {name: [] for name in contenders}
        prints = {}
        for i in range(repeat):
            for name, run in contenders.items():
                start = time.perf_counter()
                prints.setdefault(name, set()).add(run())
                times[name].append(time.perf_counter() - start)
                print(f"  run {i + 1}: {name:<20} {times[name][-1]:8.3f}s", flush=True)
    return times, prints


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="200M", help="corpus size, e.g. 2M or 200M")
    parser.add_argument("--split-size", default="16M", help="bytes per split (default 16M)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each (default 3)")
    parser.add_argument("--smoke", action="store_true", help="~2 MB, 2 repetitions, for CI")
    args = parser.parse_args(argv)
    size = SMOKE_CORPUS_BYTES if args.smoke else parse_size(args.size)
    repeat = 2 if args.smoke else args.repeat
    split_size = "512K" if args.smoke else args.split_size

    with scratch() as tmp:
        path = zipf_corpus(size)
        mb = os.path.getsize(path) / 1e6
        print(f"word count on Dask: {mb:.1f} MB Zipf corpus ({path}), LocalCluster of 2 "
              f"worker processes x 1 thread, split size {split_size}, {repeat} repetitions; "
              f"{loadavg()}")
        times, prints = run_all(path, split_size, repeat, os.path.join(tmp, "dask"))
    reference = prints["sequential"]
    wrong = [name for name, fps in prints.items() if fps != reference]
    if wrong:
        print(f"ERROR: {', '.join(wrong)} disagree with the sequential loop", file=sys.stderr)
        return 1
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    base = medians["sequential"]
    for name, ts in times.items():
        print(f"{name:<20} median {medians[name]:8.3f}s  min {min(ts):8.3f}s  "
              f"{mb / medians[name]:7.1f} MB/s  {base / medians[name]:5.2f}x sequential")
    ratio = medians["dask.bag"] / medians["mergeagg dask"]
    # The ratio within each repetition too: the two ran back to back, so a load that
    # drifts from one repetition to the next (a shared machine) cancels out.
    paired = statistics.median(b / m for b, m in zip(times["dask.bag"], times["mergeagg dask"]))
    verdict = "met" if ratio >= 3.0 else "NOT met"
    print(f"mergeagg dask / dask.bag (speed): {ratio:.2f}x from the medians, {paired:.2f}x "
          f"median of the per-repetition ratios (target >= 3x: {verdict}); "
          f"mergeagg dask / mergeagg local: "
          f"{medians['mergeagg local'] / medians['mergeagg dask']:.2f}x; {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
