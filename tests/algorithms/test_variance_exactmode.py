"""variance(exact=True): the correctly rounded variance, the same bits for any split layout."""

import math
import pickle
import statistics
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import mergeagg as ma
from mergeagg.algorithms import basic
from mergeagg.algorithms._exact import SQUARE_SCALE, ExactMoments, exact_square_sum
from mergeagg.cli import main as cli_main
from mergeagg.testing import assert_failure_invariant, split_layouts

FINITE = st.floats(allow_nan=False, allow_infinity=False)
# Subnormals, the largest floats (whose squares overflow a float), cancelling pairs.
EDGES = st.sampled_from([5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308,
                         -1.7976931348623157e308, 1e200, 1e-200, 1e16, -1e16, 1.0, 0.1,
                         -0.0, 0.0])
NUMBERS = st.one_of(FINITE, EDGES, st.integers(-10**30, 10**30))
VALUES = st.lists(NUMBERS, max_size=40)
DDOF = st.sampled_from([0, 1])


def run(agg, shards, fan_in=2):
    return ma.run(agg, shards, workers=0, fan_in=fan_in)


def reference_variance(values, ddof):
    """statistics' exact variance of the values as Fractions, rounded once (or None)."""
    if len(values) - ddof <= 0:
        return None
    exact = (statistics.variance if ddof else statistics.pvariance)([Fraction(v)
                                                                     for v in values])
    try:
        return float(exact), exact
    except OverflowError:
        return math.inf, exact


def is_correctly_rounded_sqrt(r, v):
    """Whether the float ``r`` is the float nearest to sqrt(v) (v a Fraction >= 0): v lies
    between the squares of the midpoints to r's two neighbours."""
    if math.isinf(r):  # rounds up past the largest float
        return v >= Fraction(2 ** 1024 - 2 ** 970) ** 2
    lo, hi = math.nextafter(r, -math.inf), math.nextafter(r, math.inf)
    below = (Fraction(lo) + Fraction(r)) / 2 if r > 0 else Fraction(0)
    above = (Fraction(r) + Fraction(hi)) / 2
    return below ** 2 <= v <= above ** 2


@given(VALUES, st.data(), DDOF)
def test_two_split_layouts_give_the_same_fingerprint(values, data, ddof):
    one = data.draw(split_layouts(values, max_shards=6), label="first layout")
    two = data.draw(split_layouts(values, max_shards=6), label="second layout")
    fan_in = data.draw(st.integers(2, 4), label="fan_in")
    agg = basic.variance(ddof=ddof, exact=True)
    a, b = run(agg, one, fan_in), run(agg, two, 2)
    assert a.fingerprint == b.fingerprint
    # the accumulators themselves are equal, not only the rounded results
    acc = [agg.partial(shard) for shard in one]
    folded = acc[0]
    for other in acc[1:]:
        folded = agg.combine(folded, other)
    assert folded == agg.partial(values)
    assert ma.fingerprint(folded) == ma.fingerprint(agg.partial(values))


@given(VALUES, st.data(), DDOF)
def test_exact_variance_is_statistics_variance_of_fractions_rounded_once(values, data, ddof):
    shards = data.draw(split_layouts(values, max_shards=6), label="layout")
    got = run(basic.variance(ddof=ddof, exact=True), shards).value
    ref = reference_variance(values, ddof)
    if ref is None:
        assert got is None
        return
    expected, exact = ref
    assert got == expected and not math.copysign(1, got) < 0
    sd = run(basic.variance(ddof=ddof, stddev=True, exact=True), shards).value
    if not math.isinf(sd):
        assert is_correctly_rounded_sqrt(sd, exact)
    if not math.isinf(expected) and ddof == 1 and all(isinstance(v, float) for v in values):
        # statistics.stdev is correctly rounded on Python 3.11+
        assert sd == statistics.stdev([Fraction(v) for v in values])


@given(st.lists(st.one_of(FINITE, EDGES), max_size=60))
def test_exact_square_sum_is_the_sum_of_squares(values):
    expected = sum((Fraction(v) ** 2 for v in values), Fraction(0)) * 2 ** SQUARE_SCALE
    assert exact_square_sum(np.array(values, dtype=np.float64)) == expected


def test_the_standard_deviation_is_correctly_rounded_at_every_scale():
    rng = np.random.default_rng(18)
    for k in range(-300, 300, 3):
        values = (rng.standard_normal(5) * 10.0 ** k).tolist()
        exact = statistics.variance([Fraction(v) for v in values])
        assert is_correctly_rounded_sqrt(
            ExactMoments.of(values).variance(ddof=1, stddev=True), exact)


def test_non_finite_values_give_nan_and_too_few_give_none():
    agg = basic.variance(exact=True)
    assert math.isnan(run(agg, [[1.0, math.inf], [2.0]]).value)
    assert math.isnan(run(agg, [[math.nan], [2.0, 3.0]]).value)
    assert math.isnan(run(agg, [[math.inf], [-math.inf]]).value)
    assert run(agg, [[5.0], []]).value is None
    assert run(basic.variance(ddof=0, exact=True), [[5.0], []]).value == 0.0
    assert run(agg, [[], []]).value is None


def test_overflowing_variance_is_inf_and_tiny_values_are_exact():
    big = 1.7976931348623157e308
    assert run(basic.variance(exact=True), [[big], [-big]]).value == math.inf
    tiny = [5e-324, 0.0, 1e-320]
    expected = float(statistics.variance([Fraction(v) for v in tiny]))
    assert run(basic.variance(exact=True), [tiny[:1], tiny[1:]]).value == expected


def test_ints_and_numpy_arrays_and_text():
    values = [10**25, 3, -7, 10**25 + 1]
    got = run(basic.variance(exact=True), [values[:1], values[1:]]).value
    assert got == float(statistics.variance([Fraction(v) for v in values]))
    arr = np.random.default_rng(3).normal(1e6, 1.0, size=1000)
    whole = run(basic.variance(exact=True), [arr]).value
    rows = ma.run(basic.variance(exact=True), ma.array_rows(arr, rows=77), workers=0)
    assert rows.value == whole == float(statistics.variance([Fraction(v) for v in arr]))
    assert run(basic.variance(exact=True), [["1", "2.5", ""], ["4"]]).value == 2.25


def test_a_field_and_pickling():
    agg = pickle.loads(pickle.dumps(basic.variance(field="x", exact=True)))
    shards = [[{"x": 1.5}, {"x": None}], [{"x": "2"}, {"x": 4}]]
    acc = pickle.loads(pickle.dumps(agg.partial(shards[0])))
    assert agg.finalize(agg.combine(acc, agg.partial(shards[1]))) == float(
        statistics.variance([Fraction(1.5), 2, 4]))
    m = ExactMoments.of([0.1, 3, 1e300])
    assert pickle.loads(pickle.dumps(m)) == m


def test_bad_arguments_are_refused():
    with pytest.raises(TypeError, match="exact must be True or False"):
        basic.variance(exact=1)
    with pytest.raises(TypeError, match="ExactMoments"):
        ExactMoments().merge((0, 0.0, 0.0))
    with pytest.raises(ValueError, match="finite"):
        exact_square_sum([math.inf])


def test_failures_leave_the_exact_variance_unchanged():
    rng = np.random.default_rng(11)
    shards = [(rng.standard_normal(20) * 1e8).tolist() for _ in range(6)]
    assert_failure_invariant(basic.variance(exact=True), shards, max_examples=10, fan_in=2)


def test_cli_exact_flag(tmp_path, capsys):
    data = tmp_path / "nums.txt"
    data.write_text("0.1\n0.2\n\n0.3\n1e16\n-1e16\n")
    assert cli_main(["run", "variance", str(data), "--workers", "0", "--split-size", "5",
                     "--exact"]) == 0
    out = capsys.readouterr().out.splitlines()
    values = [0.1, 0.2, 0.3, 1e16, -1e16]
    assert float(out[0]) == float(statistics.variance([Fraction(v) for v in values]))
    assert out[-1].startswith("fingerprint ")
    assert cli_main(["run", "variance", str(data), "--workers", "0", "--split-size", "9",
                     "--exact"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == out[-1]
