"""Every ``benchmarks/bench_*.py`` runs at its tiny ``--smoke`` size and exits 0, so none rots."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(BENCH_DIR.glob("bench_*.py"))


def test_there_are_benchmarks():
    assert {"bench_fingerprint.py", "bench_wordcount.py"} <= {p.name for p in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_benchmark_smoke(script, tmp_path):
    out = subprocess.run([sys.executable, str(script), "--smoke"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, f"{script.name} --smoke failed:\n{out.stdout}\n{out.stderr}"
    assert out.stdout.strip(), f"{script.name} --smoke printed nothing"
