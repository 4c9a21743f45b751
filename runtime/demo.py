"""``mergeagg demo``: the same word count twice, the second time with a worker killed.

It prints the attempts per map task and the two fingerprints, which are equal: a failure
has no consequence for the answer.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile

__all__ = ["demo", "sample_corpus"]


def sample_corpus(directory, files=4, lines=4000, seed=7):
    """Write a small deterministic text corpus (Zipf-like words) and return its paths."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(2000)]
    weights = [1.0 / (r + 1) for r in range(len(vocab))]
    paths = []
    for f in range(files):
        path = os.path.join(directory, f"sample-{f}.txt")
        with open(path, "w", encoding="utf-8") as fh:
            for _ in range(lines):
                fh.write(" ".join(rng.choices(vocab, weights, k=rng.randint(5, 15))) + "\n")
        paths.append(path)
    return paths


def demo(paths=None, *, workers=2, out=None):
    """Run word count clean and with one injected worker death; print both. Returns 0 if
    the fingerprints agree (they must), 1 otherwise."""
    from mergeagg.algorithms import wordcount
    from mergeagg.runtime.api import run
    from mergeagg.runtime.faults import Fault, FaultPlan

    out = out or sys.stdout
    with tempfile.TemporaryDirectory(prefix="mergeagg-demo-") as tmp:
        if not paths:
            paths = sample_corpus(tmp)
        split = 64 * 1024
        clean = run(wordcount(), paths, workers=workers, split_size=split, progress=False)
        plan = FaultPlan(only={"map-1": {1: Fault("kill", at=0.5)}})
        faulty = run(wordcount(), paths, workers=workers, split_size=split, faults=plan,
                     progress=False)
    print(f"word count over {len(paths)} file(s), {len(clean.report.attempts)} map tasks, "
          f"{workers} workers", file=out)
    print(f"  clean run      attempts {clean.report.attempts}", file=out)
    print(f"                 fingerprint {clean.fingerprint}", file=out)
    print(f"  worker killed  attempts {faulty.report.attempts}", file=out)
    print(f"                 fingerprint {faulty.fingerprint}", file=out)
    for f in faulty.report.failures:
        print(f"                 failure: {f.task} attempt {f.attempt} on {f.worker}: "
              f"{f.cause} ({f.detail})", file=out)
    same = clean.fingerprint == faulty.fingerprint
    print("the fingerprints are " + ("equal: the failure changed nothing" if same
                                     else "DIFFERENT: this is a bug"), file=out)
    return 0 if same else 1
