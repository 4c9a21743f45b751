"""Blocked matrix multiply through mergeagg against one ``numpy.matmul`` in this process.

Workload (shared/BENCHMARKS.md): A and B are 4096 x 4096 float64, standard normal, fixed
seeds, stored as ``.npy`` files (cached). Both sides do the whole job: the baseline loads A
and B, multiplies them with one ``numpy.matmul`` and saves C; mergeagg runs
``matmul()`` over ``matmul_source(A.npy, B.npy, block=..., out=C.npy)`` — each task
memory-maps the files, reads only its blocks and writes its finished tile into its place in
C.npy (``--no-in-place``: tiles go to the driver, which assembles C and saves it, as
before). Both results must agree within tolerance, and every mergeagg repetition must give
the same fingerprint (the k-sum order is fixed).

Target (issue 18): with 2 workers, at least 0.8x the throughput of the single numpy.matmul
using both cores (numpy reaches ~135 GFLOP/s with 2 threads here). Each worker limits its
BLAS to ``threads_per_worker`` threads (default ``cores // workers``), so that the workers
share the cores instead of each starting one BLAS thread per core. The figure printed is
``baseline time / mergeagg time`` (medians; 1.0 = as fast as numpy), with /proc/loadavg.
The outputs go to a temporary directory removed at the end.

    python benchmarks/bench_matmul.py                  # 4096^2, 2 workers, 3 repetitions
    python benchmarks/bench_matmul.py --workers 0      # serial, in process
    python benchmarks/bench_matmul.py --smoke          # what CI runs: 256^2, tiny
"""

from __future__ import annotations

import argparse
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
from mergeagg.algorithms.matmul import (  # noqa: E402
    blas_threads,
    default_threads,
    matmul,
    matmul_source,
)

SEED_A, SEED_B = 20240301, 20240302


def matrices(n, directory=None):
    """Paths of the cached n x n float64 standard-normal matrices A and B."""
    d = cache_dir(directory)
    paths = []
    for name, seed in (("A", SEED_A), ("B", SEED_B)):
        path = os.path.join(d, f"matmul-{name}-{n}-{seed}.npy")
        if not os.path.exists(path):
            arr = np.random.default_rng(seed).standard_normal((n, n))
            tmp = f"{path}.{os.getpid()}.tmp.npy"
            np.save(tmp, arr)
            os.replace(tmp, path)
        paths.append(path)
    return paths


def baseline(a_path, b_path, out_path):
    c = np.matmul(np.load(a_path), np.load(b_path))
    np.save(out_path, c)
    return c


def ours(a_path, b_path, out_path, block, workers, k_split, threads, in_place=True):
    src = matmul_source(a_path, b_path, block=block, k_split=k_split,
                        out=out_path if in_place else None)
    result = mergeagg.run(matmul(threads_per_worker=threads), src, workers=workers)
    if not in_place:
        np.save(out_path, result.value)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4096, help="matrix order (default 4096)")
    parser.add_argument("--block", type=int, default=2048,
                        help="tile size (default 2048: four tasks of 2048^3 products)")
    parser.add_argument("--k-split", type=int, default=None,
                        help="K blocks per task (default: all, one task per tile)")
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes (default 2; 0 = serial in process)")
    parser.add_argument("--threads-per-worker", type=int, default=None,
                        help="BLAS threads in each worker (default: cores // workers)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each (default 3)")
    parser.add_argument("--smoke", action="store_true", help="256^2, 2 repetitions, for CI")
    parser.add_argument("--no-in-place", dest="in_place", action="store_false",
                        help="ship the tiles to the driver and assemble C there (the old way)")
    args = parser.parse_args(argv)
    n, block, repeat = (256, 64, 2) if args.smoke else (args.n, args.block, args.repeat)

    a_path, b_path = matrices(n)
    threads = args.threads_per_worker or default_threads(args.workers)
    flops = 2.0 * n ** 3
    out_dir = tempfile.mkdtemp(prefix="mergeagg-bench-matmul-")
    print(f"matmul: {n}x{n} float64, block {block}, k_split {args.k_split or 'all'}, "
          f"workers={args.workers} (BLAS threads each: {threads or 'default'}; here: "
          f"{blas_threads()}), tiles {'written in place' if args.in_place else 'assembled'}"
          f", {repeat} repetitions")
    try:
        return _measure(args, a_path, b_path, block, repeat, flops, out_dir, threads, n)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def loadavg():
    """The first three fields of /proc/loadavg (or ``n/a``)."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def _measure(args, a_path, b_path, block, repeat, flops, out_dir, threads, n):
    base_times, our_times, prints = [], [], set()
    for rep in range(repeat):
        start = time.perf_counter()
        expected = baseline(a_path, b_path, os.path.join(out_dir, "C-numpy.npy"))
        base_times.append(time.perf_counter() - start)

        start = time.perf_counter()
        result = ours(a_path, b_path, os.path.join(out_dir, "C-mergeagg.npy"), block,
                      args.workers, args.k_split, threads, args.in_place)
        our_times.append(time.perf_counter() - start)
        print(f"  pair {rep + 1}: numpy {base_times[-1]:.3f}s, mergeagg {our_times[-1]:.3f}s, "
              f"ratio {base_times[-1] / our_times[-1]:.2f}x; loadavg {loadavg()}")
        prints.add(result.fingerprint)
        scale = float(np.abs(expected).max())
        if not np.allclose(result.value, expected, rtol=1e-10, atol=1e-10 * n * scale):
            print("ERROR: mergeagg and numpy.matmul disagree", file=sys.stderr)
            return 1
        del expected
    if len(prints) != 1:
        print(f"ERROR: {len(prints)} different fingerprints across repetitions",
              file=sys.stderr)
        return 1

    base, mine = statistics.median(base_times), statistics.median(our_times)
    print(f"{'numpy.matmul (load+save)':<28} median {base:8.3f}s  min {min(base_times):8.3f}s"
          f"  {flops / base / 1e9:7.1f} GFLOP/s")
    print(f"{'mergeagg matmul':<28} median {mine:8.3f}s  min {min(our_times):8.3f}s"
          f"  {flops / mine / 1e9:7.1f} GFLOP/s")
    print(f"ratio (numpy time / mergeagg time, medians): {base / mine:.2f}x "
          f"(target >= 0.8x with 2 workers; loadavg {loadavg()}); "
          f"{len(result.report.attempts)} tasks, mode {result.report.mode}; "
          f"fingerprint {result.fingerprint[:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
