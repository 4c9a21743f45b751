"""Sessions: workers kept across jobs, persisted datasets, placement by locality, lineage
recovery after a real SIGKILL; and the policy's placement preference, driven purely."""

import os
import signal
import sys
import time

import cloudpickle
import psutil
import pytest

import mergeagg as ma
from mergeagg.runtime.master import Policy, PolicyConfig, TaskDef, fold_tasks
from mergeagg.runtime.port import AttemptId, Launch
from mergeagg.runtime.session import Dataset, Session

cloudpickle.register_pickle_by_value(sys.modules[__name__])


# -- the policy's placement preference (pure: no processes, a fake clock) ------------------


def _launches(actions):
    return {a.task: a.worker for a in actions if isinstance(a, Launch)}


def _policy(prefers, workers=("w1", "w2"), **config):
    tasks = fold_tasks(list(range(len(prefers))), max(2, len(prefers)))
    for t, w in zip(tasks, prefers):
        t.prefer = w
    p = Policy(tasks, PolicyConfig(prefetch=1, **config))
    for w in workers:
        p.worker_joined(w, 0.0)
    return p


def test_a_task_goes_to_its_preferred_worker_when_it_has_a_slot():
    p = _policy(["w2", "w1"])
    assert _launches(p.tick(0.0)) == {"map-0": "w2", "map-1": "w1"}


def test_a_task_waits_for_its_busy_preferred_worker_then_gives_up():
    p = _policy(["w1", "w1", "w1"], locality_wait=2.0)
    first = _launches(p.tick(0.0))
    assert first == {"map-0": "w1"}  # w2 is free, but map-1 and map-2 wait for w1
    assert p.next_deadline(0.0) <= 2.0
    assert _launches(p.tick(1.0)) == {}
    later = _launches(p.tick(2.5))  # past locality_wait: run anywhere free
    assert later == {"map-1": "w2"}
    p.finished(AttemptId("map-0", 1), "ref0", "fp0", 3.0)
    assert _launches(p.tick(3.0)) == {"map-2": "w1"}


def test_a_dead_preferred_worker_is_not_waited_for():
    p = _policy(["w1", "w1"])
    p.worker_lost("w1", "SIGKILL", 0.0)
    p.worker_joined("w3", 0.0)
    assert sorted(_launches(p.tick(0.0)).values()) == ["w2", "w3"]


def test_prefer_defaults_to_none_and_changes_nothing():
    assert TaskDef("t", "map").prefer is None
    assert PolicyConfig().locality_wait == 3.0
    with pytest.raises(ValueError, match="locality_wait"):
        PolicyConfig(locality_wait=-1)


# -- sessions on real worker processes ---------------------------------------------------


def total():
    return ma.Aggregator(sum, lambda a, b: a + b)


def tenfold(records):
    return [10 * r for r in records]


SHARDS = [[1, 2], [3], [4, 5], [6], [7, 8, 9]]


@pytest.fixture(scope="module")
def session():
    with Session(workers=2, heartbeat_timeout=5.0) as s:
        yield s


def _wait_dead(pid, timeout=10.0):
    try:
        psutil.Process(pid).wait(timeout)
    except psutil.NoSuchProcess:
        pass


def test_workers_survive_from_one_job_to_the_next(session):
    pids = session.worker_pids()
    assert len(pids) == 2
    for _ in range(3):
        assert session.run(total(), SHARDS).value == 45
    assert session.worker_pids() == pids


def test_persisted_partitions_are_loaded_once_and_hit_on_their_workers(session):
    ds = session.persist(SHARDS, load=tenfold)
    assert ds.counters["cache_misses"] == len(SHARDS)
    assert all(len(h) == 1 for h in ds.holders.values())
    for _ in range(3):
        r = session.run(total(), ds)
        assert r.value == 450
        assert r.report.counters["cache_hits"] == len(SHARDS)
        assert r.report.counters["cache_misses"] == 0
        ran_on = {t.split.rsplit("/", 1)[1]: t.worker for t in r.report.tasks
                  if t.kind == "map"}
        assert ran_on == {f"shard:{i}": ds.holders[i][0] for i in range(len(SHARDS))}
    session.unpersist(ds)
    with pytest.raises(ValueError, match="not persisted"):
        session.run(total(), ds)


def test_a_text_dataset_counts_the_bytes_read_once(session, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("".join(f"{i}\n" for i in range(2000)))
    ds = session.persist(str(path), load=lambda recs: sum(int(x) for x in recs),
                         split_size=2048)
    assert ds.counters["cache_bytes_read"] == os.path.getsize(path)
    r = session.run(ma.Aggregator(lambda n: n, lambda a, b: a + b), ds)
    assert r.value == sum(range(2000))
    assert r.report.bytes_read == 0 and r.report.counters["cache_bytes_read"] == 0


def test_a_killed_holder_partitions_are_rebuilt_from_lineage(session):
    ds = session.persist(SHARDS, load=tenfold)
    derived = session.persist(ds, load=lambda part: [x + 1 for x in part])
    clean = session.run(total(), derived)
    victim = derived.holders[0][0]
    lost = [i for i, h in derived.holders.items() if h[0] == victim]
    pid = session.worker_pids()[victim]
    os.kill(pid, signal.SIGKILL)
    _wait_dead(pid)
    r = session.run(total(), derived)
    assert r.fingerprint == clean.fingerprint and r.value == 459
    assert r.report.counters["cache_rebuilds"] == len(lost)
    assert r.report.counters["cache_hits"] == len(SHARDS) - len(lost)
    assert victim not in session.worker_pids()
    assert all(victim not in h for h in derived.holders.values())
    again = session.run(total(), derived)  # the rebuilt partitions are cached again
    assert again.report.counters["cache_hits"] == len(SHARDS)
    with pytest.raises(ValueError, match="parent"):
        session.unpersist(ds)
    session.unpersist(derived)
    session.unpersist(ds)


def test_mergeagg_run_with_a_session_reuses_its_workers(session):
    pids = session.worker_pids()
    r = ma.run(total(), SHARDS, session=session)
    assert r.value == 45 and session.worker_pids() == pids


def test_keyed_jobs_run_on_a_session(session):
    wc = ma.KeyedJob(lambda lines: ((w, 1) for line in lines for w in line.split()),
                     lambda a, b: a + b)
    r = session.run(wc, [["a b a"], ["b c"]], partitions=2)
    assert r.value == {"a": 2, "b": 2, "c": 1}
    pids = session.worker_pids()
    via_run = ma.run(wc, [["a b a"], ["b c"]], session=session, partitions=2)
    assert via_run.fingerprint == r.fingerprint and session.worker_pids() == pids
    with pytest.raises(TypeError, match="Dataset"):
        session.run(wc, session.persist([["x"]], load=list))


def test_serial_session_is_the_reference(session):
    with Session(workers=0) as serial:
        ds0 = serial.persist(SHARDS, load=tenfold)
        r0 = serial.run(total(), ds0)
        assert serial.run(total(), ds0).report.counters["cache_hits"] == len(SHARDS)
    ds = session.persist(SHARDS, load=tenfold)
    assert session.run(total(), ds).fingerprint == r0.fingerprint


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="workers"):
        Session(workers=-1)
    with pytest.raises(TypeError, match="max_attempts|unexpected"):
        Session(workers=0, no_such_knob=1)
    with Session(workers=0) as s:
        with pytest.raises(TypeError, match="callable"):
            s.persist(SHARDS, load="nope")
        other = Dataset("elsewhere", ma.shards([[1]]), list)
        with pytest.raises(ValueError, match="not persisted"):
            s.run(total(), other)
    with pytest.raises(RuntimeError, match="closed"):
        s.start()


def test_close_stops_the_workers():
    s = Session(workers=1).start()
    pid = next(iter(s.worker_pids().values()))
    s.close()
    deadline = time.monotonic() + 5
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_collect_returns_every_partition_output_in_split_order(session):
    ds = session.persist(SHARDS, load=tenfold)
    got = session.collect(sum, ds)
    assert got.values == [sum(tenfold(s)) for s in SHARDS]
    assert got.fingerprints == [ma.fingerprint(v) for v in got.values]
    assert got.report.counters["cache_hits"] == len(SHARDS)
    assert [t.kind for t in got.report.tasks] == ["map"] * len(SHARDS)
    with Session(workers=0) as serial:
        here = serial.collect(sum, serial.persist(SHARDS, load=tenfold))
    assert here.values == got.values and here.fingerprints == got.fingerprints
    with pytest.raises(TypeError, match="callable"):
        session.collect("sum", ds)


def test_a_session_races_backups_only_for_tasks_past_half_a_second():
    assert Session(workers=0).policy_defaults["backup_min_seconds"] == 0.5
    s = Session(workers=0, backup_min_seconds=0.0, backups=False)
    assert s.policy_defaults == {"backup_min_seconds": 0.0, "backups": False}


def test_an_in_process_session_simulates_its_workers_and_takes_faults():
    with Session(backend="inprocess", workers=3, backups=False) as s:
        assert s.worker_pids() == {}  # no processes: simulated workers
        ds = s.persist(SHARDS, load=tenfold)
        clean = s.run(total(), ds)
        assert clean.value == 450 and clean.report.mode == "inprocess"
        assert clean.report.counters["cache_hits"] == len(SHARDS)
        hurt = s.run(total(), ds, faults="kill=0.5,seed=3")
        assert hurt.fingerprint == clean.fingerprint and hurt.report.workers_lost >= 1
        assert hurt.report.counters["cache_rebuilds"] >= 1
        assert s.collect(sum, ds).values == [sum(tenfold(x)) for x in SHARDS]
    with Session(workers=0) as serial, pytest.raises(ValueError, match="workers=0"):
        serial.run(total(), SHARDS, faults="kill=0.5")
