"""The driver: the one loop between the policy and an executor, its progress line and the
report.

:func:`drive` runs a job: it starts the executor (or reuses a session's), ships the job,
then ticks the policy, carries out its actions through the executor, feeds the policy the
executor's typed events, and, once the policy is done, fetches the sinks' outputs. It reads
time only from the clock it is given (the monotonic clock in production, a
:class:`~mergeagg.runtime.port.VirtualClock` with the in-process executor), so the same loop
drives real processes, Dask, and simulated workers.

>>> import mergeagg as ma
>>> from mergeagg.runtime.inprocess import InProcessExecutor
>>> from mergeagg.runtime.master import Policy, PolicyConfig, fold_tasks
>>> from mergeagg.inputs import shards
>>> agg = ma.Aggregator(sum, lambda a, b: a + b)
>>> policy = Policy(fold_tasks(shards([[1, 2], [3], [4]]).splits(), 2), PolicyConfig())
>>> ex = InProcessExecutor(2)
>>> acc, phases = drive(policy, ex, agg, fetch_root, clock=ex.clock)
>>> acc, sorted(phases)
(10, ['combine', 'map', 'start workers'])
"""

from __future__ import annotations

import dataclasses
import sys
import time

from mergeagg.errors import JobFailed
from mergeagg.fingerprint import MappingDigest
from mergeagg.runtime.port import NOT_YET, Finished, MonotonicClock
from mergeagg.runtime.refs import InputLost
from mergeagg.runtime.report import FailureRecord, Report, TaskRecord

__all__ = ["run_fold", "run_keyed", "drive", "run_policy", "fetch_root", "keyed_fetch",
           "report", "keyed_fingerprint", "Progress", "NOT_YET"]


def run_fold(aggregator, source, executor, *, fan_in, config, faults=None, progress=None,
             own=True, journal=None):
    """Run a fold job on ``executor`` (any executor of the port). Returns ``(value,
    report)``. ``own``: the executor is started and closed for this job (else it is a
    session's, already started). Cost: the job's; see :func:`drive`."""
    from mergeagg.runtime.master import Policy, fold_tasks

    policy = Policy(fold_tasks(source.splits(), fan_in), config)
    acc, phases = drive(policy, executor, aggregator, fetch_root, faults=faults,
                        progress=progress, clock=getattr(executor, "clock", None), own=own,
                        journal=journal)
    t = time.perf_counter()
    value = aggregator.finalize(acc)
    phases["finalize"] = time.perf_counter() - t
    return value, _executor_report(policy, executor, fan_in, phases, journal)


def run_keyed(spec, source, executor, *, config, faults=None, progress=None, own=True,
              journal=None):
    """Run a keyed job (map, shuffle, reduce) on ``executor``. Returns ``(value, report,
    fingerprint)``: the value is a dict, or a
    :class:`~mergeagg.runtime.shuffle.KeyedOutput` over committed part files when the job
    writes to ``spec.output``; the fingerprint is composed from the reducers' digests."""
    from mergeagg.runtime.master import Policy
    from mergeagg.runtime.shuffle import keyed_tasks

    R = spec.partitions
    salt = spec.salt is not None
    policy = Policy(keyed_tasks(source.splits(), R, salt), config)
    sinks = [f"reduce-{r}" for r in range(R)] + (["merge-salted"] if salt else [])
    value, phases = drive(policy, executor, spec, keyed_fetch(spec, sinks), faults=faults,
                          progress=progress, clock=getattr(executor, "clock", None), own=own,
                          journal=journal)
    rep = _executor_report(policy, executor, 0, phases, journal)
    return value, rep, keyed_fingerprint(policy, R, rep)


def _executor_report(policy, executor, fan_in, phases, journal=None):
    rep = report(policy, executor.size, fan_in, phases, mode=executor.mode)
    rep.counters.update(getattr(executor, "report_counters", dict)())
    if journal is not None:
        rep.journal = journal.summary()
    return rep


def keyed_fetch(spec, sinks):
    """A keyed job's ``fetch``: the reducers' partitions as one dict, or a
    :class:`~mergeagg.runtime.shuffle.KeyedOutput` over their committed part files."""
    from mergeagg.runtime.shuffle import KeyedOutput, PartRef

    def fetch(policy, ex):
        outs = []
        for t in sinks:
            ref = policy.results[t][0]
            # A committed part is its own reference (locally); elsewhere it is fetched.
            out = ref if isinstance(ref, PartRef) else ex.fetch(ref)
            if out is NOT_YET:
                return NOT_YET
            outs.append(out)
        if spec.output is not None:
            return KeyedOutput(spec.output, [(out.path, out.entries) for out in outs])
        value = {}
        for out in outs:
            value.update(zip(out[0], out[1]))
        return value

    return fetch


def fetch_root(policy, executor):
    """A fold job's ``fetch``: the root's accumulator."""
    ref, _fp = policy.result
    return executor.fetch(ref)


def drive(policy, executor, payload, fetch, *, faults=None, progress=None,
          clock=None, own=True, journal=None):
    """Run ``policy`` over ``executor`` until the job is done; returns ``(fetched, phases)``.

    ``payload`` is what workers run (an Aggregator, or a keyed job's spec);
    ``fetch(policy, executor)`` reads the sinks' outputs once the policy is done (an output
    that turns out unreadable sends its task back to the policy). ``own``: start the
    executor here and close it at the end, whatever happens; otherwise (a session's) it
    is only given this job, which is dropped at the end. ``journal``: a
    :class:`~mergeagg.runtime.journal.Journal`; the tasks it holds as done are not run,
    and every task completed here is recorded in it (its output moved there). Cost: the
    job's, plus O(1) per event and O(workers) per tick in this process.
    """
    clock = clock if clock is not None else MonotonicClock()
    t_start = clock()
    policy.config = dataclasses.replace(
        policy.config, outputs_survive_worker=executor.outputs_survive_worker,
        queues_in_order=getattr(executor, "queues_in_order", True))
    show = Progress(policy, progress if progress is not None else sys.stderr.isatty(),
                    clock=clock)
    job = None
    phases = {}
    handle = policy.handle
    try:
        if own:
            executor.start()
        job = executor.load_job(payload, faults)
        now = clock()
        for w in executor.live_workers():
            policy.worker_joined(w, now)
        t_started = clock()
        phases["start workers"] = t_started - t_start
        if journal is not None:
            journal.bind(policy)
            journal.restore(policy, getattr(executor, "adopt", None))
            handle = _journaling(policy, journal, executor)
            phases["journal"] = clock() - t_started
            t_started = clock()

        def finish():
            try:
                return fetch(policy, executor)
            except InputLost as exc:
                # A sink's output is gone or torn: run its task again.
                if exc.task is None:
                    raise
                policy.output_lost(exc.task, f"output unreadable at the end: {exc}", clock())
                return NOT_YET

        fetched, loop_phases = run_policy(
            policy, lambda actions, hint: executor.apply(actions, job, hint), executor.events,
            finish, show, t_started, clock, handle=handle)
        phases.update(loop_phases)
        if journal is not None:
            journal.compact(policy)
    finally:
        if own:
            executor.close()
        elif job is not None:
            executor.drop_job(job)
    return fetched, phases


def _journaling(policy, journal, executor=None):
    """``policy.handle`` that first moves a winning completion's output into ``journal``
    and, once the policy took it, records it there (through ``executor`` when the output
    is held elsewhere: Dask's)."""
    from mergeagg.runtime.master import TaskState

    def handle(ev, now):
        if type(ev) is Finished and ev.ref is not None and policy.error is None:
            task = policy.tasks.get(ev.attempt.task)
            if (task is not None and task.state is not TaskState.COMPLETED
                    and ev.attempt in policy.attempts
                    and not policy.attempts[ev.attempt].audit):
                now_ref, kept = journal.keep(ev.attempt.task, ev.ref, executor)
                ev = dataclasses.replace(ev, ref=now_ref)
                policy.handle(ev, now)
                if task.state is TaskState.COMPLETED and task.ref is ev.ref:
                    journal.record(ev.attempt.task, ev.fingerprint, task.stats, kept)
                return
        policy.handle(ev, now)

    return handle


def run_policy(policy, apply, events, finish, show, t_started, clock, handle=None):
    """The loop every executor runs with a policy: tick and carry out its actions
    (``apply(actions, hint)``), feed it the executor's ``events(timeout)``, and once it is
    done call ``finish()``, which returns the sinks' outputs or :data:`NOT_YET` (the
    policy was sent back to work, or an output has not arrived). Raises the policy's error.
    Returns ``(fetched, phases)`` with the ``map`` and second stage's times since
    ``t_started``."""
    map_done_at = None
    stage_done, stage_total = policy.stage_counts()
    maps = stage_total["map"]
    handle = handle or policy.handle
    tick, next_deadline = policy.tick, policy.next_deadline
    # The map stage's durations, sorted as they come: the hint is their median.
    median = getattr(policy.durations("map"), "median", None)
    while True:
        now = clock()
        actions = tick(now)
        if actions:
            apply(actions, (median() or 0.0) if median is not None
                  else median_map_seconds(policy))
        if policy.error is not None:
            raise policy.error
        if map_done_at is None and stage_done["map"] == maps:
            map_done_at = now
        if policy.done:
            fetched = finish()
            if fetched is not NOT_YET:
                break
            # Not there yet: take in what the executor saw meanwhile (a lost worker may
            # have taken the output with it), or this loop would spin on finish() alone.
            for ev in events(0.01):
                handle(ev, clock())
            continue
        if show.enabled:
            show.update(now)
        timeout = max(0.0, next_deadline(now) - clock())
        for ev in events(timeout):
            handle(ev, clock())
    t_end = clock()
    show.update(t_end, final=True)
    if map_done_at is None:
        map_done_at = t_end
    second = "reduce" if stage_total.get("reduce") else "combine"
    return fetched, {"map": map_done_at - t_started, second: t_end - map_done_at}


def median_map_seconds(policy):
    """The median seconds of the map attempts completed so far (0 before the first): the
    ``hint`` that faults striking part-way through a task use."""
    d = policy.durations("map")
    if not d:
        return 0.0
    median = getattr(d, "median", None)  # a SortedDurations: O(1), no sort
    return median() if median is not None else d[len(d) // 2]


class Progress:
    """A one-line progress display on stderr: tasks done of all, the map stage, bytes
    read, the read rate and an estimate of the time left (from the bytes still to read).
    Shown only on a terminal unless asked (``progress=True``); at most five times a second.
    Cost: O(1) per update."""

    def __init__(self, policy, enabled, stream=None, clock=None):
        self.policy = policy
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.clock = clock if clock is not None else MonotonicClock()
        self.last = float("-inf")
        self.started = self.clock()
        self.total_bytes = policy.input_bytes()

    def line(self, now):
        """The text of the progress line at ``now``."""
        p = self.policy
        done, total = p.stage_counts()
        n_done, n_total = sum(done.values()), sum(total.values())
        nbytes = p.bytes_read
        elapsed = max(now - self.started, 1e-9)
        rate = nbytes / elapsed
        text = (f"[mergeagg] {n_done}/{n_total} tasks  map {done['map']}/{total['map']}  "
                f"{_size(nbytes)}")
        if self.total_bytes:
            text += f" of {_size(self.total_bytes)}"
        text += f"  {_size(rate)}/s"
        if self.total_bytes and rate > 0 and nbytes < self.total_bytes:
            text += f"  ETA {_duration((self.total_bytes - nbytes) / rate)}"
        if p.backups_launched:
            text += f"  backups {p.backups_launched}"
        return text

    def update(self, now, final=False):
        if not self.enabled or (not final and now - self.last < 0.2):
            return
        self.last = now
        self.stream.write("\r" + self.line(now) + ("\n" if final else ""))
        self.stream.flush()


def _size(n):
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def _duration(seconds):
    seconds = int(seconds + 0.5)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def report(policy, workers, fan_in, phases, mode="local"):
    """The job's :class:`~mergeagg.runtime.report.Report` from the policy's task table."""
    rep = Report(mode=mode, workers=workers, fan_in=fan_in)
    records, skipped = rep.tasks, rep.skipped_records
    nbytes_total = 0
    # One pass over the task table (100,000 rows in a large simulation): a row's stats are
    # read only when it has any.
    for tid, kind, split, attempts, seconds, worker, stats, fp in policy.task_rows():
        nbytes = 0
        if stats:
            nbytes = stats.get("bytes_read", 0)
            nbytes_total += nbytes
            for where in stats.get("skipped_records", ()):
                skipped.append({"task": tid, "record": where})
        records.append(TaskRecord(tid, kind, split, attempts, seconds, worker, nbytes, fp))
    rep.bytes_read += nbytes_total
    for task, attempt, worker, cause, detail in policy.failures:
        rep.failures.append(FailureRecord(task, attempt, worker, cause, str(detail)[:2000]))
    rep.backups_launched = policy.backups_launched
    rep.backups_won = policy.backups_won
    rep.verified = policy.verified
    rep.workers_lost = policy.workers_lost
    if policy.steals:
        rep.counters["attempts_moved"] = policy.steals
    rep.phases = phases
    return rep


def keyed_fingerprint(policy, partitions, rep):
    """A keyed job's fingerprint from its reducers' digests; fills ``rep``'s shuffle
    counters and per-reducer rows."""
    digest = MappingDigest()
    totals = {}
    for tid in policy.order:
        stats = policy.tasks[tid].stats or {}
        for k, v in stats.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "seconds":
                totals[k] = totals.get(k, 0) + v
    if "merge-salted" in policy.tasks:
        digest.merge(MappingDigest(*policy.tasks["merge-salted"].stats["digest"]))
    for r in range(partitions):
        task = policy.tasks[f"reduce-{r}"]
        if "digest" not in task.stats:
            raise JobFailed(f"reducer {r} completed without its digest")
        digest.merge(MappingDigest(*task.stats["digest"]))
        rep.reducers.append({"partition": r, "records_in": task.stats["reduce_records_in"],
                             "records_out": task.stats["reduce_records_out"],
                             "bytes_in": task.stats["shuffle_bytes_read"],
                             "seconds": task.stats.get("seconds", 0.0)})
    rep.counters.update(totals)
    return digest.fingerprint()
