"""Sketch throughput against datasketch and Apache DataSketches, measured in the same run.

Workloads (shared/BENCHMARKS.md, generated in memory from fixed seeds):

* **keys**: ``--keys`` distinct uint64 keys (default 10,000,000): ``i * 0x9E3779B97F4A7C15``
  mod 2**64 for ``i < n`` (a bijection, so all distinct); the bytes workload is the same
  keys as 8-byte strings (a Python list of ``bytes``, and a numpy ``S8`` array).
* **documents**: ``--docs`` documents (default 10,000), each a set of 200 distinct
  byte-string shingles of 4-12 bytes drawn from a 50,000-shingle vocabulary.

Measured: HyperLogLog p=14 bulk updates of integer and bytes keys; count-min (width 2**16,
depth 5) integer-key updates; MinHash signatures at 128 permutations, with the Jaccard
accuracy of both libraries on 200 document pairs. The baselines update item by item from
Python (their only API for these sketches); since that is slow, they run on a prefix of
the keys (``--baseline-keys``, default 1,000,000) and are compared as rates. Each figure is
the median of ``--repeat`` runs (the best is printed too).

Targets (issue 6): HLL integer keys >= 30M keys/s and >= 1.1x DataSketches; HLL bytes keys
>= 5x datasketch; count-min >= 20M updates/s; MinHash >= 2x datasketch ``MinHash.bulk``.

    python benchmarks/bench_sketches.py            # full sizes, 5 repetitions
    python benchmarks/bench_sketches.py --smoke    # tiny sizes, for CI
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np

from mergeagg.algorithms.countmin import CountMin
from mergeagg.algorithms.hyperloglog import HyperLogLog
from mergeagg.algorithms.minhash import signatures

SEED = 20240229


def _keys(n):
    return np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)


def _docs(n, per_doc=200, vocab=50_000, seed=SEED):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, 13, vocab)
    words = [rng.bytes(int(k)) for k in lengths]
    return [[words[i] for i in rng.choice(vocab, per_doc, replace=False)] for _ in range(n)]


def _timed(fn, repeat):
    """(median seconds, best seconds) of ``repeat`` calls of ``fn``."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


def _report(label, n, unit, med, best):
    rate = n / med
    print(f"  {label:<44} {rate / 1e6:>9.3f}M {unit}/s (median), {n / best / 1e6:.3f}M best")
    return rate


def _verdict(name, value, target, unit):
    ok = value >= target
    print(f"  -> {name}: {value:,.2f}{unit} vs target {target:,.2f}{unit}: "
          f"{'met' if ok else 'NOT met'}")
    return ok


def bench_hll_ints(keys, base_n, repeat):
    print(f"HyperLogLog p=14, integer keys ({keys.shape[0]:,} ours, {base_n:,} baseline)")
    med, best = _timed(lambda: HyperLogLog(14).update(keys), repeat)
    ours = _report("mergeagg HyperLogLog.update(uint64 array)", keys.shape[0], "keys", med,
                   best)
    results = {"hll_int": ours}
    try:
        import datasketches
    except ImportError:  # pragma: no cover - a dev dependency
        print("  (datasketches not installed: no baseline)")
        return results
    sub = keys[:base_n].tolist()

    def apache():
        s = datasketches.hll_sketch(14)
        for k in sub:
            s.update(k)

    med, best = _timed(apache, repeat)
    theirs = _report("DataSketches hll_sketch.update per key", base_n, "keys", med, best)
    results["hll_int_apache"] = theirs
    _verdict("HLL int keys, M keys/s", ours / 1e6, 30.0, "")
    _verdict("HLL int keys vs DataSketches", ours / theirs, 1.1, "x")
    return results


def bench_hll_bytes(keys, base_n, repeat):
    n = keys.shape[0]
    as_list = [k.tobytes() for k in keys]
    as_array = keys.astype(">u8").view("S8")  # fixed width; a key ending in NULs is shorter
    print(f"HyperLogLog p=14, 8-byte bytes keys ({n:,} ours, {base_n:,} baseline)")
    med, best = _timed(lambda: HyperLogLog(14).update(as_list), repeat)
    ours = _report("mergeagg update(list of bytes)", n, "keys", med, best)
    med, best = _timed(lambda: HyperLogLog(14).update(as_array), repeat)
    ours_arr = _report("mergeagg update(numpy S8 array)", n, "keys", med, best)
    results = {"hll_bytes": ours, "hll_bytes_array": ours_arr}
    try:
        import datasketch
    except ImportError:  # pragma: no cover
        print("  (datasketch not installed: no baseline)")
        return results
    sub = as_list[:base_n]

    def per_item():
        h = datasketch.HyperLogLog(p=14)
        for k in sub:
            h.update(k)

    med, best = _timed(per_item, repeat)
    theirs = _report("datasketch HyperLogLog.update per key", base_n, "keys", med, best)
    results["hll_bytes_datasketch"] = theirs
    _verdict("HLL bytes keys (list) vs datasketch", ours / theirs, 5.0, "x")
    _verdict("HLL bytes keys (S8 array) vs datasketch", ours_arr / theirs, 5.0, "x")
    return results


def bench_countmin(keys, base_n, repeat):
    print(f"count-min width 2**16 depth 5, integer keys ({keys.shape[0]:,} ours, "
          f"{base_n:,} baseline)")
    med, best = _timed(lambda: CountMin(1 << 16, 5).update(keys), repeat)
    ours = _report("mergeagg CountMin.update(uint64 array)", keys.shape[0], "updates", med,
                   best)
    results = {"countmin": ours}
    try:
        import datasketches
    except ImportError:  # pragma: no cover
        return results
    sub = keys[:base_n].view(np.int64).tolist()  # its update takes signed 64-bit ints

    def apache():
        s = datasketches.count_min_sketch(5, 1 << 16)
        for k in sub:
            s.update(k)

    med, best = _timed(apache, repeat)
    theirs = _report("DataSketches count_min_sketch.update per key", base_n, "updates",
                     med, best)
    results["countmin_apache"] = theirs
    _verdict("count-min, M updates/s", ours / 1e6, 20.0, "")
    print(f"  (ratio to DataSketches per-key updates: {ours / theirs:.1f}x)")
    return results


def _jaccard_rmse(estimates, truth):
    return math.sqrt(float(np.mean((np.asarray(estimates) - np.asarray(truth)) ** 2)))


def bench_minhash(docs, base_docs, repeat):
    n = len(docs)
    print(f"MinHash 128 permutations, {n:,} documents x 200 shingles ({base_docs:,} "
          "baseline)")
    med, best = _timed(lambda: signatures(docs, 128), repeat)
    ours = n / med
    print(f"  {'mergeagg signatures(docs)':<44} {ours:>11,.0f} docs/s (median), "
          f"{n / best:,.0f} best")
    results = {"minhash": ours}
    # Accuracy on 200 pairs: each document against a copy with a fraction replaced.
    rng = np.random.default_rng(SEED + 1)
    pairs_a, pairs_b, truth = [], [], []
    for i in range(min(200, n)):
        a = docs[i]
        keep = int(rng.integers(20, 200))
        b = a[:keep] + [rng.bytes(9) for _ in range(200 - keep)]
        pairs_a.append(a)
        pairs_b.append(b)
        truth.append(keep / (400 - keep))
    sig = signatures(pairs_a + pairs_b, 128)
    k = len(pairs_a)
    ours_est = (sig[:k] == sig[k:]).mean(axis=1)
    print(f"  mergeagg Jaccard RMSE on {k} pairs: {_jaccard_rmse(ours_est, truth):.4f}")
    try:
        import datasketch
    except ImportError:  # pragma: no cover
        return results
    sub = docs[:base_docs]
    med, best = _timed(lambda: datasketch.MinHash.bulk(sub, num_perm=128), repeat)
    theirs = base_docs / med
    print(f"  {'datasketch MinHash.bulk':<44} {theirs:>11,.0f} docs/s (median), "
          f"{base_docs / best:,.0f} best")
    results["minhash_datasketch"] = theirs
    ma = datasketch.MinHash.bulk(pairs_a, num_perm=128)
    mb = datasketch.MinHash.bulk(pairs_b, num_perm=128)
    ds_est = [x.jaccard(y) for x, y in zip(ma, mb)]
    print(f"  datasketch Jaccard RMSE on {k} pairs: {_jaccard_rmse(ds_est, truth):.4f} "
          f"(expected about {math.sqrt(np.mean([j * (1 - j) for j in truth]) / 128):.4f})")
    _verdict("MinHash vs datasketch MinHash.bulk", ours / theirs, 2.0, "x")
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=10_000_000, help="distinct keys")
    ap.add_argument("--baseline-keys", type=int, default=1_000_000,
                    help="keys for the per-item baselines (rates are compared)")
    ap.add_argument("--docs", type=int, default=10_000, help="documents for MinHash")
    ap.add_argument("--baseline-docs", type=int, default=2_000,
                    help="documents for datasketch MinHash.bulk")
    ap.add_argument("--repeat", type=int, default=5, help="repetitions (median reported)")
    ap.add_argument("--only", choices=["hll", "hll-bytes", "countmin", "minhash"],
                    action="append", help="run only these sections (repeatable)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    args = ap.parse_args(argv)
    if args.smoke:
        args.keys, args.baseline_keys = 200_000, 20_000
        args.docs, args.baseline_docs, args.repeat = 300, 100, 2
    sections = args.only or ["hll", "hll-bytes", "countmin", "minhash"]
    keys = _keys(args.keys)
    base_n = min(args.baseline_keys, args.keys)
    results = {}
    if "hll" in sections:
        results.update(bench_hll_ints(keys, base_n, args.repeat))
    if "hll-bytes" in sections:
        results.update(bench_hll_bytes(keys, base_n, args.repeat))
    if "countmin" in sections:
        results.update(bench_countmin(keys, base_n, args.repeat))
    if "minhash" in sections:
        docs = _docs(args.docs)
        results.update(bench_minhash(docs, min(args.baseline_docs, args.docs), args.repeat))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
