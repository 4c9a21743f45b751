"""Joins against a nested-loop reference: every join type, both strategies, any sharding."""

import csv
import json
import math
import pickle
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

import mergeagg as ma
from mergeagg.algorithms._keyed import order_key
from mergeagg.algorithms.join import (
    JoinRows,
    join,
    join_records,
    join_rows,
    join_source,
    merge_pair,
)
from mergeagg.cli import main as cli_main
from mergeagg.testing import assert_failure_invariant

NAN = float("nan")
KEYS = st.one_of(st.integers(0, 3), st.sampled_from([None, "", "a", NAN]))


def is_null(v, empty_is_null):
    return v is None or (isinstance(v, float) and math.isnan(v)) or (empty_is_null and v == "")


def nested_loop(left, right, how, empty_is_null):
    """SQL semantics by brute force: compare every pair of rows."""
    out = []
    right_matched = [False] * len(right)
    for lrow in left:
        lk = lrow.get("k")
        hit = False
        for j, rrow in enumerate(right):
            rk = rrow.get("k")
            if not is_null(lk, empty_is_null) and not is_null(rk, empty_is_null) and lk == rk:
                out.append((lrow, rrow))
                hit = True
                right_matched[j] = True
        if not hit and how in ("left", "full"):
            out.append((lrow, None))
    if how in ("right", "full"):
        out.extend((None, rrow) for j, rrow in enumerate(right) if not right_matched[j])
    return out


def documented_order(pairs, empty_is_null):
    def rank(pair):
        row = pair[0] if pair[0] is not None else pair[1]
        k = row.get("k")
        return (order_key(None if is_null(k, empty_is_null) else k),
                order_key(pair[0]), order_key(pair[1]))
    return sorted(pairs, key=rank)


@st.composite
def table(draw, side):
    keys = draw(st.lists(st.one_of(KEYS, st.just("missing")), max_size=12))
    rows = []
    for i, k in enumerate(keys):
        row = {"id": f"{side}{draw(st.integers(0, 2))}"} if k == "missing" else {"k": k}
        row["v"] = draw(st.integers(0, 1)) if i % 2 else i  # some identical rows
        rows.append(row)
    cuts = sorted(draw(st.lists(st.integers(0, len(rows)), max_size=4)))
    bounds = [0, *cuts, len(rows)]
    return rows, [rows[a:b] for a, b in zip(bounds, bounds[1:])]


@given(table("L"), table("R"), st.sampled_from(["inner", "left", "right", "full"]),
       st.sampled_from(["reduce", "broadcast"]), st.booleans(), st.integers(2, 4))
def test_join_equals_the_nested_loop_reference(left, right, how, strategy, empty_null,
                                               fan_in):
    lrows, lshards = left
    rrows, rshards = right
    src = join_source(lshards, rshards, strategy=strategy)
    assert src.strategy == strategy
    got = ma.run(join(on="k", how=how, empty_is_null=empty_null), src, workers=0,
                 fan_in=fan_in).value
    expected = nested_loop(lrows, rrows, how, empty_null)
    assert Counter(map(repr, got)) == Counter(map(repr, expected))
    assert got == documented_order(expected, empty_null)


@given(table("L"), table("R"), st.sampled_from(["inner", "left", "right", "full"]))
def test_both_strategies_and_both_broadcast_sides_give_the_same_list(left, right, how):
    agg = join(on="k", how=how)
    results = []
    for lside, rside in ((left[1], right[1]), (left[0], right[1]), (left[1], right[0])):
        for strategy in ("reduce", "broadcast"):
            src = join_source(lside, rside, strategy=strategy)
            results.append(ma.run(agg, src, workers=0).fingerprint)
    assert len(set(results)) == 1


def test_duplicate_keys_give_the_cross_product():
    left = [{"k": 1, "l": i} for i in range(3)]
    right = [{"k": 1, "r": j} for j in range(4)]
    for strategy in ("reduce", "broadcast"):
        got = join_records(left, right, on="k", strategy=strategy)
        assert len(got) == 12
        assert {(lr["l"], rr["r"]) for lr, rr in got} == {(i, j) for i in range(3)
                                                         for j in range(4)}


def test_empty_sides():
    rows = [{"k": 1}, {"k": None}]
    for strategy in ("reduce", "broadcast"):
        assert join_records([], rows, on="k", how="inner", strategy=strategy) == []
        assert join_records([], rows, on="k", how="right", strategy=strategy) == [
            (None, {"k": None}), (None, {"k": 1})]
        assert join_records(rows, [], on="k", how="full", strategy=strategy) == [
            ({"k": None}, None), ({"k": 1}, None)]


def test_composite_and_per_side_keys():
    left = [{"a": 1, "b": "x"}, {"a": 1, "b": None}]
    right = [{"c": 1, "d": "x"}, {"c": 1, "d": None}]
    got = join_records(left, right, left_on=["a", "b"], right_on="c,d", how="full")
    assert got == [(None, {"c": 1, "d": None}), ({"a": 1, "b": None}, None),
                   ({"a": 1, "b": "x"}, {"c": 1, "d": "x"})]


def test_auto_strategy_follows_the_threshold():
    big = [{"k": i} for i in range(200)]
    small = [{"k": 1}]
    assert join_source(big, small).strategy == "broadcast"
    assert join_source(big, small, broadcast_threshold=1).strategy == "reduce"
    assert join_source(big, small, broadcast_threshold="1K").strategy == "broadcast"


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="how must be one of"):
        join(on="k", how="cross")
    with pytest.raises(TypeError, match="needs on="):
        join(None)
    with pytest.raises(TypeError, match="not both"):
        join(on="k", left_on="a", right_on="b")
    with pytest.raises(ValueError, match="same number on both sides"):
        join(None, left_on=["a", "b"], right_on="c")
    with pytest.raises(ValueError, match="strategy must be one of"):
        join_source([], [], strategy="hash")
    with pytest.raises(TypeError, match="must be file paths or a list"):
        join_source(3, [])
    with pytest.raises(TypeError, match="must be a mapping"):
        join_records([1], [{"k": 1}], on="k", strategy="reduce")
    with pytest.raises(TypeError, match="a join key must be"):
        join_records([{"k": [1]}], [{"k": 1}], on="k", strategy="reduce")
    with pytest.raises(ValueError, match="tagged 'left' or 'right'"):
        join(on="k").partial([("middle", {"k": 1})])


@pytest.mark.parametrize("strategy", ["reduce", "broadcast"])
def test_aggregator_and_accumulator_survive_pickle(strategy):
    agg = pickle.loads(pickle.dumps(join(on="k", how="full")))
    src = join_source([[{"k": 1}], [{"k": 2}]], [{"k": 1}, {"k": 3}], strategy=strategy)
    parts = [pickle.loads(pickle.dumps(agg.partial(src.read(s)))) for s in src.splits()]
    acc = parts[0]
    for p in parts[1:]:
        snapshot = pickle.dumps(p)
        acc = agg.combine(acc, p)
        assert pickle.dumps(p) == snapshot  # the second operand is untouched
    assert agg.finalize(acc) == join_records([{"k": 1}, {"k": 2}], [{"k": 1}, {"k": 3}],
                                             on="k", how="full")
    assert ma.fingerprint(parts[0])


def write_csv(path, rows, columns):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        w.writerows(rows)


def test_csv_and_jsonl_files_both_strategies(tmp_path):
    left = [{"id": str(i % 7), "x": str(i)} for i in range(40)] + [{"id": "", "x": "n"}]
    right = [{"id": str(i), "y": str(i * i)} for i in range(10)]
    write_csv(tmp_path / "l.csv", left, ["id", "x"])
    write_csv(tmp_path / "r.csv", right, ["id", "y"])
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in right))
    expected = nested_loop([{"k": r["id"], **r} for r in left],
                           [{"k": r["id"], **r} for r in right], "full", True)
    for rpath in ("r.csv", "r.jsonl"):
        for strategy in ("reduce", "broadcast"):
            src = join_source(str(tmp_path / "l.csv"), str(tmp_path / rpath),
                              strategy=strategy, split_size=64)
            got = ma.run(join(on="id", how="full", empty_is_null=True), src, workers=0).value
            strip = [({k: v for k, v in lr.items() if k != "k"} if lr else None,
                      {k: v for k, v in rr.items() if k != "k"} if rr else None)
                     for lr, rr in expected]
            assert Counter(map(repr, got)) == Counter(map(repr, strip))
    with pytest.raises(ValueError, match="cannot tell the format"):
        join_source(str(tmp_path / "l.csv"), str(tmp_path / "nope.txt"))


def test_cli_join(tmp_path, capsys):
    write_csv(tmp_path / "l.csv", [{"k": "1", "a": "x"}, {"k": "", "a": "y"}], ["k", "a"])
    write_csv(tmp_path / "r.csv", [{"k": "1", "b": "z"}, {"k": "", "b": "w"}], ["k", "b"])
    out_json = tmp_path / "o.json"
    for strategy in ("reduce", "broadcast"):
        assert cli_main(["run", "join", str(tmp_path / "l.csv"), str(tmp_path / "r.csv"),
                         "--on", "k", "--how", "full", "--workers", "0", "--strategy",
                         strategy, "--json", str(out_json)]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == "3 rows"
        value = json.loads(out_json.read_text())["value"]
        assert value == [[None, {"k": "", "b": "w"}], [{"k": "", "a": "y"}, None],
                         [{"k": "1", "a": "x"}, {"k": "1", "b": "z"}]]
    assert cli_main(["run", "join", str(tmp_path / "l.csv"), str(tmp_path / "r.csv"),
                     "--on", "k", "--keep-empty", "--workers", "0"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "2 rows"
    assert cli_main(["run", "join", str(tmp_path / "l.csv"), "--on", "k",
                     "--workers", "0"]) == 2
    assert "exactly two inputs" in capsys.readouterr().err


def test_merge_pair_flattens_with_suffixes():
    assert merge_pair({"k": 1, "a": 2}, None) == {"k": 1, "a": 2}
    assert merge_pair({"k": 1}, {"k": 1, "b": 3}, ("_l", "_r")) == {"k_l": 1, "k_r": 1, "b": 3}


STR_ROWS = st.lists(st.tuples(st.sampled_from(["", "a", "b"]), st.sampled_from(["x", "y", ""])),
                    max_size=10)


@given(STR_ROWS, STR_ROWS, st.sampled_from(["inner", "left", "right", "full"]),
       st.sampled_from(["reduce", "broadcast"]))
def test_string_rows_sort_in_the_documented_order(lpairs, rpairs, how, strategy):
    left = [{"k": k, "v": v} for k, v in lpairs]
    right = [{"k": k, "w": v} for k, v in rpairs]
    got = join_records(left, right, "k", how=how, empty_is_null=True, strategy=strategy)
    assert got == documented_order(nested_loop(left, right, how, True), True)


def test_join_rows_fingerprint_tells_values_and_types_apart():
    fps = {ma.fingerprint(JoinRows([({"k": v}, None)])) for v in (1, "1", 1.0, True, None)}
    assert len(fps) == 5
    assert ma.fingerprint(JoinRows([({"k": "1"}, None)])) != ma.fingerprint(
        JoinRows([(None, {"k": "1"})]))
    odd = [({"k": b"x"}, None)]  # not JSON: fingerprinted as a plain list
    assert ma.fingerprint(JoinRows(odd)) != ma.fingerprint(JoinRows([({"k": b"y"}, None)]))
    assert pickle.loads(pickle.dumps(JoinRows(odd))) == odd


@pytest.mark.slow
@pytest.mark.mergeagg_processes
@pytest.mark.parametrize("strategy", ["reduce", "broadcast"])
def test_a_worker_death_leaves_the_join_unchanged(tmp_path, strategy):
    from mergeagg.runtime.faults import Fault, FaultPlan

    write_csv(tmp_path / "l.csv", [{"k": str(i % 13), "x": str(i)} for i in range(400)],
              ["k", "x"])
    write_csv(tmp_path / "r.csv", [{"k": str(i), "y": str(i * 2)} for i in range(0, 20, 2)],
              ["k", "y"])
    src = join_source(str(tmp_path / "l.csv"), str(tmp_path / "r.csv"), strategy=strategy,
                      split_size=1024)
    agg = join("k", how="full", empty_is_null=True)
    assert_failure_invariant(agg, src, plans=[FaultPlan(only={"map-1": {1: Fault("kill")}})])


@given(table("L"), table("R"), st.sampled_from(["inner", "left", "right", "full"]),
       st.booleans(), st.integers(1, 3))
def test_keyed_join_gives_the_fold_list(left, right, how, empty_null, partitions):
    lrows, lshards = left
    rrows, rshards = right
    src = join_source(lshards, rshards, strategy="reduce")
    job = join("k", how=how, empty_is_null=empty_null, keyed=True)
    assert isinstance(job, ma.KeyedJob)
    got = ma.run(job, src, workers=0, partitions=partitions)
    fold = ma.run(join("k", how=how, empty_is_null=empty_null), src, workers=0)
    # rows come back through spill files, so a NaN is a new object: compare by repr
    flat = join_rows(got.value)
    assert repr(flat) == repr(fold.value)
    assert ma.fingerprint(flat) == fold.fingerprint
    expected = documented_order(nested_loop(lrows, rrows, how, empty_null), empty_null)
    assert repr(flat) == repr(expected)


def test_keyed_join_refuses_a_broadcast_source():
    src = join_source([{"k": 1}], [{"k": 1}], strategy="broadcast")
    with pytest.raises(ValueError, match="strategy='reduce'"):
        join("k", keyed=True).reduce(src.read(s) for s in src.splits())


@pytest.mark.slow
def test_keyed_join_on_workers_with_a_death_and_part_files(tmp_path, capsys):
    from mergeagg.runtime.faults import Fault, FaultPlan

    write_csv(tmp_path / "l.csv", [{"k": str(i % 13), "x": str(i)} for i in range(400)]
              + [{"k": "", "x": "n"}], ["k", "x"])
    write_csv(tmp_path / "r.csv", [{"k": str(i), "y": str(i * 2)} for i in range(0, 20, 2)],
              ["k", "y"])
    src = join_source(str(tmp_path / "l.csv"), str(tmp_path / "r.csv"), strategy="reduce",
                      split_size=1024)
    fold = ma.run(join("k", how="full", empty_is_null=True), src, workers=0)
    out = tmp_path / "joined"
    keyed = ma.run(join("k", how="full", empty_is_null=True, keyed=True), src, workers=2,
                   partitions=3, output=str(out), output_format="framed",
                   faults=FaultPlan(only={"map-1": {1: Fault("kill")}}))
    assert keyed.report.attempts[1] == 2
    assert join_rows(keyed.value) == fold.value
    assert cli_main(["run", "join", str(tmp_path / "l.csv"), str(tmp_path / "r.csv"),
                     "--on", "k", "--how", "full", "--keyed", "--partitions", "2",
                     "--workers", "0"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"{len(fold.value)} rows"


def test_broadcast_csv_lines_parsed_by_the_join(tmp_path):
    big = tmp_path / "big.csv"
    big.write_text("k,x\n" + "1,a\n2,b\n,c\n1,d\n" * 5)
    (tmp_path / "small.csv").write_text("k,y\n1,z\n")
    src = join_source(str(big), str(tmp_path / "small.csv"), strategy="broadcast",
                      split_size=16)
    piece = src.splits()[0].payload  # a descriptor: the worker reads and parses the lines
    assert piece.header == ("k", "x") and piece.skip_first
    got = ma.run(join("k", how="left", empty_is_null=True), src, workers=0).value
    ref = join_records([{"k": k, "x": x} for k, x in [("1", "a"), ("2", "b"), ("", "c"),
                                                        ("1", "d")] * 5],
                       [{"k": "1", "y": "z"}], "k", how="left", empty_is_null=True,
                       strategy="reduce")
    assert got == ref
    (tmp_path / "ragged.csv").write_text("k,x\n1,a\n2\n" + "3,c\n" * 20)
    src = join_source(str(tmp_path / "ragged.csv"), str(tmp_path / "small.csv"),
                      strategy="broadcast")
    with pytest.raises(ma.InputError, match="has 1 fields, the header has 2"):
        ma.run(join("k"), src, workers=0)


CSV_FIELD = st.sampled_from(["", "1", "2", "3", "a,b", 'say "hi"', "x\ny", " sp"])


@given(st.lists(st.tuples(CSV_FIELD, CSV_FIELD), max_size=12),
       st.lists(st.tuples(CSV_FIELD, CSV_FIELD), max_size=12),
       st.sampled_from(["inner", "left", "right", "full"]), st.booleans(), st.booleans())
def test_csv_files_parsed_by_the_join_equal_the_records(tmp_path_factory, lrows, rrows, how,
                                                        crlf, empty_is_null):
    # Quotes, embedded commas and newlines, CRLF and blank lines take the csv module's path;
    # plain text is split in bulk. Both must give the rows the csv module gives, for every
    # strategy, and the right side's second file has its columns in another order.
    d = tmp_path_factory.mktemp("csv")
    end = "\r\n" if crlf else "\n"
    with open(d / "l.csv", "w", newline="") as f:
        csv.writer(f, lineterminator=end).writerows([("k", "x"), *lrows])
    half = len(rrows) // 2
    with open(d / "r1.csv", "w", newline="") as f:
        csv.writer(f, lineterminator=end).writerows([("k", "y"), *rrows[:half]])
        f.write(end)  # a blank line is no row
    with open(d / "r2.csv", "w", newline="") as f:
        csv.writer(f, lineterminator=end).writerows([("y", "k"), *[(y, k) for k, y in
                                                                    rrows[half:]]])
    left = [{"k": k, "x": x} for k, x in lrows]
    right = [{"k": k, "y": y} for k, y in rrows]
    expected = join_records(left, right, on="k", how=how, empty_is_null=empty_is_null,
                            strategy="reduce")
    paths = [str(d / "r1.csv"), str(d / "r2.csv")]
    for strategy in ("reduce", "broadcast"):
        src = join_source(str(d / "l.csv"), paths, strategy=strategy, split_size=1 << 20)
        agg = join("k", how=how, empty_is_null=empty_is_null)
        assert ma.run(agg, src, workers=0).value == expected
    src = join_source(str(d / "l.csv"), paths, strategy="reduce")
    keyed = join("k", how=how, empty_is_null=empty_is_null, keyed=True)
    assert join_rows(ma.run(keyed, src, workers=0, partitions=2).value) == expected


def test_a_ragged_csv_row_is_found_even_when_another_row_makes_up_the_commas(tmp_path):
    # One row short of a field and another with one too many: the comma total is right,
    # the widths are not; every strategy must refuse the file.
    (tmp_path / "small.csv").write_text("k,y\n1,z\n")
    (tmp_path / "big.csv").write_text("k,x\n1,a\n\n2\n3,c,d\n" + "4,e\n" * 10)
    for strategy in ("broadcast", "reduce"):
        src = join_source(str(tmp_path / "big.csv"), str(tmp_path / "small.csv"),
                          strategy=strategy)
        with pytest.raises(ma.InputError, match="the header has 2"):
            ma.run(join("k"), src, workers=0)


@given(table("L"), table("R"), st.sampled_from(["inner", "left", "right", "full"]),
       st.booleans())
def test_every_plan_gives_one_fingerprint_of_the_value_received(left, right, how, empty_null):
    # Issue 14, item 4: the fold, the broadcast join and the keyed join at several R print
    # the fingerprint of the list the user gets.
    from mergeagg.algorithms.join import run_join

    src = join_source(left[1], right[1], strategy="reduce")
    plans = [run_join(join("k", how, empty_is_null=empty_null), src, workers=0),
             run_join(join("k", how, empty_is_null=empty_null),
                      join_source(left[1], right[1], strategy="broadcast"), workers=0)]
    for partitions in (1, 2, 5):
        plans.append(run_join(join("k", how, empty_is_null=empty_null, keyed=True), src,
                              workers=0, partitions=partitions))
    assert {r.fingerprint for r in plans} == {ma.fingerprint(plans[0].value)}
    assert all(repr(r.value) == repr(plans[0].value) for r in plans)


def test_cli_prints_one_fingerprint_for_the_fold_and_the_keyed_join(tmp_path, capsys):
    write_csv(tmp_path / "l.csv", [{"id": str(i), "k": str(i % 5)} for i in range(30)],
              ["id", "k"])
    write_csv(tmp_path / "r.csv", [{"k": str(i % 7), "v": str(i)} for i in range(20)],
              ["k", "v"])
    argv = ["run", "join", str(tmp_path / "l.csv"), str(tmp_path / "r.csv"), "--on", "k",
            "--how", "left", "--workers", "0"]
    printed = []
    for extra in ([], ["--keyed", "-R", "3"], ["--keyed", "-R", "1"]):
        assert cli_main(argv + extra) == 0
        printed.append(capsys.readouterr().out.splitlines()[-1])
    assert len(set(printed)) == 1 and printed[0].startswith("fingerprint ")


@pytest.mark.parametrize("strategy", ["reduce", "broadcast"])
@pytest.mark.parametrize("keyed", [False, True])
def test_a_missing_key_column_is_an_input_error_naming_it_and_the_header(tmp_path, strategy,
                                                                        keyed):
    # Issue 14, item 3: a misspelled column gave "0 rows" and exit 0.
    write_csv(tmp_path / "l.csv", [{"id": "1", "k": "a"}], ["id", "k"])
    write_csv(tmp_path / "r.csv", [{"k": "a", "v": "1"}], ["k", "v"])
    if keyed and strategy == "broadcast":
        return
    src = join_source(str(tmp_path / "l.csv"), str(tmp_path / "r.csv"), strategy=strategy)
    with pytest.raises(ma.InputError, match=r"side has no column 'kk' to join on \(.*/[lr]"
                                            r"\.csv; its header: (id, k|k, v)\)"):
        join("kk", keyed=keyed).reduce(src.read(s) for s in src.splits())
    with pytest.raises(ma.InputError, match="has no column 'kk'"):
        ma.run(join("kk", keyed=keyed), src, workers=0)
    src = join_source(str(tmp_path / "l.csv"), str(tmp_path / "r.csv"), strategy=strategy)
    with pytest.raises(ma.InputError, match="right side has no column 'w'"):
        ma.run(join(None, left_on="k", right_on="w", keyed=keyed), src, workers=0)


@pytest.mark.slow
def test_a_missing_key_column_fails_at_once_on_workers_and_on_the_command_line(tmp_path,
                                                                              capsys):
    write_csv(tmp_path / "l.csv", [{"id": "1", "k": "a"}], ["id", "k"])
    write_csv(tmp_path / "r.csv", [{"k": "a", "v": "1"}], ["k", "v"])
    src = join_source(str(tmp_path / "l.csv"), str(tmp_path / "r.csv"), strategy="reduce")
    with pytest.raises(ma.MergeaggError) as info:
        ma.run(join("kk", keyed=True), src, workers=2, partitions=2)
    assert "no column 'kk'" in str(info.value)
    assert cli_main(["run", "join", str(tmp_path / "l.csv"), str(tmp_path / "r.csv"),
                     "--on", "kk", "--workers", "0"]) != 0
    err = capsys.readouterr().err
    assert "no column 'kk' to join on" in err and "its header: id, k" in err


PLAIN = st.sampled_from(["", "1", "22", "a", "abc", " x", "longer-key", "longer-kez"])


@given(st.lists(st.tuples(PLAIN, PLAIN, PLAIN), max_size=15), st.sampled_from(["\n", "\r\n"]),
       st.booleans(), st.booleans(), st.integers(0, 2), st.booleans(),
       st.sampled_from([None, None, None, "é", "k" * 70]))
def test_broadcast_probe_in_numpy_equals_the_reference(rows, end, blank, last_end, col,
                                                       empty_is_null, odd):
    # The broadcast inner join probes plain CSV text in numpy (hit_lines): LF or CRLF,
    # blank lines, no newline after the last line, long and non-ASCII keys (another path).
    import tempfile
    from pathlib import Path

    header = ("a", "b", "c")
    if odd is not None:
        rows = [*rows, (odd, odd, odd)]
    rows = [*rows, *[("q", "q", "q")] * 80]  # the streamed side must be the bigger one
    lines = [",".join(header)] + [",".join(r) for r in rows]
    if blank:
        lines.insert(len(lines) // 2 + 1, "")
    text = end.join(lines) + (end if last_end else "")
    small = [{"a": v, "b": v, "c": v, "s": "small"}
             for v in ("", "1", "abc", "k" * 70, "longer-key")]
    with tempfile.TemporaryDirectory() as d:
        big, little = Path(d) / "big.csv", Path(d) / "small.csv"
        big.write_bytes(text.encode("utf-8"))
        write_csv(little, small, ["a", "b", "c", "s"])
        key = header[col]
        src = join_source(str(big), str(little), strategy="broadcast", split_size=1 << 20)
        assert src.splits()[0].payload.tag.stream == "left"
        got = ma.run(join(key, empty_is_null=empty_is_null), src, workers=0).value
    records = [dict(zip(header, r)) for r in rows]
    assert got == join_records(records, small, key, empty_is_null=empty_is_null,
                               strategy="reduce")


def test_a_keyed_join_committed_as_json_lines_reads_back_as_the_fold_s_rows(tmp_path):
    write_csv(tmp_path / "l.csv", [{"k": "1", "a": "x"}, {"k": "2", "a": "y"},
                                   {"k": "", "a": "z"}], ["k", "a"])
    write_csv(tmp_path / "r.csv", [{"k": "1", "b": "w"}, {"k": "3", "b": "v"}], ["k", "b"])
    from mergeagg.algorithms.join import run_join

    src = join_source(str(tmp_path / "l.csv"), str(tmp_path / "r.csv"), strategy="reduce")
    fold = run_join(join("k", how="full"), src, workers=0)
    out = tmp_path / "parts"
    keyed = run_join(join("k", how="full", keyed=True), src, workers=2, partitions=3,
                     output=str(out))
    assert keyed.value == fold.value and keyed.fingerprint == fold.fingerprint
    assert all(p.suffix in (".jsonl", "") for p in out.iterdir())


def test_a_byte_order_mark_does_not_hide_the_key_column(tmp_path):
    (tmp_path / "l.csv").write_bytes(b"\xef\xbb\xbfk,a\r\n1,x\r\n2,y\r\n")
    write_csv(tmp_path / "r.csv", [{"k": "1", "b": "w"}], ["k", "b"])
    for strategy in ("reduce", "broadcast"):
        src = join_source(str(tmp_path / "l.csv"), str(tmp_path / "r.csv"), strategy=strategy)
        rows = ma.run(join("k"), src, workers=0).value
        assert [(lrow["a"], rrow["b"]) for lrow, rrow in rows] == [("x", "w")]
