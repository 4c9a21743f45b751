"""The session's temporary directory (tests/conftest.py): a run that leaves a file fails.

Each case runs pytest in a subprocess on a small test file, with a copy of tests/conftest.py
as its conftest; the inner session's directory lives inside this session's, and is gone
when the inner run ends, whatever its outcome.
"""

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

CONFTEST = Path(__file__).resolve().parent / "conftest.py"


def run_pytest(tmp_path, source):
    (tmp_path / "conftest.py").write_text(CONFTEST.read_text())
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(source))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-W", "error", "test_inner.py"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout + proc.stderr


def sessions_here():
    return [n for n in os.listdir(tempfile.gettempdir()) if n.startswith("mergeagg-tests-")]


def test_the_session_has_a_temporary_directory_of_its_own():
    tmp = tempfile.gettempdir()
    assert os.path.basename(tmp).startswith("mergeagg-tests-")
    assert os.environ["TMPDIR"] == tmp


def test_a_folder_left_behind_fails_the_run_and_names_the_test(tmp_path):
    code, out = run_pytest(tmp_path, """
        import subprocess, sys, tempfile

        def test_clean():
            with tempfile.TemporaryDirectory(prefix="tidy-"):
                pass

        def test_leaves_a_folder():
            tempfile.mkdtemp(prefix="leak-")

        def test_a_child_process_leaves_a_file():
            # TMPDIR is inherited: the child writes into the session's directory too.
            subprocess.run([sys.executable, "-c",
                            "import tempfile; tempfile.mkstemp(prefix='child-')"], check=True)
    """)
    assert code != 0, out
    assert "3 passed, 1 error" in out, out
    assert "test_inner.py::test_leaves_a_folder" in out and "leak-" in out, out
    assert "test_inner.py::test_a_child_process_leaves_a_file" in out and "child-" in out, out
    assert "tidy-" not in out, out
    assert sessions_here() == [], "the inner session did not remove its directory"


def test_a_clean_run_passes_and_pytest_tmp_path_is_not_a_leftover(tmp_path):
    code, out = run_pytest(tmp_path, """
        import os, shutil, tempfile
        import pytest

        @pytest.fixture(scope="session")
        def scratch():
            # A session-scoped fixture holds its folder until the session ends (as the Dask
            # cluster does): not a leftover, since it removes it at teardown.
            path = tempfile.mkdtemp(prefix="held-")
            yield path
            shutil.rmtree(path)

        def test_uses_tmp_path(tmp_path):
            (tmp_path / "x").write_text("pytest removes or keeps this")

        def test_holds(scratch):
            assert os.path.isdir(scratch)
    """)
    assert code == 0, out
    assert "2 passed" in out and "error" not in out.lower(), out
    assert sessions_here() == []


def test_the_test_process_may_start_a_fork_server(tmp_path):
    # The fork server's socket folder (pymp-*) of the test process itself is no leftover:
    # multiprocessing removes it when the process exits.
    code, out = run_pytest(tmp_path, """
        import multiprocessing

        def test_forkserver():
            p = multiprocessing.get_context("forkserver").Process(target=print)
            p.start()
            p.join()
            assert p.exitcode == 0
    """)
    assert code == 0, out
    assert "1 passed" in out and "Traceback" not in out and "pymp-" not in out, out
    assert sessions_here() == []
