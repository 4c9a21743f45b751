"""The ``mergeagg`` command: catalog, run (catalog entries, user factories, stdin), errors."""

import io
import json
import os
import re
import subprocess
import sys
from collections import Counter

import pytest

import mergeagg
from mergeagg import cli

MERGEAGG = os.path.join(os.path.dirname(sys.executable), "mergeagg")
TEXT = "the quick brown fox\njumps over the lazy dog\n\nthe end\r\n" * 30


def run_cli(capsys, *argv):
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def fingerprint_line(out):
    (fp,) = re.findall(r"^fingerprint ([0-9a-f]{64})$", out, re.M)
    # The answer comes first; the fingerprint that proves it is the last line.
    assert out.splitlines()[-1] == f"fingerprint {fp}", out
    return fp


@pytest.fixture
def corpus(tmp_path):
    a = tmp_path / "a.txt"
    b = tmp_path / "b.txt"
    a.write_text(TEXT)
    b.write_text("fox fox\n" * 7)
    return [str(a), str(b)]


def expected_counts():
    return Counter((TEXT + "fox fox\n" * 7).split())


def test_catalog_lists_each_entry_on_one_line(capsys):
    status, out, _ = run_cli(capsys, "catalog")
    assert status == 0
    lines = out.splitlines()
    names = [line.split()[0] for line in lines]
    assert names == sorted(mergeagg.algorithms.registry.entries())
    assert "wordcount" in names
    assert all(re.fullmatch(r"[a-z]+", n) for n in names)
    wc = next(line for line in lines if line.startswith("wordcount "))
    assert "count each whitespace-separated word" in wc


def test_console_script_catalog_and_version():
    out = subprocess.run([MERGEAGG, "catalog"], capture_output=True, text=True, check=True)
    assert "wordcount" in out.stdout
    out = subprocess.run([MERGEAGG, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"mergeagg {mergeagg.__version__}"


def test_fingerprint_is_the_same_across_runs_and_split_sizes(capsys, corpus):
    prints = set()
    for split_size in ("16", "100", "1K", "16M"):
        for _ in range(2):
            status, out, err = run_cli(capsys, "run", "wordcount", *corpus, "--workers", "0",
                                       "--split-size", split_size)
            assert status == 0, err
            prints.add(fingerprint_line(out))
    assert prints == {mergeagg.fingerprint(expected_counts())}
    assert "bytes read" in err  # the report goes to stderr


def test_worker_processes_print_the_serial_fingerprint(capsys, corpus):
    status, out, err = run_cli(capsys, "run", "wordcount", *corpus, "--workers", "2",
                               "--split-size", "200")
    assert status == 0, err
    assert fingerprint_line(out) == mergeagg.fingerprint(expected_counts())


def test_summary_and_entry_flags_in_any_position(capsys, corpus):
    status, out, _ = run_cli(capsys, "run", "wordcount", "--top", "2", *corpus,
                             "--workers", "0", "--lowercase")
    assert status == 0
    counts = expected_counts()
    lines = out.splitlines()
    assert lines[0] == f"{sum(counts.values())} words, {len(counts)} distinct"
    top2 = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:2]
    assert top2 == [("the", 90), ("fox", 44)]  # lowercase: no "The" in this text anyway
    assert [line.split() for line in lines[1:3]] == [["90", "the"], ["44", "fox"]]
    assert lines[3] == f"fingerprint {mergeagg.fingerprint(counts)}" and len(lines) == 4


def test_common_options_may_come_before_the_name(capsys, corpus):
    status, out, err = run_cli(capsys, "run", "--workers", "0", "--split-size=1K", "wordcount",
                               *corpus, "--top", "1")
    assert status == 0, err
    assert fingerprint_line(out) == mergeagg.fingerprint(expected_counts())
    assert len(out.splitlines()) == 3  # totals, the one top word, fingerprint


def test_json_output(capsys, corpus, tmp_path):
    target = tmp_path / "out.json"
    status, out, _ = run_cli(capsys, "run", "wordcount", *corpus, "--workers", "0",
                             "--json", str(target), "--top", "3")
    assert status == 0
    doc = json.loads(target.read_text())
    assert set(doc) == {"algorithm", "params", "fingerprint", "value", "report"}
    assert doc["algorithm"] == "wordcount"
    # Every flag of the entry, display-only ones (dest "_top") under their flag's name.
    assert doc["params"]["lowercase"] is False and doc["params"]["top"] == 3
    assert not [k for k in doc["params"] if k.startswith("_")]
    flags = mergeagg.algorithms.registry.get("wordcount").flags
    assert set(doc["params"]) == {f.keyword.lstrip("_") for f in flags}
    assert doc["fingerprint"] == fingerprint_line(out)
    assert doc["value"] == dict(expected_counts())
    assert mergeagg.fingerprint(Counter(doc["value"])) == doc["fingerprint"]
    assert doc["report"]["attempts"] == [1, 1]


def test_standard_input(capsys, monkeypatch, corpus):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(TEXT.encode())))
    status, out, _ = run_cli(capsys, "run", "wordcount", "-", "--workers", "0")
    assert status == 0
    assert fingerprint_line(out) == mergeagg.fingerprint(Counter(TEXT.split()))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"fox fox\n" * 7)))
    status, out, _ = run_cli(capsys, "run", "wordcount", corpus[0], "-", "--workers", "0")
    assert fingerprint_line(out) == mergeagg.fingerprint(expected_counts())


def test_standard_input_through_the_console_script(corpus):
    out = subprocess.run([MERGEAGG, "run", "wordcount", "-", "--workers", "0"],
                         input=TEXT.encode(), capture_output=True, check=True)
    assert fingerprint_line(out.stdout.decode()) == mergeagg.fingerprint(Counter(TEXT.split()))


USER_MODULE = '''
from collections import Counter
import mergeagg

def letters(upper=False):
    """Counts letters; a user's own factory."""
    def partial(lines):
        return Counter(ch.upper() if upper else ch for line in lines for ch in line if ch.isalpha())
    return mergeagg.Aggregator(partial, lambda a, b: a + b)

vowels = mergeagg.Aggregator(
    lambda lines: sum(ch in "aeiou" for line in lines for ch in line), lambda a, b: a + b)
'''


def test_user_factory_from_the_current_directory(tmp_path, corpus):
    (tmp_path / "my_letters.py").write_text(USER_MODULE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([MERGEAGG, "run", "my_letters:letters", *corpus, "--workers", "0"],
                         cwd=tmp_path, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    want = Counter(ch for ch in TEXT + "fox fox\n" * 7 if ch.isalpha())
    assert fingerprint_line(out.stdout) == mergeagg.fingerprint(want)
    out = subprocess.run([MERGEAGG, "run", "my_letters:vowels", *corpus, "--workers", "2",
                          "--json", "v.json"], cwd=tmp_path, capture_output=True, text=True,
                         env=env)
    assert out.returncode == 0, out.stderr
    doc = json.loads((tmp_path / "v.json").read_text())
    assert doc["algorithm"] == "my_letters:vowels" and doc["params"] == {}
    assert doc["value"] == sum(ch in "aeiou" for ch in TEXT + "fox fox\n" * 7)


@pytest.mark.parametrize("spec, message", [
    ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
    ("mergeagg.algorithms:nothing_here", "module 'mergeagg.algorithms' has no 'nothing_here'"),
    ("mergeagg:__version__", "mergeagg:__version__ is a str, not an Aggregator or a factory"),
    ("nope", "no catalog entry 'nope'; known entries: bloom, count, countmin, "),
    ("mergeagg.algorithms:wordcont",
     "module 'mergeagg.algorithms' has no 'wordcont'; did you mean 'wordcount' or "
     "'count'?"),
    ("wordcont", "no catalog entry 'wordcont'; did you mean 'wordcount' or 'count'? "
                 "(`mergeagg catalog` lists them all; or give module.path:factory)"),
    ("heavyhiters", "no catalog entry 'heavyhiters'; did you mean 'heavyhitters'? "),
])
def test_bad_names_give_one_clear_line(capsys, corpus, spec, message):
    status, out, err = run_cli(capsys, "run", spec, *corpus)
    assert status == 2 and out == ""
    assert err.startswith(f"mergeagg: error: {message}")
    assert err.count("\n") == 1


def test_bad_input_gives_a_non_zero_status_and_one_line(capsys, tmp_path):
    missing = str(tmp_path / "missing.txt")
    status, out, err = run_cli(capsys, "run", "wordcount", missing, "--workers", "0")
    assert status == 1 and out == ""
    assert err == f"mergeagg: error: no such file or directory: {missing!r}\n"

    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\nbroken \xff byte\n")
    for workers in ("0", "2"):
        status, out, err = run_cli(capsys, "run", "wordcount", str(bad), "--workers", workers)
        assert status == 1 and out == ""
        assert err.count("\n") == 1, err
        assert err.startswith(f"mergeagg: error: {bad}: invalid UTF-8 at byte offset 17 "), err
    status, out, err = run_cli(capsys, "run", "wordcount", str(bad), "--workers", "0",
                               "--errors", "replace")
    assert status == 0 and "\ufffd" in out  # the replaced word is printed among the top

    status, _, err = run_cli(capsys, "run", "wordcount", str(bad), "--split-size", "12x")
    assert status == 2 and err.startswith("mergeagg: error: not a byte count: '12x'")


def test_console_script_bad_input_status(tmp_path):
    out = subprocess.run([MERGEAGG, "run", "wordcount", str(tmp_path / "nope.txt")],
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        f"mergeagg: error: no such file or directory: {str(tmp_path / 'nope.txt')!r}"]


def test_unknown_option_is_a_usage_error(capsys, corpus):
    with pytest.raises(SystemExit) as info:
        cli.main(["run", "wordcount", *corpus, "--no-such-flag"])
    assert info.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


def test_to_jsonable():
    import numpy as np

    assert cli.to_jsonable({"a": {3, 1}, "b": np.arange(3), "c": float("inf")}) == {
        "a": [1, 3], "b": [0, 1, 2], "c": "inf"}
    assert cli.to_jsonable({2: "x", 1: "y"}) == [[1, "y"], [2, "x"]]
    assert cli.to_jsonable(b"\x01\xff") == "01ff"
    assert cli.to_jsonable(np.int64(4)) == 4


def test_the_answer_comes_first_and_quiet_drops_the_report(capsys, corpus):
    counts = expected_counts()
    status, out, err = run_cli(capsys, "run", "wordcount", *corpus, "--workers", "0",
                               "--top", "1")
    assert status == 0
    assert out.splitlines() == [f"{sum(counts.values())} words, {len(counts)} distinct",
                                "        90  the",
                                f"fingerprint {mergeagg.fingerprint(counts)}"]
    assert err.startswith("mode serial") and "retried 0" in err
    status, quiet, err = run_cli(capsys, "run", "wordcount", *corpus, "--workers", "0",
                                 "--top", "1", "--quiet")
    assert status == 0 and quiet == out and err == ""
    status, _, err = run_cli(capsys, "run", "wordcount", *corpus, "--workers", "0", "-q")
    assert status == 0 and err == ""


def test_json_dash_writes_the_document_to_standard_output(capsys, corpus, tmp_path,
                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, out, err = run_cli(capsys, "run", "wordcount", *corpus, "--workers", "0",
                               "--json", "-")
    assert status == 0 and not os.path.exists("-")
    doc = json.loads(out)  # standard output holds the document alone
    assert set(doc) == {"algorithm", "params", "fingerprint", "value", "report"}
    assert doc["fingerprint"] == mergeagg.fingerprint(expected_counts())
    assert doc["value"] == dict(expected_counts())
    assert "bytes read" in err
    status, out, err = run_cli(capsys, "run", "wordcount", *corpus, "--workers", "0",
                               "--json", "-", "-q")
    assert status == 0 and json.loads(out) == doc | {"report": json.loads(out)["report"]}
    assert err == ""


@pytest.mark.parametrize("target, message", [
    ("{tmp}/no/such/dir/out.json", "cannot write the --json file '{tmp}/no/such/dir/out.json': "
                                   "No such file or directory"),
    ("{tmp}", "--json {tmp}: is a directory; give a file name (or - for standard output)"),
])
def test_an_unwritable_json_path_fails_before_the_job_runs(capsys, tmp_path, target,
                                                           message):
    # The input does not exist: had the job run first, that would be the error.
    target = target.format(tmp=tmp_path)
    status, out, err = run_cli(capsys, "run", "wordcount", str(tmp_path / "missing.txt"),
                               "--workers", "0", "--json", target)
    assert status == 2 and out == ""
    assert err == f"mergeagg: error: {message.format(tmp=tmp_path)}\n"


def test_a_failed_job_leaves_no_json_file(capsys, tmp_path):
    target = tmp_path / "out.json"
    status, _, err = run_cli(capsys, "run", "wordcount", str(tmp_path / "missing.txt"),
                             "--workers", "0", "--json", str(target))
    assert status == 1 and "no such file" in err
    assert not target.exists()


def test_python_dash_m_mergeagg(corpus):
    # Two worker processes: they re-import the main module, which must not run again.
    out = subprocess.run([sys.executable, "-m", "mergeagg", "run", "wordcount", *corpus,
                          "--workers", "2", "--split-size", "100", "-q"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert fingerprint_line(out.stdout) == mergeagg.fingerprint(expected_counts())
    out = subprocess.run([sys.executable, "-m", "mergeagg", "--version"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"mergeagg {mergeagg.__version__}"


def test_a_closed_pipe_is_not_an_error():
    proc = subprocess.Popen([MERGEAGG, "catalog"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before anything was written (`| head -0`)
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 1
    assert err == b""


FAILING_FACTORIES = '''
import mergeagg

def lookup(table="default"):
    return {"other": 1}[table]

def needs_a_value(size=None):
    return mergeagg.Aggregator(len, lambda a, b: a + b) if size > 0 else None
'''


def test_a_factory_that_raises_gives_one_line_with_its_cause(capsys, corpus, tmp_path,
                                                              monkeypatch):
    path = tmp_path / "bad_factories_cli.py"
    path.write_text(FAILING_FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "bad_factories_cli", raising=False)
    try:
        for name, cause, line in [
            ("lookup", "KeyError: 'default'", 5),
            # A TypeError in a user's factory is a bug there, not a bad flag: it gets the
            # line that raised too.
            ("needs_a_value",
             "TypeError: '>' not supported between instances of 'NoneType' and 'int'", 8),
        ]:
            spec = f"bad_factories_cli:{name}"
            status, out, err = run_cli(capsys, "run", spec, *corpus, "--workers", "0")
            assert status == 1 and out == ""
            assert err == (f"mergeagg: error: the factory of {spec} raised {cause} (at "
                           f"{path}:{line}, in {name})\n")
    finally:
        sys.modules.pop("bad_factories_cli", None)


def test_a_catalog_factory_refusing_a_flag_value_says_so_on_one_line(capsys, corpus):
    status, out, err = run_cli(capsys, "run", "topk", *corpus, "--workers", "0", "--k", "0")
    assert status == 2 and out == ""
    assert err.startswith("mergeagg: error: ") and err.count("\n") == 1 and "k" in err
