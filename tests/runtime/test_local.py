"""The local runtime with real worker processes, real signals and real files."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter

import cloudpickle
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mergeagg as ma
from mergeagg.errors import NondeterminismError, TaskFailed

cloudpickle.register_pickle_by_value(sys.modules[__name__])


WORDS = ["alpha", "beta", "gamma", "delta", "eps"]


def make_corpus(tmp_path, n_files=3, lines=400):
    paths = []
    for f in range(n_files):
        p = tmp_path / f"part{f}.txt"
        with open(p, "w") as fh:
            for i in range(lines):
                fh.write(" ".join(WORDS[(i * 7 + j + f) % 5] for j in range(i % 9)) + "\n")
        paths.append(str(p))
    return paths


def pids_in(d):
    return {int(name) for name in os.listdir(d)} if os.path.isdir(d) else set()


def assert_gone(pids, within=5.0):
    deadline = time.monotonic() + within
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {p for p in alive if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE}
        if alive:
            time.sleep(0.05)
    assert not alive, f"worker processes left behind: {sorted(alive)}"


def recording_wordcount(pid_dir, slow_marker=None, sleep=0.0, combine_sleep=0.0):
    """Word count whose partial records its worker's pid (and can be slowed down)."""

    def partial(shard):
        os.makedirs(pid_dir, exist_ok=True)
        open(os.path.join(pid_dir, str(os.getpid())), "w").close()
        if sleep:
            time.sleep(sleep)
        return ma.algorithms.wordcount().partial(shard)

    def combine(a, b):
        open(os.path.join(pid_dir, str(os.getpid())), "w").close()
        if combine_sleep and slow_marker and not os.path.exists(slow_marker):
            with open(slow_marker + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(slow_marker + ".tmp", slow_marker)
            time.sleep(combine_sleep)
        a.update(b)
        return a

    return ma.Aggregator(partial, combine)


def test_parallel_run_equals_serial_on_files(tmp_path):
    paths = make_corpus(tmp_path)
    agg = ma.algorithms.wordcount()
    serial = ma.run(agg, paths, workers=0, split_size=2000)
    local = ma.run(agg, paths, workers=2, split_size=2000)
    assert local.fingerprint == serial.fingerprint
    assert local.value == serial.value
    assert local.report.mode == "local" and len(local.report.attempts) > 5
    assert local.report.bytes_read == sum(os.path.getsize(p) for p in paths)


def _kill_first_pid_seen(pid_dir, sig, seen, delay=0.1):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pids = pids_in(pid_dir)
        if pids:
            time.sleep(delay)
            pid = sorted(pids)[0]
            seen.append(pid)
            os.kill(pid, sig)
            return
        time.sleep(0.01)


def test_sigkill_during_partial(tmp_path):
    paths = make_corpus(tmp_path)
    clean = ma.run(ma.algorithms.wordcount(), paths, workers=0, split_size=3000)
    pid_dir = str(tmp_path / "pids")
    killed = []
    t = threading.Thread(target=_kill_first_pid_seen, args=(pid_dir, signal.SIGKILL, killed))
    t.start()
    r = ma.run(recording_wordcount(pid_dir, sleep=0.3), paths, workers=2, split_size=3000)
    t.join()
    assert killed
    assert r.fingerprint == clean.fingerprint
    assert r.report.workers_lost >= 1
    assert any(a >= 2 for a in r.report.attempts)
    assert any("signal 9" in f.detail for f in r.report.failures)
    assert_gone(pids_in(pid_dir))


def test_sigkill_during_combine(tmp_path):
    paths = make_corpus(tmp_path)
    clean = ma.run(ma.algorithms.wordcount(), paths, workers=0, split_size=3000)
    pid_dir = str(tmp_path / "pids")
    marker = str(tmp_path / "slow-combine")
    agg = recording_wordcount(pid_dir, slow_marker=marker, combine_sleep=1.0)
    killed = []

    def killer():
        deadline = time.monotonic() + 20
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        with open(marker) as f:
            pid = int(f.read())  # the worker running the slow combine
        killed.append(pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # the job ended first: the assertions below say so
            pass

    t = threading.Thread(target=killer)
    t.start()
    # No backups and no moving of queued attempts: a second copy of the sleeping combine
    # (a backup, or the same attempt taken by the idle worker just as it started) finds the
    # marker, does not sleep, and wins before the kill lands.
    with ma.Session(workers=2, backups=False, stealing=False) as session:
        r = session.run(agg, paths, split_size=3000, fan_in=2)
    t.join()
    assert killed and r.fingerprint == clean.fingerprint
    assert r.report.workers_lost >= 1
    # The combine ran again: as a failed attempt, or, when the policy had not yet seen the
    # worker finish the attempt before it (so it took the combine for one still queued),
    # as an attempt moved to the other worker under its own number.
    assert (any(f.task.startswith("combine") for f in r.report.failures)
            or r.report.counters.get("attempts_moved", 0) >= 1)
    assert_gone(pids_in(pid_dir))


def test_sigstop_worker_is_declared_lost(tmp_path):
    paths = make_corpus(tmp_path)
    clean = ma.run(ma.algorithms.wordcount(), paths, workers=0, split_size=3000)
    pid_dir = str(tmp_path / "pids")
    stopped = []
    t = threading.Thread(target=_kill_first_pid_seen, args=(pid_dir, signal.SIGSTOP, stopped))
    t.start()
    start = time.monotonic()
    r = ma.run(recording_wordcount(pid_dir, sleep=0.2), paths, workers=2, split_size=3000,
               heartbeat_timeout=1.0)
    t.join()
    assert stopped and r.fingerprint == clean.fingerprint
    assert any(f.cause == "worker lost" and "heartbeat" in f.detail for f in r.report.failures)
    assert time.monotonic() - start < 15
    assert_gone(pids_in(pid_dir))


def flaky_once(marker_dir):
    def partial(shard):
        marker = os.path.join(marker_dir, f"seen-{shard[0]}")
        if not os.path.exists(marker):
            open(marker, "w").close()
            raise ValueError(f"first attempt fails for shard {shard[0]}")
        return sum(shard)

    return ma.Aggregator(partial, lambda a, b: a + b)


def test_raising_once_is_retried(tmp_path):
    shards = [[i, i + 1] for i in range(0, 20, 2)]
    # No backups: a backup of a first attempt would find the marker and succeed, and the
    # raising original would then be a cancelled loser whose failure is not counted.
    r = ma.run(flaky_once(str(tmp_path)), shards, workers=2, backups=False)
    assert r.value == sum(range(20))
    assert r.report.attempts == [2] * 10
    assert sum(f.cause == "raise" for f in r.report.failures) == 10


def always_raises(pid_dir):
    def partial(shard):
        os.makedirs(pid_dir, exist_ok=True)
        open(os.path.join(pid_dir, str(os.getpid())), "w").close()
        if 3 in shard:
            raise KeyError("no 3 allowed")
        return sum(shard)

    return ma.Aggregator(partial, lambda a, b: a + b)


def test_always_raising_fails_with_a_named_error(tmp_path):
    pid_dir = str(tmp_path / "pids")
    with pytest.raises(TaskFailed) as info:
        ma.run(always_raises(pid_dir), [[1], [2], [3], [4]], workers=2, max_attempts=3)
    err = info.value
    assert err.task == "map-2" and err.split == "shard:2" and err.attempts == 3
    assert "KeyError" in str(err) and "no 3 allowed" in err.traceback
    assert_gone(pids_in(pid_dir))


def test_injected_faults_keep_the_fingerprint(tmp_path):
    paths = make_corpus(tmp_path)
    clean = ma.run(ma.algorithms.wordcount(), paths, workers=0, split_size=2000)
    r = ma.run(ma.algorithms.wordcount(), paths, workers=2, split_size=2000,
               faults="kill=0.3,raise=0.1,seed=5")
    assert r.fingerprint == clean.fingerprint
    assert r.report.retried > 0


def test_corrupt_partial_is_caught_by_verify(tmp_path):
    plan = ma.runtime.faults.FaultPlan(only={"map-1": {1: ma.runtime.faults.Fault("corrupt")}})
    with pytest.raises(NondeterminismError) as info:
        ma.run(ma.algorithms.wordcount(), [["a b"], ["c d"], ["e"]], workers=2, faults=plan,
               verify=1.0)
    assert info.value.task == "map-1" and len(set(info.value.fingerprints)) == 2


def spin_forever(shard):
    if shard == [2]:
        while True:
            pass
    return sum(shard)


def test_task_timeout_stops_an_infinite_loop():
    agg = ma.Aggregator(spin_forever, lambda a, b: a + b)
    with pytest.raises(TaskFailed, match="task_timeout"):
        ma.run(agg, [[1], [2], [3]], workers=2, task_timeout=0.5, max_attempts=2,
               backups=False)


def test_run_from_a_non_main_thread(tmp_path):
    paths = make_corpus(tmp_path)
    out = {}

    def job():
        out["r"] = ma.run(ma.algorithms.wordcount(), paths, workers=2, split_size=3000)

    t = threading.Thread(target=job)
    t.start()
    t.join(60)
    assert out["r"].value == ma.run(ma.algorithms.wordcount(), paths, workers=0).value


_CTRL_C = textwrap.dedent("""
    import os, sys, time
    import mergeagg as ma

    def partial(shard):
        open(os.path.join(sys.argv[1], str(os.getpid())), "w").close()
        time.sleep(30)
        return 0

    if __name__ == "__main__":
        print("started", flush=True)
        ma.run(ma.Aggregator(partial, lambda a, b: a + b), [[1], [2], [3]], workers=2)
""")


def test_ctrl_c_leaves_no_orphans(tmp_path):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    script = tmp_path / "job.py"
    script.write_text(_CTRL_C)
    proc = subprocess.Popen([sys.executable, str(script), str(pid_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while len(pids_in(str(pid_dir))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(pids_in(str(pid_dir))) == 2
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert_gone(pids_in(str(pid_dir)))


@settings(max_examples=4, deadline=None)
@given(texts=st.lists(st.lists(st.sampled_from(WORDS), max_size=30), min_size=1, max_size=12),
       kill=st.sampled_from([0.0, 0.2, 0.4]), raise_=st.sampled_from([0.0, 0.1]),
       seed=st.integers(0, 1000), fan_in=st.integers(2, 4))
def test_failure_invariance(texts, kill, raise_, seed, fan_in):
    shards = [[" ".join(t)] for t in texts]
    agg = ma.algorithms.wordcount()
    serial = ma.run(agg, shards, workers=0, fan_in=fan_in)
    faults = f"kill={kill},raise={raise_},seed={seed}"
    r = ma.run(agg, shards, workers=2, fan_in=fan_in, faults=faults, max_attempts=8)
    assert r.fingerprint == serial.fingerprint
    assert sum(r.value.values()) == sum(len(t) for t in texts)
    assert r.value == Counter(w for t in texts for w in t)


def test_bad_input_fails_at_once_with_the_readers_error(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine\n" * 10 + b"\xff oops\n")
    for job in (ma.algorithms.wordcount(), ma.algorithms.wordcount(keyed=True)):
        with pytest.raises(ma.InputError, match=r"bad\.txt: invalid UTF-8 at byte offset 50"):
            ma.run(job, str(bad), workers=2)


def long_gil_call(shard):
    # One C call that holds the GIL for a while: the heartbeat thread cannot run.
    return sum(range(shard[0]))


def test_a_worker_busy_in_one_long_call_is_not_declared_lost():
    agg = ma.Aggregator(long_gil_call, lambda a, b: a + b)
    n = 60_000_000
    start = time.monotonic()
    r = ma.run(agg, [[n], [10]], workers=2, heartbeat_interval=0.05, heartbeat_timeout=0.4,
               backups=False)
    assert time.monotonic() - start > 0.4  # the call outlived the heartbeat timeout
    assert r.value == n * (n - 1) // 2 + 45
    assert r.report.workers_lost == 0 and r.report.attempts == [1, 1]


def stall_first_attempt(marker_dir):
    """A partial whose shards named 'slow' sleep 4 s the first time they run anywhere."""

    def partial(shard):
        name, n = shard[0]
        marker = os.path.join(marker_dir, name)
        if name.startswith("slow") and not os.path.exists(marker):
            open(marker, "w").close()
            time.sleep(4.0)
        return n

    return ma.Aggregator(partial, lambda a, b: a + b)


def test_attempts_queued_behind_stalled_ones_are_taken_and_the_stalls_get_backups(tmp_path):
    # The case: 8 shards on 3 workers, 2 of them stall on their first attempt.
    # Without stealing, what is queued behind the stalls never counts as progress and no
    # backup fires (the job took the whole 4 s); with it, both stalls are raced and lose.
    shards = [[("slow0", 1)], [("slow1", 2)]] + [[(f"s{i}", 10 * i)] for i in range(2, 8)]
    agg = stall_first_attempt(str(tmp_path))
    r = ma.run(agg, shards, workers=3, backup_factor=1.5)
    assert r.value == 3 + sum(10 * i for i in range(2, 8))
    assert r.report.backups_launched == 2 and r.report.backups_won == 2
    assert r.report.attempts[:2] == [2, 2] and r.report.attempts[2:] == [1] * 6


_UNGUARDED = """
import mergeagg as ma
print("body ran", flush=True)
ma.run(ma.Aggregator(len, lambda a, b: a + b), [[1], [2], [3]], workers=2)
"""


def test_a_script_without_a_main_guard_is_told_to_add_one(tmp_path):
    # One start method (forkserver): worker processes import the main module, and the
    # script's unguarded run() must end in one clear error, not a storm of tracebacks.
    script = tmp_path / "unguarded.py"
    script.write_text(_UNGUARDED)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode != 0
    assert 'if __name__ == "__main__":' in out.stderr.strip().splitlines()[-1]
    assert "bootstrapping phase" not in out.stderr
    assert len(out.stderr.splitlines()) < 40, out.stderr


def test_a_job_refused_before_it_starts_leaves_no_directory(tmp_path, monkeypatch):
    import tempfile

    work = tmp_path / "tmp"
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(work))
    taken = tmp_path / "out"
    taken.mkdir()
    (taken / "part-00000.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="not empty"):
        ma.run(ma.algorithms.wordcount(keyed=True), [["a b"]], workers=2, output=str(taken))
    assert os.listdir(work) == []


def test_a_job_run_from_standard_input_starts_its_workers(tmp_path):
    # The main module of `python - < script` is '<stdin>', which the fork server would try
    # to re-run as a file.
    script = ("import mergeagg as ma\n"
              "print(ma.run(ma.Aggregator(len, lambda a, b: a + b), [[1], [2], [3]], "
              "workers=2).value)\n")
    out = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "3"
