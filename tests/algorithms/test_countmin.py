"""Count-min: never below the truth, over by more than eps*N in at most a delta fraction of
trials, exact merge laws, compatibility checks and the byte format."""

import math
import pickle
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mergeagg
from mergeagg.algorithms._sketch import load
from mergeagg.algorithms.countmin import CountMin, countmin
from mergeagg.errors import IncompatibleMergeError
from mergeagg.testing import TreeShape, assert_partition_independent


def _check(cm):
    cm._check()


def _zipf_stream(rng, n, vocab):
    ranks = np.arange(1, vocab + 1)
    p = (1.0 / ranks) / (1.0 / ranks).sum()
    return rng.choice(vocab, size=n, p=p).astype(np.int64) * 1_000_003


def test_width_and_depth_from_epsilon_and_delta():
    cm = CountMin(epsilon=0.01, delta=0.001)
    assert (cm.width, cm.depth) == (math.ceil(math.e / 0.01), math.ceil(math.log(1000)))
    assert cm.epsilon <= 0.01 and cm.delta <= 0.001


def test_never_below_the_truth_and_rarely_over_the_bound():
    """400 independent sketches (seeds), one random query item each: the fraction whose
    estimate exceeds the truth by more than eps*N is at most delta (+3 sigma)."""
    rng = np.random.default_rng(7)
    eps, delta, trials = 0.02, 0.05, 400
    over = 0
    for seed in range(trials):
        stream = _zipf_stream(rng, 3000, 2000)
        cm = CountMin(epsilon=eps, delta=delta, seed=seed).update(stream)
        truth = Counter(stream.tolist())
        items = list(truth)
        est = cm.query_many(items)
        assert (est >= np.array([truth[i] for i in items])).all()  # never below
        probe = items[int(rng.integers(len(items)))]
        over += cm.query(probe) - truth[probe] > cm.epsilon * cm.total
        if seed % 50 == 0:
            _check(cm)
    assert over / trials <= delta + 3 * math.sqrt(delta * (1 - delta) / trials)


def test_one_row_overcounts_by_the_expected_collision_mass():
    """With depth 1 the mean overcount of an item is (N - f) / width: a hash that does not
    spread keys uniformly over the row fails this (3 standard errors over 300 trials)."""
    rng = np.random.default_rng(8)
    width, trials = 50, 300
    stream = _zipf_stream(rng, 2000, 500)
    truth = Counter(stream.tolist())
    probe = max(truth, key=truth.get)
    errs = np.array([CountMin(width, 1, seed=s).update(stream).query(probe) - truth[probe]
                     for s in range(trials)])
    expected = (len(stream) - truth[probe]) / width
    assert abs(errs.mean() - expected) <= 3 * errs.std() / math.sqrt(trials) + 1e-9


def test_heavy_key_is_counted_exactly_when_the_table_is_wide():
    stream = np.r_[np.full(1000, 42), np.arange(100, 200)]
    assert CountMin(1 << 16, 5).update(stream).query(42) == 1000


keys = st.lists(st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=6)), max_size=60)


@given(keys, st.lists(st.integers(0, 60), max_size=5), st.integers(1, 40), st.integers(1, 6))
def test_sketch_of_union_is_merge_of_sketches_cell_for_cell(items, cuts, width, depth):
    cuts = sorted(min(c, len(items)) for c in cuts)
    bounds = [0, *cuts, len(items)]
    shards = [items[a:b] for a, b in zip(bounds, bounds[1:])]
    whole = CountMin(width, depth, seed=5).update(items)
    parts = [CountMin(width, depth, seed=5).update(s) for s in shards]
    frozen = [p.copy() for p in parts]
    acc = parts[0]
    for other in parts[1:]:
        acc.merge(other)
    assert np.array_equal(acc.table, whole.table) and acc.total == whole.total
    assert all(a == b for a, b in zip(parts[1:], frozen[1:]))
    _check(acc)
    one = CountMin(width, depth, seed=5)
    for x in items:
        one.add(x)
    assert one == whole
    r = mergeagg.run(countmin(width=width, depth=depth, seed=5), shards, workers=0, fan_in=3)
    assert r.value == whole and r.fingerprint == mergeagg.fingerprint(whole)


@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 1000)), max_size=40))
def test_weights_add_like_repeats(pairs):
    items = [k for k, _ in pairs]
    weights = [w for _, w in pairs]
    weighted = CountMin(32, 3).update(items, weights=weights)
    repeated = CountMin(32, 3).update([k for k, w in pairs for _ in range(w)])
    assert weighted == repeated and weighted.total == sum(weights)
    _check(weighted)


def test_query_many_matches_query_and_str_bytes_are_one_key():
    cm = CountMin(100, 4).update(["x", b"x", "y"])
    assert cm.query("x") == cm.query(b"x") == 2
    assert cm.query_many(["x", "y", "z"]).tolist() == [cm.query(k) for k in "xyz"]


def test_bad_input():
    with pytest.raises(TypeError, match=r"call add\(key\)"):
        CountMin(8, 2).update("word")
    with pytest.raises(ValueError, match=">= 0"):
        CountMin(8, 2).update([1], weights=[-1])
    with pytest.raises(ValueError, match="one weight per item"):
        CountMin(8, 2).update([1, 2], weights=[1])
    with pytest.raises(TypeError, match="integers"):
        CountMin(8, 2).update([1], weights=[0.5])
    with pytest.raises(ValueError, match=">= 0"):
        CountMin(8, 2).add(1, -2)
    with pytest.raises(TypeError, match="either width and depth"):
        CountMin(8, 2, epsilon=0.1, delta=0.1)
    with pytest.raises(TypeError, match="go together"):
        CountMin(epsilon=0.1)
    with pytest.raises(ValueError, match="strictly between"):
        CountMin(epsilon=1.5, delta=0.1)
    with pytest.raises(ValueError, match="width"):
        CountMin(0, 2)
    with pytest.raises(TypeError, match="needs width and depth"):
        CountMin()


def test_merging_different_parameters_names_every_difference():
    with pytest.raises(IncompatibleMergeError) as info:
        CountMin(64, 3, seed=1).merge(CountMin(128, 4, seed=1))
    assert "width: 64 != 128" in str(info.value) and "depth: 3 != 4" in str(info.value)
    with pytest.raises(IncompatibleMergeError, match="seed: 1 != 2"):
        CountMin(64, 3, seed=1).merge(CountMin(64, 3, seed=2))


@given(keys, st.integers(1, 50), st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_bytes_round_trip(items, width, depth, seed):
    cm = CountMin(width, depth, seed=seed).update(items)
    data = cm.to_bytes()
    back = CountMin.from_bytes(data)
    assert back == cm and back.total == cm.total and load(data) == cm
    assert back.query_many(items).tolist() == cm.query_many(items).tolist()
    assert pickle.loads(pickle.dumps(cm)) == cm


def _recrc(data):
    import struct
    import zlib

    return data[:-4] + struct.pack("<I", zlib.crc32(data[:-4]))


def test_garbage_bytes_are_rejected():
    good = CountMin(4, 2).update([1, 2, 3]).to_bytes()
    negative = bytearray(good)
    negative[20:28] = (-1).to_bytes(8, "little", signed=True)
    cases = {
        good[:-3]: "checksum",
        bytes(40): "not a mergeagg sketch",
        _recrc(good[:12] + (0).to_bytes(4, "little") + good[16:]): "out of range",
        _recrc(good[:-12] + good[-4:]): "expected 72 bytes",
        _recrc(bytes(negative)): "negative or rows disagree",
    }
    for data, words in cases.items():
        with pytest.raises(ValueError, match=words):
            CountMin.from_bytes(data)


def test_runs_over_files_and_from_the_cli(tmp_path, capsys):
    from mergeagg.cli import main

    path = tmp_path / "words.txt"
    path.write_text("the cat\nthe hat\nthe cat\n")
    r = mergeagg.run(countmin(width=256, depth=3), str(path), workers=0)
    assert r.value.query("the cat") == 2 and r.value.total == 3
    words = mergeagg.run(countmin(width=256, depth=3, words=True), str(path), workers=0)
    assert words.value.query("the") == 3
    assert main(["run", "countmin", str(path), "--workers", "0", "--words", "--query", "the",
                 "--query", "cat"]) == 0
    out = capsys.readouterr().out
    assert "6 records" in out and "3  the" in out and "2  cat" in out
    assert mergeagg.algorithms.countmin is countmin


@settings(max_examples=60, deadline=None)
@given(keys, st.lists(st.integers(0, 60), max_size=6), st.randoms(use_true_random=False),
       st.integers(1, 40), st.integers(1, 4))
def test_any_order_split_and_merge_tree_gives_the_same_bytes(items, cuts, rnd, width, depth):
    shuffled = list(items)
    rnd.shuffle(shuffled)
    whole = CountMin(width, depth, seed=3).update(items)
    assert CountMin(width, depth, seed=3).update(shuffled).to_bytes() == whole.to_bytes()
    cuts = sorted(min(c, len(shuffled)) for c in cuts)
    shards = [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(shuffled)])]
    rnd.shuffle(shards)
    sketches = mergeagg.Aggregator(lambda s: CountMin(width, depth, seed=3).update(s),
                                   lambda a, b: a.merge(b))
    assert_partition_independent(sketches, None, layouts=[shards],
                                 trees=[TreeShape("random", seed=rnd.randrange(2**16))])
