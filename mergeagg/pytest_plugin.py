"""mergeagg's pytest plugin, registered through the ``pytest11`` entry point: installing
mergeagg is enough for pytest to load it.

It gives your tests:

* the ``mergeagg_runtime`` fixture: one :class:`~mergeagg.Session` of worker processes
  (``--mergeagg-workers``, default 2), started the first time a test asks for it and
  closed at the end of the test session, so real-process tests pay for start-up once;
* the ``mergeagg_processes`` marker: inside a test so marked,
  :func:`mergeagg.testing.assert_failure_invariant` runs on that warm pool (real
  processes, real SIGKILL) instead of the in-process executor;
* the hypothesis profile ``mergeagg-ci`` (``pytest --hypothesis-profile=mergeagg-ci``):
  a bounded, derandomized search (the same examples on every run, no example database),
  no deadline, and the reproduction blob printed on failure.

The plugin imports nothing of mergeagg's runtime until a test uses the fixture or the marker.

>>> import hypothesis
>>> hypothesis.settings.get_profile("mergeagg-ci").derandomize
True
"""

from __future__ import annotations

import pytest

__all__ = ["CI_PROFILE", "MARKER", "mergeagg_runtime"]

CI_PROFILE = "mergeagg-ci"
MARKER = "mergeagg_processes"

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # pragma: no cover - hypothesis comes with mergeagg[dev]
    settings = None
else:
    settings.register_profile(
        CI_PROFILE, max_examples=50, deadline=None, derandomize=True, database=None,
        print_blob=True, suppress_health_check=[HealthCheck.too_slow,
                                                HealthCheck.data_too_large])


def pytest_addoption(parser):
    group = parser.getgroup("mergeagg")
    group.addoption("--mergeagg-workers", type=int, default=2, metavar="N",
                    help="worker processes of the mergeagg_runtime fixture's session "
                         "(default 2)")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", f"{MARKER}: run the test's mergeagg.testing.assert_failure_invariant on "
        "real worker processes (the mergeagg_runtime session) instead of in process")


@pytest.fixture(scope="session")
def mergeagg_runtime(pytestconfig):
    """A :class:`~mergeagg.Session` of ``--mergeagg-workers`` worker processes, shared by
    the whole test session. Give it to ``assert_failure_invariant(executor=...)``, or run
    jobs on it with ``mergeagg_runtime.run(job, source, faults=...)``."""
    from mergeagg.runtime.session import Session

    workers = pytestconfig.getoption("--mergeagg-workers")
    if workers < 1:
        raise pytest.UsageError(f"--mergeagg-workers must be at least 1, got {workers}")
    session = Session(workers=workers, heartbeat_interval=0.05, backup_min_seconds=0.0)
    session.start()
    try:
        yield session
    finally:
        session.close()


@pytest.fixture(autouse=True)
def _mergeagg_processes_marker(request):
    if request.node.get_closest_marker(MARKER) is None:
        yield
        return
    from mergeagg.testing import use_runtime

    with use_runtime(request.getfixturevalue("mergeagg_runtime")):
        yield
