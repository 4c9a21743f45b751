"""Top-K against sorting everything, for any sharding and fan-in."""

import pickle
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

import mergeagg as ma
from mergeagg.algorithms.topk import merge_top, top_of_counts, topk
from mergeagg.cli import main as cli_main
from mergeagg.testing import assert_failure_invariant


@st.composite
def sharded(draw, elements, min_size=0):
    values = draw(st.lists(elements, min_size=min_size, max_size=40))
    cuts = sorted(draw(st.lists(st.integers(0, len(values)), max_size=6)))
    bounds = [0, *cuts, len(values)]
    return values, [values[a:b] for a, b in zip(bounds, bounds[1:])]


FAN_IN = st.integers(2, 5)
K = st.integers(1, 8)
NUMBERS = st.one_of(st.integers(-5, 5), st.sampled_from([-2.0, 0.5, 3.0, 5.0]))


@given(sharded(NUMBERS), K, FAN_IN, st.booleans())
def test_top_values_equal_sorting_everything(case, k, fan_in, smallest):
    values, shards = case
    sign = 1 if smallest else -1
    expected = sorted(values, key=lambda v: (sign * v, isinstance(v, float)))[:k]
    got = ma.run(topk(k, smallest=smallest), shards, workers=0, fan_in=fan_in)
    assert got.fingerprint == ma.fingerprint(expected)


@given(sharded(st.tuples(st.integers(0, 3), st.integers(0, 50))), K, FAN_IN)
def test_top_records_by_field_break_ties_by_record(case, k, fan_in):
    pairs, shards = case
    records = [[{"s": s, "id": i} for s, i in shard] for shard in shards]
    flat = [{"s": s, "id": i} for s, i in pairs]
    expected = sorted(flat, key=lambda r: (-r["s"], r["id"]))[:k]
    got = ma.run(topk(k, field="s"), records, workers=0, fan_in=fan_in).value
    assert got == expected


@given(sharded(st.sampled_from("abcdefg")), K, FAN_IN)
def test_top_counts_equal_a_full_count(case, k, fan_in):
    items, shards = case
    counts = Counter(items)
    expected = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    got = ma.run(topk(k, by="count"), shards, workers=0, fan_in=fan_in)
    assert got.value == expected
    assert got.fingerprint == ma.fingerprint(expected)


@given(st.dictionaries(st.text("abc", max_size=3), st.integers(1, 9)), K, st.data())
def test_merge_top_over_disjoint_partitions_is_the_global_top(counts, k, data):
    keys = list(counts)
    part = data.draw(st.lists(st.integers(0, 2), min_size=len(keys), max_size=len(keys)))
    parts = [{key: counts[key] for key, p in zip(keys, part) if p == i} for i in range(3)]
    tops = [top_of_counts(p, k) for p in parts]
    merged = merge_top(merge_top(tops[0], tops[1], k), tops[2], k)
    assert merged == top_of_counts(counts, k)


def test_nulls_and_nan_are_skipped():
    assert topk(3).reduce([["1", "", None, float("nan")], ["7"]]) == [7, 1]
    assert topk(2, field="x").reduce([[{"x": None}, {"x": "4"}, {}]]) == [{"x": "4"}]


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="k must be at least 1"):
        topk(0)
    with pytest.raises(TypeError, match="k must be an int"):
        topk(2.0)
    with pytest.raises(ValueError, match="by must be"):
        topk(by="size")
    with pytest.raises(ValueError, match="use it with by='count'"):
        topk(words=True)
    with pytest.raises(ValueError, match="smallest=True ranks values"):
        topk(by="count", smallest=True)
    with pytest.raises(TypeError, match="needs mapping records"):
        topk(field="x").reduce([[3]])


@pytest.mark.parametrize("params", [{}, {"by": "count"}, {"field": "x"},
                                    {"by": "count", "words": True}])
def test_aggregators_survive_pickle(params):
    agg = pickle.loads(pickle.dumps(topk(2, **params)))
    if params.get("field"):
        shard = [{"x": 1}, {"x": 3}]
    else:
        shard = ["1", "3 1", "3"] if params.get("words") else ["1", "3", "3"]
    acc = pickle.loads(pickle.dumps(agg.partial(shard)))
    assert agg.finalize(agg.combine(acc, agg.partial(shard))) == \
        topk(2, **params).reduce([shard, shard])


def test_cli_top_words_and_values(tmp_path, capsys):
    text = tmp_path / "t.txt"
    text.write_text("b a b\nc b a\n")
    assert cli_main(["run", "topk", str(text), "--workers", "0", "--by", "count", "--words",
                     "--k", "2", "--split-size", "3"]) == 0
    out = capsys.readouterr().out.split("\n")
    assert out[0].split() == ["3", "b"] and out[1].split() == ["2", "a"]
    nums = tmp_path / "n.txt"
    nums.write_text("4\n9\n-1\n9\n")
    assert cli_main(["run", "topk", str(nums), "--workers", "0", "--k", "3",
                     "--smallest"]) == 0
    assert capsys.readouterr().out.split("\n")[0:3] == ["-1", "4", "9"]


@pytest.mark.slow
@pytest.mark.mergeagg_processes
def test_a_worker_death_leaves_the_top_k_unchanged():
    from mergeagg.runtime.faults import Fault, FaultPlan

    shards = [[str(i * 7 % 23) for i in range(j, j + 30)] for j in range(0, 150, 30)]
    job = ma.product(values=topk(5), counts=topk(3, by="count"))
    assert_failure_invariant(job, shards, plans=[FaultPlan(only={"map-2": {1: Fault("kill")}})])


def test_record_shape_errors_stop_at_once_and_say_what_to_do(tmp_path):
    from mergeagg.errors import RecordShapeError

    table = tmp_path / "t.csv"
    table.write_text("k,a\n1,x\n1,y\n")
    with pytest.raises(ma.InputError, match=r"no column 'kk'; its header has 2: 'k', 'a'"):
        ma.run(topk(field="kk"), str(table), workers=0, format="csv")
    with pytest.raises(ma.InputError, match=r"no column 'kk'"):
        ma.run(topk(by="count", field="kk"), str(table), workers=0, format="csv")
    assert ma.run(topk(by="count", field="k"), [table], workers=0, format=None).value == [("1", 2)]
    # Rows counted whole: a dict cannot be counted; the error says to name a column.
    with pytest.raises(RecordShapeError, match=r"cannot count a dict record .*--field NAME"):
        ma.run(topk(by="count"), str(table), workers=0, format="csv")
    with pytest.raises(ma.InputError, match=r"needs mapping records .*--format csv"):
        ma.run(topk(field="k"), str(table), workers=1, format="text")


@pytest.mark.parametrize("by", ["value", "count"])
def test_a_key_no_json_record_has_is_an_error_and_a_sparse_one_is_not(by):
    shards = [[{"a": "3"}, {"b": "1"}], [{"b": "2"}]]
    with pytest.raises(ma.InputError, match=r"no record has the field 'zz'; their keys "
                                            r"include 'a', 'b'"):
        topk(2, by=by, field="zz").reduce(shards)
    assert len(topk(2, by=by, field="a").reduce(shards)) == 1
    assert topk(2, by=by, field="a").reduce([[]]) == []
    got = ma.run(topk(2, by=by, field="b"), shards, workers=0, fan_in=2)
    assert got.fingerprint == ma.fingerprint(topk(2, by=by, field="b").reduce([sum(shards, [])]))
