"""KLL quantiles: exactness while small, rank error within DataSketches' published bound
(fixed seeds, many trials, a 3-sigma bound on the failure rate), deterministic bytes,
merges, compatibility, the byte format and the catalog entry."""

import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mergeagg
from mergeagg.algorithms._sketch import load
from mergeagg.algorithms.kll import KLL, level_capacity, normalized_rank_error, quantiles
from mergeagg.errors import IncompatibleMergeError
from mergeagg.testing import assert_failure_invariant


def _true_rank(sorted_data, value):
    return np.searchsorted(sorted_data, value, side="right") / sorted_data.shape[0]


# -- exact while small, DataSketches' conventions --------------------------------------------


def test_small_sketch_is_exact():
    data = np.array([5.0, 1.0, 3.0, 2.0, 4.0])
    sk = KLL(k=50).update(data)
    sk._check()
    assert sk.n == 5 and sk.num_retained == 5 and (sk.min, sk.max) == (1.0, 5.0)
    assert sk.rank(3.0) == 0.6 and sk.rank(3.0, inclusive=False) == 0.4
    assert sk.rank(0.0) == 0.0 and sk.rank(9.0) == 1.0
    assert sk.quantiles([0.0, 0.2, 0.21, 0.6, 1.0]).tolist() == [1.0, 1.0, 2.0, 3.0, 5.0]
    assert sk.quantile(0.6, inclusive=False) == 4.0
    assert sk.cdf([2.0, 4.0]).tolist() == [0.4, 0.8, 1.0]
    assert sk.pmf([2.0, 4.0]).tolist() == pytest.approx([0.4, 0.4, 0.2])


def test_nan_is_skipped_and_empty_queries_fail_clearly():
    sk = KLL().update([math.nan, 1.0])
    assert sk.n == 1
    with pytest.raises(ValueError, match="empty KLL"):
        KLL().quantile(0.5)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        sk.quantile(1.5)
    with pytest.raises(ValueError, match="increasing"):
        sk.cdf([2.0, 1.0])
    with pytest.raises(TypeError, match="numbers"):
        KLL().update(np.array(["a"]))
    with pytest.raises(TypeError, match="numbers"):
        KLL().add("3")
    with pytest.raises(TypeError):
        KLL().update("123")


def test_capacities_follow_the_two_thirds_rule():
    assert [level_capacity(200, 1, 0)] == [200]
    assert [level_capacity(200, 3, h) for h in range(3)] == [89, 133, 200]
    assert level_capacity(200, 30, 0) == 8
    assert round(normalized_rank_error(200), 4) == 0.0133


def test_float_items_are_kept_as_float32():
    sk = KLL(dtype="float").update(np.array([0.1, 0.2]))
    assert sk.levels[0].dtype == np.float32
    assert sk.quantile(0.0) == float(np.float32(0.1))
    with pytest.raises(ValueError, match="dtype"):
        KLL(dtype="int")


# -- accuracy ------------------------------------------------------------------------------


def _exceed_rate(errors, bound):
    errors = np.asarray(errors)
    return float(np.mean(errors > bound)), errors.shape[0]


def _three_sigma(rate, trials, p=0.01):
    return rate <= p + 3 * math.sqrt(p * (1 - p) / trials)


@pytest.mark.parametrize("batch", [None, 37])
def test_single_rank_error_within_published_bound(batch):
    """300 trials: a query's rank error exceeds the 99% bound in <= 1% (+3 sigma) of them."""
    k, n, trials = 200, 30_000, 300 if batch is None else 60
    bound = normalized_rank_error(k)
    errs_med, errs_p90, worst = [], [], []
    for t in range(trials):
        rng = np.random.default_rng(t)
        data = rng.permutation(n).astype(np.float64)
        sk = KLL(k, seed=t)
        if batch is None:
            sk.update(data)
        else:
            for lo in range(0, n, batch):
                sk.update(data[lo:lo + batch])
        sk._check()
        truth = np.arange(n, dtype=np.float64)
        errs_med.append(abs(_true_rank(truth, sk.quantile(0.5)) - 0.5))
        errs_p90.append(abs(_true_rank(truth, sk.quantile(0.9)) - 0.9))
        grid = np.linspace(0, n, 101)
        worst.append(np.abs(sk.cdf(grid)[:-1] - _true_rank(truth, grid)).max())
    for errs in (errs_med, errs_p90):
        rate, count = _exceed_rate(errs, bound)
        assert _three_sigma(rate, count), (rate, max(errs), bound)
    rate, count = _exceed_rate(worst, normalized_rank_error(k, pmf=True))
    assert _three_sigma(rate, count), (rate, max(worst))


def test_merged_sketches_keep_the_bound():
    k, parts, per = 100, 16, 5_000
    bound = normalized_rank_error(k)
    errs = []
    for t in range(80):
        rng = np.random.default_rng(1000 + t)
        data = rng.standard_normal(parts * per)
        sketches = [KLL(k, seed=t).update(data[i * per:(i + 1) * per]) for i in range(parts)]
        while len(sketches) > 1:  # a balanced tree
            sketches = [a.merge(b) for a, b in zip(sketches[::2], sketches[1::2])]
        sk = sketches[0]
        sk._check()
        assert sk.n == parts * per and sk.min == data.min() and sk.max == data.max()
        truth = np.sort(data)
        errs.append(abs(_true_rank(truth, sk.quantile(0.5)) - 0.5))
    rate, count = _exceed_rate(errs, bound)
    assert _three_sigma(rate, count), rate


def test_agrees_with_datasketches_kll_within_both_bounds():
    ds = pytest.importorskip("datasketches")
    data = np.random.default_rng(4).lognormal(size=200_000).astype(np.float32)
    ours = KLL(200, dtype="float").update(data)
    theirs = ds.kll_floats_sketch(200)
    theirs.update(data)
    truth = np.sort(data)
    for q in (0.01, 0.25, 0.5, 0.9, 0.99):
        for est in (ours.quantile(q), theirs.get_quantile(q)):
            assert abs(_true_rank(truth, est) - q) <= normalized_rank_error(200)


# -- determinism and merges ------------------------------------------------------------------


def test_same_updates_same_bytes_and_coin_depends_on_seed():
    data = np.random.default_rng(9).random(50_000)
    a, b = KLL(seed=1).update(data), KLL(seed=1).update(data)
    assert a.to_bytes() == b.to_bytes()
    assert KLL(seed=2).update(data).to_bytes() != a.to_bytes()


floats = st.lists(st.floats(-1e6, 1e6, allow_nan=False), max_size=400)


@settings(max_examples=60, deadline=None)
@given(floats, floats, st.sampled_from([8, 20]))
def test_merge_is_commutative_in_bytes_and_keeps_the_other(xs, ys, k):
    a, b = KLL(k).update(xs), KLL(k).update(ys)
    b_before = b.copy()
    ab = a.copy().merge(b)
    ba = b.copy().merge(a)
    assert ab.to_bytes() == ba.to_bytes()
    assert b == b_before
    ab._check()
    assert ab.n == len(xs) + len(ys)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(0, 2000), min_size=1, max_size=8), st.integers(0, 2**32 - 1))
def test_run_at_a_fixed_split_layout_is_reproducible(cuts, seed):
    data = np.random.default_rng(seed % 1000).standard_normal(2000)
    cuts = sorted(cuts)
    shards = [data[a:b] for a, b in zip([0, *cuts], [*cuts, 2000])]
    agg = quantiles(k=16)
    ref = mergeagg.run(agg, shards, workers=0, fan_in=2)
    assert ref.value.n == 2000
    again = mergeagg.run(agg, [s.copy() for s in shards], workers=0, fan_in=2)
    assert again.fingerprint == ref.fingerprint
    assert again.value.to_bytes() == ref.value.to_bytes()


@pytest.mark.slow
@pytest.mark.mergeagg_processes
def test_any_failure_schedule_gives_the_same_bytes():
    # The fingerprint covers the sketch's bytes: the same compactions, the same coins.
    data = np.random.default_rng(5).standard_normal(40_000)
    shards = np.array_split(data, 9)
    assert_failure_invariant(quantiles(k=32), shards, fan_in=3,
                             plans=["kill=0.3,seed=2,attempts=1", "raise=0.3,seed=7,attempts=1"])


def test_incompatible_merges_say_what_differs():
    with pytest.raises(IncompatibleMergeError, match="k: 100 != 200"):
        KLL(100).merge(KLL(200))
    with pytest.raises(IncompatibleMergeError, match="dtype: 'double' != 'float'"):
        KLL(dtype="double").merge(KLL(dtype="float"))
    with pytest.raises(IncompatibleMergeError, match="seed: 0 != 1"):
        KLL().merge(KLL(seed=1))
    from mergeagg.algorithms.hyperloglog import HyperLogLog

    with pytest.raises(TypeError, match="cannot merge a HyperLogLog into a KLL"):
        KLL().merge(HyperLogLog())
    with pytest.raises(ValueError):
        KLL(k=4)


# -- bytes, pickle, catalog ---------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(floats, st.sampled_from(["double", "float"]), st.integers(0, 2**32 - 1))
def test_bytes_and_pickle_round_trip(xs, dtype, seed):
    sk = KLL(8, dtype, seed).update(xs)
    back = KLL.from_bytes(sk.to_bytes())
    assert back == sk and load(sk.to_bytes()) == sk
    assert back.to_bytes() == sk.to_bytes()
    again = pickle.loads(pickle.dumps(sk))
    assert again == sk and mergeagg.fingerprint(again) == mergeagg.fingerprint(sk)
    again.update([1.0])
    assert again.n == sk.n + 1


def test_corrupt_bytes_are_refused():
    import struct
    import zlib

    good = KLL(8).update(np.arange(100.0)).to_bytes()

    def recrc(body):
        return body + struct.pack("<I", zlib.crc32(body))

    with pytest.raises(ValueError, match="checksum"):
        KLL.from_bytes(good[:-5] + good[-4:])
    with pytest.raises(ValueError, match="expected"):
        KLL.from_bytes(recrc(good[:-12]))
    with pytest.raises(ValueError, match="header says"):
        KLL.from_bytes(recrc(good[:16] + struct.pack("<Q", 99) + good[24:-4]))


def test_catalog_entry_reads_a_csv_field(tmp_path, capsys):
    from mergeagg.cli import main

    path = tmp_path / "lat.csv"
    path.write_text("x,y\n" + "".join(f"{i},{-i}\n" for i in range(1, 1001)) + ",\n")
    assert main(["run", "quantiles", str(path), "--workers", "0", "--format", "csv",
                 "--field", "x", "--q", "0.5,0.9,0.99"]) == 0
    out = capsys.readouterr().out
    assert "1,000 numbers" in out and "q=0.5" in out and "q=0.99" in out
    value = mergeagg.run(quantiles(field="x"), str(path), format="csv", workers=0).value
    for q in (0.5, 0.99):
        assert abs(value.quantile(q) - 1000 * q) <= 1000 * value.rank_error()
    jpath = tmp_path / "lat.jsonl"
    jpath.write_text("".join(f'{{"x": {i}}}\n' for i in range(10)))
    assert main(["run", "quantiles", str(jpath), "--workers", "0", "--format", "jsonl",
                 "--field", "x", "--q", "0.5"]) == 0
    assert "q=0.5" in capsys.readouterr().out
    assert mergeagg.algorithms.quantiles is quantiles
    with pytest.raises(SystemExit):  # refused when the command line is read, before a run
        main(["run", "quantiles", str(jpath), "--workers", "0", "--q", "0.5,2"])
    assert "ranks in [0, 1]" in capsys.readouterr().err
