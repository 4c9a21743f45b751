"""ExactSum: exact for any split and merge order, equal to math.fsum's correctly rounded sum."""

import math
import pickle
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mergeagg.algorithms._exact import SCALE, ExactSum

FINITE = st.floats(allow_nan=False, allow_infinity=False)
# Values that stress every part: subnormals, the largest floats (whose bin sums overflow a
# float), numbers that cancel, and ordinary ones.
EDGES = st.sampled_from([5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308,
                         -1.7976931348623157e308, 1e308, 1e16, -1e16, 1.0, 0.1, -0.0, 0.0])
VALUES = st.lists(st.one_of(FINITE, EDGES), max_size=80)


def exact(values):
    return sum((Fraction(v) for v in values), Fraction(0))


def rounded(values):
    """The correctly rounded sum (math.fsum where it does not overflow)."""
    total = exact(values)
    try:
        return float(total)
    except OverflowError:
        return math.inf if total > 0 else -math.inf


@given(VALUES, st.data())
def test_any_split_and_merge_order_gives_the_same_exact_accumulator(values, data):
    cuts = sorted(data.draw(st.lists(st.integers(0, len(values)), max_size=6)))
    bounds = [0, *cuts, len(values)]
    parts = []
    for a, b in zip(bounds, bounds[1:]):
        s = ExactSum()
        s.add_floats(np.array(values[a:b], dtype=np.float64))
        parts.append(s)
    order = data.draw(st.permutations(range(len(parts))))
    total = ExactSum()
    for i in order:
        total.merge(parts[i])
    whole = ExactSum()
    whole.add_floats(values)
    assert total == whole
    assert whole.scaled == exact(values) * 2 ** SCALE
    if values:
        assert whole.value() == rounded(values)
        try:
            assert whole.value() == math.fsum(values)
        except OverflowError:
            pass  # fsum overflows where the exact sum rounds to an infinity


@given(st.lists(st.integers(-3, 3), min_size=1, max_size=60), st.integers(-1074, 1023))
def test_values_of_one_exponent_many_times_never_round(multiples, exponent):
    # Many values in one bin: each bin's float sum must stay exact.
    def scaled(m):  # math.ldexp raises past the largest double
        try:
            return math.ldexp(m, exponent)
        except OverflowError:
            return math.inf

    values = [v for v in map(scaled, multiples) if math.isfinite(v)] * 50
    s = ExactSum()
    s.add_floats(values)
    assert s.scaled == exact(values) * 2 ** SCALE


def test_large_arrays_in_several_passes_and_blocks():
    rng = np.random.default_rng(7)
    x = rng.standard_normal(200_003) * 10.0 ** rng.integers(-200, 200, 200_003)
    s = ExactSum()
    s.add_floats(x)
    assert s.value() == math.fsum(x.tolist())
    assert s.scaled == exact(x.tolist()) * 2 ** SCALE


@pytest.mark.parametrize("values, expected", [
    ([math.inf, 1.0], math.inf), ([-math.inf, 1.0], -math.inf),
    ([math.inf, -math.inf], "nan"), ([math.nan, 2.0], "nan"), ([1e308, 1e308], math.inf),
])
def test_infinities_and_nans_follow_ieee(values, expected):
    s = ExactSum()
    s.add_floats(values)
    got = s.value()
    assert math.isnan(got) if expected == "nan" else got == expected


def test_ints_and_floats_together_and_pickling():
    s = ExactSum.of([1, 2, 0.5, 10**30])
    assert s.value() == float(Fraction(10**30) + Fraction(7, 2))
    assert pickle.loads(pickle.dumps(s)) == s
    assert ExactSum.of([]).value() == 0
    assert ExactSum.of([-0.0]).value() == 0.0 and math.copysign(1, ExactSum.of([-0.0]).value()) > 0
