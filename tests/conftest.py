"""Shared test configuration: hypothesis profiles, and a temporary directory per session.

Profiles: ``ci`` (bounded examples, the default when CI is set), ``dev`` (the default
locally) and ``nightly`` (many examples). Choose with ``HYPOTHESIS_PROFILE``.

Temporary files: the session gets a fresh directory of its own (``mergeagg-tests-*`` in the
system's temporary directory), and ``TMPDIR`` and ``tempfile.tempdir`` point at it from the
start, so worker processes, notebook kernels and Dask workers started by the tests write
there too, never among the files of other programs sharing the machine's ``/tmp``. After each
test a listing of that directory notes which test made each new entry. When the session's
last fixture has closed (the Dask cluster of ``tests/runtime/conftest.py`` included), anything
left there other than pytest's own ``tmp_path`` folders fails the run, as an error at the
teardown of the last test that names every entry, its size and the test that made it. The
directory is removed at exit whatever happened.
"""

import multiprocessing.util
import os
import shutil
import tempfile
import time

import psutil
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=50, deadline=None)
settings.register_profile("nightly", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

# Entries of the session's temporary directory that pytest itself manages: the tmp_path
# folders (pytest-of-<user>/pytest-<n>/...), kept or pruned by pytest's retention policy.
PYTEST_OWNED_PREFIX = "pytest-of-"
# Processes that remove their files as they exit (multiprocessing's pymp-* folders, Dask's
# worker folders) may still be exiting when the session ends: the check waits at most this
# long for the children of the test process to exit before it reports what is left.
SETTLE_SECONDS = 10.0


class SessionTmp:
    """The session's own temporary directory, and which test made each of its entries."""

    def __init__(self):
        # This process's own multiprocessing folder (the fork server's socket) is made in the
        # system's directory, before the switch: multiprocessing removes it at exit, after
        # the session's directory is gone.
        multiprocessing.util.get_temp_dir()
        self.saved = (os.environ.get("TMPDIR"), tempfile.tempdir)
        self.path = tempfile.mkdtemp(prefix="mergeagg-tests-")
        os.environ["TMPDIR"] = self.path
        tempfile.tempdir = self.path
        self.made_by = {}        # entry name -> node id of the test during which it appeared
        self.current = "(before the first test)"

    def entries(self):
        try:
            names = os.listdir(self.path)
        except FileNotFoundError:
            return set()
        return {n for n in names if not n.startswith(PYTEST_OWNED_PREFIX)}

    def note(self, before, nodeid):
        for name in self.entries() - before:
            self.made_by.setdefault(name, nodeid)

    def leftovers(self):
        """The entries still there once this process's children have exited (waiting at
        most SETTLE_SECONDS for them) and half a second more."""
        me = psutil.Process()
        deadline = time.monotonic() + SETTLE_SECONDS
        while self.entries() and me.children(recursive=True) and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.entries():
            time.sleep(0.5)
        return sorted(self.entries())

    def describe(self, names):
        lines = []
        for name in names:
            full = os.path.join(self.path, name)
            made_by = self.made_by.get(name, f"{self.current} (or the session's teardown)")
            lines.append(f"  {name}  ({_size(full):,} bytes)  made during {made_by}")
        return (f"{len(names)} entr{'y' if len(names) == 1 else 'ies'} left in the session's "
                f"temporary directory {self.path} (each thing that makes a temporary file or "
                "folder must remove it, e.g. with tempfile.TemporaryDirectory()):\n"
                + "\n".join(lines))

    def close(self):
        shutil.rmtree(self.path, ignore_errors=True)
        env, tempdir = self.saved
        if env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = env
        tempfile.tempdir = tempdir


def _size(path):
    if not os.path.isdir(path) or os.path.islink(path):
        try:
            return os.lstat(path).st_size
        except OSError:
            return 0
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


_SESSION_TMP = None


def pytest_configure(config):
    global _SESSION_TMP
    # The xdist controller and a worker would each make one; this suite runs without xdist.
    if _SESSION_TMP is None:
        _SESSION_TMP = SessionTmp()


def pytest_unconfigure(config):
    global _SESSION_TMP
    if _SESSION_TMP is not None:
        _SESSION_TMP.close()
        _SESSION_TMP = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    # Called for every item, docs/*.md doctests included: one listing before, one after.
    tmp = _SESSION_TMP
    before = tmp.entries()
    tmp.current = item.nodeid
    try:
        return (yield)
    finally:
        tmp.note(before, item.nodeid)


@pytest.fixture(scope="session", autouse=True)
def session_tmp_is_left_empty():
    """Fails the run (at the teardown of its last test) if its temporary directory is not
    empty once every other session fixture has closed."""
    # Autouse and session-scoped, so set up before any other session fixture and torn down
    # after all of them.
    yield _SESSION_TMP.path
    left = _SESSION_TMP.leftovers()
    if left:
        pytest.fail(_SESSION_TMP.describe(left), pytrace=False)
