"""The executor contract: every executor of the port (workers simulated in this process,
worker processes on this machine, Dask) runs the same jobs to the same fingerprints, and
each fault kind at each task kind has the same consequence on each, through the same
policy and driver. A new executor is added to ``EXECUTORS`` and must pass this file.

Where an executor differs by design it is said here: on Dask a worker's outputs die with
it (the loss model), a hung Dask worker is found by Dask's own worker TTL (minutes), so
``hang`` and ``kill`` are exercised on Dask by tests/runtime/test_dask.py instead.
"""

import os
import sys
import tempfile

import cloudpickle
import pytest

import mergeagg as ma
from mergeagg.errors import NondeterminismError
from mergeagg.inputs import as_source
from mergeagg.runtime.api import run_on
from mergeagg.runtime.faults import Fault, FaultPlan
from mergeagg.runtime.inprocess import InProcessExecutor
from mergeagg.runtime.local import LocalExecutor
from mergeagg.runtime.master import PolicyConfig

cloudpickle.register_pickle_by_value(sys.modules[__name__])

TEXT = [[" ".join(f"w{(i * 13 + j * 5) % 41}" for j in range(30)) for i in range(k, k + 20)]
        for k in range(0, 8 * 20, 20)]


def make_executor(kind, request):
    if kind == "inprocess":
        return InProcessExecutor(2)
    if kind == "local":
        return LocalExecutor(2, heartbeat_interval=0.05)
    return request.getfixturevalue("dask_executor_factory")()


@pytest.fixture
def dask_executor_factory(dask_client):
    from mergeagg.runtime.dask import DaskExecutor

    return lambda: DaskExecutor(dask_client)


EXECUTORS = ["inprocess", "local", pytest.param("dask", marks=pytest.mark.dask)]


def job_and_source(keyed):
    job = ma.algorithms.wordcount(keyed=keyed)
    return job, as_source(TEXT)


def run_with(kind, request, keyed, faults=None, **knobs):
    job, src = job_and_source(keyed)
    config = PolicyConfig(**{"backups": False, "heartbeat_timeout": 1.0, **knobs})
    extra = {"partitions": 3} if keyed else {}
    return run_on(job, src, make_executor(kind, request), own=True, config=config,
                  fan_in=3, faults=faults, progress=False, **extra)


@pytest.fixture(scope="module")
def clean():
    fold = ma.run(ma.algorithms.wordcount(), TEXT, workers=0, fan_in=3)
    keyed = ma.run(ma.algorithms.wordcount(keyed=True), TEXT, workers=0, partitions=3)
    return {False: fold.fingerprint, True: keyed.fingerprint}


def attempts_of(result, task):
    return {t.task: t.attempts for t in result.report.tasks}[task]


@pytest.mark.parametrize("keyed", [False, True], ids=["fold", "keyed"])
@pytest.mark.parametrize("kind", EXECUTORS)
def test_a_clean_run_gives_the_serial_fingerprint(kind, keyed, clean, request):
    r = run_with(kind, request, keyed)
    assert r.fingerprint == clean[keyed]
    assert r.report.failures == [] and r.report.workers_lost == 0


# Which task each fault strikes: a map, a combine (fold) or a reduce (keyed).
TARGETS = [(False, "map-2"), (False, "combine-1-0"), (True, "map-2"), (True, "reduce-1")]


@pytest.mark.parametrize("keyed,task", TARGETS, ids=[f"{'keyed' if k else 'fold'}-{t}"
                                                     for k, t in TARGETS])
@pytest.mark.parametrize("fault", ["raise", "delay"])
@pytest.mark.parametrize("kind", EXECUTORS)
def test_raise_and_delay_behave_the_same_everywhere(kind, fault, keyed, task, clean, request):
    plan = FaultPlan(only={task: {1: Fault(fault, factor=3.0)}})
    r = run_with(kind, request, keyed, faults=plan)
    assert r.fingerprint == clean[keyed]
    causes = [(f.task, f.cause) for f in r.report.failures]
    if fault == "raise":
        assert (task, "raise") in causes and attempts_of(r, task) == 2
    else:
        assert causes == [] and attempts_of(r, task) == 1


@pytest.mark.parametrize("keyed,task", TARGETS, ids=[f"{'keyed' if k else 'fold'}-{t}"
                                                     for k, t in TARGETS])
@pytest.mark.parametrize("fault", ["kill", "hang"])
@pytest.mark.parametrize("kind", ["inprocess", "local"])
def test_kill_and_hang_lose_the_worker_and_rerun_only_that_attempt(kind, fault, keyed, task,
                                                                     clean, request):
    plan = FaultPlan(only={task: {1: Fault(fault)}})
    r = run_with(kind, request, keyed, faults=plan)
    assert r.fingerprint == clean[keyed]
    assert r.report.workers_lost >= 1
    assert attempts_of(r, task) == 2
    # The loss model of one machine: no completed output was thrown away with the worker.
    assert not any(f.cause == "output lost with worker" for f in r.report.failures)
    causes = {f.cause for f in r.report.failures if f.task == task}
    assert "worker lost" in causes, r.report.failures


@pytest.mark.parametrize("kind", EXECUTORS)
def test_a_corrupt_fold_map_is_caught_by_verify(kind, request):
    plan = FaultPlan(only={"map-3": {1: Fault("corrupt")}})
    with pytest.raises(NondeterminismError, match="map-3"):
        run_with(kind, request, False, faults=plan, verify=1.0)


@pytest.mark.parametrize("kind", EXECUTORS)
def test_a_corrupt_keyed_map_damages_its_spill_file_and_the_map_runs_again(kind, clean,
                                                                             request):
    plan = FaultPlan(only={"map-1": {1: Fault("corrupt")}})
    r = run_with(kind, request, True, faults=plan)
    assert r.fingerprint == clean[True]
    assert attempts_of(r, "map-1") == 2  # a reducer's CRC check found the flipped byte
    assert any(f.cause == "input_lost" for f in r.report.failures)


@pytest.mark.parametrize("kind", EXECUTORS)
def test_backups_race_a_straggler_and_the_loser_is_cancelled(kind, clean, request):
    plan = FaultPlan(only={"map-5": {1: Fault("delay", factor=200.0)}})
    r = run_with(kind, request, False, faults=plan, backups=True, backup_after=0.5)
    assert r.fingerprint == clean[False]
    assert r.report.backups_launched >= 1 and r.report.backups_won >= 1


@pytest.mark.parametrize("kind", ["inprocess", "local"])
def test_nothing_is_left_behind(kind, request, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    plan = FaultPlan(only={"map-1": {1: Fault("kill")}, "reduce-0": {1: Fault("raise")}})
    ex = make_executor(kind, request)
    job, src = job_and_source(True)
    run_on(job, src, ex, own=True, config=PolicyConfig(backups=False), faults=plan,
           partitions=3)
    assert os.listdir(tmp_path) == []
    if kind == "local":
        import psutil

        assert not [p for p in ex.pids.values() if psutil.pid_exists(p)
                    and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


@pytest.mark.parametrize("kind", ["inprocess", "local"])
def test_an_idle_worker_takes_what_is_queued_behind_stalls(kind, clean, request):
    # 8 maps on 3 workers with queues of 2; map-0 and map-1 stall (a delay of 2000x).
    # What waits behind them is moved to the idle worker, so the stage progresses and
    # both stalls get backups that win.
    ex = InProcessExecutor(3) if kind == "inprocess" else LocalExecutor(3)
    plan = FaultPlan(only={"map-0": {1: Fault("delay", factor=2000.0)},
                           "map-1": {1: Fault("delay", factor=2000.0)}})
    job, src = job_and_source(False)
    r = run_on(job, src, ex, own=True, config=PolicyConfig(backup_after=0.75), fan_in=3,
               faults=plan)
    assert r.fingerprint == clean[False]
    assert r.report.backups_launched >= 2 and r.report.backups_won >= 2
    if kind == "inprocess":
        # On a virtual clock the queues are known exactly; on real processes whether an
        # attempt is still queued behind a stall when a worker idles is a matter of timing
        # (tests/runtime/test_local.py holds the real case, with stalls of 4 s, to it).
        assert r.report.counters.get("attempts_moved", 0) >= 1


# -- the session's half of the port: persisted datasets -------------------------------------

def session_executor(kind, request):
    """An executor as a Session keeps it: started, and settled (every worker ready)."""
    if kind == "dask":
        from mergeagg.runtime.dask import DaskExecutor

        ex = DaskExecutor(request.getfixturevalue("dask_client"))
    else:
        ex = make_executor(kind, request)
    ex.start()
    ex.settle(30.0)
    return ex


def over_dataset(ex, ds, job):
    """Run fold ``job`` over persisted ``ds`` as a Session does: through the port alone."""
    from mergeagg.runtime.driver import drive, fetch_root
    from mergeagg.runtime.master import Policy, fold_tasks

    tasks = fold_tasks(ex.partitions(ds), 3)
    for t, holder in zip(tasks, ex.locate(ds)):
        t.prefer = holder
    policy = Policy(tasks, PolicyConfig(backups=False, heartbeat_timeout=5.0))
    acc, _ = drive(policy, ex, job, fetch_root, progress=False,
                   clock=getattr(ex, "clock", None), own=False)
    ex.settle(5.0)
    return job.finalize(acc), policy, ex.account(ds, policy)


def words(lines):
    return [w for line in lines for w in line.split()]


def distinct(ws):
    return sorted(set(ws))


COUNT = ma.Aggregator(len, lambda a, b: a + b)


@pytest.mark.parametrize("kind", EXECUTORS)
def test_persisted_partitions_load_once_and_then_hit_where_they_live(kind, request):
    from mergeagg.runtime.port import SessionExecutor
    from mergeagg.runtime.session import Dataset

    expected = sum(len(words(shard)) for shard in TEXT)
    ex = session_executor(kind, request)
    try:
        assert isinstance(ex, SessionExecutor)
        ds = Dataset("contract-a", as_source(TEXT), words)
        ex.persist(ds)
        value, _, counts = over_dataset(ex, ds, COUNT)
        assert value == expected
        assert (counts["cache_misses"], counts["cache_hits"]) == (len(TEXT), 0)
        where = ex.locate(ds)
        assert None not in where  # every partition has a holder now
        value, policy, counts = over_dataset(ex, ds, COUNT)
        assert value == expected
        assert counts == {"cache_hits": len(TEXT), "cache_misses": 0, "cache_rebuilds": 0,
                          "cache_bytes_read": 0}
        assert [policy.tasks[f"map-{i}"].worker for i in range(len(TEXT))] == where
        # A derived dataset loads from its parent's partitions, in memory.
        derived = Dataset("contract-b", ds.source, distinct, parent=ds)
        ex.persist(derived)
        value, _, counts = over_dataset(ex, derived, COUNT)
        assert value == sum(len(distinct(words(shard))) for shard in TEXT)
        assert counts["cache_misses"] == len(TEXT) and counts["cache_bytes_read"] == 0
        ex.uncache(derived)
        ex.uncache(ds)
        assert derived.holders == {} and ds.holders == {}
    finally:
        ex.close()


@pytest.mark.parametrize("kind", ["inprocess", "local"])
def test_a_dead_holder_partitions_are_rebuilt_from_their_lineage(kind, request):
    import signal

    import psutil

    from mergeagg.runtime.port import KillWorker
    from mergeagg.runtime.session import Dataset

    ex = session_executor(kind, request)
    try:
        ds = Dataset("contract-c", as_source(TEXT), words)
        ex.persist(ds)
        clean, _, _ = over_dataset(ex, ds, COUNT)
        victim = ex.locate(ds)[0]
        lost = ex.locate(ds).count(victim)
        if kind == "local":  # a real SIGKILL, seen by the executor as a death
            pid = ex.worker_pids()[victim]
            os.kill(pid, signal.SIGKILL)
            try:
                psutil.Process(pid).wait(10)
            except psutil.NoSuchProcess:  # already dead and reaped
                pass
        else:
            ex.apply([KillWorker(victim, "test")], None)
        ex.settle(30.0)
        value, _, counts = over_dataset(ex, ds, COUNT)
        assert value == clean
        assert counts["cache_rebuilds"] == lost
        assert counts["cache_hits"] == len(TEXT) - lost
        assert victim not in ex.locate(ds)
    finally:
        ex.close()
