"""Poison records: bisection finds exactly the records a map's user code fails on."""

from __future__ import annotations

import os
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mergeagg as ma
from mergeagg.errors import BadRecords, TaskFailed
from mergeagg.inputs import files, record_location
from mergeagg.runtime.master import Policy, PolicyConfig, fold_tasks
from mergeagg.runtime.poison import without_bad_records
from mergeagg.runtime.port import Failed, Joined, Launch


def streaming_sum(records):
    total = 0
    for r in records:
        if r < 0:
            raise ValueError(f"negative {r}")
        total += r
    return total


def materialising_sum(records):
    # Reads everything first, so the position it failed at says nothing.
    values = sorted(records)
    if values and values[0] < 0:
        raise ValueError("a negative value somewhere")
    return sum(values)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), bad=st.sets(st.integers(0, 299), max_size=6),
       limit=st.integers(0, 6), fn=st.sampled_from([streaming_sum, materialising_sum]))
def test_bisection_finds_exactly_the_bad_records(n, bad, limit, fn):
    bad = {b for b in bad if b < n}
    records = [-1 if i in bad else i for i in range(n)]
    if len(bad) <= limit:
        value, found = without_bad_records(fn, records, limit)
        assert value == sum(i for i in range(n) if i not in bad)
        assert {b.index for b in found} == bad
        assert all("ValueError" in b.error for b in found)
    else:
        with pytest.raises(BadRecords) as info:
            without_bad_records(fn, records, limit)
        # It stops at the first limit + 1 it finds (not always the first by position: a
        # partial that reads everything first says nothing of where it failed).
        named = {int(r.split(":")[0].removeprefix("record ")) for r in info.value.records}
        assert len(info.value.records) == limit + 1 and len(named) == limit + 1
        assert named <= bad


def test_a_failure_no_single_record_causes_is_named_as_such():
    def at_most_five(records):
        if len(list(records)) > 5:
            raise RuntimeError("too many")
        return 0

    with pytest.raises(BadRecords, match="no single record alone"):
        without_bad_records(at_most_five, list(range(20)), limit=10)


def test_a_partial_failing_on_every_record_stops_at_the_limit():
    calls = []

    def always(records):
        calls.append(1)
        for _ in records:
            raise KeyError("every record")
        return 0

    with pytest.raises(BadRecords, match="skip_bad_records=10 allows 10") as info:
        without_bad_records(always, list(range(100_000)), limit=10)
    assert len(info.value.records) == 11
    assert len(calls) < 40, "each bad record costs a couple of runs, not a bisection"


def test_record_locations_name_the_byte_offset(tmp_path):
    text = tmp_path / "t.txt"
    text.write_bytes(b"a\nbb\n\nccc\n")
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_bytes(b'{"a": 1}\n\n{"a": 2}\n')
    csv = tmp_path / "t.csv"
    csv.write_bytes(b'k,v\n1,"x\ny"\n\n2,z\n')
    sp = files(str(text)).splits()[0]
    assert record_location(sp, 3) == f"{text}, byte offset 6"
    assert record_location(files(str(jsonl)).splits()[0], 1) == f"{jsonl}, byte offset 10"
    assert record_location(files(str(csv)).splits()[0], 1) == f"{csv}, byte offset 13 (CSV row)"


def test_two_alike_failures_make_the_next_attempt_bisect():
    tb = 'Traceback:\n  File "job.py", line 7, in partial\nValueError: x'
    p = Policy(fold_tasks(["s0"], 2), PolicyConfig(skip_bad_records=5))
    p.handle(Joined("w1"), 0.0)
    launches = [a for a in p.tick(0.0) if isinstance(a, Launch)]
    assert launches[0].bisect is None
    p.handle(Failed(launches[0].attempt, "raise", "ValueError: x", tb, (), "w1"), 0.1)
    second = [a for a in p.tick(0.1) if isinstance(a, Launch)][0]
    assert second.bisect is None, "one failure is not yet a pattern"
    p.handle(Failed(second.attempt, "raise", "ValueError: y", tb, (), "w1"), 0.2)
    third = [a for a in p.tick(0.2) if isinstance(a, Launch)][0]
    assert third.bisect == 5
    p.validate()


def test_failures_that_differ_are_retried_as_usual():
    p = Policy(fold_tasks(["s0"], 2), PolicyConfig(max_attempts=3))
    p.handle(Joined("w1"), 0.0)
    for i in range(3):
        launch = [a for a in p.tick(i) if isinstance(a, Launch)][0]
        assert launch.bisect is None
        tb = f'  File "job.py", line {i}, in partial'
        p.handle(Failed(launch.attempt, "raise", f"E{i}: flaky", tb, (), "w1"), i + 0.5)
    assert isinstance(p.error, TaskFailed)


# -- real processes ---------------------------------------------------------------------------

BAD_LINES = (17, 50_000, 99_999)


def parse(lines):
    counts = Counter()
    for line in lines:
        word, _, n = line.partition(" ")
        counts[word] += int(n)  # "POISON x" raises ValueError
    return counts


def parse_pairs(lines):
    for line in lines:
        word, _, n = line.partition(" ")
        yield word, int(n)


def add(a, b):
    return a + b


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    base = tmp_path_factory.mktemp("poison")
    dirty, clean = base / "dirty", base / "clean"
    dirty.mkdir()
    clean.mkdir()
    offsets = []
    with open(dirty / "in.txt", "w") as d, open(clean / "in.txt", "w") as c:
        for i in range(100_000):
            if i in BAD_LINES:
                offsets.append(d.tell())
                d.write("POISON x\n")
            else:
                line = f"w{i % 97} {i % 5}\n"
                d.write(line)
                c.write(line)
    return str(dirty), str(clean), offsets


@pytest.mark.parametrize("keyed", [False, True])
def test_three_bad_records_in_100000_found_exactly_on_two_workers(poisoned, keyed):
    dirty, clean, offsets = poisoned
    job = ma.KeyedJob(parse_pairs, add) if keyed else ma.Aggregator(parse, add)
    opts = dict(workers=2, split_size="128K")
    r = ma.run(job, dirty, skip_bad_records=3, **opts)
    reference = ma.run(job, clean, **opts)
    assert dict(r.value) == dict(reference.value)
    if not keyed:  # a keyed job's fingerprint is the same map; a fold's the same bytes
        assert r.fingerprint == reference.fingerprint
    found = sorted(rec["record"] for rec in r.report.skipped_records)
    path = os.path.join(dirty, "in.txt")
    assert len(found) == 3
    for off in offsets:
        assert any(rec.startswith(f"{path}, byte offset {off}: ValueError") for rec in found)
    assert "skipped records 3" in str(r.report)


def test_without_the_option_the_error_names_the_record(poisoned):
    dirty, _clean, offsets = poisoned
    with pytest.raises(BadRecords) as info:
        ma.run(ma.Aggregator(parse, add), dirty, workers=2, split_size="128K")
    message = str(info.value)
    assert f"byte offset {offsets[0]}" in message or f"byte offset {offsets[1]}" in message
    assert "ValueError" in message and "skip_bad_records" in message
    assert "in parse" in message


def test_too_many_bad_records_fail_the_job(poisoned):
    dirty, _clean, _offsets = poisoned
    with pytest.raises(BadRecords, match="skip_bad_records=1 allows 1"):
        ma.run(ma.Aggregator(parse, add), dirty, workers=2, split_size="8M",
               skip_bad_records=1)
