"""Keyed jobs: the shuffle, spills, failures and committed outputs."""

import glob
import json
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from fractions import Fraction

import cloudpickle
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mergeagg as ma
from mergeagg.cli import to_jsonable
from mergeagg.errors import CorruptSpillError, TaskFailed
from mergeagg.runtime.faults import Fault, FaultPlan
from mergeagg.runtime.shuffle import OUTPUT_FORMATS, KeyedOutput, SpillWriter, iter_spill

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def pairs_map(shard):
    return iter(shard)


def add(a, b):
    return a + b


def union(a, b):
    a |= b
    return a


def plain_loop(shards, combine=add):
    out = {}
    for shard in shards:
        for k, v in shard:
            out[k] = combine(out[k], v) if k in out else v
    return out


keys = st.one_of(st.integers(-5, 40), st.sampled_from(["a", "b", "c", "é", "", "long" * 30]),
                 st.tuples(st.integers(0, 3), st.text(max_size=2)))
records = st.lists(st.tuples(keys, st.integers(-1000, 1000)), max_size=120)


@given(recs=records, n_shards=st.integers(1, 6), R=st.integers(1, 7),
       combiner=st.booleans(), spill=st.booleans(), salt=st.sampled_from([None, 0.05, 0.5]),
       hot=st.integers(0, 300))
def test_any_settings_equal_a_plain_loop_serial(recs, n_shards, R, combiner, spill, salt,
                                                hot):
    recs = recs + [("hot", 1)] * hot
    shards = [recs[i::n_shards] for i in range(n_shards)]
    job = ma.KeyedJob(pairs_map, add)
    r = ma.run(job, shards, workers=0, partitions=R, combiner=combiner,
               memory_limit=300 if spill else None, salt=salt)
    expected = plain_loop(shards)
    assert r.value == expected
    assert r.fingerprint == ma.fingerprint(expected)


@settings(max_examples=3, deadline=None)
@given(recs=st.lists(st.tuples(keys, st.integers(0, 9)), min_size=1, max_size=2000),
       R=st.integers(1, 5), combiner=st.booleans())
def test_parallel_equals_serial_with_spills(recs, R, combiner):
    shards = [recs[i::4] for i in range(4)]
    job = ma.KeyedJob(pairs_map, add)
    serial = ma.run(job, shards, workers=0)
    r = ma.run(job, shards, workers=2, partitions=R, combiner=combiner, memory_limit=2000)
    assert r.value == serial.value and r.fingerprint == serial.fingerprint


def float_shards(seed=0, n=3000):
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 50, n).tolist()
    vals = (rng.standard_normal(n) * 10.0 ** rng.integers(-8, 8, n)).tolist()
    recs = list(zip(keys, vals))
    return [recs[i::5] for i in range(5)]


def test_float_bytes_identical_across_R_spills_workers_and_failures():
    shards = float_shards()
    job = ma.KeyedJob(pairs_map, add)
    runs = [ma.run(job, shards, workers=0, partitions=1),
            ma.run(job, shards, workers=0, partitions=7, memory_limit=500),
            ma.run(job, shards, workers=2, partitions=3),
            ma.run(job, shards, workers=2, partitions=4, memory_limit=700,
                   faults="kill=0.3,seed=2,attempts=1")]
    assert len({r.fingerprint for r in runs}) == 1
    # The order matters for these floats: folding every value in input order (no
    # combiner) regroups the sums and changes some bytes.
    off = ma.run(job, shards, workers=0, combiner=False)
    assert off.fingerprint != runs[0].fingerprint


def test_map_side_spill_continues_the_same_fold():
    # With the combiner, a spill must not regroup a float fold inside one map task.
    shards = float_shards(seed=3, n=8000)
    job = ma.KeyedJob(pairs_map, add)
    a = ma.run(job, shards, workers=0)
    b = ma.run(job, shards, workers=0, memory_limit=400)
    assert b.report.counters["spills"] > 0
    assert a.fingerprint == b.fingerprint and a.value == b.value


def test_reduce_side_external_merge_matches_in_memory():
    shards = float_shards(seed=4)
    job = ma.KeyedJob(pairs_map, add)
    a = ma.run(job, shards, workers=0, partitions=2)
    b = ma.run(job, shards, workers=0, partitions=2, memory_limit=100)
    assert b.report.counters["external_merge"] == 2
    assert a.fingerprint == b.fingerprint


def test_combiner_shrinks_the_shuffle():
    shards = [[("k", 1)] * 500 for _ in range(4)]
    job = ma.KeyedJob(pairs_map, add)
    on = ma.run(job, shards, workers=0)
    off = ma.run(job, shards, workers=0, combiner=False)
    assert on.value == off.value == {"k": 2000}
    assert on.report.counters["records_out"] == 4
    assert off.report.counters["records_out"] == 2000
    assert on.report.counters["shuffle_bytes_written"] < off.report.counters[
        "shuffle_bytes_written"]


def test_finalize_and_sets():
    job = ma.KeyedJob(lambda s: ((w[0], {w}) for w in s), union, finalize=sorted)
    r = ma.run(job, [["apple", "avocado"], ["banana", "apple"]], workers=0)
    assert r.value == {"a": ["apple", "avocado"], "b": ["banana"]}


def test_spill_file_detects_torn_and_corrupt(tmp_path):
    path = str(tmp_path / "b.spill")
    w = SpillWriter(path)
    w.write(np.arange(5, dtype=np.uint64), list("abcde"), [1, 2, 3, 4, 5])
    w.close()
    assert [list(k) for _h, k, _v in iter_spill(path)] == [list("abcde")]
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:-3])
    with pytest.raises(CorruptSpillError, match="torn"):
        list(iter_spill(path))
    bad = bytearray(data)
    bad[40] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bytes(bad))
    with pytest.raises(CorruptSpillError, match="checksum|corrupt"):
        list(iter_spill(path))
    with pytest.raises(CorruptSpillError, match="gone"):
        list(iter_spill(str(tmp_path / "missing.spill")))


def words_map(lines):
    for line in lines:
        for w in line.split():
            yield w, 1


def corpus(n_shards=6, lines=300):
    return [[f"w{(i * 7 + j) % 23} x{j % 11} y{i}" for j in range(lines)]
            for i in range(n_shards)]


def test_worker_killed_during_a_reduce_keeps_its_map_outputs_on_this_machine():
    shards = corpus()
    job = ma.KeyedJob(words_map, add)
    clean = ma.run(job, shards, workers=0)
    plan = FaultPlan(only={"reduce-1": {1: Fault("kill")}})
    # One worker: it holds every map output when it dies in reduce-1. The process died,
    # not the disk: its spill files are whole (CRC-checked when read), so no map re-runs.
    r = ma.run(job, shards, workers=1, partitions=3, faults=plan)
    assert r.fingerprint == clean.fingerprint
    causes = {f.cause for f in r.report.failures}
    assert "worker lost" in causes and "output lost with worker" not in causes
    assert r.report.attempts == [1] * len(shards)
    assert r.report.workers_lost == 1


def test_worker_killed_while_writing_spills():
    shards = corpus(lines=3000)
    job = ma.KeyedJob(words_map, add)
    clean = ma.run(job, shards, workers=0)
    plan = FaultPlan(only={"map-2": {1: Fault("kill", at=0.7)}, "map-4": {1: Fault("kill")}})
    r = ma.run(job, shards, workers=2, partitions=3, faults=plan, memory_limit=3000,
               combiner=False)
    assert r.fingerprint == clean.fingerprint
    assert r.report.counters["spills"] > 0
    assert r.report.attempts[2] >= 2 and r.report.attempts[4] >= 2


def slow_after_first(shard):
    if shard[0][0] != "first":
        time.sleep(1.0)
    return iter(shard)


def test_corrupted_spill_on_disk_is_regenerated(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    shards = [[("first", 1)] * 50 + [("k", 2)] * 50] + [[("k", 1), ("z", 3)]] * 3
    job = ma.KeyedJob(slow_after_first, add)
    clean = ma.run(job, shards, workers=0, partitions=2)
    damaged = []

    def corrupt():
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not damaged:
            for path in glob.glob(str(tmp_path / "mergeagg-*" / "w*" / "map-0_1" / "b*.spill")):
                with open(path, "rb") as f:
                    data = bytearray(f.read())
                if len(data) > 60:
                    data[30] ^= 0xFF
                    with open(path, "wb") as f:
                        f.write(bytes(data))
                    damaged.append(path)
            time.sleep(0.01)

    t = threading.Thread(target=corrupt)
    t.start()
    r = ma.run(job, shards, workers=2, partitions=2)
    t.join()
    assert damaged
    assert r.fingerprint == clean.fingerprint
    assert r.report.attempts[0] == 2
    assert any(f.cause == "input_lost" and "map-0" in f.detail or "corrupt" in f.detail
               for f in r.report.failures)


def test_output_directory_commits_each_part_once(tmp_path):
    shards = corpus()
    job = ma.KeyedJob(words_map, add)
    clean = ma.run(job, shards, workers=0)
    out = tmp_path / "out"
    plan = FaultPlan(only={"reduce-0": {1: Fault("kill")}, "reduce-2": {1: Fault("delay",
                                                                               factor=40)}})
    r = ma.run(job, shards, workers=2, partitions=4, output=str(out), faults=plan,
               backup_after=0.5)
    names = sorted(os.listdir(out))
    assert names == ["_SUCCESS"] + [f"part-{i:05d}.jsonl" for i in range(4)]
    assert r.fingerprint == clean.fingerprint
    assert r.value.to_dict() == clean.value and len(r.value) == len(clean.value)
    with pytest.raises(ValueError, match="not empty"):
        ma.run(job, shards, workers=0, output=str(out))


def test_keyed_options_are_refused_for_fold_jobs():
    with pytest.raises(TypeError, match="keyed jobs"):
        ma.run(ma.Aggregator(sum, add), [[1]], workers=0, partitions=3)


def test_counters_in_report():
    shards = corpus()
    r = ma.run(ma.KeyedJob(words_map, add), shards, workers=2, partitions=3)
    c = r.report.counters
    assert c["records_in"] == sum(len(line.split()) for s in shards for line in s)
    assert c["shuffle_bytes_written"] == c["shuffle_bytes_read"] > 0
    assert len(r.report.reducers) == 3
    assert sum(x["records_out"] for x in r.report.reducers) == len(r.value)
    per_key = defaultdict(int)
    for s in shards:
        for line in s:
            for w in line.split():
                per_key[w] += 1
    assert r.value == dict(per_key)


def collect(recs):
    return ((k, [v]) for k, v in recs)


def concat(a, b):
    a.extend(b)
    return a


def skewed(n_hot=3000, n_rest=3000, n_shards=6):
    recs = [("hot", i) for i in range(n_hot)] + [(f"k{i % 100}", i) for i in range(n_rest)]
    return [recs[i::n_shards] for i in range(n_shards)]


def test_salting_spreads_a_hot_key_and_changes_no_exact_answer(tmp_path):
    shards = skewed()
    job = ma.KeyedJob(collect, concat, finalize=sorted)
    plain = ma.run(job, shards, workers=2, partitions=4)
    salted = ma.run(job, shards, workers=2, partitions=4, salt=True,
                    faults="kill=0.2,seed=4,attempts=1")
    assert salted.value == plain.value and salted.fingerprint == plain.fingerprint
    assert salted.report.counters["salted_keys"] == 6
    # The hot key's lists are half the data: one reducer reads most bytes without salting.
    before = [r["bytes_in"] for r in plain.report.reducers]
    after = [r["bytes_in"] for r in salted.report.reducers]
    assert max(before) > 0.5 * sum(before) and max(after) < 0.4 * sum(after)
    out = tmp_path / "out"
    r = ma.run(job, shards, workers=2, partitions=4, salt=True, output=str(out))
    assert "part-salted.jsonl" in os.listdir(out) and r.fingerprint == plain.fingerprint


def test_salting_regroups_float_sums_but_stays_deterministic():
    rng = np.random.default_rng(5)
    vals = (rng.standard_normal(6000) * 10.0 ** rng.integers(-6, 6, 6000)).tolist()
    recs = [("hot" if i % 2 else f"k{i % 7}", v) for i, v in enumerate(vals)]
    shards = [recs[i::6] for i in range(6)]
    job = ma.KeyedJob(pairs_map, add)
    plain = ma.run(job, shards, workers=0, partitions=4)
    a = ma.run(job, shards, workers=0, partitions=4, salt=True)
    b = ma.run(job, shards, workers=2, partitions=4, salt=True,
               faults="kill=0.3,seed=9,attempts=1")
    assert a.fingerprint == b.fingerprint
    assert a.value.keys() == plain.value.keys()
    for k in plain.value:
        assert abs(a.value[k] - plain.value[k]) <= 1e-9 * sum(abs(v) for v in vals)



@pytest.mark.parametrize("bad", [("b", 2, 3), ("b",), 7, "bc!"])
@pytest.mark.parametrize("combiner", [True, False])
def test_a_map_item_that_is_not_a_pair_fails_the_task_and_is_never_cut(bad, combiner):
    # Pairs are split in bulk; an item of another length or type must still fail the task
    # as unpacking it would, not lose or invent a value.
    shard = [("a", 1)] * 600 + [bad] + [("a", 1)]
    job = ma.KeyedJob(pairs_map, add)
    with pytest.raises(Exception, match="unpack"):
        ma.run(job, [shard], workers=0, partitions=2, combiner=combiner)


def test_pairs_given_as_lists_or_tuple_subclasses_count_like_tuples():
    from collections import namedtuple

    Pair = namedtuple("Pair", "key value")
    shard = [["a", 1], Pair("b", 2), ("a", 3)] * 400
    r = ma.run(ma.KeyedJob(pairs_map, add), [shard], workers=0, partitions=2, combiner=False)
    assert r.value == {"a": 1600, "b": 800}


def test_tasks_raise_the_collector_thresholds_and_restore_them():
    import gc

    seen = []

    def looking_map(shard):
        seen.append(gc.get_threshold())
        return iter(shard)

    before = gc.get_threshold()
    r = ma.run(ma.KeyedJob(looking_map, add), [[("a", 1)], [("a", 2)]], workers=0,
               partitions=2)
    assert r.value == {"a": 3} and gc.isenabled() and gc.get_threshold() == before
    assert all(t[0] >= 100_000 for t in seen) and len(seen) == 2


# -- committed output: JSON lines, TSV, framed ---------------------------------------------

# Strings that a TSV or JSON writer can get wrong: separators, escapes, text that reads as
# another JSON value, non-ASCII.
tricky_text = st.one_of(st.text(max_size=6), st.sampled_from(
    ["3", "-1.5", "true", "null", "NaN", '"q"', "[1]", " 7 ", "a\tb", "a\nb", "back\\slash",
     "\\t", "tab\t", "", " ", "-", "é€", "\u2028", "x\r\ny"]))
out_keys = st.one_of(tricky_text, st.integers(-2**70, 2**70),
                     st.tuples(st.integers(0, 3), tricky_text))
out_values = st.one_of(st.integers(-2**70, 2**70), tricky_text, st.none(), st.booleans(),
                       st.floats(allow_nan=False, allow_infinity=False),
                       st.lists(st.integers(), max_size=3),
                       st.dictionaries(tricky_text, st.integers(), max_size=2))


def last(a, b):
    return b


def read(path):
    with open(path, encoding="utf-8", newline="\n") as f:
        return f.read()


def json_form(value):
    """What a JSON-lines or TSV part gives back for ``value`` (the documented rule)."""
    return json.loads(json.dumps(to_jsonable(value)))


@settings(max_examples=60, deadline=None)
@given(entries=st.lists(st.tuples(out_keys, out_values), max_size=25),
       fmt=st.sampled_from(sorted(OUTPUT_FORMATS)), R=st.integers(1, 3))
def test_committed_output_reads_back_in_every_format(entries, fmt, R):
    shards = [entries[0::2], entries[1::2]]
    job = ma.KeyedJob(pairs_map, last)
    want = job.reduce(shards)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out")
        r = ma.run(job, shards, workers=0, partitions=R, output=out, output_format=fmt)
        got = r.value.to_dict()
        assert r.value.format == fmt and len(r.value) == len(want)
        if fmt == "framed":
            assert got == want
        else:
            assert got == {k: json_form(v) for k, v in want.items()}
            assert sorted(map(repr, got)) == sorted(map(repr, want))  # "3" is not 3
        manifest = json.loads(read(os.path.join(out, "_SUCCESS")))
        assert manifest["format"] == fmt and manifest["keys"] == len(want)
        assert manifest["fingerprint"] == r.fingerprint == ma.fingerprint(want)
        assert manifest["parts"] == [f"part-{i:05d}{OUTPUT_FORMATS[fmt]}" for i in range(R)]


def test_part_files_are_for_other_tools(tmp_path):
    job = ma.KeyedJob(words_map, add)
    shards = [["the cat sat", "the tab\there"], ["the end"]]
    want = job.reduce(shards)
    ma.run(job, shards, workers=0, partitions=2, output=str(tmp_path / "j"))
    lines = [json.loads(line) for p in sorted(glob.glob(str(tmp_path / "j" / "part-*")))
             for line in read(p).splitlines()]
    assert {d["key"]: d["value"] for d in lines} == want
    assert all(set(d) == {"key", "value"} for d in lines)
    ma.run(job, shards, workers=0, partitions=2, output=str(tmp_path / "t"),
           output_format="tsv")
    rows = [line.split("\t") for p in sorted(glob.glob(str(tmp_path / "t" / "part-*.tsv")))
            for line in read(p).splitlines()]
    assert sorted(rows) == sorted([k, str(v)] for k, v in want.items())


def test_tsv_quotes_a_string_that_reads_as_another_value(tmp_path):
    job = ma.KeyedJob(pairs_map, last)
    shards = [[("3", "true"), (3, True), ("t\tb", "a\\n"), ((1, "x"), [1, 2])]]
    r = ma.run(job, shards, workers=0, partitions=1, output=str(tmp_path / "o"),
               output_format="tsv")
    (part,) = glob.glob(str(tmp_path / "o" / "part-*"))
    text = read(part)
    assert sorted(text.splitlines()) == sorted(
        ['"3"\t"true"', "3\ttrue", "t\\tb\ta\\\\n", '[1,"x"]\t[1,2]'])
    assert r.value.to_dict() == {"3": "true", 3: True, "t\tb": "a\\n", (1, "x"): [1, 2]}


def test_a_value_with_no_json_form_is_an_error_naming_its_key(tmp_path):
    job = ma.KeyedJob(pairs_map, last)
    shards = [[("fine", 1), ("bad", Fraction(1, 3))]]
    with pytest.raises(TaskFailed) as info:
        ma.run(job, shards, workers=0, partitions=1, output=str(tmp_path / "o"))
    message = str(info.value)
    assert ("cannot write part file part-00000.jsonl: the value of the str key 'bad': a "
            "Fraction has no JSON form") in message
    assert "output_format='framed'" in message
    assert not [n for n in os.listdir(tmp_path / "o") if n.startswith("part-")]
    # Framed parts keep any picklable value as it is, numpy arrays included.
    arrays = [[("a", np.arange(3)), ("b", np.ones(2))]]
    r = ma.run(job, arrays, workers=0, partitions=2, output=str(tmp_path / "f"),
               output_format="framed")
    got = r.value.to_dict()
    assert got["a"].tolist() == [0, 1, 2] and got["b"].dtype == np.float64
    assert sorted(os.listdir(tmp_path / "f")) == ["_SUCCESS", "part-00000", "part-00001"]


def test_output_format_is_checked_before_anything_is_made(tmp_path):
    job = ma.KeyedJob(pairs_map, last)
    with pytest.raises(ValueError, match="unknown output format 'parquet'; choose one of "
                                         "jsonl, tsv, framed"):
        ma.run(job, [[("a", 1)]], workers=0, output=str(tmp_path / "o"),
               output_format="parquet")
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="give output= too"):
        ma.run(job, [[("a", 1)]], workers=0, output_format="tsv")
    with pytest.raises(TypeError, match="keyed jobs"):
        ma.run(ma.Aggregator(sum, add), [[1]], workers=0, output_format="tsv")


def explode(shard):
    raise RuntimeError("the job ran")


def test_an_unwritable_output_directory_fails_before_the_job_runs(tmp_path, monkeypatch):
    out = tmp_path / "o"
    out.mkdir()
    real = os.access
    # As root every directory looks writable; a read-only mount is what this stands for.
    monkeypatch.setattr(os, "access", lambda p, mode: real(p, mode) and p != str(out))
    with pytest.raises(PermissionError, match="cannot write part files") as info:
        ma.run(ma.KeyedJob(explode, add), [[1]], workers=0, output=str(out))
    assert info.value.filename == str(out)


def test_a_changed_part_file_is_an_error_naming_it(tmp_path):
    job = ma.KeyedJob(words_map, add)
    r = ma.run(job, [["a b c d"]], workers=0, partitions=1, output=str(tmp_path / "o"))
    (path, n) = r.value.parts[0]
    lines = read(path).splitlines(keepends=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines[:2] + ['{"key": "c", "val\n'] + lines[3:])
    with pytest.raises(ValueError, match=r"part-00000.jsonl, line 3: not an entry"):
        r.value.to_dict()
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines[:3])
    with pytest.raises(ValueError, match="holds 3 entries; its reduce task wrote 4"):
        list(KeyedOutput(str(tmp_path / "o"), [(path, n)]))
