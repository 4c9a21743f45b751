"""The journal's costs and savings, and what finding a poison record costs (issue 16).

On the Zipf corpus (shared/BENCHMARKS.md; 200 MB at the reference size) counted by the
catalog's ``wordcount()`` on 2 worker processes, in 100 splits:

* **overhead**: a run with a fresh journal against the same run without one, paired and
  alternated (target: <= 1.05x);
* **resume**: a driver (a subprocess) is SIGKILLed once 90% of the map tasks are recorded in
  its journal; the rerun with that journal is timed against a full run without one made
  right before it (target: <= 0.15x);
* **incremental**: after a full journaled run, a file with 1% more text is added to the
  input directory; the rerun with the journal is timed against a full run over the grown
  input without one (target: <= 0.05x). Both answers must have one fingerprint.
* **bisection**: one bad line in the middle of a 16 MB split; a user's partial that parses
  line by line, and one that reads every line before it fails: the time to set the bad
  line aside and count the rest, against the plain count of the clean split (target: <= 3x).

Every figure is printed with /proc/loadavg; each ratio is of a pair measured back to back.

    python benchmarks/bench_journal.py            # 200 MB, 3 repetitions
    python benchmarks/bench_journal.py --smoke    # what CI runs: ~2 MB, one repetition
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workloads  # noqa: E402

import mergeagg as ma  # noqa: E402
from mergeagg.algorithms.wordcount import wordcount  # noqa: E402
from mergeagg.inputs import files  # noqa: E402
from mergeagg.runtime.journal import LOG, read_records  # noqa: E402
from mergeagg.runtime.poison import without_bad_records  # noqa: E402


def run(data, split, journal=None):
    """The benchmark's job: word count of ``data`` in ``split``-byte splits, 2 workers."""
    t = time.perf_counter()
    r = ma.run(wordcount(), files(data, split_size=split), workers=2, journal=journal,
               progress=False)
    return time.perf_counter() - t, r


def kill_at(data, split, journal, share):
    """Start a driver on ``data`` with ``journal``; SIGKILL it once ``share`` of the map
    tasks are recorded. Returns the number of map records when it was killed."""
    n_maps = len(files(data, split_size=split).splits())
    want = max(1, int(share * n_maps))
    # A SIGKILLed Python leaves its multiprocessing directory (pymp-*) in TMPDIR: this
    # one's goes beside the journal, in the benchmark's scratch directory.
    env = dict(os.environ, TMPDIR=os.path.dirname(os.path.abspath(journal)))
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--driver", data,
                             str(split), journal], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, env=env)
    try:
        while proc.poll() is None:
            maps = sum(1 for r in read_records(os.path.join(journal, LOG))[0]
                       if r["t"] == "done" and r["task"].startswith("map"))
            if maps >= want:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # its workers exit on their own
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.02)
    return maps, n_maps


def parse_lines(lines):
    counts = Counter()
    for line in lines:
        if line.startswith("POISON"):
            raise ValueError("a poison record")
        counts.update(line.split())
    return counts


def read_all_first(lines):
    lines = list(lines)
    if any(line.startswith("POISON") for line in lines):
        raise ValueError("a poison record somewhere")
    counts = Counter()
    for line in lines:
        counts.update(line.split())
    return counts


def bisection(corpus, nbytes):
    with open(corpus, encoding="ascii") as f:
        lines = f.read(nbytes).split("\n")[:-1]
    dirty = lines[: len(lines) // 2] + ["POISON"] + lines[len(lines) // 2:]
    for fn in (parse_lines, read_all_first):
        fn(lines[:1000])  # warm up
        t = time.perf_counter()
        clean = fn(lines)
        plain = time.perf_counter() - t
        t = time.perf_counter()
        value, bad = without_bad_records(fn, dirty, limit=1)
        found = time.perf_counter() - t
        assert value == clean and [b.index for b in bad] == [len(lines) // 2]
        print(f"bisection {fn.__name__:15s} {len(lines):,} lines: plain {plain:.3f} s, "
              f"one bad line found and the rest counted {found:.3f} s: "
              f"{found / plain:.2f}x (target <= 3x)  [{workloads.loadavg()}]")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="200M")
    ap.add_argument("--splits", type=int, default=100)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--driver", nargs=3, metavar=("DATA", "SPLIT", "JOURNAL"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.driver:
        data, split, journal = args.driver
        run(data, int(split), journal)
        return 0
    if args.smoke:
        args.size, args.reps, args.splits = "2M", 1, 10
    size = workloads.parse_size(args.size)
    with workloads.scratch() as tmp:
        corpus = workloads.zipf_corpus(size)
        split = max(1, os.path.getsize(corpus) // args.splits + 1)
        data = os.path.join(tmp, "data")
        os.mkdir(data)
        os.link(corpus, os.path.join(data, "corpus.txt"))
        print(f"corpus {os.path.getsize(corpus):,} bytes, {args.splits} splits, 2 workers")
        ratios = {"overhead": [], "resume": [], "incremental": []}
        for i in range(args.reps):
            jdir = os.path.join(tmp, f"j{i}")
            plain, r0 = run(data, split)
            with_j, r1 = run(data, split, jdir)
            assert r0.fingerprint == r1.fingerprint
            ratios["overhead"].append(with_j / plain)
            print(f"overhead  plain {plain:.2f} s, journaled {with_j:.2f} s: "
                  f"{with_j / plain:.3f}x  [{workloads.loadavg()}]")
            shutil.rmtree(jdir)
            maps, n_maps = kill_at(data, split, jdir, 0.9)
            plain, r0 = run(data, split)
            resumed, r1 = run(data, split, jdir)
            assert r0.fingerprint == r1.fingerprint
            ratios["resume"].append(resumed / plain)
            print(f"resume    killed at {maps}/{n_maps} maps; full run {plain:.2f} s, "
                  f"resumed {resumed:.2f} s ({r1.report.journal['tasks_reused']} tasks "
                  f"reused): {resumed / plain:.3f}x  [{workloads.loadavg()}]")
            extra = os.path.join(data, "more.txt")
            with open(corpus, "rb") as src, open(extra, "wb") as dst:
                chunk = src.read(os.path.getsize(corpus) // 100)
                dst.write(chunk[: chunk.rfind(b"\n") + 1])
            plain, r0 = run(data, split)
            grown, r1 = run(data, split, jdir)
            assert r0.fingerprint == r1.fingerprint
            ran = sum(1 for t in r1.report.tasks if t.attempts)
            ratios["incremental"].append(grown / plain)
            print(f"increment +1% data; full run {plain:.2f} s, incremental {grown:.2f} s "
                  f"({ran} tasks ran): {grown / plain:.3f}x  [{workloads.loadavg()}]")
            os.unlink(extra)
            shutil.rmtree(jdir)
        for name, target in (("overhead", 1.05), ("resume", 0.15), ("incremental", 0.05)):
            med = statistics.median(ratios[name])
            print(f"median {name}: {med:.3f}x (target <= {target}x)")
        bisection(corpus, min(16_000_000, os.path.getsize(corpus)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
