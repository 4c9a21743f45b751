"""The runtime's command-line paths: demo, master, fault and keyed flags."""

import json
import os
import subprocess
import sys

import pytest

from mergeagg.cli import main

MERGEAGG = [sys.executable, "-m", "mergeagg"]


def test_demo_prints_equal_fingerprints(capsys):
    assert main(["demo", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    prints = [line.split()[-1] for line in out.splitlines()
              if line.split() and line.split()[0] == "fingerprint"]
    assert len(prints) == 2 and prints[0] == prints[1]
    assert "worker lost" in out and "equal" in out


def test_master_node_over_a_real_pipe():
    lines = [
        {"src": "w1", "dest": "master", "body": {"type": "heartbeat", "msg_id": 1,
                                                 "worker_id": "w1",
                                                 "timestamp": 1700000000000}},
        {"src": "w2", "dest": "master", "body": {"type": "heartbeat", "msg_id": 1,
                                                 "worker_id": "w2",
                                                 "timestamp": 1700000009000}},
        {"src": "monitor", "dest": "master", "body": {"type": "check_failures", "msg_id": 2,
                                                      "timeout_ms": 5000,
                                                      "now": 1700000010000}},
        {"src": "monitor", "dest": "master", "body": {
            "type": "reassign", "msg_id": 3, "failed_worker": "w1", "healthy_worker": "w3",
            "tasks": [{"id": "t1", "chunk": ["hello world"]}]}},
    ]
    text = "\n".join(json.dumps(x) for x in lines) + "\nnot json\n"
    proc = subprocess.run(MERGEAGG + ["master"], input=text, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0
    replies = [json.loads(x) for x in proc.stdout.splitlines()]
    assert replies[0]["body"] == {"type": "heartbeat_ok", "in_reply_to": 1}
    assert replies[2] == {"src": "master", "dest": "monitor",
                          "body": {"type": "failures_detected", "in_reply_to": 2,
                                   "failed_workers": ["w1"]}}
    assert replies[3]["body"] == {"type": "reassigned", "in_reply_to": 3,
                                  "reassigned_tasks": ["t1"]}
    assert replies[4]["body"]["type"] == "error" and replies[4]["body"]["code"] == 12


@pytest.fixture
def text_files(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / f"f{i}.txt"
        p.write_text("".join(f"w{(i + j) % 17} x{j % 5}\n" for j in range(300)))
        paths.append(str(p))
    return paths


def _fingerprint(out):
    return next(line.split()[1] for line in out.splitlines() if line.startswith("fingerprint"))


def test_fault_flags_keep_the_fingerprint(text_files, capsys, tmp_path):
    assert main(["run", "wordcount", *text_files, "--workers", "0"]) == 0
    clean = _fingerprint(capsys.readouterr().out)
    report = tmp_path / "r.json"
    assert main(["run", "wordcount", *text_files, "--workers", "2", "--split-size", "1K",
                 "--faults", "kill=0.2,seed=3", "--no-backups", "--verify", "0.5",
                 "--json", str(report)]) == 0
    assert _fingerprint(capsys.readouterr().out) == clean
    doc = json.loads(report.read_text())
    assert doc["report"]["verified"] > 0 and doc["report"]["backups_launched"] == 0


def test_keyed_flags(text_files, capsys, tmp_path):
    assert main(["run", "wordcount", *text_files, "--workers", "0"]) == 0
    clean = _fingerprint(capsys.readouterr().out)
    out_dir = tmp_path / "out"
    assert main(["run", "wordcount", *text_files, "--keyed", "-R", "3", "--workers", "2",
                 "--no-combiner", "--memory-limit", "4K", "--salt", "--output",
                 str(out_dir)]) == 0
    assert _fingerprint(capsys.readouterr().out) == clean
    assert sorted(os.listdir(out_dir))[:2] == ["_SUCCESS", "part-00000.jsonl"]
    assert main(["run", "wordcount", *text_files, "-R", "3"]) == 2
    assert "apply to keyed jobs" in capsys.readouterr().err


def test_bad_fault_spec_is_a_clear_error(text_files, capsys):
    assert main(["run", "wordcount", *text_files, "--faults", "explode=1"]) == 2
    assert "unknown fault 'explode'" in capsys.readouterr().err


def test_verify_and_backup_copies_are_not_retries(text_files, capsys, tmp_path):
    # --verify 1 runs every map task a second time on another worker: two attempts each
    # (three with a backup copy of a straggler), no failure, so nothing was retried.
    report = tmp_path / "r.json"
    assert main(["run", "wordcount", *text_files, "--workers", "2", "--split-size", "1K",
                 "--verify", "1", "--json", str(report)]) == 0
    err = capsys.readouterr().err
    doc = json.loads(report.read_text())["report"]
    assert doc["verified"] == len(doc["attempts"]) and min(doc["attempts"]) >= 2
    assert max(doc["attempts"]) <= 2 + doc["backups_launched"]
    assert doc["retried"] == doc["retries"] == 0 and doc["failures"] == []
    assert "retried 0, failures 0" in err


def test_retries_are_counted_from_the_failures(text_files, capsys, tmp_path):
    report = tmp_path / "r.json"
    assert main(["run", "wordcount", *text_files, "--workers", "2", "--split-size", "1K",
                 "--faults", "raise=0.3,seed=4", "--no-backups", "--max-attempts", "9",
                 "--json", str(report)]) == 0
    doc = json.loads(report.read_text())["report"]
    failed = {f["task"] for f in doc["failures"]}
    assert doc["retried"] == len(failed) > 0
    assert doc["retries"] == len(doc["failures"])
    assert f"retried {doc['retried']}, failures {len(doc['failures'])}" in \
        capsys.readouterr().err


def test_keyed_output_is_json_lines_or_tsv(text_files, capsys, tmp_path):
    from collections import Counter

    want = Counter(w for p in text_files for w in open_words(p))
    out_dir = tmp_path / "counts"
    assert main(["run", "wordcount", *text_files, "--keyed", "-R", "2", "--workers", "2",
                 "--output", str(out_dir), "-q"]) == 0
    out = capsys.readouterr().out
    manifest = json.loads((out_dir / "_SUCCESS").read_text())
    assert manifest["format"] == "jsonl" and manifest["parts"] == ["part-00000.jsonl",
                                                                   "part-00001.jsonl"]
    assert _fingerprint(out) == manifest["fingerprint"]
    got = {}
    for name in manifest["parts"]:
        for line in (out_dir / name).read_text().splitlines():
            entry = json.loads(line)
            got[entry["key"]] = entry["value"]
    assert got == want
    tsv_dir = tmp_path / "tsv"
    assert main(["run", "wordcount", *text_files, "--keyed", "-R", "2", "--workers", "0",
                 "--output", str(tsv_dir), "--output-format", "tsv", "-q"]) == 0
    rows = [line.split("\t") for p in sorted(tsv_dir.glob("part-*.tsv"))
            for line in p.read_text().splitlines()]
    assert {k: int(v) for k, v in rows} == want
    assert main(["run", "wordcount", *text_files, "--keyed", "--output-format", "tsv"]) == 2
    assert "give output= too" in capsys.readouterr().err


def open_words(path):
    with open(path, encoding="utf-8") as f:
        return f.read().split()


def test_an_unwritable_output_directory_fails_before_the_job_runs(text_files, capsys,
                                                                  tmp_path, monkeypatch):
    out_dir = tmp_path / "ro"
    out_dir.mkdir()
    real = os.access
    # As root every directory looks writable; a read-only mount is what this stands for.
    monkeypatch.setattr(os, "access", lambda p, mode: real(p, mode) and p != str(out_dir))
    # Had the job run, its map task would have stopped at the invalid UTF-8.
    bad_utf8 = tmp_path / "bad.txt"
    bad_utf8.write_bytes(b"fine\n\xff\n")
    bad_utf8 = str(bad_utf8)
    assert main(["run", "wordcount", bad_utf8, "--keyed", "--workers", "0",
                 "--output", str(out_dir)]) == 1
    assert capsys.readouterr().err == (f"mergeagg: error: cannot write part files in the "
                                       f"output directory: {out_dir}\n")
    below_a_file = tmp_path / "f0.txt" / "out"
    (tmp_path / "f0.txt").write_text("x")
    assert main(["run", "wordcount", bad_utf8, "--keyed", "--workers", "0",
                 "--output", str(below_a_file)]) == 1
    assert "Not a directory" in capsys.readouterr().err


_INTERRUPTIBLE = '''
import os, time
import mergeagg as ma

PIDS = os.environ["PIDS_DIR"]

def _mark():
    open(os.path.join(PIDS, str(os.getpid())), "w").close()

def busy():
    def partial(lines):
        _mark()
        x = 0
        while True:  # pure Python, holds the GIL
            x += 1
    return ma.Aggregator(partial, lambda a, b: a + b)

def stuck():
    def partial(lines):
        _mark()
        time.sleep(3600)
    return ma.Aggregator(partial, lambda a, b: a + b)
'''


@pytest.mark.slow
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
@pytest.mark.parametrize("kind", ["busy", "stuck"])
def test_one_ctrl_c_ends_a_job_with_130_one_line_and_nothing_left(tmp_path, kind, how):
    import signal
    import time

    import psutil

    (tmp_path / "interruptible.py").write_text(_INTERRUPTIBLE)
    pids, tmp = tmp_path / "pids", tmp_path / "tmp"
    pids.mkdir()
    tmp.mkdir()
    data = tmp_path / "in.txt"
    data.write_text("a b c\n" * 2000)
    env = dict(os.environ, PYTHONPATH=str(tmp_path), PIDS_DIR=str(pids), TMPDIR=str(tmp))
    proc = subprocess.Popen(MERGEAGG + ["run", f"interruptible:{kind}", str(data), "--workers",
                                        "2", "--split-size", "4K"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while len(os.listdir(pids)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    workers = [int(p) for p in os.listdir(pids)]
    if len(workers) != 2:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the workers never started their tasks:\n{out}\n{err}")
    # (This test's TMPDIR is deep enough that the fork server's socket path is too long:
    # the executor starts its workers by spawn then, which this also tests.)
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
    else:
        os.kill(proc.pid, signal.SIGTERM)  # what `kill PID` does
    start = time.monotonic()
    _out, err = proc.communicate(timeout=30)  # a hang fails here
    elapsed = time.monotonic() - start
    status, line = (130, "interrupted") if how == "ctrl-c" else (143, "terminated")
    assert proc.returncode == status, err
    assert err.strip().splitlines() == [f"mergeagg: {line}"], err
    assert not [p for p in workers if psutil.pid_exists(p)
                and psutil.Process(p).status() != psutil.STATUS_ZOMBIE], "orphan workers"
    assert os.listdir(tmp) == [], f"left behind after {elapsed:.2f}s: {os.listdir(tmp)}"
