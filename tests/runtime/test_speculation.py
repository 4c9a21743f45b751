"""The backup rules, one by one, against a small fake of the policy's read methods."""

import pytest

from mergeagg.runtime.port import AttemptId
from mergeagg.runtime.speculation import NAMES, Capped, Late, Threshold, by_name


class View:
    """What a rule reads of the policy: one ``map`` stage."""

    def __init__(self, done, total, durations, running=(), backups=0, workers=10):
        self.done, self.total = {"map": done}, {"map": total}
        self._durations = sorted(durations)
        self.running = dict(running)  # attempt id -> started
        self.backups = backups
        self.workers = workers

    def stage_counts(self):
        return self.done, self.total

    def durations(self, kind):
        return self._durations

    def overdue(self, kind, limit, now, most=None):
        late = sorted((s, a) for a, s in self.running.items() if now - s > limit)
        return [a.task for _s, a in late][:most]

    def oldest_start(self, kind):
        return min(self.running.values(), default=None)

    def running_primaries(self):
        return list(self.running.items())

    def running_backups(self):
        return self.backups

    def backups_pending(self):
        return 0

    def running_attempts(self):
        return len(self.running)

    def worker_count(self):
        return self.workers


A, B, C = (AttemptId(f"map-{i}", 1) for i in range(3))


def test_threshold_waits_for_its_share_then_takes_the_slow_ones_longest_first():
    rule = Threshold(0.75, 1.5)
    view = View(7, 10, [1.0] * 7, {A: 0.0, B: 5.0, C: 9.5})
    assert rule.due(view, now=10.0) == []  # 70% done
    view.done["map"] = 8
    assert rule.due(view, now=10.0) == ["map-0", "map-1"]  # ran 10 s and 5 s > 1.5 s
    assert rule.next_check(view, now=10.0) == 0.0 + 1.5
    assert rule.due(view, now=10.0, room=1) == ["map-0"]


def test_cubed_needs_ten_tasks_and_three_times_the_median():
    rule = by_name("cubed")
    assert rule.due(View(5, 9, [1.0] * 5, {A: 0.0}), now=100.0) == []
    assert rule.due(View(5, 10, [1.0] * 5, {A: 0.0, B: 8.0}), now=10.0) == ["map-0"]


def test_hadoop_caps_are_the_largest_of_its_three_bounds():
    rule = Capped(Threshold(0.0, 1.0))
    assert rule.allowed(tasks=100, running=50) == 10  # the minimum
    assert rule.allowed(tasks=5000, running=300) == 50  # 1% of all tasks
    assert rule.allowed(tasks=5000, running=800) == 80  # 10% of those running
    small = Capped(Threshold(0.0, 1.0), minimum=1)
    view = View(1, 3, [1.0], {A: 0.0, B: 0.0}, backups=1)
    assert list(small.due(view, now=10.0)) == []  # one backup runs, the cap is 1
    assert small.next_check(view, now=10.0) is None
    view.backups = 0
    assert small.due(view, now=10.0) == ["map-0"]


def test_late_backs_up_the_longest_time_left_among_the_slowest_rates():
    progress = {A: 0.1, B: 0.5, C: 0.9}
    rule = Late(lambda aid, now: progress[aid], cap=0.2, interval=1.0)
    view = View(0, 10, [], {A: 0.0, B: 0.0, C: 0.0}, workers=10)
    assert rule.due(view, now=10.0) == ["map-0"]  # rate 0.01/s: 90 s left
    assert rule.due(view, now=10.5) == ()  # asked again within its interval
    assert rule.cap(view) == 2
    view.backups = 2
    assert rule.due(view, now=12.0) == ()


def test_late_rates_machines_by_their_mean_task_time():
    rule = Late(lambda aid, now: 0.0, slow_node=0.25)
    for w, s in (("w1", 10.0), ("w2", 10.0), ("w3", 11.0), ("w4", 40.0)):
        rule.finished(w, "map", s)
    rule.due(View(0, 1, [], {}), now=5.0)
    assert rule.slow_nodes == {"w4"} and not rule.worker_ok(None, "w4")


def test_every_name_builds_its_rule_and_bad_ones_are_refused():
    for name in NAMES:
        by_name(name, progress=lambda aid, now: 0.0)
    assert by_name("none") is None
    with pytest.raises(ValueError, match="unknown speculation policy 'nope'"):
        by_name("nope")
    with pytest.raises(ValueError, match="after"):
        Threshold(after=1.5)
    with pytest.raises(ValueError, match="cap"):
        Late(lambda a, n: 0.0, cap=2.0)


def test_late_skips_attempts_that_reported_no_progress():
    progress = {A: None, B: 0.2, C: 0.9}
    rule = Late(lambda aid, now: progress[aid], cap=0.5)
    view = View(0, 10, [], {A: 0.0, B: 0.0, C: 0.0}, workers=10)
    assert rule.due(view, now=10.0) == ["map-1"]  # A is not rated, however long it ran


def test_late_on_a_real_policy_rates_attempts_by_their_progress_reports():
    from mergeagg.runtime.master import Policy, PolicyConfig, TaskDef
    from mergeagg.runtime.port import Launch, Progress

    tasks = [TaskDef(f"map-{i}", "map", split=i, index=i) for i in range(3)]
    p = Policy(tasks, PolicyConfig(speculation=Late(interval=0.5), prefetch=1,
                                   scan_interval=0.0))
    for w in ("w1", "w2", "w3", "w4"):
        p.worker_joined(w, now=0.0)
    launched = [a for a in p.tick(now=0.0) if isinstance(a, Launch)]
    assert len(launched) == 3 and not p.tick(now=1.0)  # nothing reported: nothing rated
    p.handle(Progress(AttemptId("map-0", 1), 0.9, "w1"), now=2.0)
    p.handle(Progress(AttemptId("map-1", 1), 0.1, "w2"), now=2.0)
    p.handle(Progress(AttemptId("map-2", 1), 0.8, "w3"), now=2.0)
    p.handle(Progress(AttemptId("map-9", 1), 0.0, "w3"), now=2.0)  # not an attempt: ignored
    assert p.progress(AttemptId("map-1", 1), now=2.0) == 0.1
    backups = [a for a in p.tick(now=2.0) if isinstance(a, Launch)]
    assert [(a.task, a.backup, a.worker) for a in backups] == [("map-1", True, "w4")]
    p.validate()
