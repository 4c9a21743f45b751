"""HyperLogLog: accuracy (fixed seeds, many trials), merge laws, compatibility, bytes.

Also the shared 64-bit hashing of ``algorithms/_sketch.py`` (HyperLogLog is its first
user): batches hash exactly as single keys and as ``mmh3``.
"""

import math
import pickle

import mmh3
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mergeagg
from mergeagg.algorithms import _sketch
from mergeagg.algorithms._sketch import hash64, hash64_one, load
from mergeagg.algorithms.hyperloglog import HyperLogLog, ertl_estimate, hyperloglog
from mergeagg.errors import IncompatibleMergeError
from mergeagg.testing import TreeShape, assert_partition_independent


def _check(h):
    h._check()


def _merged_and_checked(a, b):
    a.merge(b)
    a._check()
    return a


def _checked_sketches(make):
    """The sketches of ``make()`` as an Aggregator whose every merge checks its invariants."""
    return mergeagg.Aggregator(lambda keys: make().update(keys), _merged_and_checked)


# -- hashing ------------------------------------------------------------------------------

keys_bytes = st.lists(st.binary(max_size=70), max_size=60)


@given(keys_bytes, st.integers(0, 2**32 - 1))
def test_batch_hash_of_bytes_is_mmh3_first_half(items, seed):
    got = hash64(items, seed)
    assert got.dtype == np.uint64 and got.shape == (len(items),)
    assert [int(x) for x in got] == [mmh3.hash64(x, seed, signed=False)[0] for x in items]


@given(st.lists(st.text(max_size=20), max_size=40), st.integers(0, 2**32 - 1))
def test_str_keys_hash_as_their_utf8_bytes(items, seed):
    as_bytes = [s.encode("utf-8", "surrogatepass") for s in items]
    assert hash64(items, seed).tolist() == hash64(as_bytes, seed).tolist()
    assert [hash64_one(s, seed) for s in items] == hash64(items, seed).tolist()


@given(st.lists(st.integers(-(2**63), 2**64 - 1), max_size=50), st.integers(0, 2**32 - 1))
def test_int_keys_hash_alike_in_lists_arrays_and_one_by_one(items, seed):
    one = [hash64_one(x, seed) for x in items]
    assert hash64(items, seed).tolist() == one
    wrapped = np.array([x & (2**64 - 1) for x in items], dtype=np.uint64)
    assert hash64(wrapped, seed).tolist() == one


def test_fixed_width_byte_arrays_hash_like_their_elements():
    rng = np.random.default_rng(5)
    raw = [rng.bytes(8) for _ in range(3000)] + [b"ab", b"", b"abc\x00"]
    arr = np.array(raw, dtype="S8")
    # numpy's S dtype drops trailing NULs: the element is what tolist() gives back.
    assert hash64(arr, 9).tolist() == hash64(arr.tolist(), 9).tolist()
    long = [rng.bytes(int(n)) for n in rng.integers(0, 700, 400)]
    assert hash64(long, 3).tolist() == [hash64_one(x, 3) for x in long]


def test_lists_of_numpy_scalars_hash_like_python_ints():
    for dtype in (np.int8, np.uint64, np.int64):
        arr = np.array([0, 1, 5, 100], dtype=dtype)
        assert hash64(list(arr), 4).tolist() == [hash64_one(int(x), 4) for x in arr]


def test_ranges_hash_like_lists():
    for r in [range(-5, 1000, 3), range(10, 0, -1), range(2**63 - 5, 2**63 + 5), range(0)]:
        assert HyperLogLog(8).update(r) == HyperLogLog(8).update(list(r))


def test_small_int_dtypes_sign_extend():
    assert hash64(np.array([-1, 5], dtype=np.int8), 0).tolist() == [
        hash64_one(-1, 0), hash64_one(5, 0)]


@pytest.mark.parametrize("bad", ["abc", b"abc", bytearray(b"x")])
def test_update_with_a_bare_str_or_bytes_says_to_call_add(bad):
    with pytest.raises(TypeError, match=r"call add\(key\)"):
        HyperLogLog().update(bad)


def test_unhashable_keys_and_dtypes_are_type_errors():
    with pytest.raises(TypeError, match="dtype float64"):
        HyperLogLog().update(np.array([1.5]))
    with pytest.raises(TypeError, match="cannot hash a float"):
        HyperLogLog().update([1.5])
    with pytest.raises(TypeError, match="cannot hash a tuple"):
        HyperLogLog().add((1, 2))
    with pytest.raises(ValueError, match="64 bits"):
        HyperLogLog().update([2**64])
    with pytest.raises(ValueError, match="one-dimensional"):
        HyperLogLog().update(np.zeros((2, 2), dtype=np.int64))


# -- accuracy -----------------------------------------------------------------------------


def _simulated_registers(rng, n, p, trials):
    """Register arrays of ``trials`` sketches after ``n`` distinct keys, ideal hashing.

    Each register receives a multinomial share k of the keys; the maximum rank of k keys
    has P(max <= r) = (1 - 2**-r)**k, sampled by inversion and capped at 65 - p.
    """
    m, q = 1 << p, 64 - p
    counts = rng.multinomial(n, np.full(m, 1.0 / m), size=trials)
    u = rng.random(counts.shape)
    with np.errstate(divide="ignore"):
        tail = -np.expm1(np.log(u) / np.maximum(counts, 1))
        r = np.ceil(-np.log2(tail))
    r = np.clip(r, 1, q + 1)
    return np.where(counts == 0, 0, r).astype(np.int64)


@pytest.mark.parametrize("p", [6, 8, 10])
def test_estimator_rmse_from_10_to_a_trillion(p):
    """Ertl's estimator on exactly simulated register states: 1,000 trials per size.

    (At p = 4 and 5 the relative RMSE reaches about 1.2 x 1.04/sqrt(m): the 1.04 constant
    is asymptotic; docs/sketches.md says so.)
    """
    rng = np.random.default_rng(1000 + p)
    m, trials = 1 << p, 1000
    bound = 1.1 * 1.04 / math.sqrt(m)
    for n in [10, 100, 1000, 10**4, 10**5, 10**6, 10**7, 10**9, 10**12]:
        regs = _simulated_registers(rng, n, p, trials)
        est = np.array([ertl_estimate(np.bincount(row, minlength=66 - p), 64 - p)
                        for row in regs])
        rmse = math.sqrt(np.mean((est / n - 1.0) ** 2))
        assert rmse <= bound, f"p={p} n={n}: relative RMSE {rmse:.4f} > {bound:.4f}"


def test_real_keys_rmse_at_small_cardinalities():
    """The real hash and update path: 800 seeds per cardinality, literal 1.1x bound."""
    p, trials = 10, 800
    bound = 1.1 * 1.04 / math.sqrt(1 << p)
    for n in [10, 100, 1000, 10_000]:
        keys = np.arange(n, dtype=np.int64) * 7919 + n
        errs = [HyperLogLog(p, seed=s).update(keys).count() / n - 1 for s in range(trials)]
        rmse = math.sqrt(np.mean(np.square(errs)))
        assert rmse <= bound, f"n={n}: relative RMSE {rmse:.4f} > {bound:.4f}"


def test_real_keys_rmse_up_to_ten_million():
    """Large cardinalities with few trials: 3-sigma bound on the sampled RMSE."""
    p = 12
    sigma = 1.04 / math.sqrt(1 << p)
    errs = []
    for n, trials in [(10**5, 40), (10**6, 8), (10**7, 2)]:
        keys = np.arange(n, dtype=np.uint64)
        for s in range(trials):
            h = HyperLogLog(p, seed=100 + s).update(keys)
            _check(h)
            errs.append(h.count() / n - 1)
    rmse = math.sqrt(np.mean(np.square(errs)))
    assert rmse <= sigma * (1 + 3 / math.sqrt(2 * len(errs))), rmse


def test_bytes_keys_accuracy_and_small_counts_exactish():
    rng = np.random.default_rng(3)
    keys = np.unique(rng.integers(0, 2**63, 200_000)).astype(">u8").view("S8")
    h = HyperLogLog(14, seed=4).update(keys)
    n = keys.shape[0]
    assert abs(h.count() / n - 1) <= 3 * h.standard_error
    for n in range(0, 40):
        assert round(HyperLogLog(14).update(list(range(n))).count()) == n


def test_agrees_with_datasketch_within_the_error_bounds():
    datasketch = pytest.importorskip("datasketch")
    rng = np.random.default_rng(11)
    for n in [50, 5_000, 100_000]:
        keys = [x.tobytes() for x in rng.integers(0, 2**63, n)]
        ours = HyperLogLog(12, seed=1).update(keys)
        theirs = datasketch.HyperLogLog(p=12)
        for k in keys:
            theirs.update(k)
        sigma = 1.04 / math.sqrt(1 << 12)
        assert abs(ours.count() / n - 1) <= 3 * sigma
        assert abs(theirs.count() / n - 1) <= 3 * sigma
        assert abs(ours.count() - theirs.count()) / n <= 3 * math.sqrt(2) * sigma


def test_agrees_with_apache_datasketches():
    ds = pytest.importorskip("datasketches")
    keys = np.arange(300_000, dtype=np.int64) * 31
    theirs = ds.hll_sketch(12)
    for k in keys.tolist():
        theirs.update(k)
    ours = HyperLogLog(12).update(keys)
    sigma = 1.04 / math.sqrt(1 << 12)
    n = keys.shape[0]
    assert abs(ours.count() - theirs.get_estimate()) / n <= 3 * math.sqrt(2) * sigma


# -- merge laws ---------------------------------------------------------------------------

keys_mixed = st.lists(st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=8),
                                st.binary(max_size=12)), max_size=80)


@given(keys_mixed, st.lists(st.integers(0, 80), max_size=6), st.sampled_from([4, 8, 12]))
def test_sketch_of_union_is_merge_of_sketches_for_any_sharding(keys, cuts, p):
    cuts = sorted(min(c, len(keys)) for c in cuts)
    bounds = [0, *cuts, len(keys)]
    shards = [keys[a:b] for a, b in zip(bounds, bounds[1:])]
    whole = HyperLogLog(p, seed=2).update(keys)
    # Folded left to right and right to left: the kit compares with the sketch of all keys.
    assert_partition_independent(_checked_sketches(lambda: HyperLogLog(p, seed=2)), None,
                                 layouts=[shards, shards[::-1]],
                                 trees=[TreeShape("left"), TreeShape("right")])
    one_by_one = HyperLogLog(p, seed=2)
    for k in keys:
        one_by_one.add(k)
    assert one_by_one == whole
    _check(whole)
    result = mergeagg.run(hyperloglog(precision=p, seed=2), shards, workers=0, fan_in=2)
    assert result.value == whole
    assert result.fingerprint == mergeagg.fingerprint(whole)


def test_runs_over_text_files_the_same_for_any_split_size(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("".join(f"line {i % 700}\n" for i in range(3000)))
    fps = set()
    for split in ["1K", "7K", "64K"]:
        r = mergeagg.run(hyperloglog(precision=12), str(path), workers=0, split_size=split)
        fps.add(r.fingerprint)
        assert abs(r.value.count() / 700 - 1) <= 3 * r.value.standard_error
    assert len(fps) == 1


def test_catalog_and_cli(tmp_path, capsys):
    from mergeagg.cli import main

    assert mergeagg.algorithms.hyperloglog is hyperloglog
    path = tmp_path / "x.txt"
    path.write_text("a\nb\na\nc\n")
    assert main(["run", "hyperloglog", str(path), "--workers", "0", "--precision", "8"]) == 0
    assert "~3 distinct records" in capsys.readouterr().out


# -- compatibility and bytes ----------------------------------------------------------------


def test_merging_different_parameters_names_every_difference():
    with pytest.raises(IncompatibleMergeError) as info:
        HyperLogLog(p=10, seed=1).merge(HyperLogLog(p=12, seed=2))
    msg = str(info.value)
    assert "p: 10 != 12" in msg and "seed: 1 != 2" in msg
    with pytest.raises(IncompatibleMergeError, match="seed: 0 != 3"):
        HyperLogLog(p=10).merge(HyperLogLog(p=10, seed=3))
    from mergeagg.algorithms.minhash import MinHash

    with pytest.raises(TypeError, match="cannot merge a MinHash into a HyperLogLog"):
        HyperLogLog().merge(MinHash())


@pytest.mark.parametrize("bad", [(3, 0), (19, 0), (14, -1), (14, 2**32)])
def test_parameters_are_validated(bad):
    with pytest.raises(ValueError):
        HyperLogLog(*bad)
    with pytest.raises(TypeError):
        HyperLogLog(14.0)


@given(keys_mixed, st.integers(4, 12), st.integers(0, 2**32 - 1))
def test_bytes_round_trip(keys, p, seed):
    h = HyperLogLog(p, seed).update(keys)
    data = h.to_bytes()
    assert len(data) == 12 + 1 + (1 << p) + 4
    back = HyperLogLog.from_bytes(data)
    assert back == h and back.count() == h.count() and load(data) == h
    assert pickle.loads(pickle.dumps(h)) == h
    assert pickle.loads(pickle.dumps(h)).registers.flags.writeable
    assert mergeagg.fingerprint(pickle.loads(pickle.dumps(h))) == mergeagg.fingerprint(h)


def test_largest_precision_round_trips():
    h = HyperLogLog(18).update(np.arange(10_000))
    assert HyperLogLog.from_bytes(h.to_bytes()) == h
    assert abs(h.count() / 10_000 - 1) <= 3 * h.standard_error


def _recrc(data):
    import struct
    import zlib

    body = data[:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def test_garbage_bytes_are_rejected_with_a_clear_error():
    good = HyperLogLog(8).update(range(100)).to_bytes()
    cases = {
        b"": "too short",
        b"x" * 40: "not a mergeagg sketch",
        good[:-1]: "checksum",
        good[:30] + bytes([good[30] ^ 1]) + good[31:]: "checksum",
        _recrc(good[:4] + b"\x09" + good[5:]): "version 9",
        _recrc(good[:5] + b"\x07" + good[6:]): "unknown sketch kind 7",
        _recrc(good[:6] + b"\x05" + good[7:]): "unknown hash code 5",
        _recrc(good[:12] + b"\x03" + good[13:]): "precision 3",
        _recrc(good[:13] + b"\xff" + good[14:]): "above the maximum",
        _recrc(good[:-10] + good[-4:]): "expected 257 bytes",
    }
    for data, words in cases.items():
        with pytest.raises(ValueError, match=words):
            HyperLogLog.from_bytes(data)
    from mergeagg.algorithms.countmin import CountMin

    with pytest.raises(ValueError, match="bytes hold a HyperLogLog, not a CountMin"):
        CountMin.from_bytes(good)
    with pytest.raises(TypeError):
        load("text")


def test_fingerprint_carries_parameters_not_only_registers():
    fps = {mergeagg.fingerprint(HyperLogLog(6, seed=s)) for s in (0, 1)}
    assert len(fps) == 2
    from mergeagg.algorithms.minhash import MinHash

    assert mergeagg.fingerprint(MinHash(8, seed=0)) != mergeagg.fingerprint(MinHash(8, seed=1))


def test_repr_len_and_jsonable():
    h = HyperLogLog(6).update(["a", "b"])
    assert len(h) == 2 and "p=6" in repr(h)
    doc = h.to_jsonable()
    assert doc["params"]["p"] == 6 and load(__import__("base64").b64decode(
        doc["bytes_base64"])) == h
    assert _sketch.HASH_ID == doc["params"]["hash"]


@settings(max_examples=60, deadline=None)
@given(keys_mixed, st.lists(st.integers(0, 80), max_size=6), st.randoms(use_true_random=False),
       st.sampled_from(["mergeagg", "datasketches"]))
def test_any_order_split_and_merge_tree_gives_the_same_bytes(keys, cuts, rnd, hash_name):
    shuffled = list(keys)
    rnd.shuffle(shuffled)
    whole = HyperLogLog(8, hash=hash_name).update(keys)
    assert HyperLogLog(8, hash=hash_name).update(shuffled).to_bytes() == whole.to_bytes()
    cuts = sorted(min(c, len(shuffled)) for c in cuts)
    shards = [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(shuffled)])]
    rnd.shuffle(shards)
    assert_partition_independent(_checked_sketches(lambda: HyperLogLog(8, hash=hash_name)),
                                 None, layouts=[shards],
                                 trees=[TreeShape("random", seed=rnd.randrange(2**16))])
    one = HyperLogLog(8, hash=hash_name)
    for key in keys:
        one.add(key)
    assert one == whole


def test_datasketches_hash_mode_is_a_parameter_and_round_trips():
    h = HyperLogLog(10, hash="datasketches").update(range(5000))
    assert h.seed == 9001 and h.params()["hash"] == "datasketches"
    data = h.to_bytes()
    assert data[6] == 2  # the hash code
    assert HyperLogLog.from_bytes(data) == h and load(data) == h
    assert pickle.loads(pickle.dumps(h)) == h
    h._check()
    assert abs(h.count() / 5000 - 1) <= 3 * h.standard_error
    with pytest.raises(IncompatibleMergeError, match="seed: 0 != 9001; hash"):
        HyperLogLog(10).merge(h)
    with pytest.raises(ValueError, match="hash must be"):
        HyperLogLog(hash="sha1")
    errs = [HyperLogLog(10, hash="datasketches").update(
        np.arange(n * 10_000, (n + 1) * 10_000)).count() / 10_000 - 1 for n in range(200)]
    assert math.sqrt(np.mean(np.square(errs))) <= 1.04 / 32 * (1 + 3 / math.sqrt(400))
