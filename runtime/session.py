"""A long-lived session: worker processes that survive from one job to the next, and
datasets kept in their memory with lineage recovery.

``mergeagg.run`` is the one-shot form: it starts workers, runs a job and stops them. A
:class:`Session` keeps one :class:`~mergeagg.runtime.local.LocalExecutor` open, so an
iterative algorithm (PageRank, gradient descent) pays for worker start-up once, and
:meth:`Session.persist` can load an input once and keep it resident:

* each split is read and turned into its *loaded form* by ``load(records)`` on some worker,
  once, and stays in that worker's memory (a :class:`Dataset` remembers where);
* a later job over the dataset runs its ``partial`` on the loaded forms; each map task
  prefers the worker that holds its partition (the policy waits up to ``locality_wait``
  seconds for a slot there);
* when that worker dies, the partition is rebuilt from its **lineage** (the split and the
  ``load`` function) on another worker, as Spark rebuilds a lost RDD partition; the job's
  value keeps the same bytes, since the fold tree's shape is fixed by split index.

The report of every job over a dataset counts cache hits, misses (first loads, and loads
on another worker while the holder lives) and rebuilds (loads of a partition whose holder
died), and the bytes the readers read from disk (``report.counters``).

>>> import mergeagg as ma
>>> with Session(workers=0) as s:
...     ds = s.persist([[1, 2], [3, 4, 5]], load=sorted)
...     r = s.run(ma.Aggregator(sum, lambda a, b: a + b), ds)
>>> r.value, r.report.counters["cache_hits"], r.report.counters["cache_misses"]
(15, 2, 0)
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field

from mergeagg.aggregator import Aggregator, identity
from mergeagg.fingerprint import fingerprint
from mergeagg.inputs import Source, as_source
from mergeagg.keyed import KeyedJob
from mergeagg.runtime.datasets import CACHE_COUNTERS
from mergeagg.runtime.driver import fetch_root
from mergeagg.runtime.master import Policy, PolicyConfig, TaskDef, fold_tasks
from mergeagg.runtime.port import NOT_YET
from mergeagg.runtime.report import Report
from mergeagg.runtime.tree import check_fan_in

__all__ = ["Session", "Dataset", "Collected", "CACHE_COUNTERS", "BACKUP_MIN_SECONDS"]

BACKUP_MIN_SECONDS = 0.5

_dataset_ids = itertools.count(1)


@dataclass
class Dataset:
    """A persisted input: its splits and ``load`` function (the lineage of every
    partition), where each partition lives, and the cache counters of every job over it.

    ``holders[i]`` lists the workers holding partition ``i`` (the first is preferred),
    where the executor tracks them (its workers' memory; on Dask, Dask knows);
    ``counters`` accumulates ``cache_hits``, ``cache_misses``, ``cache_rebuilds`` and
    ``cache_bytes_read`` over the dataset's life, the initial load included. Where the
    partitions are kept is the session's executor's business (the port's dataset methods).
    """

    id: str
    source: Source
    load: object
    parent: Dataset | None = None
    holders: dict = field(default_factory=dict)
    loaded_once: set = field(default_factory=set)
    counters: dict = field(default_factory=lambda: dict.fromkeys(CACHE_COUNTERS, 0))

    def __len__(self):
        return len(self.source)

    def splits(self):
        """The splits the partitions are loaded from, in index order."""
        return self.source.splits()


def _count_partition(loaded):
    return 1


def _add(a, b):
    return a + b


_LOAD_JOB = Aggregator(_count_partition, _add, name="persist")


class Session:
    """Worker processes kept across jobs, and the datasets they hold.

    ``Session(workers=N)`` starts N worker processes (``None``: one per CPU; ``0``: no
    processes: jobs over a source run serially, the reference, and datasets are kept in
    this process by the in-process executor); ``Session(backend="inprocess",
    workers=N)`` simulates N workers in this process; ``Session(backend=client)`` runs
    every job, persisted dataset and collect on a dask.distributed cluster (a ``Client``
    or a scheduler address; see ``docs/dask.md``), where Dask keeps the loaded
    partitions and recomputes lost ones from their lineage. The session chooses its
    executor once, when it starts, and keeps it (and its workers) until it closes. Use it
    as a context manager, or call :meth:`close`. Policy knobs (``max_attempts``,
    ``backups``, ``locality_wait``, ...) given here apply to every job unless a job
    overrides them. ``backup_min_seconds`` defaults to ``BACKUP_MIN_SECONDS`` (0.5 s)
    here, not 0: a task over a cached partition takes milliseconds, and a speculative
    copy of it on another worker must first rebuild the partition from disk (Spark's
    speculation has the same kind of floor).

    Cost: starting the workers once (milliseconds each under forkserver); each job then
    costs what ``mergeagg.run`` costs minus the start-up.

    >>> import mergeagg as ma
    >>> with Session(workers=0) as s:
    ...     s.run(ma.Aggregator(len, lambda a, b: a + b), [[1, 2], [3]]).value
    3
    """

    def __init__(self, workers=None, *, backend="local", heartbeat_interval=0.2,
                 start_method=None, **policy):
        from mergeagg.runtime.api import resolve_backend

        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                    or workers < 0):
            raise ValueError(f"workers must be None or an int >= 0, got {workers!r}")
        self.dask = resolve_backend(backend)
        if self.dask is not None and workers is not None:
            raise ValueError("workers= sets the local backend's processes; a Dask session "
                             "runs on the cluster's workers (leave workers=None)")
        self.backend = backend
        self.workers = workers if workers is not None else (os.cpu_count() or 1)
        self.policy_defaults = {"backup_min_seconds": BACKUP_MIN_SECONDS, **policy}
        PolicyConfig(**self.policy_defaults)  # refuse a bad knob now, not at the first job
        self.heartbeat_interval = heartbeat_interval
        self.start_method = start_method
        self.executor = None
        self.datasets = {}
        self.jobs_run = 0
        self._closed = False
        self._root_fingerprint = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self):
        """Start the executor and its workers (idempotent). Returns ``self``. Cost: one
        start of the pool."""
        if self._closed:
            raise RuntimeError("this Session is closed; start a new one")
        if self.executor is None:
            executor = self._make_executor()
            try:
                executor.start()
                executor.settle(30.0)  # every worker ready: the first job sees them all
            except BaseException:
                executor.close()
                raise
            self.executor = executor
            if self.dask is not None:
                self.workers = executor.size
        return self

    def _make_executor(self):
        """The one place that chooses the executor: Dask, simulated workers, or worker
        processes (with ``workers=0``, the in-process executor holds datasets)."""
        if self.dask is not None:
            from mergeagg.runtime.dask import DaskExecutor

            return DaskExecutor(self.dask)
        if self.backend == "inprocess" or self.workers == 0:
            from mergeagg.runtime.inprocess import InProcessExecutor

            return InProcessExecutor(max(self.workers, 1))
        from mergeagg.runtime.local import LocalExecutor

        return LocalExecutor(self.workers, heartbeat_interval=self.heartbeat_interval,
                             start_method=self.start_method)

    def close(self):
        """Stop the workers; cached partitions die with them. Idempotent."""
        if self.executor is not None:
            self.executor.close()
            self.executor = None
        self.datasets.clear()
        self._closed = True

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "closed" if self._closed else f"{self.workers} worker(s)"
        if self.dask is not None and not self._closed:
            state += " on Dask"
        return f"Session({state}, {len(self.datasets)} dataset(s))"

    def worker_pids(self):
        """``{worker id: pid}`` of the live worker processes (empty where the workers are
        no processes of this machine's: ``workers=0``, in-process, Dask)."""
        return getattr(self.executor, "worker_pids", dict)()

    # -- datasets --------------------------------------------------------------------------

    def persist(self, source, load, *, split_size=None, format=None, errors="strict"):
        """Load every split of ``source`` once, ``load(records)`` on some worker, and keep
        the loaded form in that worker's memory. Returns a :class:`Dataset` to give to
        :meth:`run` in place of a source.

        ``load`` must be a pure function of the split's records (it is the lineage a lost
        partition is rebuilt from) and cloudpickle-able. A job's ``partial`` receives the
        loaded form and must not modify it. Cost: one read and one ``load`` per split, run
        as a job on the workers; the loaded forms stay in the workers' memory until
        :meth:`unpersist` or :meth:`close`.

        ``source`` may be a persisted :class:`Dataset`: the new dataset's partition ``i``
        is then ``load(parent partition i)``, kept beside it (Spark's ``map().persist()``);
        a lost one is rebuilt from the parent, itself rebuilt from its split if need be.

        >>> with Session(workers=0) as s:
        ...     ds = s.persist([[3, 1], [2]], load=sorted)
        ...     len(ds), ds.counters["cache_misses"]
        (2, 2)
        """
        if not callable(load):
            raise TypeError(f"persist needs a callable load(records), got "
                            f"{type(load).__name__}")
        self.start()
        if isinstance(source, Dataset):
            self._check_persisted(source)
            ds = Dataset(f"ds{next(_dataset_ids)}", source.source, load, parent=source)
        else:
            src = as_source(source, split_size=split_size, format=format, errors=errors)
            ds = Dataset(f"ds{next(_dataset_ids)}", src, load)
        self.datasets[ds.id] = ds
        try:
            self.executor.persist(ds)
            self._run_fold(_LOAD_JOB, ds, fan_in=max(2, len(ds)), config=self._config({}),
                           faults=None, progress=False)
        except BaseException:
            self.unpersist(ds)  # a dataset that failed to load is not kept half-loaded
            raise
        return ds

    def unpersist(self, dataset):
        """Drop ``dataset``'s partitions from the workers' memory. Cost: one message per
        worker. A dataset derived from it must be unpersisted first (its lineage needs it).
        """
        children = sorted(d.id for d in self.datasets.values() if d.parent is dataset)
        if children:
            raise ValueError(f"dataset {dataset.id} is the parent of {', '.join(children)}; "
                             "unpersist those first (their lost partitions are rebuilt "
                             "from it)")
        self.datasets.pop(dataset.id, None)
        if self.executor is not None:
            self.executor.uncache(dataset)
        dataset.holders.clear()

    # -- jobs ------------------------------------------------------------------------------

    def run(self, job, source, *, fan_in=8, split_size=None, format=None, errors="strict",
            faults=None, progress=None, partitions=None, combiner=None, memory_limit=None,
            output=None, salt=None, output_format=None, journal=None, **policy):
        """Run ``job`` (an Aggregator or a KeyedJob) over ``source`` (anything
        ``mergeagg.run`` accepts, or a :class:`Dataset`) on this session's workers, with
        every option ``mergeagg.run`` takes. Returns a :class:`~mergeagg.runtime.api.Result`.

        Over a Dataset, ``partial`` gets each partition's loaded form. Policy knobs
        (``max_attempts``, ``backups``, ``locality_wait``, ...) override the session's.
        Cost: that of the job; no worker start-up.

        >>> import mergeagg as ma
        >>> with Session(workers=0) as s:
        ...     s.run(ma.Aggregator(max, max), [[1, 5], [3]]).value
        5
        """
        from mergeagg.runtime.api import Result, check_job, run_on
        from mergeagg.runtime.faults import FaultPlan

        keyed_options = dict(partitions=partitions, combiner=combiner,
                             memory_limit=memory_limit, output=output, salt=salt,
                             output_format=output_format)
        check_job(job, **keyed_options)
        check_fan_in(fan_in)
        self.start()
        config = self._config(policy)
        plan = FaultPlan.parse(faults) if isinstance(faults, (str, type(None))) else faults
        if plan is not None and self._serial:
            raise ValueError("faults are injected into worker processes; a Session with "
                             "workers=0 has none")
        self.jobs_run += 1
        if isinstance(source, Dataset):
            if isinstance(job, KeyedJob):
                raise TypeError("keyed jobs over a persisted Dataset are not supported; run "
                                "a fold job (mergeagg.Aggregator) over it")
            if journal is not None:
                raise ValueError("journal= keeps jobs over inputs (files, shards), not over "
                                 "a persisted Dataset, whose partitions live in memory")
            start = time.perf_counter()
            self._root_fingerprint = None
            value, report = self._run_fold(job, source, fan_in=fan_in, config=config,
                                           faults=plan, progress=progress)
            t = time.perf_counter()
            # The root's worker already fingerprinted the value when finalize is the
            # identity.
            fp = (self._root_fingerprint if job.finalize is identity
                  and self._root_fingerprint else fingerprint(value))
            report.phases["fingerprint"] = time.perf_counter() - t
            report.wall_seconds = time.perf_counter() - start
            return Result(value, fp, report)
        src = as_source(source, split_size=split_size, format=format, errors=errors)
        # workers=0: a job over a source is the serial reference, in this process.
        executor = None if self._serial else self.executor
        jr = None
        try:
            if journal is not None:
                from mergeagg.runtime.api import check_journal_backend, open_journal

                if executor is None:
                    raise ValueError("journal= needs the session's workers; a Session with "
                                     "workers=0 runs jobs serially")
                check_journal_backend(job, self.dask is not None, salt)
                jr = open_journal(journal, job, source, fan_in,
                                  dict(split_size=split_size, format=format, errors=errors),
                                  keyed_options)
            return run_on(job, src, executor, own=False, config=config, fan_in=fan_in,
                          faults=plan, progress=progress, journal=jr, **keyed_options)
        finally:
            if jr is not None:
                jr.close()
            # A cancelled attempt on a hung worker never answers: wait no longer for it
            # than the job would have waited for a silent worker.
            self.executor.settle(timeout=config.heartbeat_timeout)

    @property
    def _serial(self):
        return self.workers == 0 and self.dask is None and self.backend != "inprocess"

    def _config(self, overrides):
        return PolicyConfig(**{**self.policy_defaults, **overrides})

    # -- jobs over a dataset ---------------------------------------------------------------

    def _check_persisted(self, ds):
        d = ds
        while d is not None:
            if self.datasets.get(d.id) is not d:
                raise ValueError(f"dataset {d.id} is not persisted in this session (it was "
                                 "unpersisted, or belongs to another session)")
            d = d.parent

    def _run_fold(self, job, ds, *, fan_in, config, faults, progress):
        self._check_persisted(ds)
        acc, phases, policy = self._drive_dataset(
            job, ds, lambda parts: fold_tasks(parts, fan_in), fetch_root, config=config,
            faults=faults, progress=progress)
        t = time.perf_counter()
        value = job.finalize(acc)
        phases["finalize"] = time.perf_counter() - t
        self._root_fingerprint = policy.result[1]
        return value, self._dataset_report(ds, policy, fan_in, phases)

    def _drive_dataset(self, payload, ds, make_tasks, fetch, *, config, faults, progress):
        """Run a job whose map tasks read ``ds``'s partitions where the executor keeps
        them, each preferring the worker that holds its partition."""
        from mergeagg.runtime.driver import drive

        ex = self.executor
        tasks = make_tasks(ex.partitions(ds))
        for t, holder in zip(tasks, ex.locate(ds)):
            t.prefer = holder
        policy = Policy(tasks, config)
        try:
            fetched, phases = drive(policy, ex, payload, fetch, faults=faults,
                                    progress=progress, clock=getattr(ex, "clock", None),
                                    own=False)
        finally:
            ex.settle(timeout=config.heartbeat_timeout)
        return fetched, phases, policy

    def _dataset_report(self, ds, policy, fan_in, phases):
        from mergeagg.runtime.driver import report as make_report

        counts = self.executor.account(ds, policy)  # before the report: it may add bytes
        report = make_report(policy, self.executor.size, fan_in, phases,
                             mode=self.executor.mode)
        for k, v in counts.items():
            ds.counters[k] += v
        report.counters.update(counts)
        return report

    def collect(self, fn, dataset, **policy):
        """``fn(partition)`` on every partition of ``dataset``, where it is cached; returns
        a :class:`Collected` with the outputs in split order (no combine task: the caller
        folds them, as a reducer would, with no extra hop through a worker).

        Cost: one task per partition; each output is pickled, fingerprinted and fetched.

        >>> with Session(workers=0) as s:
        ...     s.collect(len, s.persist([[1, 2], [3]], load=list)).values
        [2, 1]
        """
        if not callable(fn):
            raise TypeError(f"collect needs a callable fn(partition), got "
                            f"{type(fn).__name__}")
        self.start()
        self._check_persisted(dataset)
        config = self._config(policy)
        self.jobs_run += 1
        start = time.perf_counter()
        n = len(dataset)

        def fetch(policy, ex):
            out = [ex.fetch(policy.results[f"map-{i}"][0]) for i in range(n)]
            return NOT_YET if any(v is NOT_YET for v in out) else out

        def tasks(parts):
            return [TaskDef(f"map-{i}", "map", split=p, index=i) for i, p in enumerate(parts)]

        values, phases, pol = self._drive_dataset(
            Aggregator(fn, _no_combine, name="collect"), dataset, tasks, fetch,
            config=config, faults=None, progress=False)
        fps = [pol.results[f"map-{i}"][1] for i in range(n)]
        report = self._dataset_report(dataset, pol, 0, phases)
        report.wall_seconds = time.perf_counter() - start
        return Collected(values, fps, report)


@dataclass
class Collected:
    """What :meth:`Session.collect` returns: ``values`` (one per partition, in split
    order), their ``fingerprints`` (computed where they were made) and the ``report``."""

    values: list
    fingerprints: list
    report: Report


def _no_combine(a, b):
    raise RuntimeError("collect jobs have no combine task")  # pragma: no cover
