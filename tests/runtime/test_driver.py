"""The driver on a virtual clock: the production policy and driver over workers simulated
in this process, so timing logic (heartbeat timeouts, backups, stalls) is tested exactly,
without sleeping."""

import io

import pytest

import mergeagg as ma
from mergeagg.inputs import shards
from mergeagg.runtime.driver import Progress, drive, fetch_root
from mergeagg.runtime.faults import Fault, FaultPlan
from mergeagg.runtime.inprocess import InProcessExecutor
from mergeagg.runtime.master import Policy, PolicyConfig, fold_tasks

SUM = ma.Aggregator(sum, lambda a, b: a + b)


def run(n, workers, plan=None, task_seconds=1.0, **config):
    source = shards([[i] for i in range(n)])
    policy = Policy(fold_tasks(source.splits(), 4), PolicyConfig(**config))
    ex = InProcessExecutor(workers, task_seconds=task_seconds)
    value, _phases = drive(policy, ex, SUM, fetch_root, faults=plan, clock=ex.clock)
    assert value == sum(range(n))
    policy.validate()
    return policy, ex


def test_a_hung_worker_is_killed_after_the_heartbeat_timeout_of_virtual_time():
    plan = FaultPlan(only={"map-0": {1: Fault("hang")}})
    policy, ex = run(4, 2, plan, heartbeat_timeout=30.0, backups=False)
    assert policy.workers_lost == 1
    # map-0 hung at t=0; it ran again once the silence passed 30 s (the policy looks a
    # quarter of the timeout apart), on a second worker.
    assert 30.0 < ex.clock() < 30.0 + 30.0 / 4 + 3.0
    assert policy.tasks["map-0"].launched == 2


def test_a_straggler_gets_its_backup_once_the_stage_is_mostly_done_and_it_is_slow():
    # 8 maps of 1 s on 4 workers (then 3 combines of 1 s); map-3's first attempt takes
    # 10 s. The backup fires at t = 2, when 75% of the maps are done and map-3 has run past
    # 1.5x the median (1 s), and wins at t = 3: the job ends at 6 s, not after 12.
    plan = FaultPlan(only={"map-3": {1: Fault("delay", factor=10.0)}})
    policy, ex = run(8, 4, plan, backup_after=0.75, backup_factor=1.5)
    assert policy.backups_launched == 1 and policy.backups_won == 1
    assert ex.clock() == pytest.approx(6.0, abs=0.1)
    off, ex_off = run(8, 4, plan, backups=False)
    assert off.backups_launched == 0 and ex_off.clock() >= 10.0


def test_a_stall_is_rescued_by_stealing_and_backups():
    # 8 maps on 3 workers, queues of 2: map-0 and map-1 stall for 1000 s.
    plan = FaultPlan(only={"map-0": {1: Fault("delay", factor=1000.0)},
                           "map-1": {1: Fault("delay", factor=1000.0)}})
    policy, ex = run(8, 3, plan)
    assert policy.steals >= 1 and policy.backups_won == 2
    assert ex.clock() < 20.0
    still, ex_still = run(8, 3, plan, stealing=False)
    assert still.backups_launched == 0 and ex_still.clock() >= 1000.0


def test_the_same_seed_gives_the_same_run():
    plan = FaultPlan.parse("kill=0.2,hang=0.1,delay=0.2x5,raise=0.1,seed=7")
    runs = [run(40, 5, plan, max_attempts=10) for _ in range(2)]
    (p1, e1), (p2, e2) = runs
    assert e1.clock() == e2.clock()
    assert p1.failures == p2.failures and p1.workers_lost == p2.workers_lost > 0


def test_progress_shows_tasks_bytes_rate_and_time_left(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("a b c\n" * 10_000)
    source = ma.files(str(path), split_size=6_000)
    policy = Policy(fold_tasks(source.splits(), 4), PolicyConfig())
    ex = InProcessExecutor(2, task_seconds=0.5)
    out = io.StringIO()
    show = Progress(policy, True, stream=out, clock=ex.clock)
    assert show.total_bytes == 60_000
    ex.start()
    policy.worker_joined("s1", 0.0)
    for m in policy.tick(0.0):
        policy.finished(m.attempt, None, "fp", 1.0, {"bytes_read": 6_000})
    line = show.line(now=3.0)
    done = sum(policy.stage_counts()[0].values())
    assert line.startswith(f"[mergeagg] {done}/")
    assert "map 2/10" in line and "12.0 kB of 60.0 kB" in line
    assert "4.0 kB/s" in line and "ETA 0:12" in line
    ex.close()


@pytest.mark.parametrize("enabled", [False, True])
def test_progress_writes_only_when_enabled(enabled):
    policy = Policy(fold_tasks(shards([[1]]).splits(), 2), PolicyConfig())
    out = io.StringIO()
    Progress(policy, enabled, stream=out).update(10.0, final=True)
    assert bool(out.getvalue()) is enabled


def test_run_takes_the_in_process_backend():
    shards_ = [[i] for i in range(30)]
    r = ma.run(SUM, shards_, workers=4, backend="inprocess", faults="kill=0.3,hang=0.1,seed=3")
    assert r.value == sum(range(30)) and r.report.mode == "inprocess"
    assert r.report.workers_lost > 0
