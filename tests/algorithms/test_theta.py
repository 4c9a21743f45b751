"""Theta sketch: exact while small, accuracy and bound coverage over many seeded trials,
set operations, byte-identical unions for any order and tree, compatibility, bytes."""

import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mergeagg
from mergeagg.algorithms._sketch import load
from mergeagg.algorithms.theta import MAX_THETA, ThetaSketch, theta
from mergeagg.errors import IncompatibleMergeError
from mergeagg.testing import assert_partition_independent, tree_shapes


def test_exact_below_k_and_kmv_above():
    sk = ThetaSketch(lg_k=5).update(range(32))
    sk._check()
    assert sk.estimate() == 32.0 and not sk.is_estimation_mode()
    sk.add(1000)
    sk._check()
    assert sk.is_estimation_mode() and sk.num_retained == 32
    # theta is the 33rd smallest hash of the 33 keys: every retained hash is below it
    full = np.sort(ThetaSketch(lg_k=10).update(list(range(32)) + [1000]).hashes)
    assert sk.theta == int(full[32]) and (sk.hashes == full[:32]).all()
    assert ThetaSketch().is_empty() and ThetaSketch().estimate() == 0.0


def test_relative_error_within_three_sigma_over_many_trials():
    lg_k, trials = 9, 300
    k = 1 << lg_k
    sigma = 1 / math.sqrt(k - 1)  # KMV's relative standard error
    for n in (5_000, 200_000):
        keys = np.arange(n, dtype=np.int64) * 7919 + n
        errs = np.array([ThetaSketch(lg_k, seed=s).update(keys).estimate() / n - 1
                         for s in range(trials)])
        rmse = math.sqrt(np.mean(errs ** 2))
        assert rmse <= sigma * (1 + 3 / math.sqrt(2 * trials)), (n, rmse, sigma)
        assert abs(errs.mean()) <= 3 * sigma / math.sqrt(trials), (n, errs.mean())


def test_two_sigma_bounds_cover_the_truth_about_95_percent():
    n, trials = 20_000, 400
    keys = np.arange(n, dtype=np.int64)
    hits = 0
    for s in range(trials):
        sk = ThetaSketch(lg_k=7, seed=s).update(keys)
        hits += sk.lower_bound(2) <= n <= sk.upper_bound(2)
        assert sk.lower_bound(1) >= sk.lower_bound(3) and sk.upper_bound(3) >= sk.upper_bound(1)
    rate, p = hits / trials, 0.9545
    assert rate >= p - 3 * math.sqrt(p * (1 - p) / trials), rate


def test_set_operations_estimate_within_their_error():
    lg_k, trials = 10, 60
    k = 1 << lg_k
    a_keys, b_keys = np.arange(0, 60_000), np.arange(40_000, 100_000)
    inter, union, a_only = 20_000, 100_000, 40_000
    errs = {"union": [], "inter": [], "anotb": [], "jac": []}
    for s in range(trials):
        a = ThetaSketch(lg_k, seed=s).update(a_keys)
        b = ThetaSketch(lg_k, seed=s).update(b_keys)
        for name, sk in (("union", a.union(b)), ("inter", a.intersection(b)),
                         ("anotb", a.a_not_b(b))):
            sk._check()
            errs[name].append(sk.estimate())
        errs["jac"].append(a.jaccard(b))
    # sampling a fraction f of the union's k-sample: relative sd ~ sqrt((1 - f) / (f k))
    for name, truth in (("union", union), ("inter", inter), ("anotb", a_only)):
        f = truth / union
        sd = truth * math.sqrt((1 - f) / (f * k)) if f < 1 else truth / math.sqrt(k - 1)
        rmse = math.sqrt(np.mean((np.array(errs[name]) - truth) ** 2))
        assert rmse <= sd * (1 + 3 / math.sqrt(2 * trials)) * 1.1, (name, rmse, sd)
    j = inter / union
    rmse = math.sqrt(np.mean((np.array(errs["jac"]) - j) ** 2))
    assert rmse <= math.sqrt(j * (1 - j) / k) * (1 + 3 / math.sqrt(2 * trials)) * 1.1


def test_set_operations_are_exact_while_small():
    a, b = ThetaSketch().update(range(10)), ThetaSketch().update(range(5, 20))
    assert a.union(b).estimate() == 20 and a.intersection(b).estimate() == 5
    assert a.a_not_b(b).estimate() == 5 and b.a_not_b(a).estimate() == 10
    assert a.jaccard(b) == 0.25 and ThetaSketch().jaccard(ThetaSketch()) == 1.0
    # a difference keeps sampling correct under a later union
    assert a.a_not_b(b).union(a.intersection(b)) == a


keys_st = st.lists(st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=6)),
                   max_size=150)


def _merged_and_checked(a, b):
    a.merge(b)
    a._check()
    return a


def _tree_fold(parts, shape):
    """Fold copies of ``parts`` pairwise, choosing which neighbours to merge from ``shape``."""
    parts = [p.copy() for p in parts]
    i = 0
    while len(parts) > 1:
        j = shape[i % len(shape)] % (len(parts) - 1) if shape else 0
        parts[j:j + 2] = [parts[j].merge(parts[j + 1])]
        i += 1
    return parts[0]


@settings(max_examples=80, deadline=None)
@given(keys_st, st.lists(st.integers(0, 150), max_size=6), tree_shapes(),
       st.randoms(use_true_random=False), st.sampled_from([5, 6]))
def test_union_is_byte_identical_for_any_order_split_and_tree(keys, cuts, tree, rnd, lg_k):
    cuts = sorted(min(c, len(keys)) for c in cuts)
    shards = [keys[a:b] for a, b in zip([0, *cuts], [*cuts, len(keys)])]
    whole = ThetaSketch(lg_k).update(keys)
    shuffled = list(keys)
    rnd.shuffle(shuffled)
    assert ThetaSketch(lg_k).update(shuffled).to_bytes() == whole.to_bytes()
    rnd.shuffle(shards)
    # The kit folds the shards' sketches along the tree (every merge checked) and compares
    # the fingerprint (bytes and parameters) with the sketch of every key.
    sketches = mergeagg.Aggregator(lambda s: ThetaSketch(lg_k).update(s), _merged_and_checked)
    assert_partition_independent(sketches, None, layouts=[shards], trees=[tree])
    one = ThetaSketch(lg_k)
    for key in keys:
        one.add(key)
    assert one == whole
    r = mergeagg.run(theta(lg_k=lg_k), shards, workers=0, fan_in=2)
    assert r.value == whole and r.fingerprint == mergeagg.fingerprint(whole)


@settings(max_examples=40, deadline=None)
@given(st.lists(keys_st, min_size=2, max_size=5), st.randoms(use_true_random=False))
def test_unions_of_set_operation_results_are_order_independent(sets, rnd):
    sks = [ThetaSketch(5).update(s) for s in sets]
    mixed = [sks[0].intersection(sks[1]), sks[1].a_not_b(sks[0]), *sks[2:]]
    ref = _tree_fold(mixed, [0])
    rnd.shuffle(mixed)
    assert _tree_fold(mixed, [rnd.randrange(10) for _ in range(5)]) == ref


def test_incompatible_sketches_say_what_differs():
    with pytest.raises(IncompatibleMergeError, match="lg_k: 10 != 12"):
        ThetaSketch(10).merge(ThetaSketch(12))
    with pytest.raises(IncompatibleMergeError, match="seed: 0 != 9001; hash"):
        ThetaSketch().intersection(ThetaSketch(hash="datasketches"))
    with pytest.raises(IncompatibleMergeError, match="seed: 1 != 2"):
        ThetaSketch(seed=1).a_not_b(ThetaSketch(seed=2))
    with pytest.raises(ValueError, match="hash must be"):
        ThetaSketch(hash="md5")
    with pytest.raises(ValueError):
        ThetaSketch(lg_k=4)


def test_datasketches_hash_mode_keeps_datasketches_hashes():
    ds = pytest.importorskip("datasketches")
    keys = list(range(-50, 3000)) + [f"k{i}" for i in range(500)] + [""] + [2.5, -0.0, 0.0]
    theirs = ds.update_theta_sketch(7)
    for key in keys:
        theirs.update(key)
    ours = ThetaSketch(7, hash="datasketches").update(keys)
    assert ours.theta == theirs.theta64 or ours.theta <= theirs.theta64
    mine = set(ours.hashes.tolist())
    theirs_h = {h for h in theirs.compact()}
    assert mine == {h for h in theirs_h if h < ours.theta}


@settings(max_examples=40, deadline=None)
@given(keys_st, st.integers(5, 8), st.sampled_from(["mergeagg", "datasketches"]))
def test_bytes_and_pickle_round_trip(keys, lg_k, hash_name):
    sk = ThetaSketch(lg_k, hash=hash_name).update(keys)
    data = sk.to_bytes()
    assert ThetaSketch.from_bytes(data) == sk and load(data) == sk
    assert ThetaSketch.from_bytes(data).to_bytes() == data
    back = pickle.loads(pickle.dumps(sk))
    assert back == sk and mergeagg.fingerprint(back) == mergeagg.fingerprint(sk)


def test_corrupt_bytes_are_refused():
    import struct
    import zlib

    good = ThetaSketch(5).update(range(100)).to_bytes()

    def recrc(body):
        return body + struct.pack("<I", zlib.crc32(body))

    with pytest.raises(ValueError, match="expected"):
        ThetaSketch.from_bytes(recrc(good[:-12]))
    body = bytearray(good[:-4])
    body[13:21] = struct.pack("<Q", 5)  # theta below every hash
    with pytest.raises(ValueError, match="at or above theta"):
        ThetaSketch.from_bytes(recrc(bytes(body)))
    body[13:21] = struct.pack("<Q", MAX_THETA + 1)
    with pytest.raises(ValueError, match="out of range"):
        ThetaSketch.from_bytes(recrc(bytes(body)))


def test_catalog_and_cli(tmp_path, capsys):
    from mergeagg.cli import main

    path = tmp_path / "x.txt"
    path.write_text("".join(f"user{i % 300}\n" for i in range(2000)))
    assert main(["run", "theta", str(path), "--workers", "0", "--lg-k", "10"]) == 0
    assert "300 distinct records (exact" in capsys.readouterr().out
    assert main(["run", "theta", str(path), "--workers", "0", "--lg-k", "6",
                 "--hash", "datasketches"]) == 0
    assert "95% within" in capsys.readouterr().out
    fps = {mergeagg.run(theta(lg_k=6), str(path), workers=0, split_size=s).fingerprint
           for s in ("1K", "3K", "64K")}
    assert len(fps) == 1
