"""Attempt progress: the Progress event, the attempt runner's meter, the local workers and
the in-process executor that carry it, and LATE using it on real runs."""

import operator
import os
import sys
import time

import cloudpickle
import pytest

import mergeagg as ma
from mergeagg.inputs import files
from mergeagg.runtime.attempt import Meter
from mergeagg.runtime.faults import Fault, FaultPlan
from mergeagg.runtime.inprocess import InProcessExecutor
from mergeagg.runtime.port import AttemptId, Progress
from mergeagg.runtime.speculation import Late

cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Reader:
    """A stand-in for a split's records: what the meter samples is ``bytes_read``."""

    bytes_read = 0


def test_the_meter_reads_the_readers_bytes_and_a_delay_is_seen_as_a_slow_attempt():
    m = Meter(AttemptId("map-0", 1), 1000)
    records = Reader()
    m.reading(records)
    assert m.sample() == (0.0, 0)
    records.bytes_read = 1000
    assert m.sample() == (1.0, 1000)
    slow = Meter(AttemptId("map-1", 1), 1000, slow=10.0)
    slow.reading(records)
    assert slow.sample() == (0.1, 100)  # it computes ten times slower than it reads
    slow.computed()
    slow.stretch(10.0, 0.5)  # then the delay: 0.5 s of work stretched to 5 s
    frac, _ = slow.sample()
    assert 0.1 <= frac < 0.2
    assert Meter(AttemptId("map-2", 1), 0).sample() is None  # no byte count: unknown
    gone = Meter(AttemptId("map-3", 1), 0)
    gone.computed()
    assert gone.sample() == (1.0, 0)


def test_the_meter_counts_the_records_a_partial_has_been_handed(tmp_path):
    from mergeagg.inputs import read_split

    path = tmp_path / "t.txt"
    path.write_text("".join(f"line {i}\n" for i in range(100)))
    split = files(str(path)).splits()[0]
    shard = read_split(split)
    m = Meter(AttemptId("map-0", 1), split.end - split.start)
    m.reading(shard)
    assert m.sample() == (0.0, 0)  # nothing read yet
    it = iter(shard)
    assert m.sample()[0] == 0.0  # read, and no record handed out yet
    for _ in range(40):
        next(it)
    assert m.sample()[0] == pytest.approx(0.4)
    list(it)
    assert m.sample()[0] == 1.0
    # Word count takes the text a few kilobytes of whole lines at a time: as far as that.
    pieces = read_split(split)
    m = Meter(AttemptId("map-2", 1), split.end - split.start)
    m.reading(pieces)
    chunks = pieces.pieces(100)
    next(chunks)
    assert 0.1 < m.sample()[0] < 0.2  # the first line end after 100 of ~790 characters
    list(chunks)
    assert m.sample()[0] == 1.0
    # A partial that takes the text whole has consumed its input once it is read.
    whole = read_split(split)
    m = Meter(AttemptId("map-1", 1), split.end - split.start, slow=2.0)
    m.reading(whole)
    whole.text()
    assert m.sample()[0] == 0.5  # and a straggler twice as slow says half


def test_the_reporter_reports_a_running_attempt_at_most_every_period_when_it_moved():
    from mergeagg.runtime.attempt import PROGRESS_EVERY, Reporter

    class Fixed:
        fraction = 0.1
        bytes_read = 0

    r = Reporter()
    m = Meter(AttemptId("map-0", 1), 10)
    records = Fixed()
    m.reading(records)
    t = m.started
    p = PROGRESS_EVERY * 1.01  # a period and a little: (t + x) - t need not be x exactly
    assert r.due(m, t + PROGRESS_EVERY / 2) is None  # too young
    records.bytes_read = 3
    assert r.due(m, t + p) == (0.3, 3)
    records.bytes_read = 5
    assert r.due(m, t + p * 1.5) is None  # too soon after the last
    assert r.due(m, t + p * 2.1) == (0.5, 5)
    assert r.due(m, t + p * 4) is None  # it has not moved
    other = Meter(AttemptId("map-1", 1), 10)
    r.keep((other,))
    assert r.due(m, t + p * 5) == (0.5, 5)  # forgotten: reported again


def test_progress_crosses_a_pipe_as_plain_data():
    import pickle

    ev = Progress(AttemptId("map-0", 1, 2), 0.25, "w1", 10, 40)
    assert pickle.loads(pickle.dumps(ev)) == ev


def slow_length(shard):
    """The partial of the tests below: read the split, then take 0.4 s over it."""
    n = len(shard.text())
    time.sleep(0.4)
    return n


@pytest.fixture
def text_files(tmp_path):
    paths = []
    for i in range(8):
        p = tmp_path / f"part-{i}.txt"
        p.write_text("".join(f"line {i} {j}\n" for j in range(200)))
        paths.append(str(p))
    return paths


def test_a_long_map_attempt_on_a_worker_process_reports_its_progress(text_files,
                                                                     progress_of):
    from mergeagg.runtime.local import LocalExecutor

    plan = FaultPlan(only={"map-1": {1: Fault("delay", factor=4.0)}})
    total, by_task = progress_of(LocalExecutor(2, heartbeat_interval=0.05),
                                 ma.Aggregator(slow_length, operator.add), text_files[:2],
                                 faults=plan)
    assert total == sum(os.path.getsize(p) for p in text_files[:2])
    # The normal attempt read its split at once and says so; the delayed one (four times
    # slower) reports a quarter, then more and more through its delay.
    assert {ev.fraction for ev in by_task["map-0"]} == {1.0}
    slow = [ev.fraction for ev in by_task["map-1"]]
    assert slow[0] == pytest.approx(0.25) and slow == sorted(slow) and len(slow) >= 3
    assert all(ev.bytes_total == os.path.getsize(text_files[1]) for ev in by_task["map-1"])


def line_by_line(shard):
    """A partial that iterates its records and takes 2 ms over each."""
    n = 0
    for line in shard:
        time.sleep(0.002)
        n += len(line)
    return n


def test_an_attempt_that_iterates_its_records_reports_how_many_it_has_passed(text_files,
                                                                            progress_of):
    from mergeagg.runtime.local import LocalExecutor

    _total, by_task = progress_of(LocalExecutor(1, heartbeat_interval=0.05),
                                  ma.Aggregator(line_by_line, operator.add), text_files[:1])
    fractions = [ev.fraction for ev in by_task.get("map-0", [])]
    # 200 records over about 0.4 s, sampled every 0.2 s from 0.2 s on: part-way, rising.
    assert fractions and fractions == sorted(fractions)
    assert 0.1 < fractions[0] < 0.95


def test_late_backs_up_the_slow_attempt_it_finds_by_its_progress_on_worker_processes(
        text_files):
    agg = ma.Aggregator(slow_length, operator.add)
    plan = FaultPlan(only={"map-2": {1: Fault("delay", factor=30.0)}})
    t0 = time.monotonic()
    r = ma.run(agg, text_files, workers=2, faults=plan, speculation=Late(interval=0.1))
    took = time.monotonic() - t0
    assert r.value == sum(os.path.getsize(p) for p in text_files)
    assert r.fingerprint == ma.run(agg, text_files, workers=0).fingerprint
    attempts = {t.task: t.attempts for t in r.report.tasks}
    assert attempts["map-2"] == 2 and sum(attempts.values()) == len(attempts) + 1
    assert r.report.backups_launched == 1 and r.report.backups_won == 1
    assert took < 0.4 * 30  # it did not wait for the delayed attempt


def test_late_by_name_runs_in_process_on_the_progress_the_executor_reports():
    from mergeagg.runtime.api import run_on
    from mergeagg.runtime.master import PolicyConfig

    agg = ma.Aggregator(sum, operator.add)
    src = ma.inputs.as_source([[i] for i in range(40)])
    plan = FaultPlan(only={"map-7": {1: Fault("delay", factor=20.0)}})
    ex = InProcessExecutor(4, task_seconds=lambda launch: 1.0 + 0.13 * (launch.index % 7))
    r = run_on(agg, src, ex, own=True, config=PolicyConfig(speculation="late"),
               faults=plan)
    assert r.value == sum(range(40))
    rows = {t.task: t for t in r.report.tasks}
    # The delayed attempt (20 s of virtual time) lost to its backup; LATE, as in its paper,
    # also races the slowest of the others while fewer than 10% of the workers run a copy.
    assert rows["map-7"].attempts == 2 and rows["map-7"].seconds < 2.0
    assert ex.clock() < 20.0


@pytest.mark.parametrize("seed", [1, 2])
def test_progress_reports_never_break_a_chaotic_run(text_files, seed):
    agg = ma.Aggregator(lambda shard: len(shard.text()), operator.add)
    clean = ma.run(agg, text_files, workers=0)
    r = ma.run(agg, text_files, workers=2, faults=f"chaos,seed={seed}",
               speculation="late", heartbeat_timeout=5.0)
    assert r.fingerprint == clean.fingerprint and r.value == clean.value



def test_the_command_line_chooses_the_backup_rule_of_a_real_run(text_files, capsys,
                                                                 monkeypatch, tmp_path):
    import json

    from mergeagg.cli import main
    from mergeagg.runtime import api

    seen = []
    real_run_on = api.run_on

    def run_on(*args, config, **kw):
        seen.append(config)
        return real_run_on(*args, config=config, **kw)

    monkeypatch.setattr(api, "run_on", run_on)

    def fingerprint_of(*flags):
        report = tmp_path / "report.json"
        assert main(["run", "wordcount", *text_files, "--quiet", "--json", str(report),
                     *flags]) == 0
        return json.loads(report.read_text())["fingerprint"]

    clean = fingerprint_of("--workers", "0")
    for name, rule in (("late", "Late"), ("hadoop", "Capped"), ("none", "NoneType")):
        assert fingerprint_of("--workers", "2", "--speculation", name) == clean
        assert type(seen[-1].speculation).__name__ == rule
    assert seen[-1].backups is False  # "none" turns backups off
    with pytest.raises(SystemExit):
        main(["run", "wordcount", *text_files, "--speculation", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err


def test_late_judges_an_attempt_left_running_alone_by_the_stage_s_completed_attempts():
    from mergeagg.runtime.api import run_on
    from mergeagg.runtime.master import PolicyConfig

    # Three maps of 1 s on two workers: map-2 starts alone at 1 s, twenty times slower.
    # No other attempt runs beside it to be compared with; the two completed ones are.
    agg = ma.Aggregator(sum, operator.add)
    src = ma.inputs.as_source([[i] for i in range(3)])
    plan = FaultPlan(only={"map-2": {1: Fault("delay", factor=20.0)}})
    ex = InProcessExecutor(2, task_seconds=lambda launch: 1.0 if launch.kind == "map" else 0.0)
    r = run_on(agg, src, ex, own=True, config=PolicyConfig(speculation="late"), faults=plan)
    assert r.value == 3
    rows = {t.task: t for t in r.report.tasks}
    assert rows["map-2"].attempts == 2 and r.report.backups_won == 1
    assert ex.clock() < 4.0  # not the delayed attempt's 21 s


def slow_add(a, b):
    time.sleep(0.3)
    return a + b


def test_late_backs_up_a_slow_combine_by_the_steps_it_reports_on_worker_processes(
        text_files):
    # A combine reports the share of its steps done (load each input, fold each in); one
    # delayed 30x is raced and beaten, and the job does not wait its ~9 s.
    agg = ma.Aggregator(lambda shard: len(shard.text()), slow_add)
    plan = FaultPlan(only={"combine-1-1": {1: Fault("delay", factor=30.0)}})
    t0 = time.monotonic()
    r = ma.run(agg, text_files, workers=2, fan_in=2, faults=plan,
               speculation=Late(interval=0.1))
    took = time.monotonic() - t0
    assert r.value == sum(os.path.getsize(p) for p in text_files)
    assert r.fingerprint == ma.run(agg, text_files, workers=0, fan_in=2).fingerprint
    rows = {t.task: t for t in r.report.tasks}
    assert rows["combine-1-1"].attempts == 2 and rows["combine-1-1"].seconds < 2.0
    assert took < 0.3 * 30


def test_one_late_rule_given_to_job_after_job_starts_afresh_each_time():
    from mergeagg.runtime.api import run_on
    from mergeagg.runtime.master import PolicyConfig

    def job(rule):
        src = ma.inputs.as_source([[i] for i in range(40)])
        plan = FaultPlan(only={"map-7": {1: Fault("delay", factor=20.0)}})
        ex = InProcessExecutor(4, task_seconds=lambda launch: 1.0 + 0.13 * (launch.index % 7))
        r = run_on(ma.Aggregator(sum, operator.add), src, ex, own=True,
                   config=PolicyConfig(speculation=rule), faults=plan)
        return r.report.backups_launched, round(ex.clock(), 6)

    late = Late()
    first = job(late)
    # Each in-process job's clock starts at 0 again: a rule that kept its last check's
    # time would wait past it before backing anything up.
    assert job(late) == first == job(Late())
    assert first[0] > 0


def test_a_late_rule_built_by_the_caller_reads_the_simulator_s_progress():
    from mergeagg.runtime.simulate import simulate

    knobs = dict(workers=20, maps=60, duration=10.0, slow_attempts=0.1, slow_factor=6.0,
                 seed=3, timeline=False)
    mine = Late()
    by_instance = simulate(speculation=mine, **knobs)
    by_name = simulate(speculation="late", **knobs)
    assert by_instance.backups_launched == by_name.backups_launched > 0
    assert by_instance.seconds == by_name.seconds
    assert mine.progress is None  # the caller's rule is left as it was
