"""Bloom filter: no false negatives, the false-positive rate as predicted and as sized
(fixed seeds, many trials, 3-sigma bounds), merges byte-identical for any order and tree,
compatibility, bytes and the catalog entry."""

import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mergeagg
from mergeagg.algorithms._sketch import load
from mergeagg.algorithms.bloom import BloomFilter, blocks_for, bloom, expected_fpp
from mergeagg.errors import IncompatibleMergeError
from mergeagg.testing import assert_partition_independent, split_layouts, tree_shapes


def test_no_false_negatives_even_when_blocks_repeat_in_a_batch():
    # 3 blocks and 5,000 keys: every batch hits each block thousands of times
    for n_blocks in (1, 3, 1000):
        keys = np.arange(5_000, dtype=np.int64) * 31 + 7
        bf = BloomFilter(num_blocks=n_blocks).update(keys)
        assert bf.contains_many(keys).all()
        one = BloomFilter(num_blocks=n_blocks)
        for k in keys[:300].tolist():
            one.add(k)
        assert one == BloomFilter(num_blocks=n_blocks).update(keys[:300])


def test_sizing_meets_the_false_positive_rate():
    for capacity, fpp in ((1000, 0.01), (50_000, 0.001), (10**6, 0.05)):
        nb = blocks_for(capacity, fpp)
        assert expected_fpp(capacity / nb) <= fpp < expected_fpp(capacity / (nb - 1))
    with pytest.raises(ValueError, match="fpp"):
        BloomFilter(capacity=10, fpp=1.5)
    with pytest.raises(TypeError, match="capacity and fpp"):
        BloomFilter(capacity=10)
    with pytest.raises(ValueError, match="2\\*\\*24 blocks"):
        BloomFilter(capacity=10**10, fpp=1e-6)


@pytest.mark.parametrize("capacity,fpp", [(20_000, 0.01), (5_000, 0.05)])
def test_measured_false_positive_rate_matches_prediction(capacity, fpp):
    """20 seeds x 50,000 absent keys: the measured rate within 3 sigma of the prediction
    from the bits, and the prediction at capacity within 3 sigma of fpp on average."""
    predicted, measured, trials = [], [], 20
    probes = 50_000
    for seed in range(trials):
        rng = np.random.default_rng(seed)
        keys = rng.integers(0, 2**62, capacity)
        bf = BloomFilter(capacity=capacity, fpp=fpp, seed=seed).update(keys)
        absent = rng.integers(2**62, 2**63, probes)
        measured.append(bf.contains_many(absent).mean())
        predicted.append(bf.false_positive_rate())
    p = float(np.mean(predicted))
    sigma = math.sqrt(p * (1 - p) / (probes * trials))
    assert abs(np.mean(measured) - p) <= 3 * sigma, (np.mean(measured), p)
    assert p <= fpp * 1.05  # the mean prediction at capacity is about fpp
    assert p >= fpp * 0.6


def test_false_positive_rate_grows_past_capacity():
    bf = BloomFilter(capacity=1000, fpp=0.01)
    bf.update(np.arange(1000))
    at_cap = bf.false_positive_rate()
    bf.update(np.arange(1000, 5000))
    assert bf.false_positive_rate() > 10 * at_cap
    assert 0 < bf.fill_ratio() < 1


keys_st = st.lists(st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=6),
                             st.binary(max_size=8)), max_size=120)


@settings(max_examples=60, deadline=None)
@given(split_layouts(keys_st, max_shards=7), tree_shapes(), st.sampled_from([1, 4, 64]))
def test_merge_is_byte_identical_for_any_order_split_and_tree(layout, tree, n_blocks):
    # The kit folds the shards' filters along the tree and compares the fingerprint (the
    # filter's bytes and parameters) with one filter of every key.
    filters = mergeagg.Aggregator(lambda keys: BloomFilter(num_blocks=n_blocks).update(keys),
                                  lambda a, b: a.merge(b))
    assert_partition_independent(filters, None, layouts=[layout], trees=[tree])
    keys = [k for shard in layout for k in shard]
    assert BloomFilter(num_blocks=n_blocks).update(keys).contains_many(keys).all() if keys \
        else True
    r = mergeagg.run(bloom(capacity=100, fpp=0.1), layout, workers=0, fan_in=2)
    assert r.value == BloomFilter(capacity=100, fpp=0.1).update(keys)


def test_incompatible_filters_say_what_differs():
    with pytest.raises(IncompatibleMergeError, match="num_blocks: 8 != 16"):
        BloomFilter(num_blocks=8).merge(BloomFilter(num_blocks=16))
    with pytest.raises(IncompatibleMergeError, match="seed: 0 != 1"):
        BloomFilter(num_blocks=8).merge(BloomFilter(num_blocks=8, seed=1))


@settings(max_examples=30, deadline=None)
@given(keys_st, st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_bytes_and_pickle_round_trip(keys, n_blocks, seed):
    bf = BloomFilter(num_blocks=n_blocks, seed=seed).update(keys)
    data = bf.to_bytes()
    assert len(data) == 12 + 4 + 32 * n_blocks + 4
    assert BloomFilter.from_bytes(data) == bf and load(data) == bf
    back = pickle.loads(pickle.dumps(bf))
    assert back == bf and mergeagg.fingerprint(back) == mergeagg.fingerprint(bf)
    assert back.update([1]).contains(1)


def test_corrupt_bytes_are_refused():
    import struct
    import zlib

    good = BloomFilter(num_blocks=4).update([1, 2]).to_bytes()
    body = good[:-4 - 32]
    with pytest.raises(ValueError, match="expected 132 bytes"):
        BloomFilter.from_bytes(body + struct.pack("<I", zlib.crc32(body)))


def test_catalog_and_cli(tmp_path, capsys):
    from mergeagg.cli import main

    path = tmp_path / "x.txt"
    path.write_text("".join(f"user{i}\n" for i in range(500)))
    assert main(["run", "bloom", str(path), "--workers", "0", "--capacity", "500",
                 "--fpp", "0.01", "--query", "user7", "--query", "nobody"]) == 0
    out = capsys.readouterr().out
    assert "maybe present  user7" in out and "absent  nobody" in out
    assert "false-positive rate now" in out
    fps = {mergeagg.run(bloom(capacity=500), str(path), workers=0, split_size=s).fingerprint
           for s in ("1K", "2K", "64K")}
    assert len(fps) == 1
