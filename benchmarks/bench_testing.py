"""The test kit's failure-invariance check: 100 examples of a word-count aggregator.

Issue 19's figures. A user's word count (a ``Counter`` partial, ``a + b`` combine) over 8
in-memory shards of 20 lines is checked by ``mergeagg.testing.assert_failure_invariant``
with 100 fault plans drawn by ``fault_plans`` (up to 3 faults each), two ways:

* **in process** — the default executor: 2 workers simulated on a virtual clock, kills,
  hangs, delays and raises; target <= 5 s;
* **local** — ``executor="local"``: 2 real worker processes (their start included), real
  SIGKILLs only (``fault_plans(kinds=("kill",))``); target <= 30 s.

Each is measured against a baseline in the same repetition, back to back: the same number
of faulty runs written by hand, as a user without the kit would (a loop of ``run_on`` with
a seeded fault spec per run in process; a reused ``Session`` and one ``kill=`` spec per run
on processes), comparing each fingerprint with the clean one. The ratio is the kit's cost
over the bare runs (hypothesis's drawing, the serial reference, the audit of every map
with ``verify=1.0``). Times are the median of the repetitions; every repetition's pair is
printed with the load average beside it; the order of the pair alternates.

    python benchmarks/bench_testing.py              # 100 examples, 3 repetitions
    python benchmarks/bench_testing.py --smoke      # what CI runs: 5 examples, 1 repetition
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter

# Hypothesis keeps a cache of constants in ./.hypothesis whatever the database setting: a
# benchmark leaves nothing in the directory it is run from.
if "HYPOTHESIS_STORAGE_DIRECTORY" not in os.environ:
    _storage = tempfile.mkdtemp(prefix="bench-testing-hypothesis-")
    os.environ["HYPOTHESIS_STORAGE_DIRECTORY"] = _storage
    atexit.register(shutil.rmtree, _storage, True)

from mergeagg import Aggregator, Session  # noqa: E402
from mergeagg.inputs import as_source  # noqa: E402
from mergeagg.runtime.api import run_on  # noqa: E402
from mergeagg.runtime.inprocess import InProcessExecutor  # noqa: E402
from mergeagg.runtime.master import PolicyConfig  # noqa: E402
from mergeagg.testing import assert_failure_invariant, fault_plans  # noqa: E402

INPROCESS_TARGET = 5.0
LOCAL_TARGET = 30.0
SHARDS = [[" ".join(f"w{(i * 13 + j * 5) % 41}" for j in range(30)) for i in range(k, k + 20)]
          for k in range(0, 8 * 20, 20)]


def words(lines):
    return Counter(w for line in lines for w in line.split())


def add(a, b):
    return a + b


WORDCOUNT = Aggregator(words, add, name="wordcount")


def load():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def by_hand_inprocess(n, seed):
    """``n`` faulty runs written by hand on the in-process executor."""
    src = as_source(SHARDS)
    clean = run_on(WORDCOUNT, src, None, own=True, config=PolicyConfig()).fingerprint
    for i in range(n):
        spec = f"kill=0.1,hang=0.05,delay=0.1x10,raise=0.1,seed={seed + i}"
        r = run_on(WORDCOUNT, src, InProcessExecutor(2), own=True, config=PolicyConfig(),
                   faults=spec)
        if r.fingerprint != clean:
            raise SystemExit(f"by hand: run {i} changed the fingerprint")


def by_hand_local(n, seed):
    """``n`` runs with real kills, written by hand on a reused Session."""
    with Session(workers=2, heartbeat_interval=0.05, backup_min_seconds=0.0) as s:
        clean = run_on(WORDCOUNT, as_source(SHARDS), None, own=True,
                       config=PolicyConfig()).fingerprint
        for i in range(n):
            r = s.run(WORDCOUNT, SHARDS, faults=f"kill=0.15,seed={seed + i}",
                      heartbeat_timeout=1.0)
            if r.fingerprint != clean:
                raise SystemExit(f"by hand: run {i} changed the fingerprint")


def with_kit(n, seed, executor, kinds):
    planned = []

    def note(plan):
        planned.append(sum(1 for by in plan.only.values() for a in by if a == 1))
        return plan

    plans = fault_plans(kinds=kinds, splits=len(SHARDS)).map(note)
    assert_failure_invariant(WORDCOUNT, SHARDS, plans=plans, executor=executor,
                             max_examples=n, seed=seed)
    return len(planned), sum(planned)


def timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny: 5 examples, 1 repetition")
    ap.add_argument("--examples", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-local", action="store_true", help="skip the real-process case")
    args = ap.parse_args(argv)
    n, reps = (5, 1) if args.smoke else (args.examples, args.repeat)

    cases = [("in process", "inprocess", ("kill", "hang", "delay", "raise"),
              by_hand_inprocess, INPROCESS_TARGET)]
    if not args.no_local:
        cases.append(("2 real processes, kills", "local", ("kill",), by_hand_local,
                      LOCAL_TARGET))
    print(f"assert_failure_invariant, word count over {len(SHARDS)} shards, {n} examples, "
          f"{reps} repetition(s)")
    failed = False
    for label, executor, kinds, by_hand, target in cases:
        kit_times, hand_times = [], []
        for r in range(reps):
            seed = args.seed + r
            if r % 2:  # alternate which goes first, so that neither always starts cold
                kit, (runs, kills) = timed(with_kit, n, seed, executor, kinds)
                hand, _ = timed(by_hand, n, seed)
            else:
                hand, _ = timed(by_hand, n, seed)
                kit, (runs, kills) = timed(with_kit, n, seed, executor, kinds)
            hand_times.append(hand)
            kit_times.append(kit)
            print(f"  {label}, rep {r}: kit {kit:.2f} s ({runs} plans, {kills} first-attempt "
                  f"faults), by hand {hand:.2f} s, ratio {kit / hand:.2f}  [load {load()}]")
        kit, hand = statistics.median(kit_times), statistics.median(hand_times)
        verdict = "" if args.smoke else (
            f"  target <= {target:g} s: {'met' if kit <= target else 'MISSED'}")
        failed |= not args.smoke and kit > target
        print(f"{label}: kit {kit:.2f} s, by hand {hand:.2f} s (medians), ratio of the medians "
              f"{kit / hand:.2f}{verdict}  [load {load()}]")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
