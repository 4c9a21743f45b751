"""Blocked matrix multiply through mergeagg against one ``numpy.matmul`` in this process.

Workload (shared/BENCHMARKS.md): A and B are 4096 x 4096 float64, standard normal, fixed
seeds, stored as ``.npy`` files (cached). Both sides do the whole job: the baseline loads A
and B, multiplies them with one ``numpy.matmul`` and saves C; mergeagg runs
``matmul()`` over ``matmul_source(A.npy, B.npy, block=...)`` — each task memory-maps the
files and reads only its blocks — and saves C. Both results must agree within tolerance, and
every mergeagg repetition must give the same fingerprint (the k-sum order is fixed).

Target (issue 5): with 2 workers, at least 0.5x the throughput of the single numpy.matmul
(numpy reaches ~135 GFLOP/s with 2 threads here). The figure printed is
``baseline time / mergeagg time`` (medians; 1.0 = as fast as numpy).

    python benchmarks/bench_matmul.py                  # 4096^2, 2 workers, 3 repetitions
    python benchmarks/bench_matmul.py --workers 0      # serial, in process
    python benchmarks/bench_matmul.py --smoke          # what CI runs: 256^2, tiny
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from workloads import cache_dir  # noqa: E402

import mergeagg  # noqa: E402
from mergeagg.algorithms.matmul import matmul, matmul_source  # noqa: E402

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


def ours(a_path, b_path, out_path, block, workers, k_split):
    src = matmul_source(a_path, b_path, block=block, k_split=k_split)
    result = mergeagg.run(matmul(), src, workers=workers)
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
    parser.add_argument("--worker-blas-threads", type=int, default=1,
                        help="BLAS threads in each worker process (default 1: the workers "
                             "share the cores; numpy in this process keeps its own setting)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each (default 3)")
    parser.add_argument("--smoke", action="store_true", help="256^2, 2 repetitions, for CI")
    args = parser.parse_args(argv)
    n, block, repeat = (256, 64, 2) if args.smoke else (args.n, args.block, args.repeat)

    a_path, b_path = matrices(n)
    if args.workers and args.worker_blas_threads:
        # Read by numpy when the worker processes import it (the fork server starts at the
        # first run), not by the numpy already loaded here, so the baseline is unaffected.
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.worker_blas_threads)
    flops = 2.0 * n ** 3
    out_dir = tempfile.mkdtemp(prefix="mergeagg-bench-matmul-")
    print(f"matmul: {n}x{n} float64, block {block}, k_split {args.k_split or 'all'}, "
          f"workers={args.workers} (BLAS threads each: {args.worker_blas_threads}), "
          f"{repeat} repetitions")

    base_times, our_times, prints = [], [], set()
    for _ in range(repeat):
        start = time.perf_counter()
        expected = baseline(a_path, b_path, os.path.join(out_dir, "C-numpy.npy"))
        base_times.append(time.perf_counter() - start)

        start = time.perf_counter()
        result = ours(a_path, b_path, os.path.join(out_dir, "C-mergeagg.npy"), block,
                      args.workers, args.k_split)
        our_times.append(time.perf_counter() - start)
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
          f"(target >= 0.5x with 2 workers); {len(result.report.attempts)} tasks, "
          f"mode {result.report.mode}; fingerprint {result.fingerprint[:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
