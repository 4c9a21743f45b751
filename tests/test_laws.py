"""mergeagg.laws.check: catches the classic broken combines, passes the good ones."""

import math
import random
import re
from collections import Counter

import pytest
from hypothesis import strategies as st

import mergeagg
from mergeagg import Aggregator, laws
from mergeagg.laws import LawViolation

WORDS = ["a b", "b c c", "", "a a a", "d"]


def _violation(agg, **kwargs):
    with pytest.raises(LawViolation) as info:
        laws.check(agg, **kwargs)
    return str(info.value)


# -- bad combines ---------------------------------------------------------------------------


def test_left_or_right_at_random_is_caught():
    # Algebird issue #357: a "monoid" that keeps one side at random passed their law tests.
    def pick(a, b):
        return a if random.random() < 0.5 else b

    msg = _violation(Aggregator(Counter, pick), records=["x", "y", "z"])
    assert re.match(r"combine is not (commutative|associative)|the result depends", msg), msg
    assert "shards" in msg


def test_always_left_is_caught_as_not_commutative():
    msg = _violation(Aggregator(sum, lambda a, b: a), records=[1, 2, 3])
    assert msg.startswith("combine is not commutative: shards a=[")
    assert "finalize(combine(a, b)) = " in msg and "finalize(combine(b, a)) = " in msg


def test_always_right_is_caught():
    msg = _violation(Aggregator(sum, lambda a, b: b), records=[1, 2, 3])
    assert msg.startswith("combine is not commutative")


def test_subtraction_is_caught_with_a_small_example():
    msg = _violation(Aggregator(sum, lambda a, b: a - b), records=[1, 2, 3, 5])
    assert msg.startswith(("combine is not commutative", "combine is not associative"))
    # The shrunk counterexample has one record per shard, which a user can check by hand.
    shards = re.findall(r"[abc]=(\[[^\]]*\])", msg)
    assert shards and all(s.count(",") == 0 for s in shards), msg


def test_mean_of_means_is_caught():
    mean_of_means = Aggregator(lambda xs: sum(xs) / len(xs) if xs else 0.0,
                               lambda a, b: (a + b) / 2)
    msg = _violation(mean_of_means, records=[1.0, 2.0, 4.0, 8.0])
    assert msg.startswith(("combine is not associative",
                           "the result depends on how the records are split")), msg
    # Even a tolerance does not rescue it: the error is not rounding.
    msg = _violation(mean_of_means, records=[1.0, 2.0, 4.0, 8.0], rel_tol=1e-6)
    assert "not associative" in msg or "depends on how" in msg


def test_mutating_the_second_argument_is_caught():
    def merge_into_b(a, b):
        b.update(a)
        return b

    msg = _violation(Aggregator(Counter, merge_into_b), records=["x", "y"])
    assert msg.startswith("combine modified its second argument")
    assert "may only modify (and return) its first argument" in msg


def test_returning_the_second_argument_then_mutating_is_caught():
    def merge(a, b):
        if not a:
            return b  # the caller will later update this very object in place
        a.update(b)
        return a

    msg = _violation(Aggregator(lambda xs: Counter(x for x in xs if x != "-"), merge),
                     records=["-", "x", "y"])
    assert msg.startswith("combine returned an object that shares state with its second")


def test_partial_that_fails_on_an_empty_shard_is_reported_in_words():
    msg = _violation(Aggregator(max, max), records=[3, 1, 2])
    assert msg.startswith("partial raised: partial([]) raised ValueError")
    assert "empty shard" in msg


def test_nondeterministic_partial_is_reported():
    state = {"n": 0}

    def counting_partial(xs):
        state["n"] += 1
        return len(xs) + state["n"]

    msg = _violation(Aggregator(counting_partial, lambda a, b: a + b), records=[1, 2])
    assert re.match(r"combine is not|the result depends|partial or combine is not determ",
                    msg), msg


def test_float_sum_needs_the_tolerance_and_passes_with_it():
    floats = [0.1, 0.2, 0.3, 1e16, -1e16, 7.5]
    total = Aggregator(math.fsum, lambda a, b: a + b)
    with pytest.raises(LawViolation):
        laws.check(total, records=floats)
    laws.check(total, records=floats, rel_tol=1e-9, abs_tol=4.0)


# -- good combines pass ---------------------------------------------------------------------


def _mean():
    return Aggregator(lambda xs: (sum(xs), len(xs)),
                      lambda a, b: (a[0] + b[0], a[1] + b[1]),
                      lambda acc: acc[0] / acc[1] if acc[1] else None)


def _max():
    def top(a, b):
        if a is None or b is None:
            return b if a is None else a
        return max(a, b)
    return Aggregator(lambda xs: max(xs, default=None), top)


def _union():
    def merge(a, b):
        a |= b
        return a
    return Aggregator(set, merge)


@pytest.mark.parametrize("agg, records", [
    (Aggregator(sum, lambda a, b: a + b), [1, -2, 3, 10**20]),
    (mergeagg.algorithms.wordcount(), WORDS),
    (mergeagg.algorithms.wordcount(lowercase=True), ["A a", "B", "b A"]),
    (_mean(), [1, 2, 3, 4]),
    (_max(), [5, -1, 3]),
    (_union(), ["x", "y", "z"]),
    (mergeagg.product(_mean(), _union()), [1, 2, 3]),
], ids=["sum", "wordcount", "wordcount-lower", "mean", "max", "union", "product"])
def test_good_aggregators_pass(agg, records):
    assert laws.check(agg, records=records, max_examples=60) is None


def test_strategy_instead_of_records():
    laws.check(Aggregator(sum, lambda a, b: a + b),
               strategy=st.lists(st.integers(-5, 5), max_size=5), max_examples=40)
    with pytest.raises(LawViolation, match="not commutative|not associative"):
        laws.check(Aggregator(sum, lambda a, b: a - b),
                   strategy=st.lists(st.integers(-5, 5), max_size=5))


# -- argument checking ----------------------------------------------------------------------


def test_arguments_are_checked():
    total = Aggregator(sum, lambda a, b: a + b)
    with pytest.raises(TypeError, match="check needs an Aggregator, got builtin_function"):
        laws.check(sum, records=[1])
    with pytest.raises(TypeError, match="exactly one of records= or strategy="):
        laws.check(total)
    with pytest.raises(TypeError, match="exactly one of"):
        laws.check(total, records=[1], strategy=st.lists(st.integers()))
    with pytest.raises(ValueError, match="at least one example record"):
        laws.check(total, records=[])
    with pytest.raises(ValueError, match="max_examples must be a positive int"):
        laws.check(total, records=[1], max_examples=0)


def test_close_compares_structures():
    close = laws._close
    assert close({"a": (1.0, 2)}, {"a": (1.0 + 1e-12, 2)}, 1e-9, 0.0)
    assert not close({"a": (1.0, 2)}, {"a": (1.1, 2)}, 1e-9, 0.0)
    assert not close({"a": 1.0}, {"b": 1.0}, 1e-9, 0.0)
    assert not close([1.0], (1.0,), 1e-9, 0.0)
    assert close(float("nan"), float("nan"), 1e-9, 0.0)


def test_without_hypothesis_the_error_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "hypothesis", None)
    with pytest.raises(ImportError, match="mergeagg.laws needs the hypothesis package: pip "
                                          "install hypothesis"):
        laws.check(Aggregator(sum, lambda a, b: a + b), records=[1])
