"""matmul_source(..., out=C.npy): tiles written in place give the very bits of the shipped ones."""

import os
import tempfile

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import mergeagg as ma
from mergeagg.algorithms.matmul import (
    WrittenTile,
    assemble_tiles,
    block_products,
    matmul,
    matmul_source,
)
from mergeagg.cli import main as cli_main
from mergeagg.errors import InputError


@st.composite
def problem(draw):
    m, n, p = (draw(st.integers(1, 11)) for _ in range(3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # wide magnitudes, so that any other summation order would change the last bits
    a = rng.normal(size=(m, n)) * 10.0 ** rng.integers(-8, 8, size=(m, n))
    b = rng.normal(size=(n, p)) * 10.0 ** rng.integers(-8, 8, size=(n, p))
    return a, b, draw(st.integers(1, 5))


@given(problem(), st.integers(1, 4), st.integers(2, 5), st.booleans())
def test_in_place_gives_the_bits_of_the_shipped_tiles_for_any_layout(prob, per, fan_in,
                                                                      paths):
    a, b, block = prob
    with tempfile.TemporaryDirectory() as d:
        if paths:
            np.save(os.path.join(d, "A.npy"), a)
            np.save(os.path.join(d, "B.npy"), b)
            a_in, b_in = os.path.join(d, "A.npy"), os.path.join(d, "B.npy")
        else:
            a_in, b_in = a, b
        out = os.path.join(d, "C.npy")
        shipped = ma.run(matmul(), matmul_source(a_in, b_in, block=block, tasks_per_split=per),
                         workers=0, fan_in=fan_in)
        src = matmul_source(a_in, b_in, block=block, tasks_per_split=per, out=out)
        written = ma.run(matmul(), src, workers=0, fan_in=fan_in)
        assert isinstance(written.value, np.memmap)
        assert written.value.tobytes() == shipped.value.tobytes()
        assert written.fingerprint == shipped.fingerprint
        assert np.load(out).tobytes() == shipped.value.tobytes()
        tiles = ma.run(matmul(assemble=False), src, workers=0).value
        assert assemble_tiles(tiles).tobytes() == shipped.value.tobytes()
        keyed = ma.run(matmul(keyed=True), src, workers=0, partitions=2)
        assert assemble_tiles(keyed.value).tobytes() == shipped.value.tobytes()
        del written, tiles, keyed


def test_a_task_returns_only_its_tiles_place_and_fingerprint(tmp_path):
    a = np.arange(12.0).reshape(3, 4)
    src = matmul_source(a, a.T, block=2, out=tmp_path / "C.npy")
    part = block_products(src.read(src.splits()[0]))
    (tile,) = part.values()
    assert isinstance(tile, WrittenTile) and tile.rows == (0, 2) and tile.cols == (0, 2)
    assert tile.fingerprint == ma.fingerprint((a @ a.T)[:2, :2])
    assert tile.copy() is tile
    with pytest.raises(ValueError, match="written twice"):
        matmul().combine(part, dict(part))


@pytest.mark.slow
def test_worker_deaths_leave_the_written_product_bitwise_unchanged(tmp_path):
    from mergeagg.runtime.faults import Fault, FaultPlan

    rng = np.random.default_rng(18)
    np.save(tmp_path / "A.npy", rng.normal(size=(60, 50)))
    np.save(tmp_path / "B.npy", rng.normal(size=(50, 40)))
    a_path, b_path = str(tmp_path / "A.npy"), str(tmp_path / "B.npy")
    clean = ma.run(matmul(), matmul_source(a_path, b_path, block=16), workers=0)
    src = matmul_source(a_path, b_path, block=16, out=tmp_path / "C.npy")
    plan = FaultPlan(only={"map-3": {1: Fault("kill")}, "map-7": {1: Fault("raise")}})
    faulty = ma.run(matmul(), src, workers=2, faults=plan, verify=1.0)
    assert faulty.report.attempts[3] >= 2 and faulty.report.attempts[7] >= 2
    assert faulty.fingerprint == clean.fingerprint
    assert np.load(tmp_path / "C.npy").tobytes() == clean.value.tobytes()


def test_errors_name_what_is_wrong(tmp_path):
    a = np.ones((4, 4))
    with pytest.raises(ValueError, match=r"k_split \(1\) must cover all 2 K blocks"):
        matmul_source(a, a, block=2, k_split=1, out=tmp_path / "C.npy")
    with pytest.raises(TypeError, match="out must be a path"):
        matmul_source(a, a, block=2, out=3)
    with pytest.raises(InputError, match="cannot create the output C"):
        matmul_source(a, a, block=2, out=tmp_path / "no" / "such" / "C.npy")
    src = matmul_source(a, a, block=2, out=tmp_path / "C.npy")
    np.save(tmp_path / "C.npy", np.zeros((3, 3)))  # replaced behind the job's back
    with pytest.raises(InputError, match="C.npy' is 3x3, not 4x4: it changed after"):
        ma.run(matmul(), src, workers=0)


def test_the_cli_writes_c_in_place_with_the_fingerprint_of_the_assembled_c(tmp_path, capsys):
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(20, 12)), rng.normal(size=(12, 9))
    np.save(tmp_path / "A.npy", a)
    np.save(tmp_path / "B.npy", b)
    args = ["run", "matmul", str(tmp_path / "A.npy"), str(tmp_path / "B.npy"), "--block", "5",
            "--workers", "0"]
    assert cli_main(args) == 0
    shipped = capsys.readouterr().out.splitlines()
    assert cli_main(args + ["--out", str(tmp_path / "C.npy")]) == 0
    written = capsys.readouterr().out.splitlines()
    assert written[0] == "C: 20x9 float64" and "written to" in written[1]
    assert written[-1] == shipped[-1] and written[-1].startswith("fingerprint ")
    expected = ma.run(matmul(), matmul_source(a, b, block=5), workers=0).value
    assert np.load(tmp_path / "C.npy").tobytes() == expected.tobytes()
