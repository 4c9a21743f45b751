"""Basic aggregates against plain sequential references, for any sharding and fan-in."""

import math
import pickle
import statistics
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import mergeagg as ma
from mergeagg.algorithms import basic
from mergeagg.algorithms._exact import ExactSum
from mergeagg.cli import main as cli_main
from mergeagg.runtime.faults import Fault, FaultPlan
from mergeagg.testing import assert_failure_invariant


@st.composite
def sharded(draw, elements, min_size=0):
    """A list of values and a random cut of it into shards (possibly empty ones)."""
    values = draw(st.lists(elements, min_size=min_size, max_size=40))
    cuts = sorted(draw(st.lists(st.integers(0, len(values)), max_size=6)))
    bounds = [0, *cuts, len(values)]
    shards = [values[a:b] for a, b in zip(bounds, bounds[1:])]
    return values, shards


def run(agg, shards, fan_in):
    return ma.run(agg, shards, workers=0, fan_in=fan_in)


FAN_IN = st.integers(2, 5)
INTS = st.integers(-10**20, 10**20)
FLOATS = st.floats(allow_nan=False, allow_infinity=False, width=64)
MODERATE = st.floats(-1e6, 1e6, allow_nan=False)


def same_float(x, y):
    return x == y and math.copysign(1, x) == math.copysign(1, y)


@given(sharded(INTS), FAN_IN)
def test_int_aggregates_equal_the_sequential_reference(case, fan_in):
    values, shards = case
    assert run(basic.count(), shards, fan_in).value == len(values)
    r = run(basic.total(), shards, fan_in)
    assert r.value == sum(values) and type(r.value) is int
    assert r.fingerprint == ma.fingerprint(sum(values))
    assert run(basic.minimum(), shards, fan_in).value == (min(values) if values else None)
    assert run(basic.maximum(), shards, fan_in).value == (max(values) if values else None)
    m = run(basic.mean(), shards, fan_in).value
    assert m == (sum(values) / len(values) if values else None)


@given(sharded(FLOATS), FAN_IN)
def test_exact_sum_is_fsum_for_every_sharding(case, fan_in):
    values, shards = case
    try:
        expected = math.fsum(values)
    except OverflowError:
        assume(False)
    got = run(basic.total(exact=True), shards, fan_in)
    assert same_float(got.value, expected if values else 0)
    # and bitwise the same as one partial over everything
    assert got.fingerprint == ma.fingerprint(basic.total(exact=True).reduce([values]))


@given(sharded(FLOATS, min_size=1), FAN_IN)
def test_exact_mean_is_the_correctly_rounded_mean(case, fan_in):
    values, shards = case
    expected = float(sum(map(Fraction, values)) / len(values))
    got = run(basic.mean(exact=True), shards, fan_in).value
    assert same_float(got, expected)


@given(sharded(MODERATE, min_size=1), FAN_IN)
def test_float_sum_and_mean_within_rounding(case, fan_in):
    values, shards = case
    got = run(basic.total(), shards, fan_in).value
    assert math.isclose(got, math.fsum(values), rel_tol=1e-9, abs_tol=1e-6)
    got_mean = run(basic.mean(), shards, fan_in).value
    assert math.isclose(got_mean, math.fsum(values) / len(values), rel_tol=1e-9, abs_tol=1e-6)


@given(sharded(st.one_of(MODERATE, st.integers(-10**6, 10**6)), min_size=2), FAN_IN,
       st.sampled_from([0, 1]))
def test_variance_by_moments_merge_matches_statistics(case, fan_in, ddof):
    values, shards = case
    ref = statistics.variance(values) if ddof else statistics.pvariance(values)
    got = run(basic.variance(ddof=ddof), shards, fan_in).value
    scale = max(1.0, max(abs(v) for v in values)) ** 2
    assert math.isclose(got, ref, rel_tol=1e-9, abs_tol=1e-12 * scale)
    sd = run(basic.variance(ddof=ddof, stddev=True), shards, fan_in).value
    assert math.isclose(sd, math.sqrt(ref), rel_tol=1e-6, abs_tol=1e-6 * math.sqrt(scale))


def test_variance_with_too_few_values_is_none():
    assert basic.variance().reduce([[5], []]) is None
    assert basic.variance(ddof=0).reduce([[5], []]) == 0.0
    assert basic.mean().reduce([[], [None, ""]]) is None


def test_moments_merge_is_associative_in_value():
    rng = np.random.default_rng(7)
    parts = [rng.normal(100, 3, size=n) for n in (1, 5, 17, 2)]
    m = [basic.moments([], p) for p in parts]
    left = basic.merge_moments(basic.merge_moments(basic.merge_moments(m[0], m[1]), m[2]), m[3])
    right = basic.merge_moments(m[0], basic.merge_moments(m[1], basic.merge_moments(m[2], m[3])))
    whole = basic.moments([], np.concatenate(parts))
    for x in (left, right):
        assert x[0] == whole[0]
        assert math.isclose(x[1], whole[1], rel_tol=1e-12)
        assert math.isclose(x[2], whole[2], rel_tol=1e-9)


MIXED = st.sampled_from([1, 1.0, 0, 0.0, -0.0, 2, 2.0, -1, -1.0])


@given(sharded(MIXED, min_size=1), FAN_IN)
def test_min_max_break_ties_the_same_way_for_every_sharding(case, fan_in):
    values, shards = case
    lo = min(values)
    ties = [v for v in values if v == lo]
    expected_min = min(ties, key=lambda v: (isinstance(v, float),
                                            not (isinstance(v, float) and
                                                 math.copysign(1, v) < 0)))
    got = run(basic.minimum(), shards, fan_in)
    assert got.fingerprint == ma.fingerprint(expected_min)
    hi = max(values)
    ties = [v for v in values if v == hi]
    expected_max = min(ties, key=lambda v: (isinstance(v, float),
                                            isinstance(v, float) and math.copysign(1, v) < 0))
    assert run(basic.maximum(), shards, fan_in).fingerprint == ma.fingerprint(expected_max)


def test_nan_propagates_through_min_max_and_sums():
    shards = [[1.0, 2.0], [float("nan")], [3]]
    assert math.isnan(basic.minimum().reduce(shards))
    assert math.isnan(basic.maximum().reduce(shards))
    assert math.isnan(basic.total(exact=True).reduce(shards))
    assert basic.total(exact=True).reduce([[math.inf], [1.0]]) == math.inf
    assert math.isnan(basic.total(exact=True).reduce([[math.inf], [-math.inf]]))


def test_fields_and_nulls_follow_sql():
    rows = [[{"x": "1"}, {"x": ""}, {"y": "5"}], [{"x": None}, {"x": "2.5"}]]
    assert basic.count().reduce(rows) == 5
    assert basic.count(field="x").reduce(rows) == 2
    assert basic.total(field="x").reduce(rows) == 3.5
    assert basic.mean(field="x").reduce(rows) == 1.75
    assert basic.maximum(field="y").reduce(rows) == 5


def test_numpy_arrays_and_array_rows():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(50, 3))
    r = ma.run(basic.total(exact=True), ma.array_rows(a, rows=7), workers=0)
    assert r.value == math.fsum(a.ravel().tolist())
    assert ma.run(basic.minimum(), ma.array_rows(a, rows=9), workers=0).value == a.min()
    ints = np.arange(10, dtype=np.int32).reshape(5, 2)
    assert ma.run(basic.total(), ma.array_rows(ints, rows=2), workers=0).value == 45
    assert basic.count().reduce([ints]) == 10


def test_bad_inputs_raise_with_clear_messages():
    with pytest.raises(ValueError, match="not a number: 'x1'"):
        basic.total().reduce([["1", "x1"]])
    with pytest.raises(TypeError, match="bool"):
        basic.total().reduce([[True]])
    with pytest.raises(TypeError, match="field must be a str"):
        basic.total(field=3)
    with pytest.raises(TypeError, match="needs mapping records"):
        basic.total(field="x").reduce([[1]])
    with pytest.raises(ValueError, match="ddof must be >= 0"):
        basic.variance(ddof=-1)
    with pytest.raises(TypeError, match="exact must be True or False"):
        basic.total(exact=1)
    with pytest.raises(TypeError, match="ExactSum.merge takes an ExactSum"):
        ExactSum().merge(1.0)


@pytest.mark.parametrize("factory", [basic.count, basic.total, basic.minimum, basic.maximum,
                                     basic.mean, basic.variance,
                                     lambda: basic.total(exact=True),
                                     lambda: basic.mean(exact=True)])
def test_aggregators_and_accumulators_survive_pickle(factory):
    agg = pickle.loads(pickle.dumps(factory()))
    shards = [[1.5, 2], [3.25]]
    acc = pickle.loads(pickle.dumps(agg.partial(shards[0])))
    other = agg.partial(shards[1])
    assert agg.finalize(agg.combine(acc, other)) == factory().reduce(shards)


def test_exact_sum_accumulator_is_the_same_for_every_split():
    values = [0.1, 1e300, -1e300, 3.0, 5e-324, 2**60]
    one = ExactSum.of(values)
    two = ExactSum.of(values[:2]).merge(ExactSum.of(values[2:]))
    assert one == two and ma.fingerprint(one) == ma.fingerprint(two)


def test_cli_runs_each_entry(tmp_path, capsys):
    data = tmp_path / "nums.txt"
    data.write_text("1\n2\n\n3.5\n4\n")
    expected = {"count": "5", "sum": "10.5", "min": "1", "max": "4", "mean": "2.625"}
    for name, shown in expected.items():
        assert cli_main(["run", name, str(data), "--workers", "0", "--split-size", "4"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[-1].startswith("fingerprint ") and out[0] == shown
    assert cli_main(["run", "sum", str(data), "--workers", "0", "--exact"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "10.5"
    assert cli_main(["run", "variance", str(data), "--workers", "0", "--ddof", "0",
                     "--stddev"]) == 0
    shown = float(capsys.readouterr().out.splitlines()[0])
    assert math.isclose(shown, statistics.pstdev([1, 2, 3.5, 4]))
    table = tmp_path / "t.csv"
    table.write_text("name,x\na,1\nb,\nc,5\n")
    assert cli_main(["run", "sum", str(table), "--workers", "0", "--format", "csv",
                     "--field", "x"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "6"


@pytest.mark.slow
@pytest.mark.mergeagg_processes
def test_a_worker_death_leaves_every_basic_aggregate_unchanged():
    # Real processes, a real SIGKILL (the kit checks that the kill struck map-1).
    rng = np.random.default_rng(9)
    shards = [rng.normal(size=50).tolist() for _ in range(5)]
    job = ma.product(count=basic.count(), sum=basic.total(exact=True), min=basic.minimum(),
                     max=basic.maximum(), mean=basic.mean(), variance=basic.variance())
    assert_failure_invariant(job, shards, plans=[FaultPlan(only={"map-1": {1: Fault("kill")}})])


# -- the shape of records: a missing column, a line where a row was needed -----------------

def _field_entries():
    from mergeagg.algorithms.registry import entries

    return [e for e in entries().values() if any(f.name == "--field" for f in e.flags)]


@pytest.mark.parametrize("entry", _field_entries(), ids=lambda e: e.name)
def test_every_field_entry_names_a_missing_column_and_lists_the_header(entry, tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("k,a\n1,x\n2,y\n")
    job = entry.factory(field="nosuch")
    for split_size in (None, 5):
        with pytest.raises(ma.InputError, match=r"t\.csv: the CSV file has no column "
                                                r"'nosuch'; its header has 2: 'k', 'a'"):
            ma.run(job, str(table), workers=0, split_size=split_size, format="csv")
    # A column that is there is read; a key missing from some JSON objects is a null.
    ma.run(entry.factory(field="k"), str(table), workers=0, split_size=5, format="csv")
    entry.factory(field="k").reduce([[{"k": "1"}, {"j": "2"}]])


def test_a_header_without_rows_still_names_the_missing_column(tmp_path):
    table = tmp_path / "empty.csv"
    table.write_text("k,a\n")
    with pytest.raises(ma.InputError, match="no column 'kk'"):
        ma.run(basic.total(field="kk"), [str(table)], workers=0, format="csv")


def test_a_csv_read_as_text_fails_at_once_and_says_to_read_it_as_csv(tmp_path):
    from mergeagg.errors import RecordShapeError

    table = tmp_path / "pkgs.csv"
    table.write_text("name,size\nfoo,10\nbar,20\n")
    # On worker processes: the first attempt's error stops the job, no retries.
    with pytest.raises(ma.InputError, match=r"needs mapping records .* got a str: "
                                            r"'name,size'; .*--format csv") as info:
        ma.run(basic.total(field="size"), str(table), workers=1, format="text")
    assert "failed 4 time" not in str(info.value)
    with pytest.raises(RecordShapeError) as info:
        basic.total(field="size").reduce([["foo,10"]])
    assert isinstance(info.value, TypeError) and isinstance(info.value, ma.InputError)
    with pytest.raises(RecordShapeError, match="--field NAME"):
        basic.total().reduce([[{"size": "10"}]])


def test_the_cli_infers_csv_from_the_name_and_skips_a_bom(tmp_path, capsys):
    table = tmp_path / "bl.csv"
    table.write_bytes(b"\xef\xbb\xbfk,a\r\n1,x\r\n2,y\r\n")
    assert cli_main(["run", "sum", str(table), "--workers", "0", "--field", "k"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [ln for ln in out if not ln.startswith("fingerprint")] == ["3"]
    assert cli_main(["run", "sum", str(table), "--workers", "0", "--field", "nosuch"]) != 0
    assert "no column 'nosuch'; its header has 2: 'k', 'a'" in capsys.readouterr().err


# The variance's moments merge rounds differently per sharding (the docs promise equality
# within rounding); its exact mode gives the same bits, which this fingerprint test needs.
ALL_BASIC = [basic.count, basic.total, basic.minimum, basic.maximum, basic.mean,
             lambda field: basic.variance(field=field, exact=True),
             lambda field: basic.total(field=field, exact=True)]


@pytest.mark.parametrize("factory", ALL_BASIC)
@given(records=st.lists(st.sampled_from([{"a": "1"}, {"a": None}, {"b": "2"}, {}, {"a": ""},
                                         {"a": "2.5", "b": "x"}]), max_size=12),
       cuts=st.lists(st.integers(0, 12), max_size=4), fan_in=FAN_IN)
def test_a_key_no_record_has_is_an_error_for_every_sharding(factory, records, cuts, fan_in):
    bounds = [0, *sorted(min(c, len(records)) for c in cuts), len(records)]
    shards = [records[i:j] for i, j in zip(bounds, bounds[1:])]
    for field in ("a", "zz"):
        has_key = any(field in r for r in records)
        agg = factory(field=field)
        if has_key or not records:
            whole = agg.reduce([records])
            assert ma.fingerprint(agg.reduce(shards)) == ma.fingerprint(whole)
            assert ma.run(agg, shards, workers=0, fan_in=fan_in).fingerprint == \
                ma.fingerprint(whole)
        else:
            keys = sorted({k for r in records for k in r})
            shown = (f"their keys include {', '.join(map(repr, keys))}" if keys
                     else "the records have no keys")
            with pytest.raises(ma.InputError, match=rf"^no record has the field '{field}'; "
                                                    rf"{shown}$"):
                agg.reduce(shards)


def test_a_jsonl_key_that_no_record_has_is_named_with_the_keys_seen(tmp_path, capsys):
    data = tmp_path / "r.jsonl"
    data.write_text('{"size": 1}\n{"name": "x"}\n')
    assert cli_main(["run", "sum", str(data), "--workers", "0", "--field", "sise"]) != 0
    assert "no record has the field 'sise'; their keys include 'name', 'size'" in \
        capsys.readouterr().err
    assert cli_main(["run", "sum", str(data), "--workers", "0", "--field", "size"]) == 0
