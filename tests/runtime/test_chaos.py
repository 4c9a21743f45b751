"""The ``chaos`` fault preset (about a third of attempts killed, a third delayed) on real
worker processes: every run ends with the clean fingerprint.

CI runs a handful of seeds; ``MERGEAGG_CHAOS_SEEDS=20`` runs seeds 1-20 (the issue's soak).
"""

import os

import pytest

import mergeagg as ma

SEEDS = range(1, int(os.environ.get("MERGEAGG_CHAOS_SEEDS", "3")) + 1)

TEXT = [[" ".join(f"w{(i * 31 + j * 7) % 97}" for j in range(40)) for i in range(k, k + 30)]
        for k in range(0, 12 * 30, 30)]


@pytest.fixture(scope="module")
def clean():
    return {
        "fold": ma.run(ma.algorithms.wordcount(), TEXT, workers=0).fingerprint,
        "keyed": ma.run(ma.algorithms.wordcount(keyed=True), TEXT, workers=0,
                        partitions=4).fingerprint,
    }


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("job", ["fold", "keyed"])
def test_chaos_preset_ends_with_the_clean_fingerprint(job, seed, clean):
    if job == "fold":
        r = ma.run(ma.algorithms.wordcount(), TEXT, workers=2, fan_in=3,
                   faults=f"chaos,seed={seed},kinds=map+combine")
    else:
        r = ma.run(ma.algorithms.wordcount(keyed=True), TEXT, workers=2, partitions=4,
                   faults=f"chaos,seed={seed},kinds=map+reduce+merge")
    assert r.fingerprint == clean[job]
    assert r.report.workers_lost > 0  # the preset did strike
    # A process death never discards what is already on the disk.
    assert not any(f.cause == "output lost with worker" for f in r.report.failures)
