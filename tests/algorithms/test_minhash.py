"""MinHash and LSH: Jaccard error within 3 sigma, LSH recall, the datasketch cross-check,
exact merge laws (signatures and bucket tables), compatibility and the byte format."""

import math
import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import mergeagg
from mergeagg.algorithms._sketch import load
from mergeagg.algorithms.minhash import (
    LSHIndex,
    MinHash,
    minhash,
    optimal_bands,
    s_curve,
    signatures,
    similarity,
    similarity_source,
)
from mergeagg.errors import IncompatibleMergeError


def _pair(rng, size, j):
    """Two sets of ``size`` keys each with Jaccard exactly ``round``-ed to ``j``."""
    shared = round(2 * size * j / (1 + j))
    pool = rng.choice(10**12, size=2 * size - shared, replace=False)
    a = pool[:size]
    b = np.r_[pool[:shared], pool[size:]]
    return a, b, shared / (2 * size - shared)


@pytest.mark.parametrize("j_target", [0.1, 0.5, 0.8, 0.95])
def test_jaccard_error_within_three_sigma(j_target):
    """300 independent seeds: bias within 3 standard errors, spread at most sigma (+3 sigma
    of its own sampling error), and under 1% of estimates beyond 3 sigma."""
    rng = np.random.default_rng(int(j_target * 100))
    k, trials = 128, 300
    errs = []
    for seed in range(trials):
        a, b, j = _pair(rng, 300, j_target)
        sig = signatures([a, b], k, seed)
        errs.append(np.mean(sig[0] == sig[1]) - j)
    errs = np.array(errs)
    sigma = math.sqrt(j * (1 - j) / k)
    assert abs(errs.mean()) <= 3 * sigma / math.sqrt(trials)
    assert errs.std() <= sigma * (1 + 3 / math.sqrt(2 * trials))
    assert np.mean(np.abs(errs) > 3 * sigma) <= 0.01


def test_agrees_with_datasketch_on_the_same_sets():
    datasketch = pytest.importorskip("datasketch")
    rng = np.random.default_rng(21)
    k = 128
    for j_target in [0.2, 0.5, 0.9]:
        a, b, j = _pair(rng, 400, j_target)
        sigma = math.sqrt(j * (1 - j) / k)
        a_keys = [int(x).to_bytes(8, "little") for x in a]
        b_keys = [int(x).to_bytes(8, "little") for x in b]
        ours = MinHash(k, seed=3).update(a_keys).jaccard(MinHash(k, seed=3).update(b_keys))
        da, db = datasketch.MinHash(num_perm=k, seed=3), datasketch.MinHash(num_perm=k, seed=3)
        da.update_batch(a_keys)
        db.update_batch(b_keys)
        theirs = da.jaccard(db)
        assert abs(ours - j) <= 3 * sigma and abs(theirs - j) <= 3 * sigma
        assert abs(ours - theirs) <= 3 * math.sqrt(2) * sigma


def test_lsh_recall_above_the_threshold_and_the_s_curve():
    """Pairs at Jaccard >= threshold + 0.1 are candidates at least 95% of the time, and the
    candidate rate at a fixed Jaccard matches the S-curve within 3 binomial sigmas."""
    rng = np.random.default_rng(5)
    for threshold in [0.5, 0.8]:
        index = LSHIndex(threshold, num_perm=128)
        js = np.linspace(threshold + 0.1, 1.0, 200)
        found = 0
        for i, jt in enumerate(js):
            a, b, _ = _pair(rng, 100, min(jt, 1.0))
            sig = signatures([a, b], 128)
            index.insert_signatures([(i, "a"), (i, "b")], sig)
        pairs = index.candidate_pairs()
        found = sum(((i, "a"), (i, "b")) in pairs for i in range(len(js)))
        assert found / len(js) >= 0.95, (threshold, found)
    index = LSHIndex(0.5, num_perm=128, bands=16, rows=4)
    trials, j_fixed = 400, 0.4
    for i in range(trials):
        a, b, j = _pair(rng, 200, j_fixed)
        index.insert_signatures([(i, 0), (i, 1)], signatures([a, b], 128))
    pairs = index.candidate_pairs()
    rate = sum(((i, 0), (i, 1)) in pairs for i in range(trials)) / trials
    p = float(s_curve(j, 16, 4))
    assert abs(rate - p) <= 3 * math.sqrt(p * (1 - p) / trials)


def test_optimal_bands_weighs_errors_and_keeps_recall():
    for t in [0.3, 0.5, 0.7, 0.8, 0.9]:
        b, r = optimal_bands(t, 128)
        assert b * r <= 128 and s_curve(min(t + 0.1, 1.0), b, r) >= 0.975
    # Weighing false positives more gives a steeper, more selective curve.
    b1, r1 = optimal_bands(0.5, 128, fp_weight=0.9, fn_weight=0.1, recall=0.0)
    b2, r2 = optimal_bands(0.5, 128, fp_weight=0.1, fn_weight=0.9, recall=0.0)
    assert s_curve(0.4, b1, r1) < s_curve(0.4, b2, r2)
    with pytest.raises(ValueError, match="strictly between"):
        optimal_bands(1.0, 128)
    with pytest.raises(ValueError, match="exceeds num_perm"):
        LSHIndex(0.5, 16, bands=5, rows=4)
    with pytest.raises(TypeError, match="both bands and rows"):
        LSHIndex(0.5, 16, bands=5)


keys = st.lists(st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=6)), max_size=60)


@given(keys, st.lists(st.integers(0, 60), max_size=5), st.integers(1, 64))
def test_signature_of_union_is_merge_of_signatures(items, cuts, k):
    cuts = sorted(min(c, len(items)) for c in cuts)
    bounds = [0, *cuts, len(items)]
    shards = [items[a:b] for a, b in zip(bounds, bounds[1:])]
    whole = MinHash(k, seed=9).update(items)
    parts = [MinHash(k, seed=9).update(s) for s in shards]
    frozen = [p.copy() for p in parts]
    acc = parts[0]
    for other in parts[1:]:
        acc.merge(other)
    assert np.array_equal(acc.hashvalues, whole.hashvalues)
    acc._check()
    assert all(a == b for a, b in zip(parts[1:], frozen[1:]))
    one = MinHash(k, seed=9)
    for x in items:
        one.add(x)
    assert one == whole
    assert np.array_equal(signatures(shards + [items], k, 9)[-1], whole.hashvalues)
    r = mergeagg.run(minhash(num_perm=k, seed=9), shards, workers=0, fan_in=2)
    assert r.value == whole and r.fingerprint == mergeagg.fingerprint(whole)


@given(st.lists(st.lists(st.integers(0, 30), max_size=12), min_size=1, max_size=12),
       st.integers(1, 11))
def test_lsh_index_of_all_equals_merge_of_indexes_of_any_sharding(docs, cut):
    cut = min(cut, len(docs))
    sig = signatures(docs, 32)
    whole = LSHIndex(0.5, 32).insert_signatures(range(len(docs)), sig)
    left = LSHIndex(0.5, 32).insert_signatures(range(cut), sig[:cut])
    right = LSHIndex(0.5, 32).insert_signatures(range(cut, len(docs)), sig[cut:])
    frozen = pickle.loads(pickle.dumps(right))
    assert left.merge(right) == whole
    left._check()
    whole._check()
    assert right == frozen
    assert mergeagg.fingerprint(left) == mergeagg.fingerprint(whole)
    assert whole.keys() == set(range(len(docs)))
    for i, d in enumerate(docs):
        m = MinHash(32).update(d)
        assert i in whole.query(m)


def test_bulk_and_signatures_match_one_by_one():
    rng = np.random.default_rng(2)
    docs = [[rng.bytes(int(n)) for n in rng.integers(1, 20, int(m))]
            for m in rng.integers(0, 300, 40)]
    docs.append([rng.bytes(5) for _ in range(9000)])  # longer than one block
    bulk = MinHash.bulk(docs, 64, seed=4)
    for d, m in zip(docs, bulk):
        assert m == MinHash(64, seed=4).update(d)
    assert bulk[0].is_empty() == (len(docs[0]) == 0)


def test_cardinality_estimate():
    m = MinHash(256).update(np.arange(50_000))
    assert abs(m.count() / 50_000 - 1) <= 3 / math.sqrt(256)
    assert MinHash().count() == 0.0


def test_incompatible_merges_and_comparisons_raise():
    with pytest.raises(IncompatibleMergeError) as info:
        MinHash(64, seed=1).merge(MinHash(128, seed=2))
    assert "num_perm: 64 != 128" in str(info.value) and "seed: 1 != 2" in str(info.value)
    with pytest.raises(IncompatibleMergeError, match="num_perm"):
        MinHash(64).jaccard(MinHash(32))
    with pytest.raises(IncompatibleMergeError, match="threshold: 0.5 != 0.8"):
        LSHIndex(0.5, 128, bands=16, rows=8).merge(LSHIndex(0.8, 128, bands=16, rows=8))
    with pytest.raises(ValueError, match="num_perm=64"):
        LSHIndex(0.5, 128).insert("x", MinHash(64))
    with pytest.raises(TypeError, match="call add"):
        MinHash().update("doc")


@given(keys, st.integers(1, 200), st.integers(0, 2**32 - 1))
def test_bytes_round_trip(items, k, seed):
    m = MinHash(k, seed).update(items)
    data = m.to_bytes()
    assert len(data) == 12 + 4 + 8 * k + 4
    back = MinHash.from_bytes(data)
    assert back == m and load(data) == m and back.jaccard(m) == 1.0
    assert pickle.loads(pickle.dumps(m)) == m


def test_garbage_bytes_are_rejected():
    good = MinHash(8).update([1]).to_bytes()
    import struct
    import zlib

    def recrc(d):
        return d[:-4] + struct.pack("<I", zlib.crc32(d[:-4]))

    for data, words in {good[:-5]: "checksum",
                        recrc(good[:12] + (0).to_bytes(4, "little") + good[16:]): "num_perm 0",
                        recrc(good[:-12] + good[-4:]): "expected 68 bytes",
                        b"MGSK" + bytes(20): "checksum"}.items():
        with pytest.raises(ValueError, match=words):
            MinHash.from_bytes(data)


def test_cli_minhash_of_one_input(tmp_path, capsys):
    from mergeagg.cli import main

    path = tmp_path / "x.txt"
    path.write_text("a\nb\nc\n")
    assert main(["run", "minhash", str(path), "--workers", "0", "--num-perm", "64"]) == 0
    out = capsys.readouterr().out
    assert "num_perm=64" in out and "give two or more inputs" in out
    assert mergeagg.algorithms.minhash is similarity


def _set_jaccard(a, b):
    return len(a & b) / len(a | b) if a | b else 1.0


@given(st.lists(st.lists(st.sampled_from("abcdefghij"), max_size=15), min_size=1, max_size=4),
       st.data())
def test_similarity_is_each_inputs_minhash_whatever_the_sharding(sets, data):
    # Each input cut into shards at random points (several splits per input, as files are):
    # the signatures are those of each whole set, the exact figures those of Python's sets,
    # and the fingerprint does not depend on the cuts.
    src = similarity_source(sets)
    tagged = [list(src.read(sp)) for sp in src.splits()]  # one list of records per input
    shards = []
    for records in tagged:
        cuts = sorted(data.draw(st.lists(st.integers(0, len(records)), max_size=3)))
        bounds = [0, *cuts, len(records)]
        shards += [records[a:b] for a, b in zip(bounds, bounds[1:])]
    order = data.draw(st.permutations(range(len(shards))))
    agg = similarity(num_perm=32, seed=5, exact=True)
    got = mergeagg.run(agg, [shards[k] for k in order], workers=0, fan_in=2)
    whole = similarity(num_perm=32, seed=5, exact=True).reduce(tagged)
    names = tuple(f"input {i}" for i in range(len(sets)))
    assert got.fingerprint == mergeagg.fingerprint(whole)
    value = got.value
    assert value.names == names
    assert value.distinct == tuple(len(set(lines)) for lines in sets)
    for i, lines in enumerate(sets):
        assert value.signatures[i] == MinHash(32, seed=5).update(lines)
    for i, j in value.pairs():
        assert value.exact_jaccard(i, j) == _set_jaccard(set(sets[i]), set(sets[j]))
        assert value.jaccard(i, j) == value.signatures[i].jaccard(value.signatures[j])


def test_similarity_on_files_with_workers_and_its_errors(tmp_path):
    rng = np.random.default_rng(3)
    a = [f"line {x}" for x in rng.integers(0, 400, 300)]
    b = [f"line {x}" for x in rng.integers(200, 600, 300)]
    (tmp_path / "a.txt").write_text("\n".join(a) + "\n")
    (tmp_path / "b.txt").write_text("\n".join(b) + "\n")
    (tmp_path / "empty.txt").write_text("")
    paths = [str(tmp_path / n) for n in ("a.txt", "b.txt", "empty.txt")]
    src = similarity_source(paths, split_size=256)
    assert len(src) > 6
    serial = mergeagg.run(similarity(exact=True), src, workers=0)
    parallel = mergeagg.run(similarity(exact=True), src, workers=2)
    assert parallel.fingerprint == serial.fingerprint
    sim = serial.value
    assert sim.names == tuple(paths) and sim.distinct == (len(set(a)), len(set(b)), 0)
    assert sim.exact_jaccard(0, 1) == _set_jaccard(set(a), set(b))
    assert sim.signatures[2].is_empty() and sim.exact_jaccard(0, 2) == 0.0
    assert abs(sim.jaccard(0, 1) - sim.exact_jaccard(0, 1)) < 4 * math.sqrt(0.25 / 128)
    assert pickle.loads(pickle.dumps(sim)) == sim
    with pytest.raises(ValueError, match="exact=True"):
        mergeagg.run(similarity(), src, workers=0).value.exact_jaccard(0, 1)
    with pytest.raises(TypeError, match="tagged with their input"):
        similarity().reduce([["a line"]])
    with pytest.raises(TypeError, match="list of inputs"):
        similarity_source(paths[0])


def test_cli_compares_two_inputs(tmp_path, capsys):
    import json

    from mergeagg.cli import main

    (tmp_path / "a.txt").write_text("".join(f"{i}\n" for i in range(0, 60)))
    (tmp_path / "b.txt").write_text("".join(f"{i}\n" for i in range(30, 90)))
    out = tmp_path / "sim.json"
    argv = ["run", "minhash", str(tmp_path / "a.txt"), str(tmp_path / "b.txt"), "--workers",
            "0", "--split-size", "64"]
    assert main(argv + ["--exact", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "exact 0.3333 (30 of 90 lines)" in text and "MinHash estimate" in text
    pair = json.loads(out.read_text())["value"]["pairs"][0]
    assert pair["exact"] == 1 / 3 and abs(pair["estimate"] - 1 / 3) < 4 * math.sqrt(2 / 9 / 128)
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert f"~ {pair['estimate']:.4f}" in text and "exact" not in text
