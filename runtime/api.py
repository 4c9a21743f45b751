"""``run``: the one call that runs an aggregation, and its ``Result``."""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass

from mergeagg.aggregator import Aggregator, identity
from mergeagg.fingerprint import fingerprint
from mergeagg.inputs import as_source
from mergeagg.runtime.report import Report
from mergeagg.runtime.serial import run_serial
from mergeagg.runtime.tree import check_fan_in

__all__ = ["run", "run_on", "Result", "DEFAULT_FAN_IN", "resolve_backend", "keyed_spec",
           "check_job"]

DEFAULT_FAN_IN = 8


@dataclass
class Result:
    """What a run gives back: the finalized ``value``, its ``fingerprint`` and the ``report``."""

    value: object
    fingerprint: str
    report: Report

    def __repr__(self):
        return f"Result(fingerprint={self.fingerprint[:16]}..., value={_short(self.value)})"


def _short(value, limit=80):
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run(job, source, *, workers=None, backend="local", fan_in=DEFAULT_FAN_IN,
        split_size=None, format=None, errors="strict", max_attempts=4, max_lost=10,
        backups=True, speculation=None,
        backup_after=0.75, backup_factor=1.5, verify=0.0, faults=None,
        heartbeat_interval=0.2, heartbeat_timeout=10.0, task_timeout=None, progress=None,
        start_method=None, session=None, partitions=None, combiner=None, memory_limit=None,
        output=None, salt=None, output_format=None, journal=None, skip_bad_records=None):
    """Run ``job`` (an :class:`~mergeagg.Aggregator` or a :class:`~mergeagg.KeyedJob`) over
    ``source`` and return a :class:`Result`.

    ``source`` is anything :func:`mergeagg.inputs.as_source` accepts: file paths, globs and
    directories, a list of in-memory shards, an ndarray, or a Source.

    ``workers=0`` runs serially in this process, folding along the same fixed tree
    (``fan_in`` children per node) as the parallel runtime: the reference every parallel
    run is compared with. ``workers=None`` means one worker process per CPU; ``workers=N``
    that many worker processes (see ``docs/runtime.md`` for the fault model and every knob:
    ``max_attempts``, ``backups``, ``speculation`` (the backup rule: a name such as
    ``"late"`` or ``"hadoop"``, or a rule of :mod:`mergeagg.runtime.speculation`; see
    ``docs/simulate.md``), ``backup_after``, ``backup_factor``, ``verify``,
    ``heartbeat_interval``, ``heartbeat_timeout``, ``task_timeout``, ``faults``,
    ``progress``, ``start_method``). ``backend`` is ``"local"`` (worker processes on this
    machine), ``"inprocess"`` (``workers`` simulated in this process on a virtual clock,
    with simulated faults: the same policy and the user's real functions, for fast tests
    of failure invariance) or a ``dask.distributed.Client`` / scheduler address: the same
    policy then runs over Dask futures (see ``docs/dask.md``). ``max_lost`` is how many times one
    task may take its worker process down with it (it died in that task, not beside it)
    before the job fails naming the task.

    Keyed jobs also take ``partitions`` (R, default 8), ``combiner`` (map-side combine,
    default on), ``memory_limit`` (bytes a map or reduce task may hold before it spills or
    merges externally; ``K``/``M``/``G`` strings allowed) and ``output`` (a directory for
    committed part files instead of an in-memory dict; ``output_format`` ``"jsonl"``, the
    default, ``"tsv"`` or ``"framed"``) and ``salt`` (spread hot keys over
    several partitions: ``True``, or the share of a map task's records that makes a key
    hot there, default ``1 / partitions``); see ``docs/shuffle.md``.

    ``journal`` is a directory where the run records every completed task and keeps its
    output: run the same job again with the same ``journal`` after the driver was killed
    and it resumes (completed tasks are not run again); run it after the input grew and
    only the new splits run (``docs/journal.md``). A journal of a different job is refused
    with :class:`~mergeagg.errors.JournalMismatch` naming what differs.

    A map task whose user code fails twice the same way is run again by bisection, which
    finds the records it fails on: ``skip_bad_records=N`` sets up to ``N`` of them aside
    (listed in ``result.report.skipped_records`` with file and byte offset) and the job
    succeeds over the rest; by default the job fails with
    :class:`~mergeagg.errors.BadRecords` naming the first (``docs/journal.md``).

    Cost: one ``partial`` per split, ``n - 1`` combines, one ``finalize`` and one
    fingerprint of the value (none on workers when ``finalize`` is the identity: the root's
    worker fingerprinted it); on workers, also one fingerprint and one pickle per task
    output.

    >>> import mergeagg as ma
    >>> total = ma.Aggregator(sum, lambda a, b: a + b)
    >>> r = ma.run(total, [[1, 2], [3], [4, 5]], workers=0)
    >>> r.value, r.report.attempts
    (15, [1, 1, 1])
    """
    from mergeagg.runtime.faults import FaultPlan
    from mergeagg.runtime.master import PolicyConfig

    check_job(job, partitions=partitions, combiner=combiner, memory_limit=memory_limit,
              output=output, salt=salt, output_format=output_format)
    check_fan_in(fan_in)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 0):
        raise ValueError(f"workers must be None or an int >= 0, got {workers!r}")
    dask_client = resolve_backend(backend)
    plan = FaultPlan.parse(faults) if isinstance(faults, (str, type(None))) else faults
    knobs = dict(max_attempts=max_attempts, max_lost=max_lost, backups=backups,
                 speculation=speculation,
                 backup_after=backup_after, backup_factor=backup_factor, verify=verify,
                 heartbeat_timeout=heartbeat_timeout, task_timeout=task_timeout)
    if skip_bad_records is not None:
        knobs["skip_bad_records"] = skip_bad_records
    keyed_options = dict(partitions=partitions, combiner=combiner, memory_limit=memory_limit,
                         output=output, salt=salt, output_format=output_format)
    if session is not None:
        if dask_client is not None:
            raise ValueError("give either session= or a Dask backend=, not both (a session "
                             "runs on its own workers)")
        return session.run(job, source, fan_in=fan_in, split_size=split_size, format=format,
                           errors=errors, faults=plan, progress=progress, journal=journal,
                           **keyed_options, **knobs)
    src = as_source(source, split_size=split_size, format=format, errors=errors)
    config = PolicyConfig(**knobs)
    n = workers if workers is not None else (os.cpu_count() or 1)
    jr = None
    if journal is not None:
        if workers == 0 and dask_client is None:
            raise ValueError("journal= runs on worker processes, the in-process backend or "
                             "Dask: not with workers=0")
        check_journal_backend(job, dask_client is not None, salt)
        jr = open_journal(journal, job, source, fan_in,
                          dict(split_size=split_size, format=format, errors=errors),
                          keyed_options)
    try:
        if dask_client is not None:
            from mergeagg.runtime.dask import DaskExecutor

            executor = DaskExecutor(dask_client)
        elif backend == "inprocess":
            from mergeagg.runtime.inprocess import InProcessExecutor

            executor = InProcessExecutor(max(n, 1))
        elif n == 0:
            if plan is not None:
                raise ValueError("faults are injected into worker processes; workers=0 has "
                                 "none")
            executor = None  # the serial reference, in this process
        else:
            from mergeagg.runtime.local import LocalExecutor

            # With a journal, scratch space is inside it: outputs move there by rename.
            executor = LocalExecutor(n, heartbeat_interval=heartbeat_interval,
                                     start_method=start_method,
                                     workdir=jr.workdir if jr is not None else None)
        return run_on(job, src, executor, own=True, config=config, fan_in=fan_in,
                      faults=plan, progress=progress, journal=jr, **keyed_options)
    finally:
        if jr is not None:
            jr.close()


def open_journal(directory, job, source, fan_in, input_options, keyed_options):
    """The :class:`~mergeagg.runtime.journal.Journal` in ``directory`` for this job: its
    identity names the job, the inputs as given and the parameters that shape its tasks."""
    from mergeagg.keyed import KeyedJob
    from mergeagg.runtime.journal import Journal, job_identity

    params = dict(input_options)
    if isinstance(job, KeyedJob):
        params.update({k: v for k, v in keyed_options.items()
                       if k in ("partitions", "combiner", "salt")})
    else:
        params["fan_in"] = fan_in
    jr = Journal(directory, job_identity(job, source, params))
    if keyed_options.get("output") is not None:
        jr.output_dir = os.path.abspath(os.fspath(keyed_options["output"]))
    return jr


def check_journal_backend(job, on_dask, salt=None):
    """Refuse what a journal cannot keep: a salted keyed job's side outputs on Dask."""
    from mergeagg.keyed import KeyedJob

    if on_dask and isinstance(job, KeyedJob) and salt not in (None, False):
        raise ValueError("journal= on Dask runs keyed jobs without salt=: a salted "
                         "reducer's side partials stay on its Dask worker")


def check_job(job, **keyed_options):
    """Refuse what is not a job, and keyed options given to a fold job."""
    from mergeagg.keyed import KeyedJob

    if isinstance(job, KeyedJob):
        return
    if not isinstance(job, Aggregator):
        raise TypeError(f"run needs an Aggregator, got {type(job).__name__} (keyed jobs: "
                        "pass a mergeagg.KeyedJob)")
    for name, val in keyed_options.items():
        if val is not None:
            raise TypeError(f"{name}= applies to keyed jobs (mergeagg.KeyedJob), not to an "
                            "Aggregator")


def run_on(job, src, executor, *, own, config, fan_in=DEFAULT_FAN_IN, faults=None,
           progress=None, partitions=None, combiner=None, memory_limit=None, output=None,
           salt=None, output_format=None, journal=None):
    """Run ``job`` over Source ``src`` on ``executor`` (``None``: serially in this
    process) and wrap the outcome in a :class:`Result`: the one place where :func:`run`
    and :class:`~mergeagg.Session` turn a job into a result, whatever executor they chose.
    ``own``: start the executor for this job and close it after. ``faults``: a FaultPlan
    or its spec string. ``journal``: an open
    :class:`~mergeagg.runtime.journal.Journal` (not with the serial executor)."""
    from mergeagg.keyed import KeyedJob
    from mergeagg.runtime.driver import run_fold, run_keyed
    from mergeagg.runtime.faults import FaultPlan

    if isinstance(faults, str):
        faults = FaultPlan.parse(faults)
    start = time.perf_counter()
    if isinstance(job, KeyedJob):
        spec = keyed_spec(job, partitions, combiner, memory_limit, output, salt, output_format,
                          resume=journal is not None)
        if executor is None:
            from mergeagg.runtime.serial import run_keyed_serial

            value, report, fp = run_keyed_serial(spec, src)
        else:
            value, report, fp = run_keyed(spec, src, executor, config=config, faults=faults,
                                          progress=progress, own=own, journal=journal)
        if output is not None:
            _commit_output(output, value, fp)
        report.wall_seconds = time.perf_counter() - start
        return Result(value, fp, report)
    if executor is None:
        if config.skip_bad_records is not None:
            raise ValueError("skip_bad_records= needs workers (bisection runs in the "
                             "attempt runner); workers=0 runs the serial reference")
        value, report = run_serial(job, src, fan_in=fan_in)
    else:
        value, report = run_fold(job, src, executor, fan_in=fan_in, config=config,
                                 faults=faults, progress=progress, own=own, journal=journal)
    fp_start = time.perf_counter()
    fp = _root_fingerprint(job, report) or fingerprint(value)
    report.phases["fingerprint"] = time.perf_counter() - fp_start
    report.wall_seconds = time.perf_counter() - start
    return Result(value, fp, report)


def _root_fingerprint(job, report):
    """The fingerprint the root's worker computed of its output, which is the value when
    ``finalize`` is the identity (the root is the last task of a fold job's report);
    ``None`` when there is none to reuse."""
    if job.finalize is not identity or report.mode == "serial" or not report.tasks:
        return None
    return report.tasks[-1].fingerprint


def resolve_backend(backend):
    """``None`` for the local and in-process backends, else the Dask client or scheduler
    address to use."""
    if backend in ("local", "inprocess") or backend is None:
        return None
    if isinstance(backend, str):
        if "://" in backend or ":" in backend:
            return backend
        raise ValueError(f"unknown backend {backend!r}: use 'local', 'inprocess', a "
                         "dask.distributed Client, or a scheduler address such as "
                         "'tcp://10.0.0.1:8786'")
    if type(backend).__module__.startswith("distributed"):
        return backend
    raise TypeError(f"backend must be 'local', a dask.distributed Client or a scheduler "
                    f"address, got {type(backend).__name__}")


def keyed_spec(job, partitions, combiner, memory_limit, output, salt=None,
                output_format=None, resume=False):
    """The KeyedSpec of a run. ``resume``: the run has a journal, so an output directory
    that an interrupted run of it began (part files, no ``_SUCCESS``) may be written on."""
    from mergeagg.inputs import parse_size
    from mergeagg.runtime.shuffle import KeyedSpec

    R = 8 if partitions is None else partitions
    if isinstance(R, bool) or not isinstance(R, int) or R < 1:
        raise ValueError(f"partitions must be a positive int, got {partitions!r}")
    limit = None if memory_limit is None else parse_size(memory_limit)
    out = None
    if output is not None:
        out = os.path.abspath(os.fspath(output))
        if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)) and not (
                resume and _unfinished_output(out)):
            raise ValueError(f"output directory {out!r} exists and is not empty; give a new "
                             "or empty directory (part files are never overwritten)")
    elif output_format is not None:
        raise ValueError("output_format= applies to committed output: give output= too")
    if salt is None or salt is False:
        share = None
    elif salt is True:
        share = 1.0 / R
    elif isinstance(salt, (int, float)) and 0 < salt <= 1:
        share = float(salt)
    else:
        raise ValueError(f"salt must be True, False or a share in (0, 1], got {salt!r}")
    spec = KeyedSpec(job, R, True if combiner is None else bool(combiner), limit, out, share,
                     output_format or "jsonl")
    if out is not None:
        os.makedirs(out, exist_ok=True)
        if not os.access(out, os.W_OK | os.X_OK):  # fail now, not when the reducers commit
            raise PermissionError(errno.EACCES, "cannot write part files in the output "
                                  "directory", out)
    return spec


def _unfinished_output(directory):
    """Whether ``directory`` holds only what an interrupted keyed run writes (committed
    ``part-*`` files and temporary ``.part-*`` ones) and no ``_SUCCESS``."""
    names = os.listdir(directory)
    return "_SUCCESS" not in names and all(n.startswith(("part-", ".part-")) for n in names)


def _commit_output(directory, value, fp):
    """Remove temporary part files of losing attempts; write the _SUCCESS manifest (the
    fingerprint, the number of keys, the part files, and their format)."""
    import json

    for name in os.listdir(directory):
        if name.startswith(".part-"):
            try:
                os.unlink(os.path.join(directory, name))
            except FileNotFoundError:  # a losing attempt still running removed its own
                pass
    manifest = {"fingerprint": fp, "keys": len(value),
                "parts": [os.path.basename(p) for p, _n in value.parts],
                "format": value.format}
    with open(os.path.join(directory, "_SUCCESS"), "w", encoding="utf-8") as f:
        json.dump(manifest, f)
