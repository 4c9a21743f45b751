"""A bounded soak of the local runtime (benchmarks/soak.py --smoke): jobs whose task and
result messages overflow the sockets' buffers while backups cancel losers, workers die and
idle workers take queued attempts. The first runtime deadlocked on such jobs; a hang here
fails the test (each job has a watchdog that dumps every thread's stack and exits)."""

import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


@pytest.mark.slow
def test_soak_jobs_end_with_the_clean_fingerprint_and_never_hang(tmp_path):
    out = subprocess.run([sys.executable, str(SOAK), "--smoke", "--job-timeout", "60"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, f"soak failed:\n{out.stdout}\n{out.stderr}"
    assert "all with the clean fingerprint" in out.stdout
