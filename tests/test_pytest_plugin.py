"""The pytest plugin, loaded through its entry point in a pytest of its own (pytester's
subprocess run): the session-wide worker pool, the real-processes marker, the CI profile."""

import pytest

pytest_plugins = ["pytester"]

TESTS = '''
import pytest
import mergeagg as ma
from mergeagg.testing import assert_failure_invariant

SHARDS = [["a b c"] * 5, ["b c"] * 3, ["x y"], ["a"]]
KILL = "kill=0.4,seed=3"
POOLS = []


@pytest.mark.mergeagg_processes
def test_on_real_processes(mergeagg_runtime):
    before = mergeagg_runtime.jobs_run
    assert_failure_invariant(ma.algorithms.wordcount(), SHARDS, plans=[KILL, KILL])
    assert mergeagg_runtime.jobs_run == before + 2
    assert len(mergeagg_runtime.worker_pids()) == {workers}
    POOLS.append(mergeagg_runtime)


@pytest.mark.mergeagg_processes
def test_the_same_warm_pool(mergeagg_runtime):
    assert POOLS == [mergeagg_runtime]
    assert_failure_invariant(ma.algorithms.wordcount(), SHARDS, plans=[KILL])


def test_unmarked_runs_in_process(mergeagg_runtime):
    before = mergeagg_runtime.jobs_run
    assert_failure_invariant(ma.algorithms.wordcount(), SHARDS, plans=[KILL])
    assert mergeagg_runtime.jobs_run == before
'''


@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 3])
def test_the_fixture_and_marker_run_on_one_warm_pool(pytester, workers):
    pytester.makepyfile(test_user=TESTS.format(workers=workers))
    args = ["-p", "no:cacheprovider", "--strict-markers"]
    if workers != 2:
        args.append(f"--mergeagg-workers={workers}")
    result = pytester.runpytest_subprocess(*args)
    result.assert_outcomes(passed=3)


def test_the_ci_profile_and_the_marker_are_registered(pytester):
    pytester.makepyfile(test_profile='''
        from hypothesis import settings

        def test_profile():
            assert settings.default.derandomize and settings.default.database is None
            assert settings.default.deadline is None
    ''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider",
                                           "--hypothesis-profile=mergeagg-ci")
    result.assert_outcomes(passed=1)
    markers = pytester.runpytest_subprocess("--markers")
    markers.stdout.fnmatch_lines(["@pytest.mark.mergeagg_processes: run the test's*"])
