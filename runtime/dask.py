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
  topic). Future callbacks report what Dask itself failed at.
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

import hashlib
import os
import pickle
import queue
import signal
import sys
import threading
import time
import traceback
import uuid

import cloudpickle

from mergeagg.errors import JobFailed, NondeterminismError
from mergeagg.fingerprint import fingerprint
from mergeagg.inputs import read_split
from mergeagg.runtime.faults import InjectedFault, corrupt_value
from mergeagg.runtime.master import Cancel, KillWorker, Launch, Policy, Release, fold_tasks
from mergeagg.runtime.worker import dumps

__all__ = ["run_dask", "DaskExecutor", "DaskRef", "require_dask", "run_attempt",
           "slot_name", "slot_address", "INSTALL_HINT", "EVENT_TOPIC"]

INSTALL_HINT = "pip install 'mergeagg[dask]'"

EVENT_TOPIC = "mergeagg"

_ALIVE = ("running", "paused", "init")

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


def _fault_before(fault, hint):
    # The same faults as the local worker's, in a Dask worker process.
    if fault.kind == "raise":
        raise InjectedFault(f"injected fault: raise (Dask worker pid {os.getpid()})")
    if fault.kind == "hang":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif fault.kind == "kill" and hint > 0:
        timer = threading.Timer(fault.at * hint, os.kill, (os.getpid(), signal.SIGKILL))
        timer.daemon = True
        timer.start()


def _fault_after(fault, acc, elapsed, key):
    if fault.kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault.kind == "delay":
        _sleep_unless_cancelled(max(0.0, fault.factor - 1.0) * max(elapsed, 1e-3), key)
    elif fault.kind == "corrupt":
        acc = corrupt_value(acc, int.from_bytes(os.urandom(4), "little") / 2**32)
    return acc


def run_attempt(job, digest, token, key, attempt, kind, number, split, expected, hint,
                *inputs):
    """Run one attempt on a Dask worker (the function each Launch submits).

    ``job`` is the cloudpickled ``(aggregator, fault plan)``, which travels inside every
    task (not as a Dask dependency: a worker drops the replicas it fetched once its tasks
    are done, and a replica fetched from a hung or dead worker would stall the job) and is
    unpickled once per worker and job. ``inputs`` are the children's results, in fold
    order, whose fingerprints must be ``expected``. Returns ``("done", pickled output,
    fingerprint, stats)`` or ``("fail", kind, error, traceback)``, and logs the same
    outcome, without the output, as an event of job ``token`` on the ``"mergeagg"`` topic.
    Cost: the user's ``partial`` or ``combine``s, one pickle and one fingerprint of the
    output, one unpickle per input.
    """
    agg, plan = _job(digest, job)
    task_id = attempt.rsplit("#", 1)[0]
    fault = plan.fault_for(task_id, number) if plan is not None else None
    t0 = time.perf_counter()
    nbytes_read = 0
    try:
        if fault is not None:
            _fault_before(fault, hint)
        if kind == "map":
            records = read_split(split)
            acc = agg.partial(records)
            nbytes_read = getattr(records, "bytes_read", 0)
        else:
            for child, want in zip(inputs, expected):
                if child[2] != want:
                    return _report_outcome(token, attempt, (
                        "fail", "nondeterministic",
                        f"Dask handed {task_id} an input recomputed with fingerprint "
                        f"{child[2]}, but its first completion had {want}", ""))
            acc = pickle.loads(inputs[0][1])
            for child in inputs[1:]:
                acc = agg.combine(acc, pickle.loads(child[1]))
        if fault is not None:
            acc = _fault_after(fault, acc, time.perf_counter() - t0, key)
        seconds = time.perf_counter() - t0
        data = dumps(acc)
        fp = fingerprint(acc)
    except Exception as exc:
        return _report_outcome(token, attempt, (
            "fail", "raise", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    stats = {"seconds": seconds, "bytes_read": nbytes_read, "output_bytes": len(data)}
    return _report_outcome(token, attempt, ("done", data, fp, stats))


def _report_outcome(token, attempt, outcome):
    from distributed import get_worker

    worker = get_worker()
    if outcome[0] == "done":
        msg = {"job": token, "attempt": attempt, "address": worker.address, "ok": True,
               "fingerprint": outcome[2], "stats": outcome[3]}
    else:
        msg = {"job": token, "attempt": attempt, "address": worker.address, "ok": False,
               "kind": outcome[1], "error": outcome[2], "traceback": outcome[3]}
    worker.log_event(EVENT_TOPIC, msg)
    return outcome


# -- the driver's side ----------------------------------------------------------------------

class DaskExecutor:
    """The executor port on a ``dask.distributed.Client``: one job at a time.

    Cost: one ``submit`` per attempt (Dask's scheduler handles several hundred to a few
    thousand tasks per second), one event per completion, one ``scheduler_info`` call per
    ``poll_interval``. Use as a context manager, or call :meth:`close` (it releases every
    future of the job; it never closes the client).
    """

    def __init__(self, client, aggregator, faults=None, *, poll_interval=0.25,
                 heartbeat_timeout=None):
        self.client = client
        self.poll_interval = poll_interval
        self.heartbeat_timeout = heartbeat_timeout
        self._last_seen = {}  # Dask worker address -> its last heartbeat, scheduler's clock
        self.token = uuid.uuid4().hex[:12]
        self.payload = cloudpickle.dumps((aggregator, faults))
        self.digest = hashlib.blake2b(self.payload, digest_size=16).hexdigest()
        self.futures = {}  # attempt id -> Future (running, or its output still held)
        self.where = {}  # attempt id -> Dask worker address
        self.known = {}  # Dask worker address -> nthreads, as last seen alive
        self.banned = set()  # addresses the policy killed: never taken back
        self.reported = set()  # attempts whose outcome event arrived
        self.unreported = {}  # attempt id -> when Dask said finished without an event
        # The slot each attempt was launched on (events name only the worker's address).
        self._launched_on = {}
        self._queue = queue.Queue()
        self._last_poll = float("-inf")
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self):
        """Subscribe to the job's events. Returns ``self``."""
        _subscribe(self.client, self.token, self._queue)
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Release the job's futures and stop listening to its events (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for fut in self.futures.values():
            fut.release()
        self.futures.clear()
        _unsubscribe(self.client, self.token)

    # -- the port --------------------------------------------------------------------------

    def membership(self, force=False):
        """Events for workers that joined or left since the last look, and heartbeats for
        the live ones: ``("joined", slot)``, ``("lost", slot, cause)``, ``("hb", slot)``.
        Asks the scheduler at most once per ``poll_interval`` unless ``force``."""
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
        watch = self._watch_heartbeats(len(info))
        for addr, n in sorted(alive.items()):
            seen = info[addr].get("last_seen")
            fresh = not watch or seen is None or seen != self._last_seen.get(addr)
            self._last_seen[addr] = seen
            if addr not in self.known:
                self.known[addr] = n
                out.extend(("joined", slot_name(addr, i)) for i in range(n))
            elif not fresh:
                continue  # no heartbeat since the last look: silent, maybe hung
            out.extend(("hb", slot_name(addr, i)) for i in range(self.known[addr]))
        return out

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

    def slots(self):
        """The policy slots of the workers seen alive, sorted."""
        return sorted(slot_name(a, i) for a, n in self.known.items() for i in range(n))

    def apply(self, actions, hint=0.0):
        """Carry out the policy's actions."""
        for a in actions:
            if isinstance(a, Launch):
                self._submit(a, hint)
            elif isinstance(a, Cancel):
                self._forget(a.attempt)
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
        """Wait up to ``timeout`` seconds; the events that arrived, as :func:`run_local`'s
        driver reads them, plus membership changes."""
        out = self.membership()
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
        return out

    def fetch(self, ref, timeout, transfer_timeout=300.0):
        """The root's accumulator, or ``_MISSING`` if its future was not done within
        ``timeout`` seconds or its transfer within ``transfer_timeout`` (the caller looks
        at membership and tries again)."""
        deadline = time.monotonic() + timeout
        while not ref.future.done():
            if time.monotonic() >= deadline:
                return _MISSING
            time.sleep(0.002)
        try:
            outcome = ref.future.result(timeout=transfer_timeout)
        except TimeoutError:
            return _MISSING
        if outcome[2] != ref.fingerprint:
            raise NondeterminismError(
                f"Dask returned the root output with fingerprint {outcome[2]}, but the "
                f"policy recorded {ref.fingerprint}: it was recomputed and came out different",
                task=ref.key.rsplit("#", 1)[0], fingerprints=(ref.fingerprint, outcome[2]))
        return pickle.loads(outcome[1])

    # -- internals -------------------------------------------------------------------------

    def _submit(self, a, hint):
        address = slot_address(a.worker)
        key = f"mergeagg-{self.token}-{a.attempt}"
        expected = tuple(r.fingerprint for r in a.inputs)
        args = [self.payload, self.digest, self.token, key, a.attempt, a.kind, a.number,
                a.split, expected, hint, *(r.future for r in a.inputs)]
        fut = self.client.submit(run_attempt, *args, key=key, pure=False,
                                 workers=[address], allow_other_workers=False)
        self.futures[a.attempt] = fut
        self.where[a.attempt] = address
        self._launched_on[a.attempt] = a.worker
        aid = a.attempt
        fut.add_done_callback(lambda f, aid=aid: self._queue.put(("future", aid, f)))

    def _forget(self, attempt):
        fut = self.futures.pop(attempt, None)
        if fut is not None:
            fut.release()
        self.where.pop(attempt, None)
        self.unreported.pop(attempt, None)

    def _drop_worker(self, address):
        for aid in [a for a, w in self.where.items() if w == address]:
            self._forget(aid)

    def _lost(self, address, cause):
        n = self.known.pop(address)
        self._drop_worker(address)
        return [("lost", slot_name(address, i), cause) for i in range(n)]

    def _take(self, item, out):
        if item[0] == "event":
            msg = item[1]
            aid = msg["attempt"]
            if aid in self.reported:
                return
            self.reported.add(aid)
            self.unreported.pop(aid, None)
            slot = self._launched_on.get(aid) or slot_name(msg["address"], 0)
            if msg["ok"]:
                fut = self.futures.get(aid)
                ref = None
                if fut is not None:
                    ref = DaskRef(slot, aid, fut, msg["fingerprint"],
                                  msg["stats"].get("output_bytes", 0))
                out.append(("done", aid, ref, msg["fingerprint"], msg["stats"], slot))
            elif msg["kind"] == "nondeterministic":
                raise NondeterminismError(msg["error"], task=aid.rsplit("#", 1)[0])
            else:
                self._forget(aid)
                out.append(("fail", aid, msg["kind"], msg["error"], msg["traceback"], slot))
            return
        _, aid, fut = item
        if self.futures.get(aid) is not fut or aid in self.reported:
            return  # released by us, or its event already told the outcome
        slot = self._launched_on.get(aid)
        if fut.status == "finished":
            self.unreported.setdefault(aid, time.monotonic())
            return
        # Dask itself failed the attempt (not the user's code: that is caught inside).
        self.reported.add(aid)
        self._forget(aid)
        if fut.status == "error":
            exc = fut.exception()
            error = f"Dask failed the attempt: {type(exc).__name__}: {exc}"
        else:
            error = f"Dask cancelled the attempt ({fut.status})"
        out.append(("fail", aid, "raise", error, "", slot))

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


def _as_message(aid, address, outcome):
    if outcome[0] == "done":
        return {"attempt": aid, "address": address, "ok": True, "fingerprint": outcome[2],
                "stats": outcome[3]}
    return {"attempt": aid, "address": address, "ok": False, "kind": outcome[1],
            "error": outcome[2], "traceback": outcome[3]}


_MISSING = object()  # the root's output has not arrived yet


def _dispatch(policy, ev, now):
    """Feed one executor event to the policy."""
    tag = ev[0]
    if tag == "hb":
        policy.heartbeat(ev[1], now)
    elif tag == "done":
        _, aid, ref, fp, stats, slot = ev
        policy.heartbeat(slot, now)
        policy.finished(aid, ref, fp, now, stats)
    elif tag == "fail":
        _, aid, kind, error, tb, slot = ev
        if slot is not None:
            policy.heartbeat(slot, now)
        policy.failed(aid, error, now, traceback=tb, kind=kind)
    elif tag == "joined":
        policy.worker_joined(ev[1], now)
    else:
        policy.worker_lost(ev[1], ev[2], now)


def _connect(client):
    """``(client, owned)``: a Client as given, or a new one for a scheduler address."""
    distributed = require_dask()
    if isinstance(client, str):
        return distributed.Client(client, set_as_default=False), True
    if not isinstance(client, distributed.Client):
        raise TypeError("the Dask backend needs a dask.distributed.Client or a scheduler "
                        f"address such as 'tcp://10.0.0.5:8786', got {type(client).__name__}")
    return client, False


def run_dask(aggregator, source, *, client, fan_in, config, faults=None, progress=None,
             poll_interval=0.25, wait_for_workers=60.0, watch_heartbeats=False,
             clock=time.monotonic):
    """Run a fold job on a Dask cluster. Returns ``(value, report)``.

    ``client`` is a ``dask.distributed.Client`` (the caller's: TLS, security and timeouts
    are whatever it was built with; it stays open) or a scheduler address, to which a
    client is connected for this run and closed at its end. The job waits up to
    ``wait_for_workers`` seconds for a first worker. Cost: as the local runtime, plus about
    a millisecond of Dask scheduling per task and the transfers of outputs between workers;
    only the root's output travels to this process. ``watch_heartbeats`` turns on the
    detection of hung workers by ``config.heartbeat_timeout`` (see the module docstring).
    """
    from mergeagg.runtime.local import _hint, _Progress, _report

    t_start = clock()
    client, owned = _connect(client)
    phases = {}
    try:
        policy = Policy(fold_tasks(source.splits(), fan_in), config)
        show = _Progress(policy, progress if progress is not None else sys.stderr.isatty())
        with DaskExecutor(client, aggregator, faults, poll_interval=poll_interval,
                          heartbeat_timeout=config.heartbeat_timeout
                          if watch_heartbeats else None) as ex:
            events = ex.membership(force=True)
            if not ex.known:
                _wait_for_workers(client, wait_for_workers)
                events = ex.membership(force=True)
            for ev in events:
                _dispatch(policy, ev, clock())
            slots, n_workers = len(ex.slots()), len(ex.known)
            t_started = clock()
            phases["connect"] = t_started - t_start
            map_done_at = None
            while True:
                now = clock()
                actions = policy.tick(now)
                if actions:
                    ex.apply(actions, hint=_hint(policy))
                if policy.error is not None:
                    raise policy.error
                if map_done_at is None and \
                        policy._stage_done["map"] == policy._stage_total["map"]:
                    map_done_at = now
                if policy.done:
                    # Is the root's worker still there? If not, the policy runs it again.
                    for ev in ex.membership(force=True):
                        _dispatch(policy, ev, clock())
                    if not policy.done:
                        continue
                    ref, _fp = policy.result
                    acc = ex.fetch(ref, poll_interval)
                    if acc is not _MISSING:
                        break
                    continue
                show.update(now)
                timeout = max(0.0, policy.next_deadline(now) - clock())
                for ev in ex.events(timeout):
                    _dispatch(policy, ev, clock())
            t_root = clock()
            value = aggregator.finalize(acc)
            t_end = clock()
            show.update(t_end, final=True)
            phases["map"] = (map_done_at if map_done_at is not None else t_root) - t_started
            phases["combine"] = t_root - (map_done_at if map_done_at is not None else t_root)
            phases["finalize"] = t_end - t_root
    finally:
        if owned:
            client.close()
    report = _report(policy, slots, fan_in, phases)
    report.mode = "dask"
    report.counters["dask_workers"] = n_workers
    return value, report


def _wait_for_workers(client, timeout):
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        raise JobFailed(
            f"the Dask scheduler at {client.scheduler.address} has no worker after "
            f"{timeout:g}s; start some with: dask worker {client.scheduler.address}"
        ) from None
