"""Word count under injected faults: worker kills and stragglers against the clean run.

Issue 3's failure figures. The Zipf corpus (shared/BENCHMARKS.md) is cut into 100 splits
(2 MB each at the reference size of 200 MB) and counted by ``mergeagg.algorithms.wordcount()``
on 2 worker processes, four ways, in the same run:

* **clean** — no faults: the baseline every ratio is measured against;
* **kill** — 10% of map attempts die (SIGKILL) at a random point of the partial
  (``kill=0.1,kinds=map,seed=S``); target: wall time <= 1.25x the clean run. The
  re-executions are counted from ``result.report.failures`` and split by why they happened:
  the attempt that was killed and completed outputs that lived on the dead worker and were
  still needed (attempts only queued on the dead worker never ran: they move to another
  worker with their number, counted in ``attempts_moved`` with work stealing);
* **delay, backups on** — 5% of map tasks take 10x their normal time, as a sleep
  (``delay=0.05x10,kinds=map,attempts=1,seed=S``: only the first attempt is slow);
  target: <= 1.3x the clean run;
* **delay, backups off** — the same stragglers with ``backups=False``: the figure backups
  are there to beat.

Clean runs of the same job vary by 2x on a shared machine (4.1 to 9.3 s in one run), so
every faulty run is **paired** with a clean run made right before it: repetition ``i`` runs,
for each faulty case, ``clean`` then that case, with fault seed ``--seed + i`` (a fixed
schedule per repetition). Each pair is printed with ``/proc/loadavg`` and its ratio (faulty
over its own clean run); the targets are judged on the median of those paired ratios. The
ratio of the medians (every faulty run's median over the median of all clean runs) is
printed beside it for reference. Every run's fingerprint must equal the clean run's (exit
status 1 otherwise). A job that fails outright (the runtime gives up) is reported as such
and left out of the medians; so is a run abandoned by ``--give-up`` (default: past 4x the
clean run of its pair), since a job whose lost work outgrows its progress may never finish.

    python benchmarks/bench_faults.py                  # the reference: 200 MB, 3 repetitions
    python benchmarks/bench_faults.py --smoke          # what CI runs: ~2 MB, under 30 s
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import threading
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from workloads import SMOKE_CORPUS_BYTES, parse_size, zipf_corpus  # noqa: E402

import mergeagg  # noqa: E402
from mergeagg.errors import MergeaggError  # noqa: E402
from mergeagg.runtime.faults import FaultPlan  # noqa: E402

KILL_TARGET = 1.25
DELAY_TARGET = 1.3

# Why a task ran again, as the report below names it (keys: our classification).
KILLED = "killed mid-partial (the injected fault)"
OTHER_LOSS = "lost with its worker, no kill injected on it"
OUTPUT_LOST = "completed output lost with its worker"


def scenarios(kill, delay, factor):
    """The four cases: (label, fault spec with ``{seed}`` left open, backups, target)."""
    return [
        ("clean", None, True, None),
        (f"kill {kill:.0%} of map attempts", f"kill={kill},kinds=map,seed={{seed}}", True,
         KILL_TARGET),
        (f"delay {delay:.0%} x{factor:g}, backups on",
         f"delay={delay}x{factor},kinds=map,attempts=1,seed={{seed}}", True, DELAY_TARGET),
        (f"delay {delay:.0%} x{factor:g}, backups off",
         f"delay={delay}x{factor},kinds=map,attempts=1,seed={{seed}}", False, None),
    ]


def reexecutions(report, plan):
    """Re-executed attempts by cause: a :class:`Counter` keyed by the causes above (and any
    other cause the report names, verbatim).

    A lost attempt is the injected kill when the plan put a kill on that very (task,
    attempt). (An attempt only queued on the killed worker is no failure: it moves.)
    """
    causes = Counter()
    for f in report.failures:
        if f.cause.startswith("worker lost"):
            fault = plan.fault_for(f.task, f.attempt) if plan is not None else None
            killed = fault is not None and fault.kind == "kill"
            causes[KILLED if killed else OTHER_LOSS] += 1
        elif f.cause == "output lost with worker":
            causes[OUTPUT_LOST] += 1
        else:
            causes[f.cause] += 1
    return causes


def injected(plan, n_maps):
    """How many first attempts of the ``n_maps`` map tasks the plan hits, by fault kind."""
    hits = Counter()
    for i in range(n_maps):
        fault = plan.fault_for(f"map-{i}", 1)
        if fault is not None:
            hits[fault.kind] += 1
    return hits


class GaveUp(BaseException):
    """Raised by the alarm of ``--give-up`` (a BaseException: nothing in a run swallows it)."""


def _give_up(signum, frame):
    raise GaveUp()


def one_run(agg, path, split_size, workers, spec, backups, limit=None):
    """Run once; returns ``(seconds, result or None, error text or None)``.

    ``limit`` (seconds) abandons the run past it, where an interval timer is available:
    ``run`` closes its workers on the way out, as it does on Ctrl-C.
    """
    alarm = (limit is not None and hasattr(signal, "setitimer")
             and threading.current_thread() is threading.main_thread())
    if alarm:
        previous = signal.signal(signal.SIGALRM, _give_up)
        signal.setitimer(signal.ITIMER_REAL, limit)
    start = time.perf_counter()
    try:
        result = mergeagg.run(agg, path, workers=workers, split_size=split_size,
                              faults=spec, backups=backups)
    except MergeaggError as exc:
        return time.perf_counter() - start, None, f"{type(exc).__name__}: {exc}"
    except GaveUp:
        return time.perf_counter() - start, None, f"gave up after {limit:.0f}s (--give-up)"
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    return time.perf_counter() - start, result, None


def describe(result, plan):
    """One line on what the runtime did in a faulty run."""
    rep = result.report
    maps = [t for t in rep.tasks if t.kind == "map"]
    durations = sorted(t.seconds for t in maps)
    causes = reexecutions(rep, plan)
    extra = sum(t.attempts - 1 for t in rep.tasks)
    parts = [f"{extra} extra attempts"]
    if causes:
        parts.append("(" + ", ".join(f"{n} {c}" for c, n in causes.most_common()) + ")")
    parts.append(f"attempts moved {rep.counters.get('attempts_moved', 0)}")
    parts.append(f"workers lost {rep.workers_lost}, backups {rep.backups_launched} "
                 f"launched / {rep.backups_won} won")
    parts.append(f"map task median {statistics.median(durations):.3f}s, "
                 f"max {durations[-1]:.3f}s")
    parts.append("phases " + " ".join(f"{k} {v:.2f}s" for k, v in rep.phases.items()
                                      if v >= 0.005))
    return "; ".join(parts)


def _loadavg():
    """The first three fields of /proc/loadavg (or os.getloadavg()), as text."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        if hasattr(os, "getloadavg"):
            return " ".join(f"{x:.2f}" for x in os.getloadavg())
        return "n/a"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="200M", help="corpus size, e.g. 2M or 200M")
    parser.add_argument("--splits", type=int, default=100, help="splits (default 100)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (default 3)")
    parser.add_argument("--seed", type=int, default=1, help="first fault seed (default 1)")
    parser.add_argument("--kill", type=float, default=0.1, help="kill rate (default 0.1)")
    parser.add_argument("--delay", type=float, default=0.05, help="delay rate (default 0.05)")
    parser.add_argument("--factor", type=float, default=10.0, help="slow-down (default 10)")
    parser.add_argument("--give-up", type=float, default=4.0,
                        help="abandon a faulty run after this many times the clean run "
                             "of its pair (default 4; 0: never)")
    parser.add_argument("--smoke", action="store_true", help="~2 MB, 1 repetition, for CI")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print what the runtime did in every faulty run")
    args = parser.parse_args(argv)
    size = SMOKE_CORPUS_BYTES if args.smoke else parse_size(args.size)
    repeat = 1 if args.smoke else args.repeat

    path = zipf_corpus(size)
    nbytes = os.path.getsize(path)
    split_size = -(-nbytes // args.splits)
    agg = mergeagg.algorithms.wordcount()
    cases = scenarios(args.kill, args.delay, args.factor)
    clean_label = cases[0][0]
    faulty = cases[1:]
    print(f"word count under faults: {nbytes / 1e6:.1f} MB Zipf corpus ({path}), "
          f"{args.splits} splits of {split_size / 1e6:.2f} MB, workers={args.workers}, "
          f"{repeat} repetition(s), fault seeds {args.seed}..{args.seed + repeat - 1}; "
          "each faulty run right after a clean run of its own")
    print(f"loadavg at start: {_loadavg()}")

    # Untimed: starts the workers' machinery and warms the page cache.
    one_run(agg, path, split_size, args.workers, None, True)
    times = {label: [] for label, *_ in cases}
    paired = {label: [] for label, *_ in faulty}  # faulty run / the clean run of its pair
    failed = {label: [] for label, *_ in faulty}
    causes = {label: Counter() for label, *_ in faulty}
    extra = {label: [] for label, *_ in faulty}
    clean_fp = None

    def check(label, seed, result):
        nonlocal clean_fp
        if clean_fp is None:
            clean_fp = result.fingerprint
        if result.fingerprint != clean_fp:
            print(f"ERROR: {label} (seed {seed}) gave fingerprint {result.fingerprint}, "
                  f"the clean run {clean_fp}", file=sys.stderr)
            return False
        return True

    print(f"\n{'rep':>5}  {'case':<34} {'loadavg':<15} {'clean':>7} {'faulty':>7} "
          f"{'ratio':>7}  faults injected")
    for i in range(repeat):
        seed = args.seed + i
        for label, spec, backups, _target in faulty:
            load = _loadavg()
            clean_s, clean_result, error = one_run(agg, path, split_size, args.workers,
                                                   None, True)
            if error is not None:
                print(f"ERROR: the clean run failed after {clean_s:.2f}s: {error}",
                      file=sys.stderr)
                return 1
            if not check(clean_label, seed, clean_result):
                return 1
            times[clean_label].append(clean_s)
            limit = max(args.give_up * clean_s, 10.0) if args.give_up > 0 else None
            spec = spec.format(seed=seed)
            plan = FaultPlan.parse(spec)
            seconds, result, error = one_run(agg, path, split_size, args.workers, spec,
                                             backups, limit)
            head = f"{i + 1:>2}/{repeat:<2}  {label:<34} {load:<15} {clean_s:6.2f}s"
            if error is not None:
                failed[label].append(f"seed {seed}: {error.splitlines()[0]}")
                print(f"{head} JOB FAILED after {seconds:.2f}s: {error.splitlines()[0]}")
                continue
            if not check(label, seed, result):
                return 1
            times[label].append(seconds)
            paired[label].append(seconds / clean_s)
            causes[label] += reexecutions(result.report, plan)
            extra[label].append(sum(t.attempts - 1 for t in result.report.tasks))
            hits = injected(plan, len(result.report.attempts))
            print(f"{head} {seconds:6.2f}s {seconds / clean_s:6.2f}x  "
                  + ", ".join(f"{n} first attempts hit by {k}" for k, n in hits.items()))
            if args.verbose:
                print("        " + describe(result, plan))

    clean = statistics.median(times[clean_label])
    print(f"\n{'case':<34} {'median':>8} {'min':>8} {'ratio':>7} {'paired':>7} "
          f"{'pairs':>13}  target (on the paired median)")
    print(f"{clean_label:<34} {clean:7.2f}s {min(times[clean_label]):7.2f}s {1:6.2f}x "
          f"{'':>7} {'':>13}  {len(times[clean_label])} clean runs, "
          f"{max(times[clean_label]) / min(times[clean_label]):.2f}x from fastest to slowest")
    for label, _spec, _backups, target in faulty:
        ts = times[label]
        if not ts:
            print(f"{label:<34} {'-':>8} {'-':>8} {'-':>7} {'-':>7} {'-':>13}  "
                  "every run failed")
            continue
        pair = statistics.median(paired[label])
        verdict = ""
        if target is not None:
            verdict = f"<= {target:.2f}x: {'met' if pair <= target else 'MISSED'}"
        runs = f" ({len(ts)} of {len(ts) + len(failed[label])} runs completed)" \
            if failed[label] else ""
        spread = f"{min(paired[label]):.2f}-{max(paired[label]):.2f}x"
        print(f"{label:<34} {statistics.median(ts):7.2f}s {min(ts):7.2f}s "
              f"{statistics.median(ts) / clean:6.2f}x {pair:6.2f}x {spread:>13}  "
              f"{verdict}{runs}")
    print("paired: median over the pairs of (faulty run / the clean run right before it); "
          "pairs: their range;\nratio: median of the faulty runs over the median of all "
          "clean runs (for reference: it mixes loads)")
    print(f"loadavg at the end: {_loadavg()}")
    for label, *_ in faulty:
        if causes[label] or failed[label]:
            print(f"\n{label}: re-executed attempts per completed run, median "
                  f"{statistics.median(extra[label]) if extra[label] else '-'}; by cause, "
                  f"over {len(extra[label])} completed run(s):")
            for cause, n in causes[label].most_common():
                print(f"  {n:6d}  {cause}")
            for note in failed[label]:
                print(f"  job failed, {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
