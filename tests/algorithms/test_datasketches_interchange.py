"""Interchange with Apache DataSketches, both ways, against the `datasketches` package:
mergeagg's images load there with the same estimate / quantiles; DataSketches' images (every
HLL mode, KLL floats and doubles, compact theta) load here; unions across the two libraries
over overlapping key sets give the estimate DataSketches gives for the same union."""

import numpy as np
import pytest

from mergeagg.algorithms._sketch import hash128_ds
from mergeagg.algorithms.hyperloglog import HyperLogLog
from mergeagg.algorithms.kll import KLL
from mergeagg.algorithms.theta import ThetaSketch

ds = pytest.importorskip("datasketches")

SIZES = [0, 1, 2, 7, 300, 20_000]


def _ds_hll(keys, lg_k, tgt):
    sk = ds.hll_sketch(lg_k, tgt)
    for key in keys:
        sk.update(key)
    return sk


# -- HLL --------------------------------------------------------------------------------


@pytest.mark.parametrize("n", SIZES)
def test_hll_images_from_every_datasketches_mode_load_as_the_same_registers(n):
    keys = list(range(-n // 3, n - n // 3)) + [f"s{i}" for i in range(n // 10)]
    ours = HyperLogLog(10, hash="datasketches").update(keys)
    ours._check()
    for tgt in (ds.HLL_4, ds.HLL_6, ds.HLL_8):
        theirs = _ds_hll(keys, 10, tgt)
        for image in (theirs.serialize_compact(), theirs.serialize_updatable()):
            loaded = HyperLogLog.from_datasketches(image)
            assert loaded == ours, (tgt, n)
        # one standard error apart at most: different estimators on the same registers
        assert abs(loaded.count() - theirs.get_estimate()) <= max(1.0, 0.04 * len(keys))


@pytest.mark.parametrize("n", [*SIZES, 1_000_000])
def test_hll_images_we_write_load_there_with_the_same_registers(n):
    ours = HyperLogLog(12, hash="datasketches").update(np.arange(n, dtype=np.int64) * 3)
    theirs = ds.hll_sketch.deserialize(ours.to_datasketches())
    assert theirs.lg_config_k == 12 and theirs.is_empty() == (n == 0)
    # the registers survive a trip through DataSketches' own serialisation
    assert HyperLogLog.from_datasketches(theirs.serialize_updatable()) == ours
    se = 1.04 / 64
    assert abs(theirs.get_estimate() - ours.count()) <= max(0.5, 0.25 * se * n)


def test_hll_union_across_libraries_counts_shared_keys_once():
    a_keys = list(range(0, 60_000))
    b_keys = list(range(40_000, 100_000))
    ours_a = HyperLogLog(12, hash="datasketches").update(np.array(a_keys))
    theirs_b = _ds_hll(b_keys, 12, ds.HLL_4)
    theirs_a = _ds_hll(a_keys, 12, ds.HLL_8)
    # in DataSketches: union of our image with its sketch == union of its two sketches
    mixed, pure = ds.hll_union(12), ds.hll_union(12)
    mixed.update(ds.hll_sketch.deserialize(ours_a.to_datasketches()))
    mixed.update(theirs_b)
    pure.update(theirs_a)
    pure.update(theirs_b)
    assert abs(mixed.get_estimate() - pure.get_estimate()) <= 1e-9 * pure.get_estimate()
    # here: the merge is register for register the union DataSketches builds
    here = ours_a.copy().merge(HyperLogLog.from_datasketches(theirs_b.serialize_compact()))
    assert here == HyperLogLog.from_datasketches(pure.get_result().serialize_compact())
    assert abs(here.count() / 100_000 - 1) <= 3 * 1.04 / 64


def test_hll_refuses_foreign_hashes_and_bad_images():
    with pytest.raises(ValueError, match="hash='datasketches'"):
        HyperLogLog(10).to_datasketches()
    with pytest.raises(ValueError, match="lg_k 21"):
        HyperLogLog.from_datasketches(ds.hll_sketch(21).serialize_compact())
    image = HyperLogLog(8, hash="datasketches").update(range(5000)).to_datasketches()
    with pytest.raises(ValueError, match="truncated"):
        HyperLogLog.from_datasketches(image[:100])
    with pytest.raises(TypeError):
        HyperLogLog.from_datasketches("text")


def test_datasketches_hashing_is_murmur3_with_seed_9001_of_the_key_bytes():
    import struct

    import mmh3

    for key, raw in [(5, struct.pack("<q", 5)), (-1, struct.pack("<q", -1)),
                     ("héllo", "héllo".encode()), (2.5, struct.pack("<d", 2.5)),
                     (-0.0, struct.pack("<d", 0.0))]:
        h1, h2 = hash128_ds([key])
        assert (int(h1[0]), int(h2[0])) == mmh3.hash64(raw, 9001, signed=False)
    assert hash128_ds([""])[0].shape == (0,)  # DataSketches skips the empty string
    assert hash128_ds(np.array([2**64 - 1], dtype=np.uint64))[0].tolist() == \
        hash128_ds([-1])[0].tolist()


# -- KLL --------------------------------------------------------------------------------

KLL_CLASSES = {"float": ds.kll_floats_sketch, "double": ds.kll_doubles_sketch}


@pytest.mark.parametrize("dtype", ["float", "double"])
@pytest.mark.parametrize("n", [*SIZES, 1_000_000])
def test_kll_images_we_write_give_the_same_quantiles_there(dtype, n):
    data = np.random.default_rng(n).standard_normal(n)
    ours = KLL(200, dtype).update(data)
    theirs = KLL_CLASSES[dtype].deserialize(ours.to_datasketches())
    assert theirs.n == n and theirs.is_empty() == (n == 0)
    if n == 0:
        return
    assert theirs.num_retained == ours.num_retained and theirs.k == 200
    qs = np.linspace(0, 1, 101)
    # the split points as the sketch's items (DataSketches' float sketch takes float32)
    points = np.unique(np.sort(data)[:: max(1, n // 50)].astype(ours.levels[0].dtype))
    for inclusive in (True, False):
        assert ours.quantiles(qs, inclusive).tolist() == theirs.get_quantiles(qs, inclusive)
        np.testing.assert_allclose(ours.cdf(points, inclusive),
                                   theirs.get_cdf(points, inclusive), rtol=0, atol=1e-12)
        np.testing.assert_allclose(ours.pmf(points, inclusive),
                                   theirs.get_pmf(points, inclusive), rtol=0, atol=1e-12)
    assert theirs.get_min_value() == ours.min and theirs.get_max_value() == ours.max


@pytest.mark.parametrize("dtype", ["float", "double"])
@pytest.mark.parametrize("n", SIZES)
def test_kll_images_from_datasketches_load_with_the_same_quantiles(dtype, n):
    data = np.random.default_rng(n + 1).lognormal(size=n)
    theirs = KLL_CLASSES[dtype](200)
    if n:
        theirs.update(data.astype(np.float32 if dtype == "float" else np.float64))
    ours = KLL.from_datasketches(theirs.serialize(), dtype=None if n else dtype)
    ours._check()
    assert ours.dtype == dtype and ours.n == n
    if n:
        qs = np.linspace(0, 1, 41)
        assert ours.quantiles(qs, False).tolist() == theirs.get_quantiles(qs, False)
        # and it keeps working as a mergeagg sketch
        more = KLL(200, dtype).update(data)
        assert ours.merge(more).n == 2 * n
        ours._check()


def test_kll_merge_across_libraries_stays_within_the_bound():
    data = np.random.default_rng(3).standard_normal(400_000)
    ours = KLL(200).update(data[:200_000])
    theirs = ds.kll_doubles_sketch(200)
    theirs.update(data[200_000:])
    here = ours.copy().merge(KLL.from_datasketches(theirs.serialize()))
    there = ds.kll_doubles_sketch.deserialize(ours.to_datasketches())
    there.merge(theirs)
    truth = np.sort(data)
    bound = ours.rank_error()
    for q in (0.01, 0.5, 0.99):
        for est in (here.quantile(q), there.get_quantile(q)):
            assert abs(np.searchsorted(truth, est, side="right") / truth.shape[0] - q) <= bound


def test_kll_refuses_other_images():
    with pytest.raises(ValueError, match="family 7"):
        KLL.from_datasketches(ds.hll_sketch(8).serialize_compact())
    merged = ds.kll_doubles_sketch(100)
    merged.update(np.arange(1000.0))
    other = ds.kll_doubles_sketch(200)
    other.update(np.arange(1000.0))
    other.merge(merged)
    with pytest.raises(ValueError, match="min_k 100"):
        KLL.from_datasketches(other.serialize())
    image = KLL(50).update(np.arange(500.0)).to_datasketches()
    with pytest.raises(ValueError, match="neither floats nor doubles|expected"):
        KLL.from_datasketches(image[:-3])


# -- theta ------------------------------------------------------------------------------


def _ds_theta(keys, lg_k):
    sk = ds.update_theta_sketch(lg_k)
    for key in keys:
        sk.update(key)
    return sk


@pytest.mark.parametrize("n", SIZES)
def test_theta_images_both_ways(n):
    keys = list(range(n))
    ours = ThetaSketch(10, hash="datasketches").update(keys)
    theirs = ds.compact_theta_sketch.deserialize(ours.to_datasketches())
    assert theirs.get_estimate() == ours.estimate() and theirs.is_empty() == (n == 0)
    assert theirs.get_seed_hash() == 37836
    assert ThetaSketch.from_datasketches(theirs.serialize(), lg_k=10) == ours
    upd = _ds_theta(keys, 10)
    loaded = ThetaSketch.from_datasketches(upd.compact().serialize(), lg_k=10)
    loaded._check()
    # DataSketches keeps up to ~2k hashes; trimmed to k they are exactly ours
    assert loaded == ours


def test_theta_set_operations_across_libraries_match_datasketches():
    a_keys, b_keys = list(range(0, 60_000)), list(range(40_000, 100_000))
    ours_a = ThetaSketch(12, hash="datasketches").update(a_keys)
    theirs_b = _ds_theta(b_keys, 12).compact()
    theirs_a = _ds_theta(a_keys, 12).compact()
    image_a = ds.compact_theta_sketch.deserialize(ours_a.to_datasketches())

    def ds_union(x, y):
        u = ds.theta_union(12)
        u.update(x)
        u.update(y)
        return u.get_result()

    mixed, pure = ds_union(image_a, theirs_b), ds_union(theirs_a, theirs_b)
    assert mixed.get_estimate() == pytest.approx(pure.get_estimate(), rel=1e-12)
    loaded_b = ThetaSketch.from_datasketches(theirs_b.serialize(), lg_k=12)
    assert ours_a.union(loaded_b).estimate() == pytest.approx(pure.get_estimate(), rel=1e-12)
    inter = ds.theta_intersection()
    inter.update(image_a)
    inter.update(theirs_b)
    assert ours_a.intersection(loaded_b).estimate() == pytest.approx(
        inter.get_result().get_estimate(), rel=0.05)
    assert abs(ours_a.intersection(loaded_b).estimate() / 20_000 - 1) < 0.15
    diff = ds.theta_a_not_b().compute(image_a, theirs_b)
    assert abs(ours_a.a_not_b(loaded_b).estimate() - diff.get_estimate()) <= 0.05 * 40_000


def test_theta_refuses_foreign_hashes_and_seeds():
    with pytest.raises(ValueError, match="hash='datasketches'"):
        ThetaSketch().to_datasketches()
    image = ThetaSketch(hash="datasketches").update(range(10)).to_datasketches()
    with pytest.raises(ValueError, match="seed hash"):
        ThetaSketch.from_datasketches(image, seed=1)
    with pytest.raises(ValueError, match="serial version 4"):
        ThetaSketch.from_datasketches(_ds_theta(range(5000), 10).compact().serialize(True))
