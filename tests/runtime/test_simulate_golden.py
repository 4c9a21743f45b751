"""The simulator's behaviour pinned across a refactor: for a fixed seed, the same virtual job
time, backups launched and won, workers lost, events fed to the policy, retries and
attempt outcomes as before.

The figures were taken from main before the simulator's speed work (heartbeats in rounds,
the free-slot heap of idle workers only, start times in queues, the collector off during the
loop...) and are unchanged by it. They test behaviour (which attempts launch when, which
backups race, which machines are lost), not timings: a change here is a change in what the
policy decides or what the simulator models, and should be one that was meant.
"""

from __future__ import annotations

import collections
import gc

import pytest

from mergeagg.runtime.simulate import simulate

CONFIGS = {
    "straggler-none": dict(workers=100, maps=100, duration=10.0, slow_machines=1,
                           slow_factor=6.0, speculation="none"),
    "straggler-mr": dict(workers=100, maps=100, duration=10.0, slow_machines=1,
                         slow_factor=6.0, speculation="mapreduce"),
    "bench-small-default": dict(workers=1000, maps=10000, duration=("lognormal", 10.0, 0.2),
                                slow_attempts=0.01, slow_factor=5.0, failure_p=0.01,
                                heartbeat_interval=3.0, heartbeat_timeout=10.0,
                                speculation="default", seed=1),
    "keyed-fail": dict(workers=200, maps=2000, reduces=300, duration=("lognormal", 5.0, 0.5),
                       failure_p=0.05, slow_machines=0.05, speculation="default", seed=3,
                       transfer_per_byte=1e-6, map_output_bytes=1000),
    "fold-prefetch": dict(workers=50, maps=1000, fan_in=8, duration=("lognormal", 1.0, 0.3),
                          prefetch=2, slow_attempts=0.05, kill_at=[3.0, 7.0],
                          restart_seconds=1.0, seed=4),
    "late": dict(workers=100, maps=1000, duration=10.0, slow_machines=0.1, slow_factor=3.0,
                 speculation="late", seed=5),
    "hadoop": dict(workers=100, maps=1000, duration=("lognormal", 10.0, 0.3),
                   slow_attempts=0.05, speculation="hadoop", seed=6, failure_p=0.02),
    "cubed": dict(workers=100, maps=500, reduces=20, duration=("lognormal", 10.0, 0.3),
                  slow_attempts=0.05, speculation="cubed", seed=7, crash_at=[5.0, 30.0]),
    "spark-kills": dict(workers=20, maps=300, duration=("lognormal", 2.0, 0.3),
                        speculation="spark", seed=8, kill_tasks={3: 0.5, 50: 0.2},
                        restart_seconds=0.5),
    "survive": dict(workers=30, maps=400, reduces=10, duration=3.0,
                    outputs_survive_worker=True, kill_at=[4.0, 9.0], restart_seconds=2.0,
                    slow_attempts=0.1, seed=9),
    "prefetch3-steal": dict(workers=40, maps=800, duration=("lognormal", 1.0, 0.8),
                            prefetch=3, failure_p=0.05, seed=10, start_latency=0.1),
}

# name, virtual seconds, backups launched, won, workers lost, events, retries, outcomes
EXPECTED = [
    ("straggler-none", 60.0, 0, 0, 0, 6100, 0, {'finished': 100}),
    ("straggler-mr", 20.0, 1, 1, 0, 2100, 0, {'cancelled': 1, 'finished': 100}),
    ("bench-small-default", 126.78459430501624, 135, 56, 17, 51849, 100,
     {'cancelled': 131, 'finished': 10087, 'lost': 17}),
    ("keyed-fail", 105.47366624480524, 222, 27, 8, 22935, 43,
     {'cancelled': 221, 'finished': 2337, 'lost': 7}),
    ("fold-prefetch", 34.64219764509444, 45, 14, 2, 2913, 8,
     {'cancelled': 25, 'finished': 1149, 'lost': 2}),
    ("late", 120.0, 60, 60, 0, 13050, 0, {'cancelled': 60, 'finished': 1000}),
    ("hadoop", 144.6946663721048, 43, 27, 2, 15356, 16,
     {'cancelled': 43, 'finished': 1014, 'lost': 2}),
    ("cubed", 135.04456169586302, 27, 23, 2, 13811, 4,
     {'cancelled': 27, 'finished': 522, 'lost': 2}),
    ("spark-kills", 34.25751831804488, 7, 0, 2, 994, 5,
     {'cancelled': 7, 'finished': 303, 'lost': 2}),
    ("survive", 68.000002, 18, 16, 2, 2467, 2, {'cancelled': 16, 'finished': 412, 'lost': 2}),
    ("prefetch3-steal", 40.159576943083266, 68, 1, 4, 2385, 31,
     {'cancelled': 26, 'finished': 828, 'lost': 4}),
]


@pytest.mark.parametrize("name, seconds, launched, won, lost, events, retries, outcomes",
                         EXPECTED, ids=[e[0] for e in EXPECTED])
def test_a_fixed_seed_gives_the_same_job_as_before(name, seconds, launched, won, lost,
                                                    events, retries, outcomes):
    sim = simulate(**CONFIGS[name])
    got = (sim.backups_launched, sim.backups_won, sim.workers_lost, sim.events, sim.retries,
           dict(sorted(collections.Counter(s.outcome for s in sim.timeline).items())))
    assert got == (launched, won, lost, events, retries, outcomes)
    assert sim.seconds == pytest.approx(seconds, rel=1e-9)


def test_a_simulation_makes_no_reference_cycles():
    """The simulator turns the cyclic collector off while it runs (runtime/simulate.py,
    _static_heap): that is safe only while everything it allocates is freed by
    refcounting. A simulation with failures, backups, kills and a keyed job's reducers
    must leave nothing for the collector."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        simulate(workers=50, maps=500, reduces=20, failure_p=0.1, slow_attempts=0.1,
                 duration=("lognormal", 5.0, 0.5), seed=1)
        simulate(workers=30, maps=300, fan_in=4, kill_at=[2.0, 5.0], restart_seconds=1.0,
                 prefetch=2, speculation="late", seed=2)
        found = gc.collect()
    finally:
        if enabled:
            gc.enable()
    assert found == 0
    assert gc.isenabled() == enabled
