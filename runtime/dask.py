"""The executor port on dask.distributed: the same policy, the same tree, Dask's workers.

:func:`run_dask` drives :class:`~mergeagg.runtime.master.Policy` exactly as
:func:`~mergeagg.runtime.local.run_local` does; :class:`DaskExecutor` carries out its
actions on a Dask cluster:

* **Launch** becomes one ``client.submit`` of :func:`run_attempt` (``pure=False``, a key of
  its own per attempt), restricted to the Dask worker the policy chose
  (``workers=[address], allow_other_workers=False``), so that a backup really runs on
  another worker and the policy's view of who runs what stays true. A combine attempt takes
  its children's futures as arguments: Dask moves an output only when the combine runs on
  another worker than the one holding it.
* The attempt runs on the Dask worker: it reads its split and calls ``partial``, or loads its
  children's outputs in fold order and folds them with ``combine``; it pickles the output and
  fingerprints it **there**, and returns ``("done", pickled output, fingerprint, stats)``.
  Every combine unpickles its inputs, so a ``combine`` that modifies its first argument never
  touches an output that Dask holds.
* Completions reach the driver as Dask events (``Worker.log_event`` on the ``"mergeagg"``
  topic, tagged with the job's token; the client subscribes once and routes them to their
  job): only the fingerprint and the stats cross to the client, never the output. One
  topic for every job keeps the scheduler's event log bounded (Dask never forgets a
  topic). Future callbacks report what Dask itself failed at. A running map or combine
  attempt's progress (the share of its input consumed, for
  :class:`~mergeagg.runtime.speculation.Late`) goes out the same way, from a sampler
  thread in each worker process, at most every 0.2 s per attempt.
* **Workers**: the scheduler's list of workers (``client.scheduler_info()``, polled every
  ``poll_interval``) is the membership, and a listed worker is alive: Dask's own
  ``worker-ttl`` (5 minutes by default) finds hung ones, and backups route work around
  them meanwhile. With ``watch_heartbeats=True`` a worker is heard from only when the
  scheduler got a heartbeat from it since the last look, so the policy's
  ``heartbeat_timeout`` finds a hung worker (SIGSTOP) and has its nanny restart it, as the
  local runtime does. It is off by default because a task that holds the GIL for long (one
  C call over a whole split, such as ``Counter(words)``) silences its worker's heartbeats
  too, and such a worker would be killed for being busy. A worker with ``nthreads`` threads
  is ``nthreads`` policy slots named ``"<address>/<thread>"``.
* **Lost workers.** When a worker leaves the scheduler, the policy sees ``worker_lost`` for
  its slots: its running attempts run again elsewhere, and so do completed tasks whose
  outputs lived there and are still needed, as new attempts that the report counts. The
  executor releases every future that lived on the lost worker, so Dask does not recompute
  them from lineage behind the policy's back (it could not anyway: they were restricted to
  a worker that no longer exists). Recomputation from lineage is thus the policy's: the
  task table is the lineage, each re-run is fingerprinted, and a second completion of a
  task is compared with the first. Should Dask still hand a combine an input it recomputed
  (a worker restarted at the same address), the combine checks the input's fingerprint
  against the one the policy recorded and the job stops with
  :class:`~mergeagg.errors.NondeterminismError` when they differ.
* **Cancel** releases the attempt's future. Dask cannot interrupt a function running in a
  worker thread: a backup's loser runs on to its end (an injected ``delay`` fault notices the
  cancel and stops sleeping), its completion is still compared with the winner's.

Dask is optional: this module imports ``distributed`` only inside its functions, and
:func:`require_dask` says which extra to install when it is missing.

>>> slot_name("tcp://10.0.0.5:40331", 3)
'tcp://10.0.0.5:40331/3'
>>> slot_address("tcp://10.0.0.5:40331/3")
'tcp://10.0.0.5:40331'
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import queue
import shutil
import threading
import time
import traceback
import uuid

import cloudpickle

from mergeagg.errors import InputError, JobFailed, NondeterminismError, WorkerLost
from mergeagg.inputs import read_split
from mergeagg.runtime.attempt import PROGRESS_EVERY, Reporter
from mergeagg.runtime.attempt import run_attempt as _attempt
from mergeagg.runtime.datasets import empty_counts
from mergeagg.runtime.driver import run_fold, run_keyed
from mergeagg.runtime.faults import ProcessFaults
from mergeagg.runtime.pickling import Shipped
from mergeagg.runtime.pickling import dumps as ship_dumps
from mergeagg.runtime.port import (
    NOT_YET,
    Cancel,
    Failed,
    Finished,
    Heartbeat,
    Joined,
    KillWorker,
    Launch,
    Lost,
    Progress,
    Release,
)
from mergeagg.runtime.refs import InputLost, ResidentPartition, dumps
from mergeagg.runtime.shuffle import KeyedSpec, MapOutput, PartRef, side_of

__all__ = ["run_dask", "run_keyed_dask", "DaskExecutor", "DaskPartition", "Loaded",
           "load_partition", "derive_partition", "DaskRef", "require_dask", "run_attempt",
           "slot_name", "slot_address", "connect", "await_workers", "INSTALL_HINT",
           "EVENT_TOPIC"]

INSTALL_HINT = "pip install 'mergeagg[dask]'"

EVENT_TOPIC = "mergeagg"

_ALIVE = ("running", "paused", "init")
_MEMBERSHIP = (Heartbeat, Joined, Lost)  # events that say nothing of the attempts

# Jobs running in this process, by token: where their events go; and how many jobs each
# client (by id) runs, so that it stays subscribed while any does.
_routes = {}
_subscribed = {}
_routes_lock = threading.Lock()


def _route(event):
    # Runs in the client's event loop: hand over to the job's driver thread.
    msg = event[1]
    q = _routes.get(msg.get("job")) if isinstance(msg, dict) else None
    if q is not None:
        q.put(("event", msg))


def _subscribe(client, token, q):
    with _routes_lock:
        _routes[token] = q
        n = _subscribed.get(client.id, 0)
        _subscribed[client.id] = n + 1
        if n == 0:
            client.subscribe_topic(EVENT_TOPIC, _route)


def _unsubscribe(client, token):
    with _routes_lock:
        _routes.pop(token, None)
        n = _subscribed.pop(client.id, 1) - 1
        if n > 0:
            _subscribed[client.id] = n
            return
        try:
            client.unsubscribe_topic(EVENT_TOPIC)
        except Exception:  # a closing client may already be gone
            pass


def require_dask():
    """The ``distributed`` module, or an ImportError that says which extra to install.

    Cost: one import (cached by Python after the first).
    """
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(
            "the Dask backend needs dask.distributed, which is not installed here "
            f"({exc}); install the extra with: {INSTALL_HINT}"
        ) from exc
    return distributed


def slot_name(address, thread):
    """The policy's name for thread ``thread`` of the Dask worker at ``address``. O(1)."""
    return f"{address}/{thread}"


def slot_address(slot):
    """The Dask worker address of a policy slot. O(len(slot))."""
    return slot.rsplit("/", 1)[0]


class DaskRef:
    """A task output held by Dask: the attempt's ``future``, the ``fingerprint`` of the
    output it holds, and ``worker``, the policy slot whose worker holds it (its loss loses
    the output). Cost: a handle; the output itself stays on the Dask worker."""

    __slots__ = ("worker", "key", "future", "fingerprint", "nbytes")

    def __init__(self, worker, key, future, fingerprint, nbytes=0):
        self.worker = worker
        self.key = key
        self.future = future
        self.fingerprint = fingerprint
        self.nbytes = nbytes

    def __repr__(self):
        return f"DaskRef({self.key}, on {self.worker}, {self.nbytes} B)"


class DaskPartition(ResidentPartition):
    """The split of a map task over a persisted dataset on Dask: partition ``index`` of
    dataset ``dataset``. The executor hands the attempt the partition's future (a
    :class:`Loaded` in some worker's memory) as its input. ``id`` names it in reports."""

    __slots__ = ("dataset", "index", "id")

    def __init__(self, dataset, index, split_id):
        self.dataset = dataset
        self.index = index
        self.id = f"{dataset}/{split_id}"

    def __repr__(self):
        return f"DaskPartition({self.id})"


class Loaded:
    """A persisted partition in a Dask worker's memory: its loaded ``value`` and ``runs``,
    one ``(run id, bytes read)`` per level of its lineage (itself first, then its parent
    partition, ...). A run id is new each time Dask (re)computes that level, which is how
    a session tells a cache hit from a rebuild."""

    __slots__ = ("value", "runs")

    def __init__(self, value, runs):
        self.value = value
        self.runs = runs


def load_partition(load, split):
    """Read ``split`` and apply ``load``: a persisted partition's lineage on Dask."""
    records = read_split(split)
    value = load(records)
    return Loaded(value, [(uuid.uuid4().hex, getattr(records, "bytes_read", 0))])


def derive_partition(load, parent):
    """``load`` of a parent partition: a derived dataset's partition on Dask."""
    return Loaded(load(parent.value), [(uuid.uuid4().hex, 0), *parent.runs])


# -- what runs on a Dask worker -------------------------------------------------------------

_JOBS = {}  # digest -> (aggregator, fault plan), on each worker; a few recent jobs
_JOBS_KEPT = 8


def _job(digest, payload):
    job = _JOBS.get(digest)
    if job is None:
        job = cloudpickle.loads(payload)
        while len(_JOBS) >= _JOBS_KEPT:
            _JOBS.pop(next(iter(_JOBS)))
        _JOBS[digest] = job
    return job


def _cancelled(key):
    """Whether Dask has dropped task ``key`` on this worker (a cancelled backup loser)."""
    try:
        from distributed import get_worker

        ts = get_worker().state.tasks.get(key)
    except (ImportError, ValueError, AttributeError):
        return False
    return ts is None or ts.state in ("cancelled", "released", "forgotten")


def _sleep_unless_cancelled(seconds, key):
    end = time.monotonic() + seconds
    while True:
        left = end - time.monotonic()
        if left <= 0 or _cancelled(key):
            return
        time.sleep(min(left, 0.02))


# The map and combine attempts running in this Dask worker process, by Dask key: (meter, worker, job
# token), for the progress sampler; it starts with the first one.
_tracked = {}
_tracked_lock = threading.Lock()
_sampler = []


def _track(key, entry):
    with _tracked_lock:
        if entry is None:
            _tracked.pop(key, None)
            return
        _tracked[key] = entry
        if not _sampler:
            t = threading.Thread(target=_sample_progress, name="mergeagg-progress",
                                 daemon=True)
            _sampler.append(t)
            t.start()


def _sample_progress():
    """This worker process's progress sampler: every ``PROGRESS_EVERY`` seconds at most,
    each running attempt's progress (the rule is
    :class:`~mergeagg.runtime.attempt.Reporter`'s) goes out as an event on the job's topic,
    beside its completion (``Worker.log_event`` is safe from any thread: it hands the
    message to the worker's event loop). Attempts pay nothing per record."""
    reporter = Reporter()
    while True:
        time.sleep(PROGRESS_EVERY / 4)
        with _tracked_lock:
            running = list(_tracked.values())
        reporter.keep({meter for meter, _w, _t in running})
        now = time.perf_counter()
        for meter, worker, token in running:
            sample = reporter.due(meter, now)
            if sample is not None:
                worker.log_event(EVENT_TOPIC, {
                    "job": token, "attempt": str(meter.attempt), "progress": sample[0],
                    "bytes": sample[1], "total": meter.total})


class DaskHost(ProcessFaults):
    """The attempt runner's host on a Dask worker: an output is returned to Dask as its
    pickled bytes (Dask keeps it in the worker's memory and moves it when a combine runs
    elsewhere); a keyed map's spill files stay in the worker's local directory; a ``delay``
    fault stops sleeping when Dask drops the attempt (a backup's loser); an attempt's
    progress is sampled by this process's progress thread."""

    def __init__(self, token, key, resident=None):
        self.worker = _worker_address()
        self.workdir = _workdir(token)
        self.token = token
        self.key = key
        self.resident = resident

    def track(self, meter):
        from distributed import get_worker

        _track(self.key, None if meter is None else (meter, get_worker(), self.token))

    load = staticmethod(pickle.loads)

    @staticmethod
    def store(aid, data):
        return data

    def cached(self, part):
        return self.resident.value, {"bytes_read": 0,
                                     "cache_runs": [list(r) for r in self.resident.runs]}

    @staticmethod
    def side(blob):
        value = pickle.loads(blob)
        if isinstance(value, PartRef):
            side = value.side if value.side_ref is None else pickle.loads(value.side_ref)
            return side or ([], [])
        return side_of(value)

    def sleep(self, seconds):
        _sleep_unless_cancelled(seconds, self.key)


def run_attempt(job, digest, token, key, launch, expected, hint, *inputs):
    """Run one attempt on a Dask worker (the function each Launch submits), through the
    one attempt runner (:func:`mergeagg.runtime.attempt.run_attempt`).

    ``job`` is the shipped ``(payload, fault plan)``, which travels inside every task (not
    as a Dask dependency: a worker drops the replicas it fetched once its tasks are done,
    and a replica fetched from a hung or dead worker would stall the job) and is unpickled
    once per worker and job. ``launch`` is the policy's Launch without its output
    references; ``inputs`` are what Dask resolved for them: the children's outcomes, in fold
    order, whose fingerprints must be ``expected``, a reducer's buckets, or a persisted
    partition. Returns ``("done", output, fingerprint, stats)`` (the output pickled, or a
    keyed map's :class:`~mergeagg.runtime.shuffle.MapOutput`) or ``("fail", kind, error,
    traceback, lost)``, and logs the same outcome, without the output, as an event of job
    ``token`` on the ``"mergeagg"`` topic. Cost: the attempt's, plus one unpickle per input.
    """
    payload, plan = _job(digest, job)
    local = None
    try:
        host = DaskHost(token, key)
        ready = _inputs_ready(payload, launch, expected, inputs, host)
        if isinstance(ready, Failed):
            event = ready
        else:
            launch, local = ready
            event = _attempt(payload, plan, launch, hint, host)
    finally:
        if local is not None:
            shutil.rmtree(local, ignore_errors=True)
    if isinstance(event, Finished):
        out = event.ref
        if event.attempt.task.startswith(("reduce-", "merge-")) and not isinstance(out, bytes):
            out = dumps(out)  # a committed part's reference travels pickled
        stats = dict(event.stats)
        if "digest" in stats:
            stats["digest"] = list(stats["digest"])
        outcome = ("done", out, event.fingerprint, stats)
    else:
        outcome = ("fail", event.kind, event.error, event.traceback, event.lost)
    return _report_outcome(token, str(launch.attempt), outcome)


def _inputs_ready(payload, launch, expected, inputs, host):
    """The Launch with its inputs as the attempt runner takes them, and a directory to
    remove afterwards; or the Failed event that says why they are not usable."""
    aid = launch.attempt
    if isinstance(launch.split, DaskPartition):
        host.resident = inputs[0]
        return launch, None
    if launch.kind == "map":
        return launch, None
    if launch.kind == "reduce" and isinstance(payload, KeyedSpec):
        lost = tuple(b[1] for b in inputs if b[0] == "lost")
        if lost:
            return Failed(aid, "input_lost", "; ".join(b[2] for b in inputs if b[0] == "lost"),
                          "", lost, host.worker)
        for bucket, want in zip(inputs, expected):
            if bucket[5] != want:
                return Failed(aid, "nondeterministic",
                              f"Dask handed {aid.task} a bucket of {bucket[1]} recomputed "
                              f"with fingerprint {bucket[5]}, but its first completion had "
                              f"{want}", "", (), host.worker)
        if payload.output is not None and not os.path.isdir(payload.output):
            return Failed(aid, "raise",
                          f"FileNotFoundError: the output directory {payload.output} does not "
                          f"exist on Dask worker {host.worker}: output= needs a file system "
                          "that every worker and the driver share (NFS, a cluster file "
                          "system)", "", (), host.worker)
        local = os.path.join(host.workdir, str(aid).replace("#", "_"))
        maps = _copy_buckets(inputs, launch.index, local)
        return dataclasses.replace(launch, inputs=tuple(maps)), local
    for child, want in zip(inputs, expected):
        if child[2] != want:
            return Failed(aid, "nondeterministic",
                          f"Dask handed {aid.task} an input recomputed with fingerprint "
                          f"{child[2]}, but its first completion had {want}", "", (),
                          host.worker)
    return dataclasses.replace(launch, inputs=tuple(child[1] for child in inputs)), None


def _report_outcome(token, attempt, outcome):
    from distributed import get_worker

    worker = get_worker()
    if outcome[0] == "done":
        msg = {"job": token, "attempt": attempt, "address": worker.address, "ok": True,
               "fingerprint": outcome[2], "stats": outcome[3]}
    else:
        msg = {"job": token, "attempt": attempt, "address": worker.address, "ok": False,
               "kind": outcome[1], "error": outcome[2], "traceback": outcome[3],
               "lost": list(outcome[4])}
    worker.log_event(EVENT_TOPIC, msg)
    return outcome


def _worker_address():
    from distributed import get_worker

    return get_worker().address


def _workdir(token, worker=None):
    """This Dask worker's directory for job ``token``'s spill files."""
    if worker is None:
        from distributed import get_worker

        worker = get_worker()
    return os.path.join(worker.local_directory, f"mergeagg-{token}")


def remove_workdir(token, dask_worker=None):
    """Delete job ``token``'s spill files on this Dask worker (``client.run`` calls it on
    every worker when the job ends, passing ``dask_worker``). Returns the bytes freed."""
    path = _workdir(token, dask_worker)
    freed = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                freed += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    shutil.rmtree(path, ignore_errors=True)
    return freed


def read_bucket(map_outcome, r):
    """Bucket ``r`` of a keyed map output, read from its spill file on this Dask worker
    (the one that ran the map: the task is restricted to it).

    Returns ``("ok", map task, salted keys, file bytes, entries, map fingerprint)``, or
    ``("lost", map task, why)`` when the file is gone; its reducer then fails with
    ``input_lost`` and the map task runs again. The bytes keep their CRC framing: the
    reducer checks them. Cost: one read of the bucket's file.
    """
    out = map_outcome[1]
    path, _nbytes, entries = out.buckets[r]
    if isinstance(path, bytes):  # a map output a journal gave back: held in memory
        return ("ok", out.key, out.salted, path, entries, map_outcome[2])
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        return ("lost", out.key, f"spill file {path} of {out.key} is unreadable: {exc}")
    return ("ok", out.key, out.salted, data, entries, map_outcome[2])


def _copy_buckets(buckets, r, directory):
    """Write the fetched buckets to local files; MapOutputs that point at them."""
    os.makedirs(directory, exist_ok=True)
    maps = []
    for i, (_ok, map_task, salted, data, entries, _fp) in enumerate(buckets):
        path = os.path.join(directory, f"in-{i}.spill")
        with open(path, "wb") as f:
            f.write(data)
        files = [None] * r + [(path, len(data), entries)]
        maps.append(MapOutput(None, map_task, directory, files, salted))
    return maps


# -- the driver's side ----------------------------------------------------------------------

class DaskExecutor:
    """The executor port on a ``dask.distributed`` cluster: jobs one after another (a
    :class:`~mergeagg.Session` keeps one), and the persisted datasets of a session.

    ``client`` is a ``dask.distributed.Client`` (the caller's: it stays open) or a
    scheduler address (a client is connected on start and closed on close). The loss
    model: a worker's outputs die with it (it may be on another host). Each job has a
    token of its own: its tasks' keys and its events carry it, so that nothing of one job
    reaches the next. Cost: one ``submit`` per attempt (Dask's scheduler handles several
    hundred to a few thousand tasks per second), one event per completion, one
    ``scheduler_info`` call per ``poll_interval``. Use as a context manager, or call
    :meth:`close` (it releases every future it holds).
    """

    outputs_survive_worker = False
    queues_in_order = False  # a Dask worker runs whichever of its tasks is ready first
    mode = "dask"

    def __init__(self, client, *, poll_interval=0.25, heartbeat_timeout=None,
                 wait_for_workers=60.0, stuck_after=10.0):
        self.client = client
        self.stuck_after = stuck_after  # quiet seconds before looking for stuck attempts
        self._quiet_since = time.monotonic()
        self._stuck_checked = float("-inf")
        self._owns_client = False
        self.poll_interval = poll_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.wait_for_workers = wait_for_workers
        self._last_seen = {}  # Dask worker address -> its last heartbeat, scheduler's clock
        self.cleanup_timeout = 5.0
        self._resident = {}  # DaskPartition.id -> Future of its Loaded
        self._datasets = {}  # persisted dataset id -> its partitions' futures
        self._runs_seen = set()  # lineage run ids of partitions seen loaded
        self.known = {}  # Dask worker address -> nthreads, as last seen alive
        self.banned = set()  # addresses the policy killed: never taken back
        self._pending = []  # membership events seen before the driver asked
        self._last_poll = float("-inf")
        self._empty_since = None  # when the scheduler last went from some workers to none
        self._started = False
        self._closed = False
        self.token = None  # the current job's
        self._job_state()

    def _job_state(self):
        """Everything that belongs to one job, fresh."""
        self.payload = None
        self.digest = None
        self.keyed = False
        self.map_workers = set()  # addresses that ran keyed map attempts (spill files)
        self.buckets = {}  # (map attempt, r) -> Future of read_bucket on the map's worker
        self._bucket_reads = 0
        self.futures = {}  # attempt id -> Future (running, or its output still held)
        self.where = {}  # attempt id -> Dask worker address
        self.reported = set()  # attempts whose outcome event arrived
        self.unreported = {}  # attempt id -> when Dask said finished without an event
        self._launched = {}  # str(attempt id) -> its Launch (events name attempts by text)
        self._queue = queue.Queue()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self):
        """Connect (for an address) and wait for a first worker. Returns ``self``."""
        if self._started:
            return self
        self.client, self._owns_client = connect(self.client)
        self._started = True
        self._pending = self.membership(force=True)
        if not self.known:
            await_workers(self.client, self.wait_for_workers)
            self._pending += self.membership(force=True)
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Drop the current job, release every persisted partition, and close the
        client if this executor connected it (idempotent)."""
        if self._closed or not self._started:
            self._closed = True
            return
        self._closed = True
        self.drop_job(self.token)
        for futures in self._datasets.values():
            for fut in futures:
                fut.release()
        self._datasets.clear()
        self._resident.clear()
        if self._owns_client:
            self.client.close()

    def _remove_spills(self, token, workers):
        # Only on workers still in the cluster: a lost worker took its files with it, and
        # the scheduler would spend its connect timeout on the dead address.
        live = sorted(workers & set(self.known))
        if not live:
            return
        try:
            self.client.run(remove_workdir, token, workers=live, on_error="ignore")
        except Exception:  # a closing client or a lost worker: nothing more to do
            pass

    # -- the port --------------------------------------------------------------------------

    def load_job(self, payload, faults=None):
        """Start a job (dropping the last one, if any): a token of its own, its events'
        subscription, and its payload, shipped with every attempt (see
        :func:`run_attempt`)."""
        if self.token is not None:
            self.drop_job(self.token)
        self._job_state()
        self.token = uuid.uuid4().hex[:12]
        _subscribe(self.client, self.token, self._queue)
        self._pending = []  # the job starts from live_workers()
        self.payload = ship_dumps((payload, faults))
        self.digest = hashlib.blake2b(self.payload, digest_size=16).hexdigest()
        self.keyed = isinstance(payload, KeyedSpec)
        return self.token

    def drop_job(self, job):
        """End job ``job``: release its futures, stop listening to its events, and delete
        its spill files on the workers that ran its maps (waiting a few seconds only: a
        hung worker must not hold up a finished job)."""
        if job is None or job != self.token:
            return
        self.token = None
        for fut in [*self.futures.values(), *self.buckets.values()]:
            fut.release()
        self.futures.clear()
        self.buckets.clear()
        _unsubscribe(self.client, job)
        if self.map_workers:
            cleanup = threading.Thread(target=self._remove_spills,
                                       args=(job, set(self.map_workers)), daemon=True,
                                       name="mergeagg-dask-cleanup")
            cleanup.start()
            cleanup.join(self.cleanup_timeout)
        self.map_workers = set()

    def settle(self, timeout=10.0):
        """Between jobs: nothing to wait for (each job's keys and events carry its own
        token, so a late answer never reaches the next)."""

    # -- persisted datasets ----------------------------------------------------------------

    def persist(self, dataset):
        """One Dask task per partition: read the split and ``load`` it (or load the
        parent partition), kept in the cluster's memory until :meth:`uncache`. Dask
        recomputes a lost one from this lineage (the task graph)."""
        load = Shipped(dataset.load)  # Dask would pickle it without its file name
        token = uuid.uuid4().hex[:8]
        futures = []
        for i, split in enumerate(dataset.splits()):
            key = f"mergeagg-{dataset.id}-{token}-{i}"
            if dataset.parent is not None:
                parent = self._datasets[dataset.parent.id][i]
                fut = self.client.submit(derive_partition, load, parent, key=key, pure=False)
            else:
                fut = self.client.submit(load_partition, load, split, key=key, pure=False)
            futures.append(fut)
            self._resident[DaskPartition(dataset.id, i, split.id).id] = fut
        self._datasets[dataset.id] = futures

    def partitions(self, dataset):
        """The map tasks' splits over ``dataset``, in index order."""
        return [DaskPartition(dataset.id, i, split.id)
                for i, split in enumerate(dataset.splits())]

    def locate(self, dataset):
        """Per partition, the slot to prefer: one of the threads, in turn, of the worker
        Dask says holds it (``who_has``); ``None`` where it holds none."""
        futures = self._datasets[dataset.id]
        who = self.client.who_has(futures)
        threads = {a: max(1, int(w.get("nthreads", 1))) for a, w in
                   self.client.scheduler_info(n_workers=-1)["workers"].items()}
        turn = {}
        out = []
        for fut in futures:
            holders = [a for a in sorted(who.get(fut.key) or ()) if a in threads]
            if not holders:
                out.append(None)
                continue
            a = holders[0]
            turn[a] = turn.get(a, -1) + 1
            out.append(slot_name(a, turn[a] % threads[a]))
        return out

    def account(self, dataset, policy):
        """Cache counters of the job ``policy`` ran over ``dataset``, from the lineage
        runs each map task's partition reported: a partition whose run ids were all seen
        before was a hit; a new run id is a load (a miss the first time, a rebuild by
        Dask after its holder was lost) and its bytes are what that map task read (set
        in its stats, so the report counts them). Dask rebuilds a lost partition as soon
        as its holder dies, so a rebuild is counted by the first job that reads it."""
        counts = empty_counts()
        for i in range(len(dataset)):
            stats = policy.tasks[f"map-{i}"].stats
            new = [(rid, nbytes) for rid, nbytes in stats.get("cache_runs", ())
                   if rid not in self._runs_seen]
            if not new:
                counts["cache_hits"] += 1
            elif i in dataset.loaded_once:
                counts["cache_rebuilds"] += 1
            else:
                counts["cache_misses"] += 1
            nbytes = sum(nbytes for _rid, nbytes in new)
            counts["cache_bytes_read"] += nbytes
            stats["bytes_read"] = stats.get("bytes_read", 0) + nbytes
            self._runs_seen.update(rid for rid, _nbytes in new)
            dataset.loaded_once.add(i)
        return counts

    def uncache(self, dataset):
        """Release ``dataset``'s partitions: Dask frees them."""
        for i, fut in enumerate(self._datasets.pop(dataset.id, ())):
            self._resident.pop(f"{dataset.id}/{dataset.splits()[i].id}", None)
            fut.release()

    def live_workers(self):
        """The policy slots of the workers seen alive, sorted."""
        return self.slots()

    def membership(self, force=False):
        """Events for workers that joined or left since the last look, and heartbeats for
        the live ones. Asks the scheduler at most once per ``poll_interval`` unless
        ``force``."""
        now = time.monotonic()
        if not force and now - self._last_poll < self.poll_interval:
            return []
        self._last_poll = now
        info = self.client.scheduler_info(n_workers=-1)["workers"]
        alive = {addr: max(1, int(w.get("nthreads", 1))) for addr, w in info.items()
                 if w.get("status", "running") in _ALIVE and addr not in self.banned}
        out = []
        for addr in sorted(set(self.known) - set(alive)):
            status = info.get(addr, {}).get("status", "gone")
            out.extend(self._lost(addr, f"Dask worker left the scheduler (status {status})"))
        self._check_not_empty(alive, now)
        watch = self._watch_heartbeats(len(info))
        for addr, n in sorted(alive.items()):
            seen = info[addr].get("last_seen")
            fresh = not watch or seen is None or seen != self._last_seen.get(addr)
            self._last_seen[addr] = seen
            if addr not in self.known:
                self.known[addr] = n
                out.extend(Joined(slot_name(addr, i)) for i in range(n))
            elif not fresh:
                continue  # no heartbeat since the last look: silent, maybe hung
            out.extend(Heartbeat(slot_name(addr, i)) for i in range(self.known[addr]))
        return out

    def _check_not_empty(self, alive, now):
        """A cluster left with no worker for ``wait_for_workers`` seconds in a job ends it
        with :class:`~mergeagg.errors.WorkerLost`: waiting on would never end if nothing
        brings workers back (a nanny that gave up restarting its worker; a cluster scaled
        to zero), and the driver must never hang."""
        if alive:
            self._empty_since = None
            return
        if self._empty_since is None:
            self._empty_since = now
            return
        if now - self._empty_since > self.wait_for_workers:
            lost = ", ".join(sorted(self.banned | set(self._last_seen))) or "none seen"
            raise WorkerLost(
                f"the Dask scheduler at {self.client.scheduler.address} has had no worker "
                f"for {now - self._empty_since:.0f}s in this job (workers seen: {lost}); "
                "a nanny may have given up restarting its worker. Start workers with: "
                f"dask worker {self.client.scheduler.address}, then run the job again "
                f"(wait_for_workers={self.wait_for_workers:g}s sets how long to wait)")

    def _watch_heartbeats(self, n_workers):
        """Whether a worker counts as heard from only when the scheduler got a heartbeat
        from it since the last look (so that the policy's ``heartbeat_timeout`` finds a
        hung worker), which needs Dask's heartbeat interval (0.5 s up to 10 workers, more
        on larger clusters) well under that timeout; else a listed worker is alive and
        Dask's ``worker-ttl`` finds hung ones."""
        if self.heartbeat_timeout is None:
            return False
        if n_workers <= 10:
            interval = 0.5
        elif n_workers < 50:
            interval = 1.0
        elif n_workers < 200:
            interval = 2.0
        else:
            interval = n_workers / 200 + 1
        return 2 * interval + 2 * self.poll_interval < self.heartbeat_timeout

    @property
    def size(self):
        """How many policy slots (worker threads) the cluster has, as last seen."""
        return sum(self.known.values())

    def report_counters(self):
        """What a report adds about this cluster: how many Dask workers it had."""
        return {"dask_workers": len(self.known)}

    def slots(self):
        """The policy slots of the workers seen alive, sorted."""
        return sorted(slot_name(a, i) for a, n in self.known.items() for i in range(n))

    def apply(self, actions, job=None, hint=0.0):
        """Carry out the policy's actions."""
        for a in actions:
            if isinstance(a, Launch):
                self._submit(a, hint)
            elif isinstance(a, Cancel):
                self._forget(str(a.attempt))
            elif isinstance(a, Release):
                for ref in a.refs:
                    if ref is not None:
                        self._forget(ref.key)
            elif isinstance(a, KillWorker):
                self.kill(slot_address(a.worker), a.cause)

    def kill(self, address, cause):
        """Stop using the worker at ``address`` (the policy counts it lost) and ask its
        nanny to restart it; a restarted worker comes back under a new address."""
        self.banned.add(address)
        self.known.pop(address, None)
        self._drop_worker(address)

        def restart():
            try:
                self.client.restart_workers([address], raise_for_error=False, timeout=60)
            except Exception:  # best effort: without a nanny it stays out
                pass

        threading.Thread(target=restart, name="mergeagg-dask-restart", daemon=True).start()

    def events(self, timeout):
        """Wait up to ``timeout`` seconds; the typed events that arrived, membership
        changes included."""
        out, self._pending = self._pending, []
        out += self.membership()
        deadline = time.monotonic() + max(0.0, timeout)
        while not out:
            left = min(deadline - time.monotonic(), self.poll_interval)
            try:
                item = self._queue.get(timeout=max(0.0, left))
            except queue.Empty:
                out = self.membership()
                if time.monotonic() >= deadline:
                    break
                continue
            self._take(item, out)
        while True:
            try:
                self._take(self._queue.get_nowait(), out)
            except queue.Empty:
                break
        self._check_unreported(out)
        now = time.monotonic()
        if any(type(e) not in _MEMBERSHIP for e in out):
            self._quiet_since = now  # an attempt moved: nothing is stuck
        elif now - self._quiet_since > self.stuck_after \
                and now - self._stuck_checked > self.stuck_after:
            self._stuck_checked = now
            out += self._unstick()
        return out

    def _unstick(self):
        """Failed events for attempts Dask can never run: an input of theirs that Dask
        dropped and would recompute (a completed output whose worker left, or a replica
        Dask let go), when the recomputation waits for a worker that is gone (every
        attempt is restricted to the worker the policy chose). The policy hears
        ``input_lost`` naming those inputs' tasks, runs them again and then the attempt.
        Asked after ``stuck_after`` quiet seconds: one scheduler round trip, so a job
        whose attempts are merely long pays nearly nothing. Found on the Debian doc tree
        under kill faults: a combine waited for ever on such an input."""
        waiting = [self._key(aid) for aid in self.futures if aid not in self.reported]
        if not waiting:
            return []
        try:
            stuck = self.client.run_on_scheduler(_stuck_tasks, waiting)
        except Exception:  # the scheduler is unreachable: membership will say so
            return []
        by_key = {self._key(aid): launch for aid, launch in self._launched.items()}
        out = []
        for key, blocked in stuck.items():
            launch = by_key.get(key)
            if launch is None:
                continue
            aid = str(launch.attempt)
            lost = tuple(sorted({by_key[b].attempt.task for b in blocked if b in by_key}))
            self.reported.add(aid)
            self._forget(aid)
            what = f"its inputs of {', '.join(lost)}" if lost else "it"
            out.append(Failed(launch.attempt, "input_lost",
                              f"Dask cannot run {aid}: {what} would wait for ever for a "
                              "worker that left", "", lost, launch.worker))
        return out

    def fetch(self, ref, transfer_timeout=300.0):
        """A sink's output, or :data:`~mergeagg.runtime.port.NOT_YET` if its future was
        not done within ``poll_interval`` or its transfer within ``transfer_timeout``
        (the driver looks at membership and tries again)."""
        self._pending += self.membership(force=True)
        if any(isinstance(ev, Lost) for ev in self._pending):
            return NOT_YET  # the policy hears of it first: the output may have gone too
        deadline = time.monotonic() + self.poll_interval
        while not ref.future.done():
            if time.monotonic() >= deadline:
                return NOT_YET
            time.sleep(0.002)
        try:
            outcome = ref.future.result(timeout=transfer_timeout)
        except TimeoutError:
            return NOT_YET
        if outcome[2] != ref.fingerprint:
            raise NondeterminismError(
                f"Dask returned the output of {ref.key} with fingerprint {outcome[2]}, but "
                f"the policy recorded {ref.fingerprint}: it was recomputed and came out "
                "different", task=self._launched[ref.key].attempt.task,
                fingerprints=(ref.fingerprint, outcome[2]))
        return pickle.loads(outcome[1])

    # -- a journal's outputs ----------------------------------------------------------------

    def output_bytes(self, ref, timeout=300.0):
        """The pickled output behind ``ref``, for a journal to keep a copy of; ``None``
        for a keyed map's output, which stays in its worker's spill files."""
        data = ref.future.result(timeout=timeout)[1]
        return data if isinstance(data, (bytes, bytearray)) else None

    def map_buckets(self, ref, timeout=300.0):
        """A keyed map output's buckets, read on the worker that holds them, for a
        journal to keep: ``(salted keys, [(spill bytes, entries), ...])``."""
        out = ref.future.result(timeout=timeout)[1]
        address = slot_address(ref.worker)
        futs = [self.client.submit(read_bucket, ref.future, r, pure=False, workers=[address],
                                   allow_other_workers=False)
                for r in range(len(out.buckets))]
        got = self.client.gather(futs)
        for fut in futs:
            fut.release()
        bad = [g for g in got if g[0] != "ok"]
        if bad:
            raise InputLost(bad[0][2], task=bad[0][1])
        return out.salted, [(g[3], g[4]) for g in got]

    def adopt(self, ref, fingerprint):
        """A reference Dask tasks can read for an output kept on this machine (a
        journal's): its bytes scattered to a worker, held as a finished attempt's
        outcome (a keyed map output with its buckets' bytes in memory). It is lost with
        that worker, like any output here."""
        if isinstance(ref, MapOutput):
            buckets = []
            for path, nbytes, entries in ref.buckets:
                with open(path, "rb") as f:
                    buckets.append((f.read(), nbytes, entries))
            data = MapOutput(None, ref.key, None, buckets, ref.salted)
            size = sum(b[1] for b in buckets)
        elif ref.data is not None:
            data = ref.data
            size = len(data)
        else:  # the journal checked its size and CRC-32 when it restored it
            with open(ref.path, "rb") as f:
                data = f.read()
            size = len(data)
        [fut] = self.client.scatter([("done", data, fingerprint, {})], hash=False)
        address = sorted(self.client.who_has([fut])[fut.key])[0]
        aid = f"journal-{ref.key}"
        self.futures[aid] = fut
        self.where[aid] = address
        return DaskRef(slot_name(address, 0), aid, fut, fingerprint, size)

    # -- internals -------------------------------------------------------------------------

    def _key(self, aid):
        """The Dask key of attempt ``aid`` (its text) of the current job."""
        return f"mergeagg-{self.token}-{aid}"

    def _submit(self, a, hint):
        address = slot_address(a.worker)
        aid = str(a.attempt)
        key = self._key(aid)
        expected = tuple(r.fingerprint for r in a.inputs)
        inputs = [r.future for r in a.inputs]
        if isinstance(a.split, DaskPartition):
            inputs = [self._resident[a.split.id]]
        if self.keyed and a.kind == "reduce":
            inputs = [self._bucket(ref, a.index) for ref in a.inputs]
        elif self.keyed and a.kind == "map":
            self.map_workers.add(address)
        bare = dataclasses.replace(a, inputs=())  # its references travel as `inputs`
        fut = self.client.submit(run_attempt, self.payload, self.digest, self.token, key,
                                 bare, expected, hint, *inputs, key=key, pure=False,
                                 workers=[address], allow_other_workers=False)
        self.futures[aid] = fut
        self.where[aid] = address
        self._launched[aid] = a
        fut.add_done_callback(lambda f, aid=aid, q=self._queue: q.put(("future", aid, f)))

    def _bucket(self, ref, r):
        """The future of bucket ``r`` of map output ``ref``, read on the map's worker.

        Kept until a reduce attempt of partition ``r`` completes, so that its backup or
        retry does not need a thread on the map's worker again (that thread may be the
        straggler's); then released, and Dask frees the bytes once no attempt needs them.
        """
        fut = self.buckets.get((ref.key, r))
        if fut is None:
            self._bucket_reads += 1
            fut = self.client.submit(
                read_bucket, ref.future, r, pure=False, workers=[slot_address(ref.worker)],
                allow_other_workers=False,
                key=f"mergeagg-{self.token}-{ref.key}-b{r}-{self._bucket_reads}")
            self.buckets[(ref.key, r)] = fut
        return fut

    def _release_buckets(self, r=None, attempt=None):
        for k in [k for k in self.buckets if k[1] == r or k[0] == attempt]:
            self.buckets.pop(k).release()

    def _forget(self, aid):
        fut = self.futures.pop(aid, None)
        if self.buckets:
            self._release_buckets(attempt=aid)
        if fut is not None:
            fut.release()
        self.where.pop(aid, None)
        self.unreported.pop(aid, None)

    def _drop_worker(self, address):
        for aid in [a for a, w in self.where.items() if w == address]:
            self._forget(aid)

    def _lost(self, address, cause):
        n = self.known.pop(address)
        self._drop_worker(address)
        return [Lost(slot_name(address, i), cause) for i in range(n)]

    def _take(self, item, out):
        if item[0] == "event":
            msg = item[1]
            aid = msg["attempt"]
            launch = self._launched.get(aid)
            if aid in self.reported or launch is None:
                return
            if "progress" in msg:
                out.append(Progress(launch.attempt, msg["progress"], launch.worker,
                                    msg["bytes"], msg["total"]))
                return
            self.reported.add(aid)
            self.unreported.pop(aid, None)
            slot = launch.worker
            if msg["ok"]:
                fut = self.futures.get(aid)
                if self.buckets and launch.kind == "reduce":
                    # Partition r is done: its buckets' futures are no longer needed here
                    # (an attempt still running holds its own inputs in Dask).
                    self._release_buckets(r=launch.index)
                ref = None
                if fut is not None:
                    ref = DaskRef(slot, aid, fut, msg["fingerprint"],
                                  msg["stats"].get("output_bytes", 0))
                out.append(Finished(launch.attempt, ref, msg["fingerprint"], msg["stats"],
                                    slot))
            elif msg["kind"] == "nondeterministic":
                raise NondeterminismError(msg["error"], task=launch.attempt.task)
            else:
                self._forget(aid)
                out.append(Failed(launch.attempt, msg["kind"], msg["error"],
                                  msg["traceback"], tuple(msg.get("lost", ())), slot))
            return
        _, aid, fut = item
        if self.futures.get(aid) is not fut or aid in self.reported:
            return  # released by us, or its event already told the outcome
        launch = self._launched[aid]
        if fut.status == "finished":
            self.unreported.setdefault(aid, time.monotonic())
            return
        # Dask itself failed the attempt (not the user's code, which is caught inside):
        # an input it could not compute, such as a persisted partition whose load raised.
        # Read the error before the future is released (it is gone after).
        self.reported.add(aid)
        kind, tb = "raise", ""
        if fut.status == "error":
            exc = fut.exception()
            tb = "".join(traceback.format_tb(fut.traceback())) if fut.traceback() else ""
            error = f"Dask failed the attempt: {type(exc).__name__}: {exc}"
            if isinstance(exc, InputError):
                kind, error = "input", str(exc)
        else:
            error = f"Dask cancelled the attempt ({fut.status})"
        self._forget(aid)
        out.append(Failed(launch.attempt, kind, error, tb, (), launch.worker))

    def _check_unreported(self, out, grace=2.0):
        # A finished future whose event never came (should not happen: the event is sent
        # before the task returns, on the same ordered stream): read the outcome itself.
        now = time.monotonic()
        for aid, since in list(self.unreported.items()):
            if now - since < grace:
                continue
            fut = self.futures.get(aid)
            self.unreported.pop(aid)
            if fut is None or aid in self.reported:
                continue
            outcome = fut.result()
            self._take(("event", _as_message(aid, self.where[aid], outcome)), out)


def _stuck_tasks(keys, dask_scheduler=None):
    """On the scheduler: of the tasks ``keys``, those that can never run because they, or
    an input they wait for (at any depth), are in ``no-worker`` state (restricted to a
    worker that is gone); each with its direct inputs that are not in memory."""
    tasks = dask_scheduler.tasks

    def blocked(ts, seen):
        if ts.state == "no-worker":
            return True
        if ts.state != "waiting" or ts.key in seen:
            return False
        seen.add(ts.key)
        return any(blocked(d, seen) for d in ts.dependencies)

    out = {}
    for key in keys:
        ts = tasks.get(key)
        if ts is not None and blocked(ts, set()):
            out[key] = [d.key for d in ts.dependencies if d.state != "memory"]
    return out


def _as_message(aid, address, outcome):
    if outcome[0] == "done":
        return {"attempt": aid, "address": address, "ok": True, "fingerprint": outcome[2],
                "stats": outcome[3]}
    return {"attempt": aid, "address": address, "ok": False, "kind": outcome[1],
            "error": outcome[2], "traceback": outcome[3], "lost": list(outcome[4])}


def connect(client):
    """``(client, owned)``: a Client as given, or a new one for a scheduler address."""
    distributed = require_dask()
    if isinstance(client, str):
        return distributed.Client(client, set_as_default=False), True
    if not isinstance(client, distributed.Client):
        raise TypeError("the Dask backend needs a dask.distributed.Client or a scheduler "
                        f"address such as 'tcp://10.0.0.5:8786', got {type(client).__name__}")
    return client, False


def run_dask(aggregator, source, *, client, fan_in, config, faults=None, progress=None,
             poll_interval=0.25, wait_for_workers=60.0, watch_heartbeats=False):
    """Run a fold job on a Dask cluster. Returns ``(value, report)``.

    ``client`` is a ``dask.distributed.Client`` (the caller's: TLS, security and timeouts
    are whatever it was built with; it stays open) or a scheduler address, to which a
    client is connected for this run and closed at its end. The job waits up to
    ``wait_for_workers`` seconds for a first worker. Cost: as the local runtime, plus about
    a millisecond of Dask scheduling per task and the transfers of outputs between workers;
    only the root's output travels to this process. ``watch_heartbeats`` turns on the
    detection of hung workers by ``config.heartbeat_timeout`` (see the module docstring).
    """
    ex = DaskExecutor(client, poll_interval=poll_interval,
                      heartbeat_timeout=config.heartbeat_timeout if watch_heartbeats else None,
                      wait_for_workers=wait_for_workers)
    return run_fold(aggregator, source, ex, fan_in=fan_in, config=config, faults=faults,
                    progress=progress)


def run_keyed_dask(spec, source, *, client, config, faults=None, progress=None,
                   poll_interval=0.25, wait_for_workers=60.0, watch_heartbeats=False):
    """Run a keyed job (map, shuffle, reduce) on a Dask cluster.

    Returns ``(value, report, fingerprint)`` as the local runtime does, with the same
    fingerprint. Map attempts keep their spill files in their Dask worker's local
    directory; each reducer fetches its bucket of every map output through a small task on
    the map's worker, so only bucket ``r`` of each map output travels to reducer ``r``.
    With ``spec.output`` every Dask worker must see that directory (a shared file system):
    reducers commit their part files there. Spill files are deleted from every worker when
    the job ends.
    """
    ex = DaskExecutor(client, poll_interval=poll_interval,
                      heartbeat_timeout=config.heartbeat_timeout if watch_heartbeats else None,
                      wait_for_workers=wait_for_workers)
    return run_keyed(spec, source, ex, config=config, faults=faults, progress=progress)


def await_workers(client, timeout):
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        raise JobFailed(
            f"the Dask scheduler at {client.scheduler.address} has no worker after "
            f"{timeout:g}s; start some with: dask worker {client.scheduler.address}"
        ) from None
