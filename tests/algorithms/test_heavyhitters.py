"""Misra–Gries heavy hitters: the stated guarantee on Zipf streams, for any sharding."""

import pickle
import random
from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import mergeagg as ma
from mergeagg.algorithms.heavyhitters import MisraGries, heavyhitters
from mergeagg.cli import main as cli_main
from mergeagg.errors import IncompatibleMergeError
from mergeagg.runtime.faults import Fault, FaultPlan
from mergeagg.testing import (
    assert_failure_invariant,
    assert_laws,
    assert_partition_independent,
    heavyhitters_bound,
    records,
)


def zipf_stream(seed, n, vocabulary=300, s=1.0):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocabulary + 1) ** s
    ranks = rng.choice(vocabulary, size=n, p=p / p.sum())
    return [f"w{r}" for r in ranks.tolist()]


@st.composite
def zipf_case(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(1, 3000))
    stream = zipf_stream(seed, n, s=draw(st.sampled_from([0.8, 1.0, 1.3])))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=8)))
    bounds = [0, *cuts, n]
    return stream, [stream[a:b] for a, b in zip(bounds, bounds[1:])]


@given(zipf_case(), st.integers(1, 40), st.integers(2, 5))
def test_every_item_above_the_threshold_is_reported_within_the_bounds(case, k, fan_in):
    stream, shards = case
    truth = Counter(stream)
    n = len(stream)
    result = ma.run(heavyhitters(k=k), shards, workers=0, fan_in=fan_in).value
    assert result.n == n and result.k == k
    assert result.max_error <= n / (k + 1)
    reported = {item: (lo, hi) for item, lo, hi in result.items}
    assert len(reported) <= k
    for item, count in truth.items():
        lo, hi = reported.get(item, (0, result.max_error))
        assert lo <= count <= hi, (item, count, lo, hi)
        if count > n / (k + 1):
            assert item in reported
    # reported in order: estimate descending, then item
    assert [r[:2] for r in result.items] == sorted(
        (r[:2] for r in result.items), key=lambda r: (-r[1], r[0]))


@given(zipf_case(), st.integers(1, 20), st.floats(0.001, 1.0))
def test_phi_has_no_false_negatives(case, k, fraction):
    stream, shards = case
    phi = 1 / (k + 1) + fraction * (1 - 1 / (k + 1))
    truth = Counter(stream)
    n = len(stream)
    result = heavyhitters(k=k, phi=phi).reduce(shards)
    reported = {item for item, _, _ in result.items}
    for item, count in truth.items():
        if count >= phi * n:
            assert item in reported
    for item in reported:
        assert truth[item] >= phi * n - result.max_error


@given(zipf_case(), st.integers(1, 20), st.randoms(use_true_random=False))
def test_summary_invariants_hold_and_item_order_does_not_matter(case, k, rnd):
    stream, shards = case
    summaries = []
    for shard in shards:
        s = MisraGries(k)
        s.update(shard)
        s._check()
        shuffled = list(shard)
        rnd.shuffle(shuffled)
        t = MisraGries(k)
        t.update(shuffled)
        assert t == s
        summaries.append(s)
    acc = summaries[0]
    for s in summaries[1:]:
        acc = acc.merge(s)
        acc._check()
    assert acc.n == len(stream)


def test_chunked_update_keeps_the_guarantee_on_a_long_stream():
    stream = zipf_stream(5, 200_000, vocabulary=5000)
    s = MisraGries(50)
    s.update(stream)
    s._check()
    truth = Counter(stream)
    for item, count in truth.items():
        assert s.estimate(item) <= count <= s.estimate(item) + s.max_error
        if count > len(stream) / 51:
            assert s.estimate(item) > 0


def test_merge_refuses_a_different_k():
    with pytest.raises(IncompatibleMergeError, match="different k: 3 != 4"):
        MisraGries(3).merge(MisraGries(4))
    with pytest.raises(TypeError, match="takes a MisraGries"):
        MisraGries(3).merge({})


def test_parameters_are_checked():
    assert heavyhitters(epsilon=0.1).partial([]).k == 9
    with pytest.raises(TypeError, match="not both"):
        heavyhitters(k=3, epsilon=0.1)
    with pytest.raises(ValueError, match="epsilon must be in"):
        heavyhitters(epsilon=1.5)
    with pytest.raises(ValueError, match="phi must be in"):
        heavyhitters(phi=0)
    with pytest.raises(ValueError, match=r"phi must exceed 1/\(k\+1\) = 0.25"):
        heavyhitters(k=3, phi=0.25)
    with pytest.raises(ValueError, match="k must be at least 1"):
        heavyhitters(k=0)


def test_aggregator_and_summary_survive_pickle():
    agg = pickle.loads(pickle.dumps(heavyhitters(k=3)))
    stream = zipf_stream(1, 500)
    acc = pickle.loads(pickle.dumps(agg.partial(stream[:200])))
    acc._check()
    got = agg.finalize(agg.combine(acc, agg.partial(stream[200:])))
    assert got == heavyhitters(k=3).reduce([stream[:200], stream[200:]])


def test_cli_counts_words(tmp_path, capsys):
    words = zipf_stream(2, 2000, vocabulary=50)
    random.Random(0).shuffle(words)
    path = tmp_path / "z.txt"
    path.write_text("\n".join(" ".join(words[i:i + 10]) for i in range(0, 2000, 10)) + "\n")
    assert cli_main(["run", "heavyhitters", str(path), "--workers", "0", "--words",
                     "--k", "5", "--split-size", "1K", "--json", str(tmp_path / "o.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("2000 items, k=5 counters")
    assert out[1].split()[-1] == "w0"
    import json

    doc = json.loads((tmp_path / "o.json").read_text())
    assert doc["value"]["items"][0][0] == "w0" and doc["value"]["n"] == 2000


def test_the_laws_and_any_split_hold_within_the_guarantee():
    # Misra-Gries merges are commutative but not exactly associative: another grouping
    # gives another summary, each within the guarantee (the kit's Bound).
    stream = zipf_stream(7, 400, vocabulary=30)
    for k in (1, 3, 10):
        assert_laws(heavyhitters(k=k), records(stream, max_size=60),
                    tolerance=heavyhitters_bound(), max_examples=40)
        assert_partition_independent(heavyhitters(k=k), stream[:120],
                                     tolerance=heavyhitters_bound(), max_examples=40)


def test_a_summary_merged_without_pruning_is_caught():
    def unpruned(a, b):
        for item, count in b.counters.items():
            a.counters[item] = a.counters.get(item, 0) + count
        a.n += b.n
        return a

    hh = heavyhitters(k=2)
    from mergeagg.testing import LawViolation

    with pytest.raises(LawViolation, match="outside its stated bound"):
        assert_partition_independent(ma.Aggregator(hh.partial, unpruned, hh.finalize),
                                     zipf_stream(2, 60, vocabulary=12),
                                     tolerance=heavyhitters_bound())


def test_failures_leave_the_summary_unchanged():
    stream = zipf_stream(3, 3000)
    shards = [stream[i:i + 500] for i in range(0, 3000, 500)]
    assert_failure_invariant(heavyhitters(k=10), shards, fan_in=2, max_examples=40)


@pytest.mark.slow
@pytest.mark.mergeagg_processes
def test_a_worker_death_leaves_the_summary_unchanged():
    stream = zipf_stream(3, 5000)
    shards = [stream[i:i + 1000] for i in range(0, 5000, 1000)]
    assert_failure_invariant(heavyhitters(k=10), shards,
                             plans=[FaultPlan(only={"map-0": {1: Fault("kill")}}),
                                    "kill=0.3,seed=4"])
