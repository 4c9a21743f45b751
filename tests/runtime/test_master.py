"""The policy, driven by a fake executor and a fake clock: no sleeps, no processes."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mergeagg.errors import JobFailed, NondeterminismError, TaskFailed
from mergeagg.runtime.master import (
    FailureDetector,
    Policy,
    PolicyConfig,
    TaskDef,
    TaskState,
    fold_tasks,
)
from mergeagg.runtime.port import Cancel, KillWorker, Launch, Release


class FakeRef:
    def __init__(self, value, worker):
        self.value = value
        self.worker = worker


class Sim:
    """A fake executor: launched attempts wait in ``running`` until the test says."""

    def __init__(self, n_maps, fan_in, workers, **config):
        self.values = list(range(1, n_maps + 1))
        self.tasks = fold_tasks(self.values, fan_in)
        self.policy = Policy(self.tasks, PolicyConfig(**config))
        self.now = 0.0
        self.running = {}  # str(attempt id) -> Launch: tests name attempts "map-0#1"
        self.finished_msgs = []
        self.cancelled = set()
        self.killed = []
        self.alive = set()
        self.launched = set()  # every attempt id ever launched: none may come twice
        self.next_worker = 0
        for _ in range(workers):
            self.add_worker()

    def add_worker(self):
        self.next_worker += 1
        w = f"w{self.next_worker}"
        self.alive.add(w)
        self.policy.worker_joined(w, self.now)
        return w

    def value_of(self, launch):
        if launch.kind == "map":
            return launch.split
        return sum(r.value for r in launch.inputs)

    def tick(self):
        # A replacement worker joins after the tick that killed its predecessor; tick again
        # so the policy can use it, as the executor's next event would make it do.
        while self._tick_once():
            pass

    def _tick_once(self):
        killed = False
        self.policy.validate()
        actions = self.policy.tick(self.now)
        self.policy.validate()
        for a in actions:
            if isinstance(a, Launch):
                assert a.worker in self.alive
                assert a.attempt not in self.launched, f"{a.attempt} launched twice"
                self.launched.add(a.attempt)
                self.running[str(a.attempt)] = a
            elif isinstance(a, Cancel):
                self.cancelled.add(str(a.attempt))
                self.running.pop(str(a.attempt), None)
            elif isinstance(a, KillWorker):
                self.killed.append(a.worker)
                self.drop_worker(a.worker, notify=False)
                killed = True
            elif isinstance(a, Release):
                pass
        return killed

    def finish(self, attempt, corrupt=False):
        launch = self.running.pop(attempt)
        v = self.value_of(launch) + (1000 if corrupt else 0)
        ref = FakeRef(v, launch.worker)
        self.finished_msgs.append((launch.attempt, ref, str(v)))
        self.policy.finished(launch.attempt, ref, str(v), self.now, {"seconds": 1})

    def fail(self, attempt, error="ValueError: boom"):
        launch = self.running.pop(attempt)
        self.policy.failed(launch.attempt, error, self.now, traceback="Traceback...")

    def drop_worker(self, w, notify=True):
        self.alive.discard(w)
        for aid, launch in list(self.running.items()):
            if launch.worker == w:
                del self.running[aid]
        if notify:
            self.policy.worker_lost(w, "SIGKILL", self.now)
        self.add_worker()

    def root_value(self):
        ref, fp = self.policy.result
        return ref.value


def drive(sim, limit=10_000):
    for _ in range(limit):
        sim.tick()
        if sim.policy.done or sim.policy.error:
            return
        assert sim.running, "the policy launched nothing and nothing runs: a hang"
        sim.now += 1.0
        for w in list(sim.alive):
            sim.policy.heartbeat(w, sim.now)
        sim.finish(sorted(sim.running)[0])
    raise AssertionError("did not finish")


def test_fold_tasks_shape():
    tasks = fold_tasks(list(range(10)), 4)
    ids = [t.id for t in tasks]
    assert ids[-1] == "combine-2-0"
    by = {t.id: t for t in tasks}
    assert by["combine-1-2"].children == ("map-8", "map-9")
    assert by["combine-2-0"].children == ("combine-1-0", "combine-1-1", "combine-1-2")
    assert fold_tasks([0], 4)[-1].id == "map-0"


def test_clean_run_completes_with_every_value_once():
    # (In this fake one attempt finishes per step, so others look slow: no backups here.)
    sim = Sim(13, 3, 2, backups=False)
    drive(sim)
    assert sim.policy.done and sim.root_value() == sum(range(1, 14))
    assert all(t.launched == 1 for t in sim.policy.tasks.values())


def test_retry_then_named_failure():
    sim = Sim(3, 2, 1, max_attempts=3)
    sim.tick()
    for _ in range(3):
        aid = next(a for a in sim.running if a.startswith("map-1#"))
        sim.fail(aid)
        sim.tick()
    err = sim.policy.error
    assert isinstance(err, TaskFailed)
    assert err.task == "map-1" and err.attempts == 3 and "boom" in str(err)
    assert "max_attempts=3" in str(err) and "Traceback" in err.traceback


def test_lost_worker_requeues_running_and_completed_outputs():
    sim = Sim(4, 4, 2, prefetch=1)
    sim.tick()
    first = sorted(sim.running)[0]
    w = sim.running[first].worker
    sim.finish(first)  # completed on w, output lives on w
    sim.drop_worker(w)
    task = sim.policy.tasks[first.split("#")[0]]
    assert task.state is TaskState.IDLE
    drive(sim)
    assert sim.root_value() == 1 + 2 + 3 + 4
    assert task.launched == 2


def test_outputs_that_survive_their_worker_are_not_rerun():
    # The local executor's loss model: the process died, its files did not.
    sim = Sim(4, 4, 2, prefetch=1, outputs_survive_worker=True)
    sim.tick()
    first = sorted(sim.running)[0]
    w = sim.running[first].worker
    sim.finish(first)
    sim.drop_worker(w)
    task = sim.policy.tasks[first.split("#")[0]]
    assert task.state is TaskState.COMPLETED
    drive(sim)
    assert sim.root_value() == 1 + 2 + 3 + 4
    assert task.launched == 1


def test_an_unreadable_output_reruns_its_task_and_holds_back_its_parent():
    sim = Sim(2, 2, 1, outputs_survive_worker=True)
    sim.tick()
    for aid in sorted(sim.running):
        sim.finish(aid)
    sim.tick()
    (combine,) = [a for a in sim.running if a.startswith("combine")]
    # The combine found map-1's file torn: it names the task, which runs again.
    launch = sim.running.pop(combine)
    sim.policy.failed(launch.attempt, "torn", sim.now, kind="input_lost", lost=("map-1",))
    assert sim.policy.tasks["map-1"].state is TaskState.IDLE
    assert sim.policy.tasks["map-0"].state is TaskState.COMPLETED
    drive(sim)
    assert sim.root_value() == 3 and sim.policy.tasks["map-1"].launched == 2
    # At the end, an unreadable root is run again too.
    sim.policy.output_lost(sim.policy.root, "torn", sim.now)
    assert not sim.policy.done
    drive(sim)
    assert sim.policy.done and sim.root_value() == 3


def test_output_lost_after_parent_completed_is_not_rerun():
    sim = Sim(2, 2, 2)
    drive(sim)
    assert sim.policy.done
    before = {t: s.launched for t, s in sim.policy.tasks.items()}
    # Losing the worker of a map output after the root completed: nothing needs it.
    w = sim.policy.tasks["map-0"].ref_worker
    sim.policy.worker_lost(w, "late", sim.now)
    assert sim.policy.tasks["map-0"].launched == before["map-0"]


def test_lost_root_output_reruns_the_root():
    sim = Sim(2, 2, 2)
    drive(sim)
    root = sim.policy.tasks[sim.policy.root]
    w = root.ref_worker
    sim.drop_worker(w)
    assert not sim.policy.done and root.state is TaskState.IDLE
    drive(sim)
    assert sim.policy.done and sim.root_value() == 3


def test_heartbeat_timeout_kills_and_requeues():
    sim = Sim(2, 2, 2, heartbeat_timeout=5.0)
    sim.tick()
    silent = sim.running[sorted(sim.running)[0]].worker
    other = next(w for w in sim.alive if w != silent)
    sim.now = 4.0
    sim.policy.heartbeat(other, sim.now)
    sim.tick()
    assert not sim.killed
    sim.now = 6.0
    sim.tick()
    assert sim.killed == [silent]
    drive(sim)
    assert sim.root_value() == 3


def test_task_timeout_counts_as_a_failure():
    sim = Sim(1, 2, 1, task_timeout=3.0, max_attempts=2, heartbeat_timeout=100)
    sim.tick()
    for t in (4.0, 8.0):
        sim.now = t
        for w in list(sim.alive):
            sim.policy.heartbeat(w, sim.now)
        sim.tick()
    assert isinstance(sim.policy.error, TaskFailed)
    assert "task_timeout" in str(sim.policy.error)
    assert len(sim.killed) == 2


def test_backup_launched_for_straggler_and_first_completion_wins():
    sim = Sim(8, 8, 3, prefetch=1, backup_after=0.5, backup_factor=1.5)
    sim.tick()
    straggler = "map-0#1"
    for _step in range(12):
        sim.now += 1.0
        for w in list(sim.alive):
            sim.policy.heartbeat(w, sim.now)
        others = sorted(a for a in sim.running if a != straggler and not a.endswith("#2"))
        if others:
            sim.finish(others[0])
        sim.tick()
        if "map-0#2" in sim.running:
            break
    assert "map-0#2" in sim.running
    assert sim.running["map-0#2"].backup
    assert sim.running["map-0#2"].worker != sim.running[straggler].worker
    sim.finish("map-0#2")
    sim.tick()
    assert straggler in sim.cancelled
    assert sim.policy.backups_launched == 1 and sim.policy.backups_won == 1
    drive(sim)
    assert sim.root_value() == sum(range(1, 9))


def test_backups_can_be_switched_off():
    sim = Sim(8, 8, 3, prefetch=1, backups=False, backup_after=0.0)
    sim.tick()
    for _ in range(30):
        sim.now += 1
        for w in list(sim.alive):
            sim.policy.heartbeat(w, sim.now)
        rest = sorted(a for a in sim.running if a != "map-0#1")
        if rest:
            sim.finish(rest[0])
        sim.tick()
    assert sim.policy.backups_launched == 0


def test_duplicate_completion_with_other_fingerprint_stops_the_job():
    sim = Sim(3, 3, 2, prefetch=1, backup_after=0.0, backup_factor=0.1)
    sim.tick()
    sim.now += 1
    sim.finish("map-1#1")
    sim.now += 5
    sim.policy.heartbeat("w1", sim.now)
    sim.policy.heartbeat("w2", sim.now)
    sim.tick()
    backups = [a for a, launch in sim.running.items() if launch.backup]
    assert backups
    b = backups[0]
    task = b.split("#")[0]
    # The original finishes first, then the backup (not yet cancelled) with other bytes.
    sim.finish(f"{task}#1")
    sim.policy.finished(sim.running[b].attempt, FakeRef(999, "w1"), "999", sim.now)
    err = sim.policy.error
    assert isinstance(err, NondeterminismError)
    assert err.task == task and "999" in err.fingerprints


def test_verify_audits_map_tasks_on_another_worker():
    sim = Sim(6, 3, 2, verify=1.0)
    drive(sim)
    assert sim.policy.done and sim.policy.verified == 6


def test_verify_catches_a_corrupt_map():
    sim = Sim(4, 4, 2, verify=1.0, prefetch=1)
    for _ in range(100):
        sim.tick()
        if sim.policy.error or sim.policy.done:
            break
        aid = sorted(sim.running)[0]
        sim.now += 1
        sim.finish(aid, corrupt=sim.running[aid].audit and aid.startswith("map-2"))
    assert isinstance(sim.policy.error, NondeterminismError)
    assert sim.policy.error.task == "map-2"


def test_failure_detector_sequence():
    d = FailureDetector()
    d.heartbeat("w1", 1_700_000_000_000)
    d.heartbeat("w2", 1_700_000_009_000)
    assert d.failed(1_700_000_010_000, 5000) == ["w1"]
    d.heartbeat("w1", 1_700_000_010_000)
    assert d.failed(1_700_000_010_000, 5000) == []


def test_config_validation():
    with pytest.raises(ValueError, match="max_attempts"):
        PolicyConfig(max_attempts=0)
    with pytest.raises(ValueError, match="verify"):
        PolicyConfig(verify=2)


events = st.lists(
    st.tuples(st.sampled_from(["finish", "finish", "finish", "raise", "lose", "beat",
                               "late", "wait"]),
              st.integers(0, 50)),
    max_size=60,
)


@given(n=st.integers(1, 12), fan_in=st.integers(2, 4), workers=st.integers(1, 3),
       script=events, backups=st.booleans(), verify=st.sampled_from([0.0, 0.5, 1.0]),
       in_order=st.booleans())
def test_any_interleaving_ends_correct_or_named_and_never_counts_twice(n, fan_in, workers,
                                                                       script, backups,
                                                                       verify, in_order):
    sim = Sim(n, fan_in, workers, max_attempts=3, backups=backups, backup_after=0.0,
              backup_factor=1.0, heartbeat_timeout=4.0, verify=verify,
              queues_in_order=in_order)
    expected = sum(range(1, n + 1))
    sim.tick()
    for kind, pick in script:
        if sim.policy.done or sim.policy.error:
            break
        sim.now += 1.0
        live = sorted(sim.running)
        if kind == "beat" or kind == "wait":
            if kind == "beat":
                for w in list(sim.alive):
                    sim.policy.heartbeat(w, sim.now)
        elif kind == "late" and sim.finished_msgs:
            aid, ref, fp = sim.finished_msgs[pick % len(sim.finished_msgs)]
            sim.policy.finished(aid, ref, fp, sim.now)  # a duplicate delivery
        elif live and kind == "finish":
            sim.finish(live[pick % len(live)])
        elif live and kind == "raise":
            sim.fail(live[pick % len(live)])
        elif kind == "lose":
            sim.drop_worker(sorted(sim.alive)[pick % len(sim.alive)])
        for w in list(sim.alive):
            if kind != "wait":
                sim.policy.heartbeat(w, sim.now)
        sim.tick()
    # Then let everything finish cleanly.
    for _ in range(10_000):
        if sim.policy.done or sim.policy.error:
            break
        sim.tick()
        if sim.policy.done or sim.policy.error:
            break
        assert sim.running, "nothing runs and nothing was launched: the job would hang"
        sim.now += 1.0
        for w in list(sim.alive):
            sim.policy.heartbeat(w, sim.now)
        sim.finish(sorted(sim.running)[0])
    assert sim.policy.done or sim.policy.error is not None
    if sim.policy.error is not None:
        assert isinstance(sim.policy.error, (TaskFailed, JobFailed))
        assert "map-" in str(sim.policy.error) or "combine-" in str(sim.policy.error)
    else:
        assert sim.root_value() == expected


def test_policy_state_round_trips_and_the_copy_finishes_the_job():
    # The journal and the simulator need policy state that serialises: a pickled copy taken
    # mid-job must carry on to the same answer.
    import pickle

    sim = Sim(9, 3, 2)
    for _ in range(5):
        sim.tick()
        sim.now += 1
        sim.finish(sorted(sim.running)[0])
    sim.policy = pickle.loads(pickle.dumps(sim.policy))
    drive(sim)
    assert sim.policy.done and sim.root_value() == sum(range(1, 10))


def finish_where(sim, pred):
    for aid in sorted(sim.running):
        if pred(aid):
            sim.finish(aid)
            return aid
    raise AssertionError(f"nothing running matches; running: {sorted(sim.running)}")


def test_an_idle_worker_takes_attempts_queued_behind_stalled_ones_and_backups_follow():
    # 8 maps on 3 workers with queues of 2: map-0 and map-1 stall on their first attempt.
    sim = Sim(8, 8, 3, prefetch=2)
    stalled = ("map-0#1", "map-1#1")
    sim.tick()
    assert set(stalled) <= set(sim.running)
    for _ in range(40):
        sim.now += 1.0
        for w in list(sim.alive):
            sim.policy.heartbeat(w, sim.now)
        movable = [a for a in sim.running
                   if a not in stalled and sim.policy.attempts[sim.running[a].attempt].started
                   is not None]
        if movable:
            sim.finish(sorted(movable)[0])
        sim.tick()
        if sim.policy.done:
            break
        backups = [a for a in sim.running if a.startswith(("map-0#", "map-1#"))
                   and a not in stalled]
        for b in backups:
            sim.finish(b)
    p = sim.policy
    assert p.done and sim.root_value() == sum(range(1, 9))
    assert p.steals >= 2  # what was queued behind the stalled two ran elsewhere
    assert p.backups_launched == 2 and p.backups_won == 2  # progress made them fire
    # A moved attempt keeps its number: no task other than the stalled ones ran twice.
    assert all(p.tasks[f"map-{i}"].launched == 1 for i in range(2, 8))


def test_an_attempt_queued_on_a_dead_worker_is_moved_not_retried():
    # w1 runs map-0 with map-2 queued behind it; w2 runs map-1 with map-3 queued.
    sim = Sim(4, 4, 2, prefetch=2, backups=False)
    sim.tick()
    assert {a: launch.worker for a, launch in sim.running.items()} == {
        "map-0#1": "w1", "map-2#1": "w1", "map-1#1": "w2", "map-3#1": "w2"}
    sim.drop_worker("w1")
    p = sim.policy
    # Only the attempt that ran is a failed attempt; the queued one never ran.
    assert [(t, n, w, c) for t, n, w, c, _ in p.failures] == [("map-0", 1, "w1",
                                                               "worker lost")]
    assert p.steals == 1 and p.tasks["map-0"].lost == 1 and p.tasks["map-2"].lost == 0
    sim.tick()
    assert "map-2#1~2" in sim.running and "map-0#2" in sim.running  # same number, moved
    drive(sim)
    assert p.done and sim.root_value() == 1 + 2 + 3 + 4
    assert p.tasks["map-2"].launched == 1 and p.tasks["map-0"].launched == 2


def test_where_a_worker_runs_its_queue_in_its_own_order_a_queued_attempt_may_have_run():
    # On Dask a worker runs whichever queued task is ready first: map-2#1, queued in the
    # policy's view, may be what crashed w1. It runs again as a new attempt (an injected
    # kill on attempt 1 must not strike again), without counting against max_lost.
    sim = Sim(4, 4, 2, prefetch=2, backups=False, queues_in_order=False)
    sim.tick()
    assert sim.running["map-2#1"].worker == "w1"
    sim.drop_worker("w1")
    p = sim.policy
    assert [(t, n, c) for t, n, _w, c, _ in p.failures] == [
        ("map-0", 1, "worker lost"), ("map-2", 1, "worker lost (queued, may have run)")]
    assert p.steals == 0 and p.tasks["map-0"].lost == 1 and p.tasks["map-2"].lost == 0
    sim.tick()
    assert "map-2#2" in sim.running and "map-0#2" in sim.running
    drive(sim)
    assert p.done and sim.root_value() == 1 + 2 + 3 + 4
    assert p.tasks["map-2"].launched == 2


def test_moving_a_queued_attempt_does_not_spend_max_attempts():
    sim = Sim(3, 3, 1, prefetch=2, max_attempts=2, backups=False)
    sim.tick()
    sim.fail("map-0#1")  # map-0 has one attempt left
    sim.tick()
    assert sim.running["map-0#2"].worker == "w1"
    assert sim.policy.attempts[sim.running["map-0#2"].attempt].started is None  # queued
    sim.drop_worker("w1")  # map-1 was running; map-0's last attempt only waited
    sim.tick()
    assert "map-0#2~2" in sim.running  # still its second attempt, not a third
    sim.finish("map-0#2~2")
    drive(sim)
    p = sim.policy
    assert p.done and sim.root_value() == 1 + 2 + 3
    assert p.tasks["map-0"].launched == 2 and p.tasks["map-0"].failures == 1
    assert not any(f[0] == "map-0" and f[3].startswith("worker lost") for f in p.failures)


def test_a_moved_attempt_that_raises_is_its_tasks_last_attempt():
    sim = Sim(3, 3, 1, prefetch=2, max_attempts=2, backups=False)
    sim.tick()
    sim.fail("map-0#1")
    sim.tick()
    sim.drop_worker("w1")
    sim.tick()
    sim.fail("map-0#2~2", error="KeyError: other")  # not twice alike: no bisection
    sim.tick()
    err = sim.policy.error
    assert isinstance(err, TaskFailed) and err.task == "map-0" and err.attempts == 2
    assert [f[1] for f in sim.policy.failures if f[0] == "map-0"] == [1, 2]


def test_queued_audits_and_backups_are_moved_and_counted_once():
    # An audit queued on a dying worker runs elsewhere under its own number.
    sim = Sim(4, 4, 2, verify=1.0, prefetch=2, backups=False)
    sim.tick()
    sim.finish("map-0#1")  # on w1; its audit must go to w2, whose queue is full
    sim.tick()
    sim.finish("map-1#1")
    sim.tick()
    audit = sim.running["map-0#2"]
    assert audit.audit and audit.worker == "w2"
    assert sim.policy.attempts[audit.attempt].started is None  # behind map-3
    sim.drop_worker("w2")
    sim.tick()
    assert "map-0#2~2" in sim.running and sim.running["map-0#2~2"].audit
    drive(sim)
    assert sim.policy.done and sim.policy.verified == 4
    assert sim.policy.tasks["map-0"].launched == 2
    assert [f for f in sim.policy.failures if f[0] == "map-0"] == []
    # A backup queued on a dying worker: placed again, counted once.
    sim = Sim(3, 3, 2, prefetch=2, backup_after=0.0, backup_factor=1.0)
    sim.tick()
    sim.now = 5.0
    for w in list(sim.alive):
        sim.policy.heartbeat(w, sim.now)
    sim.finish("map-0#1")
    sim.tick()
    backups = [a for a, launch in sim.running.items() if launch.backup]
    p = sim.policy
    assert backups == ["map-1#2"] and p.attempts[sim.running["map-1#2"].attempt].started is None
    assert p.backups_launched == 1
    sim.drop_worker(sim.running["map-1#2"].worker)  # w1, running map-2
    sim.tick()
    assert p.backups_launched == 1 and sim.running["map-1#2~2"].backup
    drive(sim)
    assert p.done and sim.root_value() == 1 + 2 + 3


def test_stealing_off_leaves_queued_attempts_where_they_are():
    sim = Sim(8, 8, 3, prefetch=2, stealing=False)
    sim.tick()
    for _ in range(10):
        sim.now += 1.0
        for w in list(sim.alive):
            sim.policy.heartbeat(w, sim.now)
        movable = [a for a in sim.running if not a.startswith(("map-0#", "map-1#"))
                   and sim.policy.attempts[sim.running[a].attempt].started is not None]
        if movable:
            sim.finish(sorted(movable)[0])
        sim.tick()
    assert sim.policy.steals == 0
    assert sim.policy.backups_launched == 0  # progress stalls at 4/8 with the two queued


def test_a_verification_rerun_that_fails_is_run_again_and_never_silently_dropped():
    sim = Sim(2, 2, 2, verify=1.0, prefetch=1, max_attempts=3)
    sim.tick()
    for aid in sorted(sim.running):
        sim.finish(aid, corrupt=aid.startswith("map-0"))
    sim.tick()
    # The audit of map-0 raises: before, the audit was dropped and the corrupt first
    # completion stood. Now it runs again, and the second audit finds the difference.
    audit = next(a for a, launch in sim.running.items() if launch.audit
                 and a.startswith("map-0"))
    sim.fail(audit)
    sim.tick()
    assert any(launch.audit and a.startswith("map-0") for a, launch in sim.running.items())
    drive(sim)
    assert isinstance(sim.policy.error, NondeterminismError)


def test_a_task_whose_audits_keep_failing_fails_the_job():
    sim = Sim(1, 2, 2, verify=1.0, prefetch=1, max_attempts=2)
    sim.tick()
    sim.finish("map-0#1")
    for _ in range(2):
        sim.tick()
        audit = next(a for a, launch in sim.running.items() if launch.audit)
        sim.fail(audit)
    sim.tick()
    assert isinstance(sim.policy.error, TaskFailed)
    assert "could not be verified" in str(sim.policy.error)
    assert not sim.policy.done


@given(st.lists(st.floats(0, 1e6, allow_nan=False), max_size=60))
def test_sorted_durations_is_a_sorted_list_with_a_cheap_median(xs):
    from mergeagg.runtime.master import SortedDurations

    d = SortedDurations()
    for i, x in enumerate(xs):
        d.add(x)
        ref = sorted(xs[:i + 1])
        assert len(d) == len(ref) and d[len(d) // 2] == ref[len(ref) // 2]
    assert list(d) == sorted(xs) and bool(d) == bool(xs)


@given(st.lists(st.tuples(st.sampled_from("abcde"), st.integers(0, 50)), max_size=40),
       st.integers(0, 60), st.integers(0, 20))
def test_failure_detector_in_any_heartbeat_order_matches_a_full_scan(beats, now, timeout):
    d, last = FailureDetector(), {}
    for w, t in beats:
        d.heartbeat(w, t)
        last[w] = max(last.get(w, t), t)
    assert d.failed(now, timeout) == sorted(w for w, t in last.items() if now - t > timeout)


_STEP = st.one_of(
    st.tuples(st.just("beat"), st.sampled_from("abcdef"), st.integers(0, 50)),
    st.tuples(st.just("round"), st.lists(st.sampled_from("abcdef"), unique=True),
              st.integers(0, 50)),
    st.tuples(st.just("forget"), st.sampled_from("abcdef"), st.just(0)))


@given(st.lists(_STEP, max_size=30), st.integers(0, 60), st.integers(0, 20))
def test_a_round_of_heartbeats_is_one_heartbeat_per_worker(steps, now, timeout):
    """``heartbeats`` (a round, as the simulator delivers them) leaves the detector as a
    heartbeat per worker does, in time order or not, with workers outside ``only`` left
    out; and the policy records a ``Heartbeats`` event for each of its workers."""
    only = set("abcde")  # "f" is not a worker: its beats are ignored
    rounds, single = FailureDetector(), FailureDetector()
    for op, who, t in steps:
        if op == "beat" and who in only:
            rounds.heartbeat(who, t)
            single.heartbeat(who, t)
        elif op == "round":
            rounds.heartbeats(who, t, only=only)
            for w in who:
                if w in only:
                    single.heartbeat(w, t)
        elif op == "forget":
            rounds.forget(who)
            single.forget(who)
        assert rounds.last == single.last  # the same times (as dicts: order aside)
        assert rounds.failed(now, timeout) == single.failed(now, timeout)


def test_the_policy_takes_a_round_of_heartbeats_for_its_workers_only():
    from mergeagg.runtime.port import Heartbeats

    p = Policy([TaskDef("map-0", "map", split=0)], PolicyConfig(heartbeat_timeout=5.0))
    for w in ("w1", "w2"):
        p.worker_joined(w, 0.0)
    p.handle(Heartbeats(("w2", "w9")), 4.0)  # w9 is no worker of this policy
    assert p.detector.last == {"w1": 0.0, "w2": 4.0}
    p.tick(6.0)  # w1 silent for 6 s > 5: lost; w2 heard at 4
    assert p.workers_lost == 1 and list(p.workers) == ["w2"]


def test_workers_are_picked_least_loaded_then_earliest_joined():
    p = Policy([TaskDef(f"map-{i}", "map", split=i, index=i) for i in range(5)],
               PolicyConfig(prefetch=2, stealing=False))
    for w in ("w3", "w1", "w2"):
        p.worker_joined(w, 0.0)
    launches = [a for a in p.tick(0.0) if isinstance(a, Launch)]
    assert [a.worker for a in launches] == ["w3", "w1", "w2", "w3", "w1"]
    p.validate()


def test_a_task_failing_twice_alike_is_bisected_even_at_its_attempt_limit():
    sim = Sim(3, 3, 1, prefetch=1, max_attempts=2, backups=False)
    sim.tick()
    sim.fail("map-0#1")
    sim.tick()
    sim.fail("map-0#2")
    sim.tick()
    assert sim.policy.error is None
    assert sim.running["map-0#3"].bisect == 0  # names the bad record, skips none


def test_a_copy_running_when_bisection_is_decided_is_cancelled_for_the_bisecting_one():
    sim = Sim(1, 2, 2, prefetch=1, max_attempts=2)
    sim.tick()
    sim.fail("map-0#1")
    sim.tick()  # map-0#2 on a worker
    second = next(a for a in sim.running if a.startswith("map-0#"))
    # A copy of the same task starts beside it (a backup), then the first copy fails.
    task = sim.policy.tasks["map-0"]
    sim.policy.backup_wanted.append("map-0")
    sim.tick()
    copies = [a for a in sim.running if a.startswith("map-0#")]
    sim.fail(second)
    actions = sim.tick()
    assert sim.policy.error is None
    launched = [a for a in sim.running if a.startswith("map-0#") and a not in copies]
    assert task.bisect == 0 and launched and sim.running[launched[0]].bisect == 0
    assert len(copies) == 2, "the backup copy ran beside the second attempt"
    live = {str(a) for a in sim.policy.attempts}
    assert not live & set(copies), "the copy started before bisection was cancelled"
    del actions
