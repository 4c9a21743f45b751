"""The exact float sum (ExactSum) against numpy's sum, math.fsum and a plain loop.

Workload: 10^7 float64 values, standard normal scaled by 10^k for k uniform in [-8, 8]
(fixed seed), in one numpy array. Contenders, each timed ``--repeat`` times, alternating:

* ``ExactSum().add_floats(array)`` — exact, the same bits for any split (what
  ``exact=True`` in the catalog uses);
* ``numpy.sum(array)`` — pairwise summation, rounded, its bits depend on the layout;
* ``math.fsum(list)`` — correctly rounded, over a Python list (fsum of the array iterates
  numpy scalars and is several times slower: the list is built outside the timing);
* a plain ``for`` loop adding the list's floats (rounded at every step).

Targets (issue 18): ExactSum at most 2x numpy's sum and at least 5x faster than math.fsum.
The figures printed are medians, ratios against ExactSum, and /proc/loadavg. ExactSum and
math.fsum must give the same float.

    python benchmarks/bench_exact.py            # 10^7 values, 5 repetitions
    python benchmarks/bench_exact.py --smoke    # what CI runs: 10^5 values
    python benchmarks/bench_exact.py --profile  # also: where ExactSum's time goes, per step

Where the time goes (``--profile``, 10^7 values, 2026-12-06, load 1): the two weighted
``numpy.bincount`` calls take about 12 ms each (a scatter-add costs about 1.1 ns a value,
four times ``numpy.sum``'s 0.26 ns), the exponent shift, the mask and the subtraction about
2-4 ms each: every elementwise numpy pass costs about one ``numpy.sum``. An exact sum needs
at least one pass that aligns each value by its exponent, and two 26/27-bit halves so that a
bin's float sum stays exact, so numpy alone cannot come within 2x of its own sum; a compiled
kernel (one pass, integer accumulators per exponent) would.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import numpy as np

from mergeagg.algorithms._exact import ExactSum

SEED = 20251206
# ExactSum's loop, as --profile re-times it: values per pass, bins of sign and exponent,
# and the mask that keeps a value's top 27 mantissa bits (see algorithms/_exact.py).
PROFILE_PASS, PROFILE_BINS = 1 << 14, 1 << 12
PROFILE_HIGH_MASK = np.uint64(~((1 << 26) - 1) & ((1 << 64) - 1))


def exact_sum(arr):
    s = ExactSum()
    s.add_floats(arr)
    return s.value()


def naive(values):
    total = 0.0
    for v in values:
        total += v
    return total


def loadavg():
    """The first three fields of /proc/loadavg (or ``n/a``)."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000_000, help="values (default 10^7)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each (default 5)")
    parser.add_argument("--smoke", action="store_true", help="10^5 values, 2 runs, for CI")
    parser.add_argument("--profile", action="store_true",
                        help="also time each numpy step of ExactSum's inner loop")
    args = parser.parse_args(argv)
    n, repeat = (100_000, 2) if args.smoke else (args.n, args.repeat)
    rng = np.random.default_rng(SEED)
    arr = rng.standard_normal(n) * 10.0 ** rng.integers(-8, 9, n)
    values = arr.tolist()
    contenders = [("ExactSum.add_floats", lambda: exact_sum(arr)),
                  ("numpy.sum (pairwise)", lambda: float(np.sum(arr))),
                  ("math.fsum (list)", lambda: math.fsum(values)),
                  ("plain loop (list)", lambda: naive(values))]
    times = {name: [] for name, _f in contenders}
    answers = {}
    for rep in range(repeat):
        for name, fn in contenders:
            start = time.perf_counter()
            answers[name] = fn()
            times[name].append(time.perf_counter() - start)
        print(f"  pair {rep + 1}: ExactSum {times['ExactSum.add_floats'][-1]:.4f}s, numpy.sum "
              f"{times['numpy.sum (pairwise)'][-1]:.4f}s, ratio "
              f"{times['ExactSum.add_floats'][-1] / times['numpy.sum (pairwise)'][-1]:.2f}; "
              f"loadavg {loadavg()}")
    if answers["ExactSum.add_floats"] != answers["math.fsum (list)"]:
        print(f"ERROR: ExactSum gave {answers['ExactSum.add_floats']!r}, math.fsum "
              f"{answers['math.fsum (list)']!r}", file=sys.stderr)
        return 1
    print(f"exact sum: {n} doubles, {repeat} repetitions (alternating), loadavg {loadavg()}")
    mine = statistics.median(times["ExactSum.add_floats"])
    for name, _f in contenders:
        med = statistics.median(times[name])
        print(f"  {name:<22} median {med:9.4f}s  min {min(times[name]):9.4f}s  "
              f"{n / med / 1e6:8.1f} M values/s  ExactSum time / this: {mine / med:6.2f}")
    numpy_med = statistics.median(times["numpy.sum (pairwise)"])
    fsum_med = statistics.median(times["math.fsum (list)"])
    print(f"ExactSum takes {mine / numpy_med:.1f}x numpy's sum (target <= 2x) and is "
          f"{fsum_med / mine:.1f}x faster than math.fsum (target >= 5x); loadavg {loadavg()}")
    if args.profile:
        profile(arr, repeat)
    return 0


def profile(arr, repeat):
    """Time each step of ExactSum's inner loop over ``arr``, cumulatively (a step's cost is
    the difference to the line above): the same numpy calls, pass size and bins."""
    bits, size = arr.view(np.uint64), PROFILE_PASS
    steps = ["exponent shift", "mask (high part)", "subtract (rest)", "bincount of highs",
             "bincount of rests"]

    def upto(k):
        sums = np.zeros(PROFILE_BINS)
        for lo in range(0, arr.size, size):
            b = bits[lo:lo + size]
            e = np.right_shift(b, 52).view(np.int64)
            h = np.bitwise_and(b, PROFILE_HIGH_MASK).view(np.float64) if k > 1 else None
            r = arr[lo:lo + size] - h if k > 2 else None
            if k > 3:
                sums += np.bincount(e, weights=h, minlength=PROFILE_BINS)
            if k > 4:
                sums += np.bincount(e, weights=r, minlength=PROFILE_BINS)

    print(f"profile of ExactSum's loop (pass {size} values; medians of {repeat}; "
          f"loadavg {loadavg()}):")
    before = 0.0
    for k, step in enumerate(steps, 1):
        ts = []
        for _ in range(repeat):
            start = time.perf_counter()
            upto(k)
            ts.append(time.perf_counter() - start)
        med = statistics.median(ts)
        print(f"  up to {step:<20} {med * 1e3:8.2f} ms  (+{(med - before) * 1e3:.2f} ms)")
        before = med
    ts = []
    for _ in range(repeat):
        start = time.perf_counter()
        np.sum(arr)
        ts.append(time.perf_counter() - start)
    print(f"  numpy.sum, for scale    {statistics.median(ts) * 1e3:8.2f} ms")


if __name__ == "__main__":
    sys.exit(main())
