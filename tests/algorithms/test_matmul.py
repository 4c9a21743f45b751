"""Blocked matmul: bitwise identical for any sharding and merge order, close to numpy."""

import os
import pickle

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import mergeagg as ma
from mergeagg.algorithms.matmul import (
    BlockSum,
    BlockTask,
    assemble_tiles,
    blas_threads,
    block_products,
    default_threads,
    matmul,
    matmul_source,
    run_matmul,
)
from mergeagg.cli import main as cli_main
from mergeagg.testing import assert_failure_invariant


def blocked_reference(a, b, block):
    """Each tile summed over K in ascending order, by a plain loop."""
    m, n = a.shape
    p = b.shape[1]
    c = np.empty((m, p), dtype=np.result_type(a, b))
    for i0 in range(0, m, block):
        for j0 in range(0, p, block):
            total = None
            for k0 in range(0, n, block):
                prod = (np.ascontiguousarray(a[i0:i0 + block, k0:k0 + block])
                        @ np.ascontiguousarray(b[k0:k0 + block, j0:j0 + block]))
                total = prod if total is None else total + prod
            c[i0:i0 + block, j0:j0 + block] = total
    return c


@st.composite
def problem(draw):
    m, n, p = (draw(st.integers(1, 11)) for _ in range(3))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    # wide magnitudes, so that a different summation order would change the bits
    a = rng.normal(size=(m, n)) * 10.0 ** rng.integers(-8, 8, size=(m, n))
    b = rng.normal(size=(n, p)) * 10.0 ** rng.integers(-8, 8, size=(n, p))
    block = draw(st.integers(1, 5))
    return a, b, block


@given(problem(), st.data())
def test_bitwise_identical_for_any_task_layout_and_fan_in(prob, data):
    a, b, block = prob
    n_k = -(-a.shape[1] // block)
    k_split = data.draw(st.one_of(st.none(), st.integers(1, n_k)))
    per = data.draw(st.integers(1, 4))
    fan_in = data.draw(st.integers(2, 5))
    src = matmul_source(a, b, block=block, k_split=k_split, tasks_per_split=per)
    got = ma.run(matmul(), src, workers=0, fan_in=fan_in)
    expected = blocked_reference(a, b, block)
    assert got.value.tobytes() == expected.tobytes()
    assert got.fingerprint == ma.fingerprint(expected)
    assert np.allclose(got.value, a @ b, rtol=1e-9, atol=1e-9 * (np.abs(a) @ np.abs(b)).max())


@given(problem(), st.randoms(use_true_random=False))
def test_merge_order_never_changes_the_k_sum_order(prob, rnd):
    a, b, block = prob
    src = matmul_source(a, b, block=block, k_split=1)
    parts = [block_products(src.read(s)) for s in src.splits()]
    rnd.shuffle(parts)
    agg = matmul()
    acc = parts[0]
    for part in parts[1:]:
        acc = agg.combine(acc, part)
        for tile in acc.values():
            tile._check()
    assert agg.finalize(acc).tobytes() == blocked_reference(a, b, block).tobytes()


def test_npy_paths_give_the_same_bits_as_arrays(tmp_path):
    rng = np.random.default_rng(11)
    a, b = rng.normal(size=(37, 23)), rng.normal(size=(23, 29))
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    from_files = ma.run(matmul(), matmul_source(str(tmp_path / "a.npy"), tmp_path / "b.npy",
                                                block=8, k_split=2), workers=0)
    from_arrays = ma.run(matmul(), matmul_source(a, b, block=8), workers=0)
    assert from_files.fingerprint == from_arrays.fingerprint
    assert np.allclose(from_files.value, a @ b)
    # path tasks carry paths, not data
    task = matmul_source(str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), block=8
                         ).splits()[0].payload[0]
    assert isinstance(task.a, str) and len(pickle.dumps(task)) < 1000


def test_integer_matrices_are_exact():
    a = np.arange(30, dtype=np.int64).reshape(5, 6)
    b = np.arange(24, dtype=np.int64).reshape(6, 4) - 7
    c = matmul().reduce(matmul_source(a, b, block=4).read(s)
                        for s in matmul_source(a, b, block=4).splits())
    assert c.dtype == np.int64 and (c == a @ b).all()


def test_tiles_without_assembly():
    a, b = np.ones((3, 3)), np.ones((3, 3))
    src = matmul_source(a, b, block=2)
    tiles = matmul(assemble=False).reduce(src.read(s) for s in src.splits())
    assert sorted(tiles) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert tiles[(1, 1)].shape == (1, 1) and tiles[(0, 0)][0, 0] == 3.0


def test_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(ValueError, match="A is 2x3 and B is 2x2"):
        matmul_source(np.ones((2, 3)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="must be 2-D"):
        matmul_source(np.ones(3), np.ones((3, 1)))
    with pytest.raises(ValueError, match="block must be a positive"):
        matmul_source(np.ones((2, 2)), np.ones((2, 2)), block=0)
    with pytest.raises(TypeError, match="ndarray or a .npy path"):
        matmul_source([[1.0]], np.ones((1, 1)))
    with pytest.raises(ma.InputError, match="no such file"):
        matmul_source(str(tmp_path / "missing.npy"), np.ones((1, 1)))
    src = matmul_source(np.ones((2, 2)), np.ones((2, 2)), block=1, k_split=1)
    part = block_products(src.read(src.splits()[0]))
    with pytest.raises(ValueError, match="arrived twice"):
        matmul().combine(part, block_products(src.read(src.splits()[0])))
    one = matmul_source(np.ones((1, 2)), np.ones((2, 1)), block=1, k_split=1)
    with pytest.raises(ValueError, match="missing K block 1 of 2"):
        matmul().finalize(block_products(one.read(one.splits()[0])))
    whole = block_products(matmul_source(np.ones((2, 2)), np.ones((2, 2)), block=1)
                           .read(matmul_source(np.ones((2, 2)), np.ones((2, 2)), block=1)
                                 .splits()[0]))
    with pytest.raises(ValueError, match="never computed"):
        matmul().finalize(whole)
    with pytest.raises(TypeError, match="reads BlockTasks"):
        block_products([1])


def test_aggregator_tasks_and_partials_survive_pickle():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(6, 5)), rng.normal(size=(5, 4))
    src = matmul_source(a, b, block=2, k_split=2)
    agg = pickle.loads(pickle.dumps(matmul()))
    parts = [pickle.loads(pickle.dumps(agg.partial(pickle.loads(pickle.dumps(src.read(s))))))
             for s in src.splits()]
    acc = parts[0]
    for part in parts[1:]:
        snapshot = pickle.dumps(part)
        acc = agg.combine(acc, part)
        assert pickle.dumps(part) == snapshot  # the second operand is untouched
    assert agg.finalize(acc).tobytes() == blocked_reference(a, b, 2).tobytes()
    s = BlockSum(2, (0, 1), (0, 1), (1, 1))
    s.add(1, np.ones((1, 1)))
    assert ma.fingerprint(pickle.loads(pickle.dumps(s))) == ma.fingerprint(s)


def test_cli_matmul(tmp_path, capsys):
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(20, 12)), rng.normal(size=(12, 9))
    np.save(tmp_path / "A.npy", a)
    np.save(tmp_path / "B.npy", b)
    out = tmp_path / "C.npy"
    assert cli_main(["run", "matmul", str(tmp_path / "A.npy"), str(tmp_path / "B.npy"),
                     "--block", "5", "--k-split", "1", "--workers", "0", "--out",
                     str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "C: 20x9 float64"
    assert np.load(out).tobytes() == blocked_reference(a, b, 5).tobytes()


@pytest.mark.slow
@pytest.mark.mergeagg_processes
def test_a_worker_death_leaves_the_product_bitwise_unchanged(tmp_path):
    from mergeagg.runtime.faults import Fault, FaultPlan

    rng = np.random.default_rng(8)
    np.save(tmp_path / "A.npy", rng.normal(size=(60, 50)))
    np.save(tmp_path / "B.npy", rng.normal(size=(50, 40)))
    src = matmul_source(str(tmp_path / "A.npy"), str(tmp_path / "B.npy"), block=16, k_split=2)
    assert_failure_invariant(matmul(), src, plans=[FaultPlan(only={"map-3": {1: Fault("kill")}})])


@given(problem(), st.data())
def test_keyed_job_gives_the_same_bits(prob, data):
    a, b, block = prob
    n_k = -(-a.shape[1] // block)
    k_split = data.draw(st.one_of(st.none(), st.integers(1, n_k)))
    src = matmul_source(a, b, block=block, k_split=k_split)
    got = ma.run(matmul(keyed=True), src, workers=0, partitions=data.draw(st.integers(1, 3)))
    c = assemble_tiles(got.value)
    assert c.tobytes() == blocked_reference(a, b, block).tobytes()
    with pytest.raises(ValueError, match="never computed"):
        assemble_tiles({(0, 0): np.ones((1, 1)), (1, 1): np.ones((1, 1))})


@pytest.mark.slow
def test_keyed_matmul_on_workers_with_part_files(tmp_path, capsys):
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(40, 30)), rng.normal(size=(30, 20))
    np.save(tmp_path / "A.npy", a)
    np.save(tmp_path / "B.npy", b)
    src = matmul_source(str(tmp_path / "A.npy"), str(tmp_path / "B.npy"), block=8, k_split=1)
    keyed = ma.run(matmul(keyed=True), src, workers=2, partitions=3,
                   output=str(tmp_path / "C"), output_format="framed")
    assert assemble_tiles(keyed.value).tobytes() == blocked_reference(a, b, 8).tobytes()
    assert cli_main(["run", "matmul", str(tmp_path / "A.npy"), str(tmp_path / "B.npy"),
                     "--block", "8", "--keyed", "--workers", "0"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "C: 40x20 float64"


def test_the_cli_prints_the_fingerprint_of_c_for_the_fold_and_the_keyed_job(tmp_path, capsys):
    # Issue 14, item 4: the keyed matmul printed the fingerprint of its tile dict.
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(20, 12)), rng.normal(size=(12, 9))
    np.save(tmp_path / "A.npy", a)
    np.save(tmp_path / "B.npy", b)
    argv = ["run", "matmul", str(tmp_path / "A.npy"), str(tmp_path / "B.npy"), "--block", "4",
            "--workers", "0", "--out", str(tmp_path / "C.npy")]
    printed = []
    for extra in ([], ["--keyed", "-R", "3"], ["--keyed", "-R", "1"]):
        assert cli_main(argv + extra) == 0
        printed.append(capsys.readouterr().out.splitlines()[-1])
    c = np.load(tmp_path / "C.npy")
    assert set(printed) == {f"fingerprint {ma.fingerprint(c)}"}
    src = matmul_source(a, b, block=4)
    results = [run_matmul(matmul(), src, workers=0)] + [
        run_matmul(matmul(keyed=True), src, workers=0, partitions=r) for r in (1, 2, 4)]
    assert {r.fingerprint for r in results} == {ma.fingerprint(results[0].value)}


def test_threads_per_worker_limits_the_blas_during_the_products(monkeypatch):
    if blas_threads() is None:
        pytest.skip("no OpenBLAS found in this process")
    seen = []
    operands = BlockTask.operands

    def spy(self, k):
        seen.append(blas_threads())
        return operands(self, k)

    monkeypatch.setattr(BlockTask, "operands", spy)
    before = blas_threads()
    a = np.ones((4, 4))
    src = matmul_source(a, a, block=2)
    assert (ma.run(matmul(threads_per_worker=1), src, workers=0).value == a @ a).all()
    assert set(seen) == {1}
    assert blas_threads() == before  # restored after each task
    seen.clear()
    ma.run(matmul(), src, workers=0)  # in process, by default: the BLAS's own setting
    assert set(seen) == {before}
    assert default_threads(0) is None and default_threads(1) == (os.cpu_count() or 1)
    with pytest.raises(ValueError, match="threads_per_worker"):
        matmul(threads_per_worker=0)
