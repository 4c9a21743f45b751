"""Tree, ring and keyed all-reduce on real worker processes, and the structural proof that
the fold runtime computes what an all-reduce computes.

Float order (see runtime/allreduce.py): the tree folds in the fold tree's order, so it is
compared with ``fold_fixed`` and with ``mergeagg.run`` **bitwise**; the ring folds chunk
``c`` around the ring from process ``c``, so it is compared with ``ring_reference``
**bitwise** and with the fold within a relative 1e-12 (a few ulps of rounding over at most
five terms of standard normals). Integer sums (count-min) and max (HyperLogLog) are bitwise
everywhere.
"""

import os
import sys
import tempfile
import time
from collections import Counter

import cloudpickle
import numpy as np
import psutil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mergeagg as ma
from mergeagg.algorithms.countmin import CountMin
from mergeagg.algorithms.hyperloglog import HyperLogLog
from mergeagg.errors import JobFailed, WorkerLost
from mergeagg.fingerprint import key_hashes
from mergeagg.runtime.allreduce import (
    COUNTMIN,
    HYPERLOGLOG,
    MAX,
    SUM,
    allreduce,
    chunk_bounds,
    partition_of,
    ring_reference,
    tree_edges,
)
from mergeagg.runtime.tree import fold_fixed

cloudpickle.register_pickle_by_value(sys.modules[__name__])

# Fewer examples than the profile's: every example starts up to five processes.
FEW = max(3, settings.default.max_examples // 8)


def float_agg(n):
    return ma.Aggregator(lambda seed: np.random.default_rng(seed).standard_normal(n),
                         lambda a, b: a + b, name="floats")


def countmin_agg(width):
    def partial(seed):
        keys = np.random.default_rng(seed).integers(0, 50, size=200)
        return CountMin(width, 3, seed=7).update(keys)

    return ma.Aggregator(partial, lambda a, b: a.merge(b), name="countmin")


def hll_agg(p):
    def partial(seed):
        return HyperLogLog(p=p, seed=3).update(np.arange(seed * 300, seed * 300 + 1000))

    return ma.Aggregator(partial, lambda a, b: a.merge(b), name="hll")


def size_not_divisible(p, base):
    """A size > p that p does not divide (any size for p = 1)."""
    n = base
    while p > 1 and n % p == 0:
        n += 1
    return n


def countmin_width(p, base):
    """A width whose ring array (3 rows x width cells + the total) p does not divide."""
    w = base
    while p > 1 and (3 * w + 1) % p == 0:
        w += 1
    return w


# HLL has 2**k registers: p = 3 and 5 never divide them; p = 2 and 4 always do, so there
# HLL's uneven chunks come from p = 3 and 5 only.
KINDS = {
    "floats": (lambda p: float_agg(size_not_divisible(p, 1001)), SUM),
    "countmin": (lambda p: countmin_agg(countmin_width(p, 37)), COUNTMIN),
    "hll": (lambda p: hll_agg(7), HYPERLOGLOG),
}


@pytest.fixture
def shm_dirs(monkeypatch):
    """The directories of shared-memory mailboxes the master creates during a test."""
    made = []
    real = tempfile.mkdtemp

    def recording(*args, **kwargs):
        path = real(*args, **kwargs)
        if os.path.basename(path).startswith("mergeagg-allreduce-"):
            made.append(path)
        return path

    monkeypatch.setattr(tempfile, "mkdtemp", recording)
    return made


def assert_gone(pids, within=5.0):
    deadline = time.monotonic() + within
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {p for p in alive if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE}
        if alive:
            time.sleep(0.05)
    assert not alive, f"all-reduce processes left behind: {sorted(alive)}"


def check_ring_bytes(result, n_elems, itemsize, transport="shm"):
    """Exact payload bytes per process; framing (16 B a message, the hello) on top, and
    with shared memory a 16-byte ack per step back to the left neighbour."""
    p = result.processes
    if p == 1:
        assert result.bytes_sent == [0] and result.bytes_received == [0]
        return
    b = chunk_bounds(n_elems, p)
    size = [(b[c + 1] - b[c]) * itemsize for c in range(p)]
    for r in range(p):
        payload = sum(size[(r - s) % p] + size[(r + 1 - s) % p] for s in range(p - 1))
        framing = result.bytes_sent[r] - payload
        least = 16 * (2 * p - 1) + (32 * (p - 1) if transport == "shm" else 0)
        assert least < framing < least + 200, (r, framing)
        assert abs(payload - result.textbook[r]) <= 2 * (p - 1) * itemsize
        assert result.bytes_received[r] == result.bytes_sent[(r - 1) % p]


# -- tree and ring, p = 1 .. 5, three accumulators ------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("p", [1, 2, 3, 4, 5])
def test_ring_matches_fold(p, kind, shm_dirs):
    make, view = KINDS[kind]
    agg = make(p)
    parts = [agg.partial(s) for s in range(p)]
    flat = [view.to_array(x).copy() for x in parts]
    if kind != "hll" or p in (3, 5):
        assert p == 1 or flat[0].shape[0] % p, "the size must not divide evenly"
    r = allreduce(agg, range(p), algorithm="ring", view=view)
    assert r.fingerprint == ma.fingerprint(r.value)
    assert len(shm_dirs) == (p > 1) and not any(os.path.exists(d) for d in shm_dirs)
    folded = fold_fixed([agg.partial(s) for s in range(p)], agg.combine, 8)
    if kind == "floats":
        assert np.array_equal(r.value, ring_reference(flat))  # bitwise, the ring's order
        np.testing.assert_allclose(r.value, folded, rtol=1e-12, atol=1e-12)
    else:
        assert r.fingerprint == ma.fingerprint(folded)  # integer sum / max: bitwise
    check_ring_bytes(r, flat[0].shape[0], flat[0].itemsize)


@pytest.mark.parametrize("p", [2, 3, 5])
def test_ring_through_pipes(p):
    agg = float_agg(301)  # 301 = 7 * 43: not divisible by 2, 3 or 5
    flat = [agg.partial(s) for s in range(p)]
    r = allreduce(agg, range(p), algorithm="ring", transport="pipe")
    assert np.array_equal(r.value, ring_reference(flat))
    check_ring_bytes(r, 301, 8, transport="pipe")


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("p", [1, 2, 3, 4, 5])
def test_tree_is_bitwise_the_fold_tree(p, kind):
    agg = KINDS[kind][0](p)
    r = allreduce(agg, range(p), algorithm="tree", fan_in=2)
    folded = fold_fixed([agg.partial(s) for s in range(p)], agg.combine, 2)
    assert r.fingerprint == ma.fingerprint(folded) == ma.fingerprint(r.value)
    # N up and down per tree edge; pickling and framing add a little.
    assert sum(r.textbook) == 2 * (p - 1) * r.nbytes
    for r_, (sent, textbook) in enumerate(zip(r.bytes_sent, r.textbook)):
        assert textbook <= sent <= textbook * 1.05 + 400, (r_, sent, textbook)


@settings(max_examples=FEW, deadline=None)
@given(p=st.integers(1, 5), base=st.integers(1, 400), seed=st.integers(0, 2**32 - 1),
       algorithm=st.sampled_from(["tree", "ring"]))
def test_any_size_and_data(p, base, seed, algorithm):
    n = size_not_divisible(p, base)
    agg = ma.Aggregator(lambda s: np.random.default_rng(s).integers(-9, 9, n),
                        lambda a, b: a + b)
    shards = [seed + i for i in range(p)]
    r = allreduce(agg, shards, algorithm=algorithm, fan_in=2)
    assert np.array_equal(r.value, agg.reduce(shards))


def test_ring_with_empty_chunks_and_max():
    # 3 elements over 5 processes: two chunks are empty, and steps still line up.
    agg = ma.Aggregator(lambda s: np.array([s, -s, 7 * (s % 2)], dtype=np.int64), np.maximum)
    r = allreduce(agg, range(5), algorithm="ring", view=MAX)
    assert chunk_bounds(3, 5) == [0, 0, 1, 1, 2, 3]
    assert r.value.tolist() == [4, 0, 7]
    assert r.fingerprint == ma.fingerprint(agg.reduce(range(5)))


def test_tree_edges_follow_the_fold_tree():
    assert tree_edges(1) == []
    assert tree_edges(5) == [(1, 0, 1), (2, 0, 1), (3, 0, 1), (4, 0, 1)]
    assert tree_edges(5, 2) == [(1, 0, 1), (3, 2, 1), (2, 0, 2), (4, 0, 3)]
    agg = ma.Aggregator(str, lambda a, b: f"({a}+{b})")
    assert allreduce(agg, range(5), fan_in=2).value == fold_fixed("01234", agg.combine, 2)


def test_ring_refuses_mismatched_sketches():
    agg = ma.Aggregator(lambda seed: HyperLogLog(p=6, seed=seed), lambda a, b: a.merge(b))
    with pytest.raises(JobFailed, match="same shape, dtype and parameters"):
        allreduce(agg, [1, 1, 2], algorithm="ring", view=HYPERLOGLOG)


# -- keyed: reduce-scatter by stable key hash, then all-gather -------------------------------


@pytest.mark.parametrize("p", [1, 3, 5])
def test_keyed_matches_fold(p):
    texts = ["a b c a", "b b d", "e a", "c c c f", "g a b"][:p]
    agg = ma.Aggregator(lambda t: Counter(t.split()), lambda a, b: a + b)
    r = allreduce(agg, texts, algorithm="keyed")
    assert r.value == agg.reduce(texts)
    assert r.fingerprint == ma.fingerprint(agg.reduce(texts))


def test_keyed_shares_are_the_reduce_scatter():
    texts = ["a b c a", "b b d", "e a f g", "c h"]
    agg = ma.Aggregator(lambda t: Counter(t.split()), lambda a, b: a + b)
    r = allreduce(agg, texts, algorithm="keyed", return_shares=True)
    assert len(r.shares) == 4
    for j, share in enumerate(r.shares):
        assert all(partition_of(k, 4) == j for k in share)
    union = Counter()
    for share in r.shares:
        assert not set(union) & set(share)
        union.update(share)
    assert union == r.value == agg.reduce(texts)
    with pytest.raises(ValueError, match="return_shares needs algorithm='keyed'"):
        allreduce(agg, texts, algorithm="tree", return_shares=True)


def test_partition_of_is_the_shuffles_key_hash():
    keys = ["x", 1, 1.0, (1, "x"), b"x"]
    assert [partition_of(k, 7) for k in keys] == (key_hashes(keys) % np.uint64(7)).tolist()


def test_partition_of_is_stable_and_typed():
    assert [partition_of(k, 7) for k in ("x", 1, 1.0, (1, "x"))] == \
           [partition_of(k, 7) for k in ("x", 1, 1.0, (1, "x"))]
    assert len({partition_of(k, 4) for k in range(100)}) == 4
    assert partition_of("apple", 1) == 0


# -- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm,die", [
    ("ring", (2, "reduce-scatter", 1)),
    ("ring", (1, "all-gather", 0)),
    ("tree", (2, "reduce", 1)),
    ("keyed", (3, "all-gather", 0)),
])
def test_a_dying_process_is_named_and_nothing_is_left(algorithm, die, shm_dirs):
    agg = ma.Aggregator(lambda s: np.full(11, float(s)), lambda a, b: a + b)
    if algorithm == "keyed":
        agg = ma.Aggregator(lambda s: {s: 1.0, "all": 1.0}, lambda a, b: {**a, **b})
    rank = die[0]
    with pytest.raises(WorkerLost) as info:
        allreduce(agg, range(5), algorithm=algorithm, fan_in=2, _die=die, timeout=30)
    err = info.value
    assert err.rank == rank and len(err.pids) == 5
    assert f"process {rank} (pid {err.pids[rank]}) was killed by signal 9" in str(err)
    assert "have been stopped" in str(err)
    assert_gone(err.pids)
    assert len(shm_dirs) == (algorithm == "ring")
    assert not any(os.path.exists(d) for d in shm_dirs), "a shared-memory mailbox was left"


def test_a_silent_process_is_named_after_the_timeout():
    agg = ma.Aggregator(lambda s: np.full(11, float(s)), lambda a, b: a + b)
    start = time.monotonic()
    with pytest.raises(WorkerLost, match=r"process 1 \(pid \d+\) went silent") as info:
        allreduce(agg, range(3), algorithm="ring", timeout=2,
                  _die=(1, "reduce-scatter", 0, "stop"))
    assert time.monotonic() - start < 30
    assert "did not answer before the deadline" in str(info.value)
    assert_gone(info.value.pids)


def test_user_code_raising_is_named():
    def partial(s):
        if s == 3:
            raise RuntimeError("bad shard three")
        return np.zeros(4)

    with pytest.raises(JobFailed, match=r"process 3 \(pid \d+\) raised RuntimeError: bad "
                                        r"shard three") as info:
        allreduce(ma.Aggregator(partial, lambda a, b: a + b), range(4), algorithm="ring")
    assert not isinstance(info.value, WorkerLost)
    assert_gone(info.value.pids)


def test_bad_arguments():
    agg = ma.Aggregator(len, lambda a, b: a + b)
    with pytest.raises(ValueError, match="unknown algorithm"):
        allreduce(agg, [[1]], algorithm="butterfly")
    with pytest.raises(ValueError, match="at least one shard"):
        allreduce(agg, [])
    with pytest.raises(TypeError, match="needs an Aggregator"):
        allreduce(len, [[1]])
    with pytest.raises(TypeError, match="ArrayView"):
        allreduce(agg, [[1]], algorithm="ring", view=np.add)


# -- the structural proof: the fold runtime computes an all-reduce ----------------------------


@pytest.mark.slow
@pytest.mark.parametrize("fan_in", [2, 8])
def test_fold_runtime_equals_tree_and_ring(fan_in):
    shards = list(range(5))
    cm, hll, floats = countmin_agg(101), hll_agg(8), float_agg(1003)
    first = lambda agg: ma.Aggregator(lambda shard: agg.partial(shard[0]), agg.combine)
    job = ma.product(cm=first(cm), hll=first(hll), floats=first(floats))
    run = ma.run(job, [[s] for s in shards], workers=2, fan_in=fan_in).value
    for name, agg, view in (("cm", cm, COUNTMIN), ("hll", hll, HYPERLOGLOG)):
        tree = allreduce(agg, shards, algorithm="tree", fan_in=fan_in)
        ring = allreduce(agg, shards, algorithm="ring", view=view)
        assert tree.fingerprint == ring.fingerprint == ma.fingerprint(run[name])
    tree = allreduce(floats, shards, algorithm="tree", fan_in=fan_in)
    assert np.array_equal(tree.value, run["floats"])  # the same tree, the same order: bitwise
    ring = allreduce(floats, shards, algorithm="ring")
    assert np.array_equal(ring.value, ring_reference([floats.partial(s) for s in shards]))
    np.testing.assert_allclose(ring.value, run["floats"], rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_fold_runtime_on_mappings_equals_keyed_allreduce():
    texts = ["to be or not", "to be", "that is the question", "or not to be"]
    agg = ma.algorithms.wordcount()
    run = ma.run(agg, [[t] for t in texts], workers=2)
    keyed = allreduce(agg, [[t] for t in texts], algorithm="keyed")
    assert keyed.fingerprint == run.fingerprint


def test_keyed_tables_and_finalize_match_the_fold_runtime():
    # an inverted index: KeyedTable accumulators, and a finalize that sorts the postings
    agg = ma.algorithms.invertedindex()
    shards = [[(1, "a b"), (2, "b c")], [(3, "c d"), (4, "a")], [(5, "e a")]]
    r = allreduce(agg, shards, algorithm="keyed")
    serial = ma.run(agg, shards, workers=0)
    assert r.value == serial.value and r.fingerprint == serial.fingerprint


def _word_pairs(lines):
    return ((w, 1) for line in lines for w in line.split())


def _word_table(text):
    return Counter(text.split())


def _plus(a, b):
    return a + b


def test_keyed_shuffle_output_equals_keyed_reduce_scatter(tmp_path):
    """The keyed runtime's shuffle + per-key reduce is a reduce-scatter.

    A keyed word count with R = p partitions and the map-side combiner on, and the keyed
    all-reduce whose partials are the same per-shard tables: reduce partition j holds
    exactly ``shares[j]``, since both partition by ``key_hashes(key) % R``; the union of
    the partitions (the all-gather) is the all-reduce's value, fingerprint for fingerprint.
    """
    shards = ["a b c a", "b c d e e", "f a g h b", "c c i j"]
    p = len(shards)
    job = ma.KeyedJob(_word_pairs, _plus)
    out = tmp_path / "out"
    shuffled = ma.run(job, [[s] for s in shards], workers=2, partitions=p, output=str(out))
    partitions = [dict(ma.runtime.shuffle.KeyedOutput(str(out), [part]).items())
                  for part in shuffled.value.parts]
    agg = ma.Aggregator(_word_table, _plus)
    reduced = allreduce(agg, shards, algorithm="keyed", return_shares=True)
    assert [dict(share) for share in reduced.shares] == partitions
    assert shuffled.fingerprint == reduced.fingerprint == ma.fingerprint(Counter(
        " ".join(shards).split()))

