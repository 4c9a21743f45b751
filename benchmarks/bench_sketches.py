"""Sketch throughput against datasketch and Apache DataSketches, measured in the same run.

Workloads (shared/BENCHMARKS.md, generated in memory from fixed seeds):

* **keys**: ``--keys`` distinct uint64 keys (default 10,000,000): ``i * 0x9E3779B97F4A7C15``
  mod 2**64 for ``i < n`` (a bijection, so all distinct); the bytes workload is the same
  keys as 8-byte strings (a Python list of ``bytes``, and a numpy ``S8`` array).
* **documents**: ``--docs`` documents (default 10,000), each a set of 200 distinct
  byte-string shingles of 4-12 bytes drawn from a 50,000-shingle vocabulary.

Measured: HyperLogLog p=14 bulk updates of integer and bytes keys; count-min (width 2**16,
depth 5) integer-key updates; MinHash signatures at 128 permutations, with the Jaccard
accuracy of both libraries on 200 document pairs; KLL (k=200) bulk updates of float32
values against ``datasketches.kll_floats_sketch.update(array)`` (its numpy bulk path, same
k, same values), with both rank errors against DataSketches' published bound; theta
(lg_k=12) updates against ``datasketches.update_theta_sketch``; Bloom filter adds (10M
keys, 1% at capacity) with the measured false-positive rate. Baselines without a bulk
path update item by item from Python (their fastest documented path); since that is slow,
they run on a prefix of the keys (``--baseline-keys``, default 1,000,000) and are compared
as rates. DataSketches' HLL is fed two key kinds: small ints (0 .. n) and the benchmark's
keys, half of which are >= 2**63 (Python ints it cannot take as int64). Each figure is the
median of ``--repeat`` runs (the best is printed too); in the KLL, theta and Bloom sections
contender and baseline alternate, and every pair is printed.

Targets (issue 6): HLL integer keys >= 30M keys/s and >= 1.1x DataSketches; HLL bytes keys
>= 5x datasketch; count-min >= 20M updates/s; MinHash >= 2x datasketch ``MinHash.bulk``.
Issue 17: KLL bulk update >= 2x ``kll_floats_sketch`` with rank error within its bound;
theta >= 2x ``update_theta_sketch``; Bloom >= 20M adds/s from numpy keys.

    python benchmarks/bench_sketches.py            # full sizes, 5 repetitions
    python benchmarks/bench_sketches.py --smoke    # tiny sizes, for CI
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np

from mergeagg.algorithms.bloom import BloomFilter
from mergeagg.algorithms.countmin import CountMin
from mergeagg.algorithms.hyperloglog import HyperLogLog
from mergeagg.algorithms.kll import KLL
from mergeagg.algorithms.minhash import signatures
from mergeagg.algorithms.theta import ThetaSketch

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


def _alternate(fns, repeat):
    """Time each of ``fns`` once per round, ``repeat`` rounds: {name: [seconds, ...]}."""
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return times


def _pairs(label, times, sizes):
    """Print every round's rates and the median ratio of the first name to the second."""
    (a, ta), (b, tb) = times.items()
    na, nb = sizes[a], sizes[b]
    print(f"  {label} rounds (M/s, {a} / {b}): " + ", ".join(
        f"{na / x / 1e6:.2f}/{nb / y / 1e6:.2f}" for x, y in zip(ta, tb)))
    return na / statistics.median(ta), nb / statistics.median(tb)


def _loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:  # pragma: no cover - not Linux
        return "n/a"


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
    theirs = _report("DataSketches hll_sketch.update, keys half >= 2**63", base_n, "keys",
                     med, best)
    results["hll_int_apache"] = theirs
    small = list(range(base_n))

    def apache_small():
        s = datasketches.hll_sketch(14)
        for k in small:
            s.update(k)

    med, best = _timed(apache_small, repeat)
    theirs_small = _report("DataSketches hll_sketch.update, small ints", base_n, "keys", med,
                           best)
    results["hll_int_apache_small"] = theirs_small
    theirs = max(theirs, theirs_small)
    _verdict("HLL int keys, M keys/s", ours / 1e6, 30.0, "")
    _verdict("HLL int keys vs DataSketches (its faster key kind)", ours / theirs, 1.1, "x")
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


def _max_rank_error(sorted_data, estimates, qs):
    ranks = np.searchsorted(sorted_data, estimates, side="right") / sorted_data.shape[0]
    return float(np.abs(ranks - qs).max())


def bench_kll(n, repeat):
    print(f"KLL k=200, {n:,} float32 values (bulk update from a numpy array, both sides)")
    values = np.random.default_rng(SEED).lognormal(size=n).astype(np.float32)
    fns = {"mergeagg": lambda: KLL(200, "float").update(values)}
    try:
        import datasketches
    except ImportError:  # pragma: no cover
        datasketches = None
    if datasketches is not None:
        fns["datasketches"] = lambda: datasketches.kll_floats_sketch(200).update(values)
    times = _alternate(fns, repeat)
    results = {}
    ours_sk = KLL(200, "float").update(values)
    qs = np.linspace(0.01, 0.99, 99)
    truth = np.sort(values)
    ours_err = _max_rank_error(truth, ours_sk.quantiles(qs), qs)
    if datasketches is None:
        results["kll"] = n / statistics.median(times["mergeagg"])
        return results
    ours, theirs = _pairs("KLL", times, {"mergeagg": n, "datasketches": n})
    print(f"  {'mergeagg KLL.update(float32 array)':<44} {ours / 1e6:>9.3f}M values/s")
    print(f"  {'DataSketches kll_floats_sketch.update(array)':<44} {theirs / 1e6:>9.3f}M "
          "values/s")
    ds_sk = datasketches.kll_floats_sketch(200)
    ds_sk.update(values)
    ds_err = _max_rank_error(truth, np.array(ds_sk.get_quantiles(qs)), qs)
    bound = datasketches.kll_floats_sketch.get_normalized_rank_error(200, False)
    print(f"  largest rank error over 99 quantiles: mergeagg {ours_err:.4f}, DataSketches "
          f"{ds_err:.4f} (published bound {bound:.4f}; retained {ours_sk.num_retained} / "
          f"{ds_sk.num_retained})")
    results.update(kll=ours, kll_apache=theirs, kll_err=ours_err, kll_err_apache=ds_err)
    _verdict("KLL vs DataSketches kll_floats_sketch", ours / theirs, 2.0, "x")
    _verdict("KLL rank error within the bound (margin)", bound - ours_err, 0.0, "")
    return results


def bench_theta(keys, base_n, repeat):
    print(f"theta lg_k=12, integer keys ({keys.shape[0]:,} ours, {base_n:,} baseline)")
    n = keys.shape[0]
    fns = {"mergeagg": lambda: ThetaSketch(12).update(keys)}
    try:
        import datasketches
    except ImportError:  # pragma: no cover
        datasketches = None
    sub = keys[:base_n].view(np.int64).tolist()
    if datasketches is not None:
        def apache():
            s = datasketches.update_theta_sketch(12)
            for k in sub:
                s.update(k)
        fns["datasketches"] = apache
    times = _alternate(fns, repeat)
    if datasketches is None:
        return {"theta": n / statistics.median(times["mergeagg"])}
    ours, theirs = _pairs("theta", times, {"mergeagg": n, "datasketches": base_n})
    print(f"  {'mergeagg ThetaSketch.update(uint64 array)':<44} {ours / 1e6:>9.3f}M keys/s")
    print(f"  {'DataSketches update_theta_sketch per key':<44} {theirs / 1e6:>9.3f}M keys/s")
    med, best = _timed(lambda: ThetaSketch(12, hash="datasketches").update(keys), repeat)
    ds_mode = _report("mergeagg, hash='datasketches'", n, "keys", med, best)
    est = ThetaSketch(12).update(keys).estimate()
    print(f"  estimate {est:,.0f} of {n:,} ({100 * (est / n - 1):+.2f}%)")
    _verdict("theta vs DataSketches update_theta_sketch", ours / theirs, 2.0, "x")
    return {"theta": ours, "theta_apache": theirs, "theta_ds_hash": ds_mode}


def bench_bloom(keys, repeat):
    n = keys.shape[0]
    print(f"Bloom filter, {n:,} integer keys, sized for {n:,} at 1%")
    med, best = _timed(lambda: BloomFilter(capacity=n, fpp=0.01).update(keys), repeat)
    ours = _report("mergeagg BloomFilter.update(uint64 array)", n, "adds", med, best)
    bf = BloomFilter(capacity=n, fpp=0.01).update(keys)
    absent = keys[: max(1, n // 10)] + np.uint64(1)  # odd multiples: never added
    med, best = _timed(lambda: bf.contains_many(absent), repeat)
    _report("mergeagg contains_many(uint64 array)", absent.shape[0], "queries", med, best)
    measured = float(bf.contains_many(absent).mean())
    print(f"  false-positive rate: measured {100 * measured:.3f}% on {absent.shape[0]:,} "
          f"absent keys, predicted from the bits {100 * bf.false_positive_rate():.3f}%, "
          f"{bf.num_bits / n:.1f} bits per key")
    _verdict("Bloom adds, M/s", ours / 1e6, 20.0, "")
    return {"bloom": ours, "bloom_fpp": measured}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=10_000_000, help="distinct keys")
    ap.add_argument("--baseline-keys", type=int, default=1_000_000,
                    help="keys for the per-item baselines (rates are compared)")
    ap.add_argument("--docs", type=int, default=10_000, help="documents for MinHash")
    ap.add_argument("--baseline-docs", type=int, default=2_000,
                    help="documents for datasketch MinHash.bulk")
    ap.add_argument("--repeat", type=int, default=5, help="repetitions (median reported)")
    ap.add_argument("--values", type=int, default=10_000_000, help="values for KLL")
    ap.add_argument("--only", choices=["hll", "hll-bytes", "countmin", "minhash", "kll",
                                       "theta", "bloom"],
                    action="append", help="run only these sections (repeatable)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    args = ap.parse_args(argv)
    if args.smoke:
        args.keys, args.baseline_keys, args.values = 200_000, 20_000, 200_000
        args.docs, args.baseline_docs, args.repeat = 300, 100, 2
    sections = args.only or ["hll", "hll-bytes", "countmin", "minhash", "kll", "theta",
                             "bloom"]
    print(f"load average at start: {_loadavg()}")
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
    if "kll" in sections:
        results.update(bench_kll(args.values, args.repeat))
    if "theta" in sections:
        results.update(bench_theta(keys, base_n, args.repeat))
    if "bloom" in sections:
        results.update(bench_bloom(keys, args.repeat))
    print(f"load average at end: {_loadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
