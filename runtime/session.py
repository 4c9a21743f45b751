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
import uuid
from dataclasses import dataclass, field

from mergeagg.aggregator import Aggregator, identity
from mergeagg.fingerprint import fingerprint
from mergeagg.inputs import Source, as_source, read_split
from mergeagg.keyed import KeyedJob
from mergeagg.runtime.driver import fetch_root
from mergeagg.runtime.master import Policy, PolicyConfig, TaskDef, fold_tasks
from mergeagg.runtime.port import NOT_YET
from mergeagg.runtime.report import Report, TaskRecord
from mergeagg.runtime.tree import check_fan_in, fold_fixed

__all__ = ["Session", "Dataset", "Collected", "CACHE_COUNTERS", "BACKUP_MIN_SECONDS"]

CACHE_COUNTERS = ("cache_hits", "cache_misses", "cache_rebuilds", "cache_bytes_read")
BACKUP_MIN_SECONDS = 0.5

_dataset_ids = itertools.count(1)


@dataclass
class Dataset:
    """A persisted input: its splits and ``load`` function (the lineage of every
    partition), where each partition lives, and the cache counters of every job over it.

    ``holders[i]`` lists the workers holding partition ``i`` (the first is preferred);
    ``counters`` accumulates ``cache_hits``, ``cache_misses``, ``cache_rebuilds`` and
    ``cache_bytes_read`` over the dataset's life, the initial load included.
    """

    id: str
    source: Source
    load: object
    parent: Dataset | None = None
    load_job: int | None = None
    holders: dict = field(default_factory=dict)
    loaded_once: set = field(default_factory=set)
    counters: dict = field(default_factory=lambda: dict.fromkeys(CACHE_COUNTERS, 0))
    local: dict = field(default_factory=dict, repr=False)  # workers=0: index -> loaded form
    futures: list = field(default_factory=list, repr=False)  # Dask: the partitions' futures

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
    processes, everything runs in this process, the serial reference);
    ``Session(backend=client)`` runs every job, persisted dataset and collect on a
    dask.distributed cluster (a ``Client`` or a scheduler address; see ``docs/dask.md``),
    where Dask keeps the loaded partitions and recomputes lost ones from their lineage.
    Use it as a context manager, or call :meth:`close`. Policy knobs (``max_attempts``, ``backups``,
    ``locality_wait``, ...) given here apply to every job unless a job overrides them.
    ``backup_min_seconds`` defaults to ``BACKUP_MIN_SECONDS`` (0.5 s) here, not 0: a task
    over a cached partition takes milliseconds, and a speculative copy of it on another
    worker must first rebuild the partition from disk (Spark's speculation has the same
    kind of floor).

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
        self.client = None
        self._owns_client = False
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
        self._runs_seen = set()  # Dask: lineage run ids of partitions seen loaded

    # -- lifecycle -------------------------------------------------------------------------

    def start(self):
        """Start the workers (idempotent). Returns ``self``. Cost: one start of the pool."""
        if self._closed:
            raise RuntimeError("this Session is closed; start a new one")
        if self.dask is not None:
            if self.client is None:
                from mergeagg.runtime.dask import await_workers, connect

                self.client, self._owns_client = connect(self.dask)
                await_workers(self.client, 60)
                info = self.client.scheduler_info(n_workers=-1)["workers"]
                self.workers = sum(int(w.get("nthreads", 1)) for w in info.values())
            return self
        if self.workers > 0 and self.executor is None:
            self.executor = _session_executor(self.workers,
                                              heartbeat_interval=self.heartbeat_interval,
                                              start_method=self.start_method)
            self.executor.start()
            self.executor.wait_ready()
        return self

    def close(self):
        """Stop the workers; cached partitions die with them. Idempotent."""
        if self.executor is not None:
            self.executor.close()
            self.executor = None
        for ds in self.datasets.values():
            for fut in ds.futures:
                fut.release()
            ds.futures.clear()
        if self.client is not None and self._owns_client:
            self.client.close()
        self.client = None
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
        """``{worker id: pid}`` of the live worker processes (empty with ``workers=0``)."""
        return {} if self.executor is None else self.executor.worker_pids()

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
        if self.executor is not None:
            # The lineage's function goes to every worker once (and to replacements).
            ds.load_job = self.executor.load_job(load)
        if self.client is not None:
            ds.futures = self._submit_loads(ds)
        self.datasets[ds.id] = ds
        try:
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
        dataset.holders.clear()
        dataset.local.clear()
        for fut in dataset.futures:
            fut.release()
        dataset.futures.clear()
        if self.executor is not None and dataset.load_job is not None:
            self.executor.drop_job(dataset.load_job)
            self.executor.uncache(dataset.id)

    # -- jobs ------------------------------------------------------------------------------

    def run(self, job, source, *, fan_in=8, split_size=None, format=None, errors="strict",
            faults=None, progress=None, partitions=None, combiner=None, memory_limit=None,
            output=None, salt=None, output_format=None, **policy):
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
        if plan is not None and self.executor is None and self.client is None:
            raise ValueError("faults are injected into worker processes; a Session with "
                             "workers=0 has none")
        self.jobs_run += 1
        if isinstance(source, Dataset):
            if isinstance(job, KeyedJob):
                raise TypeError("keyed jobs over a persisted Dataset are not supported; run "
                                "a fold job (mergeagg.Aggregator) over it")
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
        executor, own = self._job_executor()
        try:
            return run_on(job, src, executor, own=own, config=config, fan_in=fan_in,
                          faults=plan, progress=progress, **keyed_options)
        finally:
            if self.executor is not None:
                # A cancelled attempt on a hung worker never answers: wait no longer for it
                # than the job would have waited for a silent worker.
                self.executor.settle(timeout=config.heartbeat_timeout)

    def _config(self, overrides):
        return PolicyConfig(**{**self.policy_defaults, **overrides})

    def _job_executor(self):
        """The executor for one job and whether the job owns it: this session's worker
        pool (kept), a Dask executor over the session's client (one per job), or ``None``
        (``workers=0``: the serial reference in this process)."""
        if self.client is not None:
            from mergeagg.runtime.dask import DaskExecutor

            return DaskExecutor(self.client), True
        return self.executor, False

    # -- jobs over a dataset ---------------------------------------------------------------

    def _check_persisted(self, ds):
        d = ds
        while d is not None:
            if self.datasets.get(d.id) is not d:
                raise ValueError(f"dataset {d.id} is not persisted in this session (it was "
                                 "unpersisted, or belongs to another session)")
            d = d.parent

    def _partition(self, ds, split):
        from mergeagg.runtime.refs import CachedPartition

        parent = None if ds.parent is None else self._partition(ds.parent, split)
        return CachedPartition(ds.id, split, ds.load_job, parent)

    def _run_fold(self, job, ds, *, fan_in, config, faults, progress):
        self._check_persisted(ds)
        if self.executor is None and self.client is None:
            return self._run_fold_here(job, ds, fan_in)

        acc, phases, policy = self._drive_dataset(
            job, ds, lambda parts: fold_tasks(parts, fan_in), fetch_root, config=config,
            faults=faults, progress=progress)
        t = time.perf_counter()
        value = job.finalize(acc)
        phases["finalize"] = time.perf_counter() - t
        self._root_fingerprint = policy.result[1]
        return value, self._dataset_report(ds, policy, fan_in, phases)

    def _drive_dataset(self, payload, ds, make_tasks, fetch, *, config, faults, progress):
        if self.client is not None:
            return self._drive_dataset_dask(payload, ds, make_tasks, fetch, config=config,
                                            faults=faults, progress=progress)
        from mergeagg.runtime.driver import drive

        parts = [self._partition(ds, split) for split in ds.splits()]
        tasks = make_tasks(parts)
        live = set(self.executor.live_workers())
        for t in tasks[:len(parts)]:
            t.prefer = _holder(ds, t.index, live)
        policy = Policy(tasks, config)
        try:
            fetched, phases = drive(policy, self.executor, payload, fetch, faults=faults,
                                    progress=progress, own=False)
        finally:
            self.executor.settle(timeout=config.heartbeat_timeout)
        return fetched, phases, policy

    def _dataset_report(self, ds, policy, fan_in, phases):
        from mergeagg.runtime.driver import report as make_report

        report = make_report(policy, self.workers, fan_in, phases)
        if self.client is not None:
            report.mode = "dask"
            self._account_dask(ds, policy, report)
            return report
        report.mode = "session"
        self._account(ds, policy, report)
        return report

    # -- datasets on Dask ------------------------------------------------------------------

    def _submit_loads(self, ds):
        """One Dask task per partition: read the split and load it (or load the parent
        partition), kept in the cluster's memory for as long as this session holds the
        future. Dask recomputes a lost one from this lineage (the task graph)."""
        from mergeagg.runtime.dask import derive_partition, load_partition
        from mergeagg.runtime.pickling import Shipped

        load = Shipped(ds.load)  # Dask would pickle it without its file name
        token = uuid.uuid4().hex[:8]
        futures = []
        for i, split in enumerate(ds.splits()):
            key = f"mergeagg-{ds.id}-{token}-{i}"
            if ds.parent is not None:
                futures.append(self.client.submit(derive_partition, load,
                                                  ds.parent.futures[i], key=key, pure=False))
            else:
                futures.append(self.client.submit(load_partition, load, split, key=key,
                                                  pure=False))
        return futures

    def _drive_dataset_dask(self, payload, ds, make_tasks, fetch, *, config, faults,
                            progress):
        from mergeagg.runtime.dask import DaskPartition, drive, slot_name

        parts = [DaskPartition(ds.id, i, split.id) for i, split in enumerate(ds.splits())]
        futures = {p.id: ds.futures[p.index] for p in parts}
        tasks = make_tasks(parts)
        # Locality: a map task prefers the worker holding its partition, on one of that
        # worker's slots in turn (a worker of n threads is n slots).
        who = self.client.who_has(ds.futures)
        threads = {a: max(1, int(w.get("nthreads", 1))) for a, w in
                   self.client.scheduler_info(n_workers=-1)["workers"].items()}
        turn = {}
        for t, fut in zip(tasks[:len(parts)], ds.futures):
            holders = [a for a in sorted(who.get(fut.key) or ()) if a in threads]
            if holders:
                a = holders[0]
                turn[a] = turn.get(a, -1) + 1
                t.prefer = slot_name(a, turn[a] % threads[a])
        policy = Policy(tasks, config)
        fetched, phases = drive(policy, payload, fetch, client=self.client, config=config,
                                faults=faults, progress=progress, partitions=futures)
        return fetched, phases, policy

    def _account_dask(self, ds, policy, report):
        """Cache counters of a job over a dataset on Dask, from the lineage runs each map
        task's partition reported: a partition whose run ids were all seen before was a
        hit; a new run id is a load (a miss the first time, a rebuild by Dask after its
        holder was lost) and adds the bytes that run read. Dask rebuilds a lost partition
        as soon as its holder dies (the session holds its future), so a rebuild is counted
        by the first job that reads the rebuilt partition."""
        counts = dict.fromkeys(CACHE_COUNTERS, 0)
        for i in range(len(ds)):
            stats = policy.tasks[f"map-{i}"].stats or {}
            new = [(rid, nbytes) for rid, nbytes in stats.get("cache_runs", ())
                   if rid not in self._runs_seen]
            if not new:
                counts["cache_hits"] += 1
            elif i in ds.loaded_once:
                counts["cache_rebuilds"] += 1
            else:
                counts["cache_misses"] += 1
            nbytes = sum(nbytes for _rid, nbytes in new)
            counts["cache_bytes_read"] += nbytes
            report.bytes_read += nbytes
            self._runs_seen.update(rid for rid, _nbytes in new)
            ds.loaded_once.add(i)
        for k, v in counts.items():
            ds.counters[k] += v
        report.counters.update(counts)

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
        if self.executor is None and self.client is None:
            values, report = self._collect_here(fn, dataset)
            fps = [fingerprint(v) for v in values]
        else:
            n = len(dataset)

            def fetch(policy, ex):
                out = [ex.fetch(policy.results[f"map-{i}"][0]) for i in range(n)]
                return NOT_YET if any(v is NOT_YET for v in out) else out

            def tasks(parts):
                return [TaskDef(f"map-{p.index}", "map", split=p, index=p.index)
                        for p in parts]

            values, phases, pol = self._drive_dataset(
                Aggregator(fn, _no_combine, name="collect"), dataset, tasks, fetch,
                config=config, faults=None, progress=False)
            fps = [pol.results[f"map-{i}"][1] for i in range(n)]
            report = self._dataset_report(dataset, pol, 0, phases)
        report.wall_seconds = time.perf_counter() - start
        return Collected(values, fps, report)

    def _account(self, ds, policy, report):
        """Cache counters of a finished job, and where each partition now lives."""
        live = set(self.executor.live_workers())
        counts = dict.fromkeys(CACHE_COUNTERS, 0)
        for i in range(len(ds)):
            task = policy.tasks[f"map-{i}"]
            stats = task.stats or {}
            worker = task.worker
            if stats.get("cache_hits"):
                counts["cache_hits"] += 1
            elif stats.get("cache_misses"):
                previous = ds.holders.get(i, [])
                if i in ds.loaded_once and not any(w in live and w != worker
                                                   for w in previous):
                    counts["cache_rebuilds"] += 1
                else:
                    counts["cache_misses"] += 1
                counts["cache_bytes_read"] += stats.get("bytes_read", 0)
            ds.loaded_once.add(i)
            d = ds
            while d is not None:  # a miss also (re)loaded the missing ancestors there
                holders = [w for w in d.holders.get(i, []) if w in live]
                if worker in live and worker not in holders:
                    holders.insert(0, worker)
                d.holders[i] = holders
                d = d.parent if stats.get("cache_misses") else None
        for k, v in counts.items():
            ds.counters[k] += v
        report.counters.update(counts)

    def _collect_here(self, fn, ds):
        """``workers=0``: every partition's ``fn`` output, in split order, in this process."""
        report = Report(mode="session", workers=0, fan_in=0)
        t0 = time.perf_counter()
        values = list(self._partials_here(fn, ds, report))
        report.phases = {"map": time.perf_counter() - t0}
        return values, report

    def _run_fold_here(self, job, ds, fan_in):
        """``workers=0``: partitions loaded in this process, folded along the same tree."""
        report = Report(mode="session", workers=0, fan_in=fan_in)
        t0 = time.perf_counter()
        root = fold_fixed(self._partials_here(job.partial, ds, report), job.combine, fan_in)
        t1 = time.perf_counter()
        value = job.finalize(root)
        report.phases = {"map+combine": t1 - t0, "finalize": time.perf_counter() - t1}
        return value, report

    @staticmethod
    def _partials_here(fn, ds, report):
        counts = dict.fromkeys(CACHE_COUNTERS, 0)
        for split in ds.splits():
            i = split.index
            started = time.perf_counter()
            nbytes = 0
            if i in ds.local:
                counts["cache_hits"] += 1
            else:
                nbytes = _load_here(ds, split)
                counts["cache_misses"] += 1
                counts["cache_bytes_read"] += nbytes
            acc = fn(ds.local[i])
            report.bytes_read += nbytes
            report.tasks.append(TaskRecord(f"map-{i}", "map", f"{ds.id}/{split.id}",
                                           attempts=1, seconds=time.perf_counter() - started,
                                           bytes_read=nbytes))
            yield acc
        for k, v in counts.items():
            ds.counters[k] += v
        report.counters.update(counts)


@dataclass
class Collected:
    """What :meth:`Session.collect` returns: ``values`` (one per partition, in split
    order), their ``fingerprints`` (computed where they were made) and the ``report``."""

    values: list
    fingerprints: list
    report: Report


def _no_combine(a, b):
    raise RuntimeError("collect jobs have no combine task")  # pragma: no cover


def _holder(ds, i, live):
    """The live worker holding partition ``i`` of ``ds``, else of its nearest ancestor."""
    while ds is not None:
        for w in ds.holders.get(i, ()):
            if w in live:
                return w
        ds = ds.parent
    return None


def _load_here(ds, split):
    """Load partition ``split.index`` of ``ds`` in this process (its parent first if
    needed); returns the bytes read from disk."""
    i = split.index
    if ds.parent is not None:
        nbytes = 0 if i in ds.parent.local else _load_here(ds.parent, split)
        ds.local[i] = ds.load(ds.parent.local[i])
        return nbytes
    records = read_split(split)
    ds.local[i] = ds.load(records)
    return getattr(records, "bytes_read", 0)


def _session_executor(workers, **kw):
    """A LocalExecutor that, between jobs, waits for the answers of cancelled attempts.

    Attempt ids (``map-3#2``) repeat from one job to the next; a backup's loser whose
    completion arrived during the next job would be taken for that job's attempt. So the
    executor remembers every attempt it was told to cancel and :meth:`settle` drains
    events until each has answered (done, failed or cancelled) or its worker is gone.
    """
    from mergeagg.runtime.local import LocalExecutor
    from mergeagg.runtime.port import Cancel, Cancelled, Failed, Finished, Lost

    class _SessionExecutor(LocalExecutor):
        def __init__(self, workers, **kw):
            super().__init__(workers, **kw)
            self.unsettled = {}  # attempt -> worker

        def apply(self, actions, job_id, hint=0.0):
            for a in actions:
                if isinstance(a, Cancel):
                    self.unsettled[a.attempt] = a.worker
            super().apply(actions, job_id, hint)

        def events(self, timeout):
            evs = super().events(timeout)
            if self.unsettled:
                for ev in evs:
                    if isinstance(ev, (Finished, Failed, Cancelled)):
                        self.unsettled.pop(ev.attempt, None)
                    elif isinstance(ev, Lost):
                        for aid in [a for a, w in self.unsettled.items() if w == ev.worker]:
                            del self.unsettled[aid]
            return evs

        def wait_ready(self, timeout=30.0):
            """Wait until every worker said it is ready (the first job then sees all)."""
            deadline = time.monotonic() + timeout
            while len(self.live_workers()) < self.size and time.monotonic() < deadline:
                self._events.extend(super().events(0.05))

        def settle(self, timeout=10.0):
            """Drain events until every cancelled attempt has answered; free the outputs
            of losers that completed anyway. Other events between jobs carry nothing the
            next job needs (it starts from ``live_workers()``)."""
            deadline = time.monotonic() + timeout
            while self.unsettled and time.monotonic() < deadline:
                for ev in self.events(0.05):
                    if isinstance(ev, Finished) and ev.ref is not None:
                        self._release(ev.ref)
            for aid, wid in list(self.unsettled.items()):
                if wid not in self.procs:
                    del self.unsettled[aid]
            if self.unsettled:
                # Still silent: these workers may be hung; replace them rather than let an
                # old answer reach the next job.
                for wid in sorted(set(self.unsettled.values())):
                    self.kill(wid, "a cancelled attempt never answered")
                self.unsettled.clear()

    return _SessionExecutor(workers, **kw)
