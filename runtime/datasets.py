"""Persisted datasets as an executor concept: partitions kept in workers' memory.

A :class:`~mergeagg.runtime.session.Session` asks its executor, through the port's dataset
methods, to ``persist`` a dataset (ship the lineage: the splits and ``load``), for the
``partitions`` a job's map tasks read, where to ``locate`` each one, what the job that
ran over them counted (``account``), and to ``uncache`` them. It never asks which executor
it has.

:class:`WorkerMemoryDatasets` is those methods for executors whose own workers keep the
loaded partitions in their memory (the local processes, the in-process executor): ``load``
is shipped to every worker once as a job, a map task's split is a
:class:`~mergeagg.runtime.refs.CachedPartition` (its lineage in a few words), the worker
that ran it keeps what it loaded, and a lost partition is loaded again from its lineage
by whichever worker runs the task next. Dask keeps its own (futures with lineage: see
:class:`~mergeagg.runtime.dask.DaskExecutor`).

>>> from mergeagg.runtime.inprocess import InProcessExecutor
>>> from mergeagg.inputs import shards
>>> class Ds:  # what a Session's Dataset offers the executor
...     id, load, parent, holders, loaded_once = "d1", sorted, None, {}, set()
...     def splits(self): return shards([[3, 1], [2]]).splits()
...     def __len__(self): return 2
>>> with InProcessExecutor(2) as ex:
...     ex.persist(Ds())
...     [p.id for p in ex.partitions(Ds())], ex.locate(Ds())
(['d1/shard:0', 'd1/shard:1'], [None, None])
"""

from __future__ import annotations

from mergeagg.runtime.refs import CachedPartition

__all__ = ["CACHE_COUNTERS", "WorkerMemoryDatasets", "empty_counts"]

CACHE_COUNTERS = ("cache_hits", "cache_misses", "cache_rebuilds", "cache_bytes_read")


def empty_counts():
    """A fresh ``{counter: 0}`` for :data:`CACHE_COUNTERS`."""
    return dict.fromkeys(CACHE_COUNTERS, 0)


class WorkerMemoryDatasets:
    """The port's dataset methods for an executor whose workers hold loaded partitions in
    their memory. The executor provides ``load_job``, ``drop_job``, ``live_workers`` and
    ``evict(dataset_id)`` (drop the partitions from every worker), and a
    ``dataset_jobs`` dict (dataset id -> the job that carries its ``load``).

    A dataset's ``holders`` (partition index -> live workers holding it, the first
    preferred) and ``loaded_once`` are kept on the dataset itself, where the session and
    its tests read them. Cost: O(partitions) per call, no message but ``persist``'s
    one job and ``uncache``'s one message per worker.
    """

    def persist(self, dataset):
        """Ship ``dataset.load`` (its lineage's function) to every worker once, and to
        each replacement; the partitions load when a job first reads them."""
        self.dataset_jobs[dataset.id] = self.load_job(dataset.load)

    def partitions(self, dataset):
        """The map tasks' splits over ``dataset``, in index order: each names its
        partition and its lineage (the split, or the parent dataset's partition)."""
        return [self._partition(dataset, split) for split in dataset.splits()]

    def _partition(self, dataset, split):
        parent = None if dataset.parent is None else self._partition(dataset.parent, split)
        return CachedPartition(dataset.id, split, self.dataset_jobs[dataset.id], parent)

    def locate(self, dataset):
        """Per partition, the live worker that holds it (else one holding the nearest
        ancestor's partition), or ``None``."""
        live = set(self.live_workers())
        return [_holder(dataset, i, live) for i in range(len(dataset))]

    def account(self, dataset, policy):
        """The cache counters of the job ``policy`` just ran over ``dataset``, from what
        each map task reported: a hit, a miss (a first load, or a load on another worker
        while a holder lived) or a rebuild (a load because every holder had died); and
        where each partition (and the ancestors a miss loaded with it) now lives."""
        live = set(self.live_workers())
        counts = empty_counts()
        for i in range(len(dataset)):
            task = policy.tasks[f"map-{i}"]
            stats = task.stats or {}
            worker = task.worker
            if stats.get("cache_hits"):
                counts["cache_hits"] += 1
            elif stats.get("cache_misses"):
                previous = dataset.holders.get(i, [])
                if i in dataset.loaded_once and not any(w in live and w != worker
                                                        for w in previous):
                    counts["cache_rebuilds"] += 1
                else:
                    counts["cache_misses"] += 1
                counts["cache_bytes_read"] += stats.get("bytes_read", 0)
            dataset.loaded_once.add(i)
            d = dataset
            while d is not None:  # a miss also (re)loaded the missing ancestors there
                holders = [w for w in d.holders.get(i, []) if w in live]
                if worker in live and worker not in holders:
                    holders.insert(0, worker)
                d.holders[i] = holders
                d = d.parent if stats.get("cache_misses") else None
        return counts

    def uncache(self, dataset):
        """Drop ``dataset``'s partitions from every worker's memory and forget its
        ``load``."""
        job = self.dataset_jobs.pop(dataset.id, None)
        if job is not None:
            self.drop_job(job)
        self.evict(dataset.id)
        dataset.holders.clear()


def _holder(dataset, i, live):
    """The live worker holding partition ``i`` of ``dataset``, else of its nearest
    ancestor."""
    while dataset is not None:
        for w in dataset.holders.get(i, ()):
            if w in live:
                return w
        dataset = dataset.parent
    return None
