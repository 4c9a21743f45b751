"""Soak the local runtime: many jobs in a row that stress its transport and its policy.

Each job (seeded, different every time) has many in-memory splits whose data travels
inside the task messages (tens to hundreds of kB each), outputs just under and over the
size that rides inline (so batches of them are larger than a socket's buffer in both
directions), stragglers with backups on (so losers are cancelled while they send), kills
and raised errors, and idle workers taking attempts queued behind stalls. Every job must
end within ``--job-timeout`` seconds (a hang prints every thread's stack and fails) and
with the fingerprint of the serial run. The pool is reused across jobs (a Session) for half
of them, started afresh for the other half.

    python benchmarks/soak.py --jobs 200          # the soak
    python benchmarks/soak.py --smoke             # a few jobs, for CI (tests/runtime/test_soak.py)
"""

from __future__ import annotations

import argparse
import faulthandler
import random
import sys
import time
from collections import Counter

import mergeagg as ma
from mergeagg.runtime.refs import INLINE_LIMIT


def count_chars(shard):
    """A partial whose output size follows its input: one key per distinct token."""
    out = Counter()
    for text in shard:
        out.update(text.split())
    return out


def add(a, b):
    a.update(b)
    return a


def make_job(rng):
    n_splits = rng.randint(20, 60)
    # Outputs near the inline limit: each distinct token costs about 20 pickled bytes.
    tokens_per_split = rng.choice([INLINE_LIMIT // 40, INLINE_LIMIT // 22, INLINE_LIMIT // 12])
    payload_kb = rng.choice([16, 64, 256])
    shards = []
    for i in range(n_splits):
        words = [f"t{i % 7}-{rng.randrange(tokens_per_split * 2)}"
                 for _ in range(tokens_per_split)]
        filler = "x" * (payload_kb * 1024 // 4)
        shards.append([" ".join(words), filler[:len(filler) // 2], filler[len(filler) // 2:]])
    faults = (f"delay={rng.choice([0.05, 0.1])}x{rng.choice([5, 20])},"
              f"kill={rng.choice([0.0, 0.03])},raise={rng.choice([0.0, 0.03])},"
              f"seed={rng.randrange(10**6)}")
    return shards, faults


def run_jobs(jobs, seed, job_timeout, workers):
    rng = random.Random(seed)
    agg = ma.Aggregator(count_chars, add)
    session = ma.Session(workers=workers, backup_min_seconds=0.0)
    worst = 0.0
    try:
        for j in range(jobs):
            shards, faults = make_job(rng)
            clean = ma.run(agg, shards, workers=0, fan_in=4).fingerprint
            faulthandler.dump_traceback_later(job_timeout, exit=True)
            start = time.perf_counter()
            if j % 2:
                r = session.run(agg, shards, fan_in=4, faults=faults, max_attempts=8,
                                backup_after=0.5)
            else:
                r = ma.run(agg, shards, workers=workers, fan_in=4, faults=faults,
                           max_attempts=8, backup_after=0.5, progress=False)
            took = time.perf_counter() - start
            faulthandler.cancel_dump_traceback_later()
            worst = max(worst, took)
            if r.fingerprint != clean:
                print(f"job {j}: fingerprint {r.fingerprint} != clean {clean} ({faults})")
                return 1
            rep = r.report
            print(f"job {j:3d} {'session' if j % 2 else 'run    '} {len(shards):3d} splits "
                  f"{took:6.2f}s  backups {rep.backups_launched:2d}/{rep.backups_won:2d}  "
                  f"lost {rep.workers_lost}  failures {len(rep.failures):2d}  "
                  f"moved {rep.counters.get('attempts_moved', 0)}  ok", flush=True)
    finally:
        session.close()
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"{jobs} jobs, all with the clean fingerprint; slowest {worst:.2f}s; "
          f"load {' '.join(load)}")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=50)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--job-timeout", type=float, default=120.0,
                   help="seconds a job may take before it counts as hung")
    p.add_argument("--smoke", action="store_true", help="a few jobs (CI)")
    args = p.parse_args(argv)
    jobs = 4 if args.smoke else args.jobs
    return run_jobs(jobs, args.seed, args.job_timeout, args.workers)


if __name__ == "__main__":
    sys.exit(main())
