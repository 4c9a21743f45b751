"""Fixtures of the runtime tests: one Dask LocalCluster for the whole test session.

The cluster (2 worker processes of 1 thread each, on loopback) starts the first time a test
asks for ``dask_client`` and stops at the end of the session, so the Dask tests pay its few
seconds of start-up once. Its HTTP server takes a random loopback port: with
``dashboard_address=None`` the scheduler still tries port 8787 and warns (an error under
our warning filters) when another cluster on the machine holds it. Tests that kill a worker
leave the nanny to restart it; ``dask_client`` waits until both workers are back before
handing the client to the next test (and starts a new one should the nanny have given up).
Without dask installed, the tests that ask for it are skipped.
"""

import pytest


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory):
    distributed = pytest.importorskip("distributed")
    import dask

    # The workers' scratch space (dask-scratch-space) in a pytest folder, not the session's
    # temporary directory, where it would be left behind.
    scratch = str(tmp_path_factory.mktemp("dask"))
    with dask.config.set({"temporary-directory": scratch}):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1,
                                           processes=True, host="127.0.0.1",
                                           dashboard_address="127.0.0.1:0")
        client = distributed.Client(cluster, set_as_default=False)
        try:
            yield cluster, client
        finally:
            client.close()
            cluster.close()


@pytest.fixture
def dask_client(dask_cluster):
    cluster, client = dask_cluster
    try:
        client.wait_for_workers(2, timeout=20)
    except Exception:
        # A known race in Dask's nanny (dask/distributed#7312): restarting a killed worker
        # can close the nanny for good. The cluster's spec still has two workers, and
        # scaling to it starts the missing one.
        cluster.scale(2)
        client.wait_for_workers(2, timeout=60)
    return client


@pytest.fixture
def progress_of():
    """``progress_of(executor, aggregator, paths, faults=None)`` drives a fold job over
    ``paths`` (fan-in 2, no backups) on ``executor`` and returns ``(value, reports)``: the
    Progress events the executor delivered, by task, in order."""

    def run(executor, aggregator, paths, faults=None):
        from mergeagg.inputs import files
        from mergeagg.runtime.driver import drive, fetch_root
        from mergeagg.runtime.master import Policy, PolicyConfig, fold_tasks
        from mergeagg.runtime.port import Progress

        reports = {}
        events = executor.events

        def recording(timeout):
            out = events(timeout)
            for e in out:
                if isinstance(e, Progress):
                    reports.setdefault(e.attempt.task, []).append(e)
            return out

        executor.events = recording
        policy = Policy(fold_tasks(files(paths).splits(), 2), PolicyConfig(backups=False))
        value, _ = drive(policy, executor, aggregator, fetch_root, faults=faults)
        return value, reports

    return run
