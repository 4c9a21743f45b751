"""The job journal: resume after the driver's SIGKILL, torn tails, refusal of another
job's journal, incremental runs, unusable outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mergeagg as ma
from mergeagg.errors import JournalError, JournalMismatch
from mergeagg.runtime import journal as journal_mod
from mergeagg.runtime.journal import LOG, Journal, read_records


def count_words(lines):
    return Counter(w for line in lines for w in line.split())


def add(a, b):
    return a + b


def word_pairs(lines):
    return ((w, 1) for line in lines for w in line.split())


def count_lines(lines):
    return Counter(lines)


WORDS = ma.Aggregator(count_words, add)
LINES = ma.Aggregator(count_lines, add)  # outputs over 64 KiB on a few thousand lines
KEYED = ma.KeyedJob(word_pairs, add)


def write_corpus(directory, files=4, lines=60, seed=0):
    import random

    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(50)]
    os.makedirs(directory, exist_ok=True)
    for i in range(files):
        with open(os.path.join(directory, f"f{i:02d}.txt"), "w") as f:
            for _ in range(lines):
                f.write(" ".join(rng.choice(vocab) for _ in range(8)) + "\n")
    return directory


def attempts(result):
    return {t.task: t.attempts for t in result.report.tasks}


# -- in-process: reuse, refusal, damage --------------------------------------------------------

def test_a_rerun_reuses_every_task_and_gives_the_same_bytes(tmp_path):
    data = write_corpus(str(tmp_path / "in"))
    jdir = str(tmp_path / "j")
    first = ma.run(WORDS, data, split_size="1K", backend="inprocess", workers=3, journal=jdir)
    plain = ma.run(WORDS, data, split_size="1K", backend="inprocess", workers=3)
    again = ma.run(WORDS, data, split_size="1K", backend="inprocess", workers=3, journal=jdir)
    assert first.fingerprint == plain.fingerprint == again.fingerprint
    assert first.report.journal["tasks_recorded"] == len(first.report.tasks)
    assert again.report.journal["tasks_reused"] == len(first.report.tasks)
    assert set(attempts(again).values()) == {0}
    assert "journal" in str(again.report) and "tasks reused" in str(again.report)


def test_keyed_jobs_resume_from_their_reducers_and_maps(tmp_path):
    data = write_corpus(str(tmp_path / "in"))
    jdir = str(tmp_path / "j")
    first = ma.run(KEYED, data, split_size="1K", backend="inprocess", workers=2,
                   partitions=3, journal=jdir)
    plain = ma.run(KEYED, data, split_size="1K", backend="inprocess", workers=2, partitions=3)
    again = ma.run(KEYED, data, split_size="1K", backend="inprocess", workers=2,
                   partitions=3, journal=jdir)
    assert first.fingerprint == plain.fingerprint == again.fingerprint
    assert again.value == plain.value
    assert set(attempts(again).values()) == {0}


def test_a_journal_of_another_job_is_refused_naming_what_differs(tmp_path, monkeypatch):
    data = write_corpus(str(tmp_path / "in"), files=2)
    jdir = str(tmp_path / "j")
    ma.run(WORDS, data, backend="inprocess", workers=2, journal=jdir)
    other = ma.Aggregator(lambda lines: Counter(lines), add)
    with pytest.raises(JournalMismatch, match="partial") as info:
        ma.run(other, data, backend="inprocess", workers=2, journal=jdir)
    assert "the job's partial" in info.value.differences
    with pytest.raises(JournalMismatch, match="fan_in: the journal has '8', this run has '2'"):
        ma.run(WORDS, data, backend="inprocess", workers=2, journal=jdir, fan_in=2)
    with pytest.raises(JournalMismatch, match="the inputs"):
        ma.run(WORDS, os.path.join(data, "f00.txt"), backend="inprocess", workers=2,
               journal=jdir)
    with pytest.raises(JournalMismatch, match="keyed"):
        ma.run(KEYED, data, backend="inprocess", workers=2, journal=jdir)
    monkeypatch.setattr(journal_mod, "__version__", "99.0")
    with pytest.raises(JournalMismatch, match="mergeagg version"):
        ma.run(WORDS, data, backend="inprocess", workers=2, journal=jdir)


def test_a_changed_closure_or_state_is_another_job(tmp_path):
    def counter_of(n):
        return ma.Aggregator(lambda lines: Counter(line[:n] for line in lines), add)

    jdir = str(tmp_path / "j")
    ma.run(counter_of(2), [["abc"], ["abd"]], backend="inprocess", workers=2, journal=jdir)
    ma.run(counter_of(2), [["abc"], ["abd"]], backend="inprocess", workers=2, journal=jdir)
    with pytest.raises(JournalMismatch, match="partial"):
        ma.run(counter_of(3), [["abc"], ["abd"]], backend="inprocess", workers=2,
               journal=jdir)
    from mergeagg.algorithms import basic

    jdir2 = str(tmp_path / "j2")
    ma.run(basic.variance(ddof=1), [[1.0, 2.0], [4.0]], backend="inprocess", workers=2,
           journal=jdir2)
    with pytest.raises(JournalMismatch):
        ma.run(basic.variance(ddof=0), [[1.0, 2.0], [4.0]], backend="inprocess", workers=2,
               journal=jdir2)


def test_one_run_at_a_time(tmp_path):
    ident = {"x": 1}
    with Journal(str(tmp_path / "j"), ident):
        with pytest.raises(JournalError, match="in use"):
            Journal(str(tmp_path / "j"), ident)
    with Journal(str(tmp_path / "j"), ident):
        pass


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip"])
def test_a_torn_or_damaged_tail_is_dropped_and_what_it_held_runs_again(tmp_path, damage):
    data = write_corpus(str(tmp_path / "in"))
    jdir = str(tmp_path / "j")
    first = ma.run(WORDS, data, split_size="1K", backend="inprocess", workers=2, journal=jdir)
    log = os.path.join(jdir, LOG)
    records, good, size = read_records(log)
    done = [r for r in records if r["t"] == "done"]
    assert good == size and len(done) == len(first.report.tasks)
    with open(log, "r+b") as f:
        if damage == "truncate":  # the driver died in the middle of the last record
            f.truncate(size - 7)
        elif damage == "garbage":
            f.seek(0, 2)
            f.write(b"MAJ1\xff\xff\x00\x00half a rec")
        else:  # a flipped byte in the middle of the log: everything after it is dropped
            f.seek(size // 2)
            b = f.read(1)
            f.seek(size // 2)
            f.write(bytes([b[0] ^ 0x40]))
    again = ma.run(WORDS, data, split_size="1K", backend="inprocess", workers=2, journal=jdir)
    assert again.fingerprint == first.fingerprint
    assert again.report.journal["torn_tail_bytes"] > 0
    reran = [t for t, n in attempts(again).items() if n > 0]
    if damage == "garbage":
        assert reran == [], "garbage after the last record loses no completion"
    else:
        assert reran, "the dropped records' tasks run again"
    assert read_records(log)[1] == os.path.getsize(log), "the log is whole again"


def test_an_output_file_that_changed_is_not_used(tmp_path):
    data = write_corpus(str(tmp_path / "in"), files=2, lines=3000)
    jdir = str(tmp_path / "j")
    first = ma.run(LINES, data, split_size="64K", backend="inprocess", workers=2,
                   journal=jdir, fan_in=2)
    files = sorted(os.listdir(os.path.join(jdir, "outputs")))
    assert files, "outputs over 64 KiB are kept as files"
    with open(os.path.join(jdir, "outputs", files[0]), "r+b") as f:
        f.seek(10)
        f.write(b"\x00\x01")
    again = ma.run(LINES, data, split_size="64K", backend="inprocess", workers=2,
                   journal=jdir, fan_in=2)
    assert again.fingerprint == first.fingerprint
    assert len(again.report.journal["unusable"]) == 1
    assert "torn or changed" in again.report.journal["unusable"][0]


def test_a_restored_output_lost_during_the_run_brings_its_inputs_back(tmp_path, monkeypatch):
    # The check at restore passes, then the file disappears: the task reading it fails
    # with input_lost, the restored task runs again, and so do the tasks it had made
    # unneeded.
    data = write_corpus(str(tmp_path / "in"), files=3, lines=3000)
    jdir = str(tmp_path / "j")
    first = ma.run(LINES, data, split_size="64K", backend="inprocess", workers=2,
                   journal=jdir, fan_in=2)
    records = [r for r in read_records(os.path.join(jdir, LOG))[0] if r["t"] == "done"]
    root = first.report.tasks[-1].task
    victim = next(r for r in records if r["task"].startswith("combine")
                  and r["task"] != root and r["ref"].path is not None)
    keep = {r["key"] for r in records if r["task"] in (victim["task"],)}
    # Forget the root and everything but the victim above the maps, so the victim's parent
    # must run from it.
    _rewrite_log(jdir, lambda r: r["t"] != "done" or r["key"] in keep
                 or r["task"].startswith("map"))
    monkeypatch.setattr(journal_mod, "_unusable", lambda ref: None)
    os.unlink(victim["ref"].path)
    again = ma.run(LINES, data, split_size="64K", backend="inprocess", workers=2,
                   journal=jdir, fan_in=2)
    assert again.fingerprint == first.fingerprint
    assert attempts(again)[victim["task"]] >= 1
    assert any(f.cause == "output lost with worker" or "input" in f.cause
               for f in again.report.failures)


def _rewrite_log(jdir, keep):
    log = os.path.join(jdir, LOG)
    records = read_records(log)[0]
    with open(log, "wb") as f:
        for r in records:
            if keep(r):
                body = journal_mod.pickle.dumps(r, protocol=5)
                f.write(journal_mod._FRAME.pack(journal_mod._MAGIC, len(body),
                                                journal_mod.zlib.crc32(body)) + body)


# -- incremental runs ----------------------------------------------------------------------------

@pytest.mark.parametrize("change", ["append", "add", "edit"])
@pytest.mark.parametrize("job", ["fold", "keyed"])
def test_incremental_runs_equal_a_full_run(tmp_path, change, job):
    data = write_corpus(str(tmp_path / "in"), files=3, lines=200)
    jdir = str(tmp_path / "j")
    agg, kw = (WORDS, {"fan_in": 2}) if job == "fold" else (KEYED, {"partitions": 2})
    opts = dict(split_size="2K", backend="inprocess", workers=2, **kw)
    ma.run(agg, data, journal=jdir, **opts)
    target = os.path.join(data, "f01.txt")
    if change == "append":
        with open(target, "a") as f:
            f.write("brand new words appended\n" * 5)
    elif change == "add":
        with open(os.path.join(data, "f99.txt"), "w") as f:
            f.write("a whole new file\n" * 5)
    else:
        with open(target, "r+b") as f:
            f.seek(os.path.getsize(target) // 2)
            f.write(b"EDITED")
    inc = ma.run(agg, data, journal=jdir, **opts)
    full = ma.run(agg, data, **opts)
    assert inc.fingerprint == full.fingerprint
    assert inc.value == full.value
    ran = {t for t, n in attempts(inc).items() if n > 0 and t.startswith("map")}
    maps = [t for t in full.report.tasks if t.kind == "map"]
    changed = {t.task for t in maps if "f01" in t.split or "f99" in t.split}
    assert ran and ran <= changed, (ran, changed)
    if change != "add":
        assert len(ran) < len(changed) or change == "edit" and len(ran) == 1


def test_a_journal_keeps_only_what_the_latest_run_used(tmp_path):
    data = write_corpus(str(tmp_path / "in"), files=2, lines=3000)
    jdir = str(tmp_path / "j")
    ma.run(LINES, data, split_size="64K", backend="inprocess", workers=2, journal=jdir)
    with open(os.path.join(data, "f00.txt"), "a") as f:
        f.write("more\n" * 2000)
    ma.run(LINES, data, split_size="64K", backend="inprocess", workers=2, journal=jdir)
    records = read_records(os.path.join(jdir, LOG))[0]
    tasks = [r["task"] for r in records if r["t"] == "done"]
    assert len(tasks) == len(set(tasks)), "one record per task of the latest run"
    refs = {r["ref"].path for r in records if r["t"] == "done" and r["ref"].path}
    on_disk = {os.path.join(jdir, "outputs", n) for n in os.listdir(os.path.join(jdir,
                                                                                 "outputs"))}
    assert on_disk == refs


# -- real processes: the driver killed at any point ------------------------------------------

DRIVER = '''
import json, sys, time
from collections import Counter
import mergeagg as ma

def partial(lines):
    time.sleep(0.03)
    return Counter(w for line in lines for w in line.split())

def add(a, b):
    return a + b

def pairs(lines):
    time.sleep(0.03)
    return ((w, 1) for line in lines for w in line.split())

if __name__ == "__main__":
    kind, data, journal = sys.argv[1:4]
    if kind == "fold":
        r = ma.run(ma.Aggregator(partial, add), data, workers=2, split_size="1K",
                   journal=journal, progress=False, fan_in=3)
    else:
        r = ma.run(ma.KeyedJob(pairs, add), data, workers=2, split_size="1K",
                   journal=journal, progress=False, partitions=3)
    print(json.dumps({"fp": r.fingerprint,
                      "attempts": {t.task: t.attempts for t in r.report.tasks}}))
'''


@pytest.fixture(scope="module")
def driver_case(tmp_path_factory):
    base = tmp_path_factory.mktemp("driver")
    script = base / "driver.py"
    script.write_text(DRIVER)
    data = write_corpus(str(base / "in"), files=3, lines=100)
    ref = {}
    for kind in ("fold", "keyed"):
        out = json.loads(_drive(script, kind, data, str(base / f"ref-{kind}")))
        ref[kind] = (out["fp"], len(out["attempts"]))
    return script, data, ref


def _drive(script, kind, data, jdir, timeout=120):
    proc = subprocess.run([sys.executable, str(script), kind, data, jdir], capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def _done_tasks(jdir):
    return {r["task"] for r in read_records(os.path.join(jdir, LOG))[0] if r["t"] == "done"}


def _group_gone(pgid, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(kind=st.sampled_from(["fold", "keyed"]), share=st.floats(0.0, 1.0))
def test_driver_sigkill_at_any_point_then_resume(driver_case, tmp_path_factory, kind, share):
    script, data, ref = driver_case
    fp, tasks = ref[kind]
    point = min(tasks - 1, int(share * tasks))  # completions recorded before the kill
    base = tmp_path_factory.mktemp("j")
    jdir = str(base / "journal")
    # A SIGKILLed Python leaves its multiprocessing directory (pymp-*, empty) in TMPDIR:
    # this one's is kept beside its journal (docs/journal.md says so).
    env = dict(os.environ, TMPDIR=str(base))
    proc = subprocess.Popen([sys.executable, str(script), kind, data, jdir],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while len(_done_tasks(jdir)) < point and proc.poll() is None:
            assert time.monotonic() < deadline, "the driver made no progress"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)  # a zombie until waited for: the pid is there
        proc.wait()
        assert _group_gone(proc.pid), "worker processes outlived their killed driver"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.stderr.close()
    before = _done_tasks(jdir)
    resumed = json.loads(_drive(script, kind, data, jdir))
    assert resumed["fp"] == fp
    ran_again = {t for t in before if resumed["attempts"].get(t, 0) > 0}
    assert not ran_again, f"tasks completed before the kill ran again: {sorted(ran_again)}"


# -- Dask ------------------------------------------------------------------------------------

def test_a_fold_job_on_dask_resumes_from_its_journal(dask_client, tmp_path):
    data = write_corpus(str(tmp_path / "in"), files=3, lines=3000)
    jdir = str(tmp_path / "j")
    opts = dict(split_size="64K", backend=dask_client, fan_in=2)
    first = ma.run(LINES, data, journal=jdir, **opts)
    assert first.report.journal["tasks_recorded"] == len(first.report.tasks)
    assert os.listdir(os.path.join(jdir, "outputs")), "large outputs were copied here"
    # Forget the root and the combines: they run again on Dask from the journaled maps.
    _rewrite_log(jdir, lambda r: r["t"] != "done" or r["task"].startswith("map"))
    again = ma.run(LINES, data, journal=jdir, **opts)
    assert again.fingerprint == first.fingerprint
    ran = {t.task for t in again.report.tasks if t.attempts}
    assert ran and all(not t.startswith("map") for t in ran)
    with pytest.raises(ValueError, match="without salt="):
        ma.run(KEYED, data, journal=str(tmp_path / "k"), backend=dask_client, salt=True)


def test_a_keyed_job_on_dask_resumes_from_its_journaled_map_outputs(dask_client, tmp_path):
    data = write_corpus(str(tmp_path / "in"), files=3, lines=300)
    jdir = str(tmp_path / "j")
    opts = dict(split_size="4K", backend=dask_client, partitions=3)
    first = ma.run(KEYED, data, journal=jdir, **opts)
    plain = ma.run(KEYED, data, split_size="4K", backend="inprocess", workers=2, partitions=3)
    assert first.fingerprint == plain.fingerprint
    spills = [n for n in os.listdir(os.path.join(jdir, "outputs"))
              if os.path.isdir(os.path.join(jdir, "outputs", n))]
    assert spills, "the maps' buckets were copied here"
    # Forget the reducers: they run again on Dask from the journaled map outputs.
    _rewrite_log(jdir, lambda r: r["t"] != "done" or r["task"].startswith("map"))
    again = ma.run(KEYED, data, journal=jdir, **opts)
    assert again.fingerprint == first.fingerprint and again.value == first.value
    ran = {t.task for t in again.report.tasks if t.attempts}
    assert ran == {"reduce-0", "reduce-1", "reduce-2"}
    whole = ma.run(KEYED, data, journal=jdir, **opts)  # every task reused
    assert whole.fingerprint == first.fingerprint
    assert not any(t.attempts for t in whole.report.tasks)


# -- the command line ------------------------------------------------------------------------

def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "mergeagg", *args], capture_output=True,
                          text=True, timeout=300, env=env)


def test_the_cli_walkthrough_kill_the_driver_then_resume(tmp_path):
    data = write_corpus(str(tmp_path / "in"), files=4, lines=400)
    jdir = str(tmp_path / "j")
    args = ["run", "wordcount", data, "--split-size", "2K", "--workers", "2", "--faults",
            "delay=1.0x3,seed=1", "--journal", jdir]
    env = dict(os.environ, TMPDIR=str(tmp_path))  # where a killed driver's pymp-* goes
    proc = subprocess.Popen([sys.executable, "-m", "mergeagg", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while len(_done_tasks(jdir)) < 5 and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert _group_gone(proc.pid)
    finally:
        proc.stdout.close()
        proc.stderr.close()
    resumed = _cli(*args[:-4], "--journal", jdir)
    assert resumed.returncode == 0, resumed.stderr
    assert "tasks reused" in resumed.stderr
    reused = int(resumed.stderr.split("tasks reused ")[1].split(",")[0])
    assert reused >= 5
    plain = _cli("run", "wordcount", data, "--split-size", "2K", "--workers", "2")
    assert resumed.stdout.splitlines()[-1] == plain.stdout.splitlines()[-1]  # fingerprint


def test_the_cli_skips_bad_records_and_lists_them(tmp_path):
    (tmp_path / "parse_ints.py").write_text(
        "import mergeagg as ma\n"
        "def parse(lines):\n"
        "    return sum(int(line) for line in lines)\n"
        "def add(a, b):\n"
        "    return a + b\n"
        "def factory():\n"
        "    return ma.Aggregator(parse, add)\n")
    data = tmp_path / "n.txt"
    data.write_text("1\n2\nthree\n4\nfive\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    ok = _cli("run", "parse_ints:factory", str(data), "--workers", "2", "--skip-bad-records",
              "2", env=env)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[0] == "7"
    assert "skipped records 2:" in ok.stderr
    assert f"{data}, byte offset 4: ValueError" in ok.stderr
    assert f"{data}, byte offset 12: ValueError" in ok.stderr
    failed = _cli("run", "parse_ints:factory", str(data), "--workers", "2", env=env)
    assert failed.returncode != 0
    assert f"{data}, byte offset 4" in failed.stderr and "--skip-bad-records N" in failed.stderr
    many = _cli("run", "pagerank", str(data), "--journal", str(tmp_path / "j"))
    assert many.returncode == 2 and "--journal applies to jobs that run as one" in many.stderr


def test_a_keyed_job_writing_parts_resumes_into_its_unfinished_output(tmp_path):
    data = write_corpus(str(tmp_path / "in"), files=2, lines=200)
    jdir, out = str(tmp_path / "j"), str(tmp_path / "out")
    opts = dict(split_size="2K", backend="inprocess", workers=2, partitions=3)
    first = ma.run(KEYED, data, journal=jdir, output=out, **opts)
    # As if the driver died before the commit: parts are there, _SUCCESS is not.
    os.unlink(os.path.join(out, "_SUCCESS"))
    again = ma.run(KEYED, data, journal=jdir, output=out, **opts)
    assert again.fingerprint == first.fingerprint
    assert set(attempts(again).values()) == {0}
    assert os.path.exists(os.path.join(out, "_SUCCESS"))
    # A new output directory: the maps are reused, the reducers write their parts there.
    out2 = str(tmp_path / "out2")
    third = ma.run(KEYED, data, journal=jdir, output=out2, **opts)
    assert third.fingerprint == first.fingerprint
    assert {t.task for t in third.report.tasks if t.attempts} == {
        "reduce-0", "reduce-1", "reduce-2"}
    assert dict(third.value.items()) == dict(first.value.items())
    with pytest.raises(ValueError, match="exists and is not empty"):
        ma.run(KEYED, data, journal=jdir, output=out, **opts)  # finished: never overwritten


@pytest.mark.parametrize("backend", ["inprocess", "local"])
def test_a_session_runs_journaled_jobs(tmp_path, backend):
    data = write_corpus(str(tmp_path / "in"), files=2, lines=100)
    jdir = str(tmp_path / "j")
    opts = {"backend": "inprocess", "workers": 2} if backend == "inprocess" else {"workers": 2}
    with ma.Session(**opts) as session:
        first = session.run(WORDS, data, split_size="1K", journal=jdir)
        again = ma.run(WORDS, data, split_size="1K", journal=jdir, session=session)
        keyed = session.run(KEYED, data, split_size="1K", journal=str(tmp_path / "k"))
        assert keyed.report.journal["tasks_recorded"] > 0
    assert again.fingerprint == first.fingerprint
    assert again.report.journal["tasks_reused"] == len(first.report.tasks)
    with ma.Session(workers=0) as serial, pytest.raises(ValueError, match="workers=0"):
        serial.run(WORDS, data, journal=str(tmp_path / "s"))
