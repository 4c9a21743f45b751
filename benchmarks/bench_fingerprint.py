"""How fast is ``mergeagg.fingerprint``? The runtime fingerprints every task output.

Target (issue 2): at least 2 million dict entries per second (str keys, int values) on the
2-core reference machine. The baseline measured in the same run is the obvious canonical
encoding a user might write: ``sha256(pickle.dumps(sorted(d.items())))``.

Method: fixed seeds, ``--repeat`` timed runs after one warm-up, median and min reported
(noise on this machine is 3-7 %). Also measured: a set of str, a list of int, a list of str,
and nested values the keyed jobs shuffle (rows, posting lists, join groups), whose long runs
the fingerprint encodes in bulk; the rows are also timed one value at a time.

    python benchmarks/bench_fingerprint.py            # 1,000,000 entries, 7 repetitions
    python benchmarks/bench_fingerprint.py --smoke    # what CI runs: tiny, fast
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import pickle
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from workloads import loadavg, str_int_dict  # noqa: E402

from mergeagg import fingerprint  # noqa: E402
from mergeagg.fingerprint import Fingerprinter  # noqa: E402

TARGET = 2_000_000  # dict entries per second


def _times(fn, value, repeat):
    fn(value)  # warm-up
    out = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        fn(value)
        out.append(time.perf_counter() - start)
    return out


def _sorted_pickle_sha(d):
    return hashlib.sha256(pickle.dumps(sorted(d.items()), protocol=5)).hexdigest()


def _one_at_a_time(values):
    """The same digest as ``fingerprint(values)`` for a list, one ``update`` per item: the
    item-by-item encoder, without the bulk path that long runs take."""
    f = Fingerprinter()
    f._buf += b"l" + len(values).to_bytes(8, "little")
    for v in values:
        f.update(v)
    return f.hexdigest()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="entries (default 1,000,000)")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs (default 7)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    args = parser.parse_args(argv)
    n, repeat = (20_000, 3) if args.smoke else (args.n, args.repeat)

    d = str_int_dict(n)
    keys = list(d)
    rows = [(k, v, "x") for k, v in d.items()]
    postings = {k: [v, v + 1, v + 2] for k, v in d.items()}
    groups = [[[row], [row[:2]]] for row in rows]
    cases = [
        ("dict str->int", d, fingerprint),
        ("  baseline: sha256(pickle(sorted(items)))", d, _sorted_pickle_sha),
        ("set of str", set(keys), fingerprint),
        ("list of int", list(d.values()), fingerprint),
        ("list of str", keys, fingerprint),
        ("list of rows (3-tuples: str, int, str)", rows, fingerprint),
        ("  baseline: the same, one value at a time", rows, _one_at_a_time),
        ("dict str -> list of 3 int", postings, fingerprint),
        ("list of join groups [[rows], [rows]]", groups, fingerprint),
    ]
    assert fingerprint(rows) == _one_at_a_time(rows)
    print(f"fingerprint benchmark: n = {n:,}, {repeat} repetitions, python "
          f"{sys.version.split()[0]}; {loadavg()}")
    print(f"{'value':<44} {'median rate':>14} {'min rate':>14} {'median s':>9}")
    medians = {}
    for label, value, fn in cases:
        times = _times(fn, value, repeat)
        med = statistics.median(times)
        medians[label] = med
        print(f"{label:<44} {n / med:>12,.0f}/s {n / max(times):>12,.0f}/s {med:>9.4f}")
    dict_rate = n / medians["dict str->int"]
    baseline = medians["  baseline: sha256(pickle(sorted(items)))"]
    print(f"dict: median {dict_rate:,.0f} entries/s = {dict_rate / TARGET:.2f}x the "
          f"{TARGET:,}/s target; {baseline / medians['dict str->int']:.2f}x the "
          f"sorted-pickle baseline; {loadavg()}")
    if args.smoke:
        print("(smoke run: sizes too small for the figures to mean anything)")
    elif dict_rate < TARGET:
        print("TARGET MISSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
