"""The test kit (mergeagg.testing): it catches the classic mistakes, each with a message that
says what is wrong, and correct aggregators (exact, float, sketches) pass."""

import random
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

import mergeagg as ma
from mergeagg import Aggregator, KeyedJob
from mergeagg.algorithms.countmin import countmin
from mergeagg.algorithms.hyperloglog import hyperloglog
from mergeagg.runtime.faults import Fault, FaultPlan
from mergeagg.testing import (
    Bound,
    LawViolation,
    TreeShape,
    assert_failure_invariant,
    assert_laws,
    assert_partition_independent,
    compare,
    countmin_bound,
    fault_plans,
    hyperloglog_bound,
    split_layouts,
    tree_shapes,
    ulps,
)

WORDS = ["to be or", "not to be", "that is", "the question", "be"]
SHARDS = [WORDS[:2], WORDS[2:3], WORDS[3:], ["to to to"]]


def _wc_partial(lines):
    return Counter(w for line in lines for w in line.split())


def _add(a, b):
    return a + b


WORDCOUNT = Aggregator(_wc_partial, _add, name="wordcount")
TOTAL = Aggregator(sum, _add, name="sum")


# -- the classic mistakes --------------------------------------------------------------------

MEAN_OF_MEANS = Aggregator(lambda xs: sum(xs) / max(len(xs), 1), lambda a, b: (a + b) / 2)


def test_a_mean_of_means_is_caught():
    with pytest.raises(LawViolation, match="combine is not associative: shards a="):
        assert_laws(MEAN_OF_MEANS, [1, 2, 4])
    with pytest.raises(LawViolation, match="depends on how the records are split") as err:
        assert_partition_independent(MEAN_OF_MEANS, [1.0, 2.0, 4.0])
    assert "as one shard give" in str(err.value) and "folded along" in str(err.value)


def test_subtraction_is_caught():
    minus = Aggregator(sum, lambda a, b: a - b)
    with pytest.raises(LawViolation, match="combine is not (commutative|associative)"):
        assert_laws(minus, [1, 2, 3])


def _merge_into_right(a, b):
    b.update(a)
    return b


def test_a_combine_that_mutates_its_right_operand_is_caught():
    bad = Aggregator(_wc_partial, _merge_into_right)
    with pytest.raises(LawViolation, match="combine modified its second argument") as err:
        assert_laws(bad, WORDS)
    assert "may modify (and return) only its first argument" in str(err.value)
    # The runtime hands every combine fresh copies, so no run would ever show it.
    assert_failure_invariant(bad, SHARDS, plans=["kill=0.3,seed=1"])


def _weighted_by_position(xs):
    return sum(i * x for i, x in enumerate(xs))


def test_a_partial_that_depends_on_its_shards_position_is_caught():
    # Commutative and associative: the laws alone cannot see it, splitting does.
    positional = Aggregator(_weighted_by_position, _add)
    assert_laws(positional, [1, 2, 3])
    with pytest.raises(LawViolation, match="depends on how the records are split"):
        assert_partition_independent(positional, [1, 2, 3, 4])


def _noisy_sum(xs):
    return sum(xs) + random.random()


def test_a_random_partial_is_caught_as_not_deterministic_under_a_fault_plan():
    noisy = Aggregator(_noisy_sum, _add)
    kill = FaultPlan(only={"map-1": {1: Fault("kill")}})
    with pytest.raises(LawViolation, match="not deterministic: under the fault plan "
                                           r"\(kill at map-1 attempt 1\)"):
        assert_failure_invariant(noisy, [[1, 2], [3], [4]], plans=[kill])
    # Without the audit, the changed answer is traced to two clean runs that differ.
    with pytest.raises(LawViolation, match="two clean serial runs gave different"):
        assert_failure_invariant(noisy, [[1, 2], [3], [4]], plans=[kill], verify=0.0)
    with pytest.raises(LawViolation, match="partial is not deterministic"):
        assert_laws(noisy, [1, 2])


def _biased_merge(a, b):
    a.merge(b)
    a.table += 1  # a "smoothing" that drifts by one count per merge
    return a


def _hll_biased_merge(a, b):
    a.merge(b)
    a.registers[::2] += 1
    return a


def test_a_sketch_with_a_biased_merge_is_caught():
    cm = countmin(width=2719, depth=5)
    biased = Aggregator(cm.partial, _biased_merge)
    with pytest.raises(LawViolation, match="outside its stated bound: query") as err:
        assert_partition_independent(biased, WORDS * 3, tolerance=countmin_bound())
    assert "the stated bound allows" in str(err.value)
    hll = hyperloglog(precision=10)
    with pytest.raises(LawViolation, match="standard errors"):
        assert_partition_independent(Aggregator(hll.partial, _hll_biased_merge),
                                     [f"k{i}" for i in range(200)],
                                     tolerance=hyperloglog_bound())


def test_a_failure_that_changes_the_answer_is_caught():
    # State kept between calls: a retried map sees records it has already "seen".
    seen = set()

    def distinct_new(xs):
        new = [x for x in xs if x not in seen]
        seen.update(xs)
        return len(new)

    with pytest.raises(LawViolation, match="not deterministic|changed the answer"):
        assert_failure_invariant(Aggregator(distinct_new, _add), [[1, 2], [3]],
                                 plans=["kill=0.5,seed=2"], verify=0.0)


# -- correct aggregators pass ----------------------------------------------------------------

def test_sum_and_counter_pass_everything():
    for agg, recs, shards in [(TOTAL, [1, 2, 3, 10], [[1, 2], [3], [10], [4, 5]]),
                              (WORDCOUNT, WORDS, SHARDS)]:
        assert_laws(agg, recs, max_examples=50)
        assert_partition_independent(agg, recs, max_examples=50)
        assert_failure_invariant(agg, shards, max_examples=30)


def _welford(xs):
    n, mean, m2 = 0, 0.0, 0.0
    for x in xs:
        n += 1
        d = x - mean
        mean += d / n
        m2 += d * (x - mean)
    return n, mean, m2


def _chan(a, b):
    (na, ma_, m2a), (nb, mb, m2b) = a, b
    n = na + nb
    if n == 0:
        return 0, 0.0, 0.0
    d = mb - ma_
    return n, ma_ + d * nb / n, m2a + m2b + d * d * na * nb / n


def _variance(acc):
    n, _mean, m2 = acc
    return m2 / n if n else 0.0


VARIANCE = Aggregator(_welford, _chan, _variance, name="variance")
FLOATS = [1.0, 2.0, 4.0, 8.0, 0.1, 3.7, 10.0]


def test_welford_variance_is_reported_as_rounding_with_the_tolerance_to_use():
    with pytest.raises(LawViolation, match=r"differ only by float rounding: at most \d+ ulp"
                                           ".*Pass tolerance=1e-1[0-9]") as err:
        assert_laws(VARIANCE, FLOATS)
    suggested = float(str(err.value).split("Pass tolerance=")[1].split()[0])
    assert suggested <= 1e-10
    assert_laws(VARIANCE, FLOATS, tolerance=suggested)
    assert_partition_independent(VARIANCE, FLOATS, tolerance=suggested)
    assert_failure_invariant(VARIANCE, [FLOATS[:3], FLOATS[3:5], FLOATS[5:]],
                             max_examples=20)  # the runtime's fixed tree: exact bytes


def test_a_real_float_error_is_not_called_rounding():
    assert "more than rounding" in compare(1.0, 1.001)
    assert compare(1.0, 1.001, tolerance=1e-12).startswith("differ at the top level")


def test_hyperloglog_and_countmin_pass_within_their_bounds():
    keys = [f"k{i}" for i in range(300)] + ["k1"] * 20
    hll = hyperloglog(precision=10)
    assert_partition_independent(hll, keys, tolerance=hyperloglog_bound(), max_examples=30)
    assert_laws(hll, keys, tolerance=hyperloglog_bound(), max_examples=30)
    cm = countmin(width=2719, depth=5)
    assert_partition_independent(cm, WORDS * 4, tolerance=countmin_bound(), max_examples=30)
    assert_failure_invariant(cm, SHARDS, max_examples=20)
    assert_failure_invariant(hll, [keys[:100], keys[100:250], keys[250:]], max_examples=20)


def test_a_keyed_job_and_a_corrupt_map_pass():
    plans = [FaultPlan(only={"map-0": {1: Fault("corrupt")}}),
             FaultPlan(only={"reduce-1": {1: Fault("kill")}, "map-2": {2: Fault("hang")}})]
    assert_failure_invariant(ma.algorithms.wordcount(keyed=True), SHARDS, plans=plans,
                             partitions=3)
    assert_failure_invariant(WORDCOUNT, SHARDS, plans=plans[:1])


def test_a_plan_that_never_strikes_is_an_error_not_a_pass():
    # map-9 is no task of a four-split job: the run is clean, and proves nothing.
    with pytest.raises(LawViolation, match="no failure was seen at map-9: the fault never "
                                           "struck"):
        assert_failure_invariant(WORDCOUNT, SHARDS,
                                 plans=[FaultPlan(only={"map-9": {1: Fault("kill")}})])
    assert_failure_invariant(WORDCOUNT, SHARDS, plans=[
        FaultPlan(only={"map-3": {1: Fault("raise")}, "combine-1-0": {1: Fault("kill")}})],
        fan_in=2)


# -- keyed jobs: the same laws, per key -------------------------------------------------------

def _word_ones(lines):
    return [(w, 1) for line in lines for w in line.split()]


def _word_lists(lines):
    return [(w, [i]) for i, line in enumerate(lines) for w in line.split()]


def _append_into_right(a, b):
    b.extend(a)
    return b


def test_keyed_jobs_pass_per_key():
    for job in (ma.algorithms.wordcount(keyed=True), KeyedJob(_word_ones, _add)):
        assert_laws(job, WORDS, max_examples=30)
        assert_partition_independent(job, WORDS, max_examples=30)


def test_keyed_mistakes_are_caught_per_key_and_say_so():
    with pytest.raises(LawViolation, match=r"KeyedJob\(minus\), checked per key .*: combine is "
                                           "not (commutative|associative)"):
        assert_laws(KeyedJob(_word_ones, lambda a, b: a - b, name="minus"), WORDS)
    with pytest.raises(LawViolation, match="combine modified its second argument"):
        assert_laws(KeyedJob(_word_lists, _append_into_right), WORDS)
    # A value that depends on where its record sits in the shard: each key's combine is a
    # plain sum, so only splitting shows it.
    positional = KeyedJob(_word_lists, lambda a, b: a + b)
    with pytest.raises(LawViolation, match="checked per key.*depends on how the records are "
                                           "split"):
        assert_partition_independent(positional, WORDS)
    noisy = KeyedJob(lambda lines: [(w, random.random()) for w in _wc_partial(lines)], _add)
    with pytest.raises(LawViolation, match="partial is not deterministic"):
        assert_laws(noisy, WORDS)


def test_a_keyed_job_within_a_bound():
    # A keyed job whose values are sketches: each key's distinct count within the bound.
    hll = hyperloglog(precision=8)

    def per_letter(words):
        return [(w[0], hll.partial([w])) for w in words]

    def exact(words):
        return {k: len({w for w in words if w[0] == k}) for k in {w[0] for w in words}}

    def within(value, truth):
        if value.keys() != truth.keys():
            return f"keys {sorted(value)} against {sorted(truth)}"
        return all(hyperloglog_bound().within(value[k], truth[k]) is True for k in truth)

    words = [f"{c}{i}" for c in "ab" for i in range(150)]
    job = KeyedJob(per_letter, hll.combine)
    assert_partition_independent(job, words, tolerance=Bound(exact, within), max_examples=15)


# -- strategies ------------------------------------------------------------------------------

@given(st.data())
def test_split_layouts_hold_exactly_the_records(data):
    recs = data.draw(st.lists(st.integers(), max_size=20))
    layout = data.draw(split_layouts(recs, max_shards=5))
    assert 1 <= len(layout) <= 5
    assert sorted(r for shard in layout for r in shard) == sorted(recs)
    in_order = data.draw(split_layouts(recs, reorder=False))
    assert [r for shard in in_order for r in shard] == recs


@given(st.lists(st.sampled_from(["a", "b", "cd"]), min_size=1, max_size=12), tree_shapes())
def test_every_tree_shape_folds_every_leaf_once_in_order(leaves, tree):
    # String concatenation is associative but not commutative: any tree over the leaves in
    # order gives their concatenation, and only that.
    assert tree.fold(leaves, lambda a, b: a + b) == "".join(leaves)


@given(fault_plans(splits=5, fan_in=2, max_faults=4))
def test_fault_plans_strike_tasks_of_the_job_and_corrupt_only_maps(plan):
    ids = {"map-0", "map-1", "map-2", "map-3", "map-4", "combine-1-0", "combine-1-1",
           "combine-2-0", "combine-3-0"}
    assert set(plan.only) <= ids
    for task, by_attempt in plan.only.items():
        assert set(by_attempt) <= {1, 2}
        for fault in by_attempt.values():
            assert fault.kind != "corrupt" or task.startswith("map-")


def test_fault_plans_drawn_by_the_kit_keep_the_fingerprint():
    assert_failure_invariant(WORDCOUNT, SHARDS, fan_in=2, max_examples=40,
                             plans=fault_plans(splits=4, fan_in=2, max_faults=4,
                                               tasks=("map", "combine", "map-3")))


def test_ulps_and_compare():
    assert ulps(5.333333333333333, 5.333333333333334) == 1
    assert ulps(1.0, -1.0) > 2**60
    assert compare(Counter(a=1), Counter(a=1)) is None
    assert compare({"a": [1.0]}, {"a": [1.0 + 2**-52]}).startswith(
        "differ only by float rounding: at most 1 ulp")
    assert compare({"a": 1}, {"b": 1}) == "differ at the top level"
    assert "next to zero" in compare([0.0], [1e-320]) and "abs_tol=" in compare(0.0, 1e-320)
    assert compare(0.0, 1e-320, abs_tol=1e-300) is None
    assert "more than rounding" in compare(float("nan"), 1.0)


def test_floats_inside_slotted_objects_are_compared_as_floats():
    from dataclasses import dataclass

    @dataclass(slots=True)
    class Sums:
        n: int
        total: float

    assert compare(Sums(2, 0.1 + 0.2), Sums(2, 0.3)).startswith(
        "differ only by float rounding: at most 1 ulp apart (relative 1.9e-16, at .total)")
    assert compare(Sums(2, 0.1 + 0.2), Sums(2, 0.3), tolerance=1e-12) is None
    assert compare(Sums(2, 0.3), Sums(3, 0.3), tolerance=1e-12) == "differ at .n"


def test_bad_arguments_are_refused_with_what_was_wrong():
    with pytest.raises(TypeError, match="assert_laws needs an Aggregator or a KeyedJob, got "
                                        "builtin_function"):
        assert_laws(sum, [1])
    with pytest.raises(ValueError, match="tolerance must be None, a rel_tol"):
        assert_partition_independent(TOTAL, [1], tolerance="1e-9")
    with pytest.raises(ValueError, match="fault kinds must be among"):
        fault_plans(kinds=("explode",))
    with pytest.raises(ValueError, match="TreeShape kind must be"):
        TreeShape("zigzag")
    with pytest.raises(ValueError, match="executor must be 'inprocess', 'local' or a Session"):
        assert_failure_invariant(TOTAL, [[1]], executor="cluster", plans=[None])
    with pytest.raises(TypeError, match="Bound within must be callable"):
        Bound(len, within=3)


def test_explicit_layouts_and_trees_run_without_a_search():
    seen = []
    spy = Aggregator(lambda xs: seen.append(list(xs)) or sum(xs), _add)
    assert_partition_independent(spy, None, layouts=[[[1], [2, 3]]],
                                 trees=[TreeShape("right")])
    assert seen == [[1], [2, 3], [1, 2, 3]]


def test_a_hand_made_plan_must_strike_unless_its_task_lost_a_race_to_its_backup():
    from mergeagg.laws import LawViolation
    from mergeagg.runtime.faults import Fault, FaultPlan
    from mergeagg.runtime.report import FailureRecord, Report, TaskRecord
    from mergeagg.testing import _require_struck

    plan = FaultPlan(only={"map-3": {1: Fault("kill")}})
    struck = Report(tasks=[TaskRecord("map-3", "map", "s3", attempts=2)],
                    failures=[FailureRecord("map-3", 1, "w1", "worker lost")])
    raced = Report(tasks=[TaskRecord("map-3", "map", "s3", attempts=2)])
    _require_struck(plan, struck, "here")
    _require_struck(plan, raced, "here")  # its backup won before the kill came
    for missed in (Report(tasks=[TaskRecord("map-3", "map", "s3", attempts=1)]),
                   Report(tasks=[TaskRecord("map-0", "map", "s0", attempts=2)])):
        with pytest.raises(LawViolation, match="no failure was seen at map-3"):
            _require_struck(plan, missed, "here")
