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

__all__ = ["run", "Result", "DEFAULT_FAN_IN"]

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
        split_size=None, format="text", errors="strict", max_attempts=4, max_lost=10,
        backups=True,
        backup_after=0.75, backup_factor=1.5, verify=0.0, faults=None,
        heartbeat_interval=0.2, heartbeat_timeout=10.0, task_timeout=None, progress=None,
        start_method=None, session=None, partitions=None, combiner=None, memory_limit=None,
        output=None, salt=None, output_format=None):
    """Run ``job`` (an :class:`~mergeagg.Aggregator` or a :class:`~mergeagg.KeyedJob`) over
    ``source`` and return a :class:`Result`.

    ``source`` is anything :func:`mergeagg.inputs.as_source` accepts: file paths, globs and
    directories, a list of in-memory shards, an ndarray, or a Source.

    ``workers=0`` runs serially in this process, folding along the same fixed tree
    (``fan_in`` children per node) as the parallel runtime: the reference every parallel
    run is compared with. ``workers=None`` means one worker process per CPU; ``workers=N``
    that many worker processes (see ``docs/runtime.md`` for the fault model and every knob:
    ``max_attempts``, ``backups``, ``backup_after``, ``backup_factor``, ``verify``,
    ``heartbeat_interval``, ``heartbeat_timeout``, ``task_timeout``, ``faults``,
    ``progress``, ``start_method``). ``backend`` is ``"local"`` (worker processes on this
    machine) or a ``dask.distributed.Client`` / scheduler address: the same policy then
    runs over Dask futures (see ``docs/dask.md``). ``max_lost`` is how many times one
    task may take its worker process down with it (it died in that task, not beside it)
    before the job fails naming the task.

    Keyed jobs also take ``partitions`` (R, default 8), ``combiner`` (map-side combine,
    default on), ``memory_limit`` (bytes a map or reduce task may hold before it spills or
    merges externally; ``K``/``M``/``G`` strings allowed) and ``output`` (a directory for
    committed part files instead of an in-memory dict; ``output_format`` ``"jsonl"``, the
    default, ``"tsv"`` or ``"framed"``) and ``salt`` (spread hot keys over
    several partitions: ``True``, or the share of a map task's records that makes a key
    hot there, default ``1 / partitions``); see ``docs/shuffle.md``.

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
    from mergeagg.keyed import KeyedJob
    from mergeagg.runtime.faults import FaultPlan
    from mergeagg.runtime.master import PolicyConfig

    keyed = isinstance(job, KeyedJob)
    if not keyed and not isinstance(job, Aggregator):
        raise TypeError(f"run needs an Aggregator, got {type(job).__name__} (keyed jobs: "
                        "pass a mergeagg.KeyedJob)")
    if not keyed:
        for name, val in (("partitions", partitions), ("combiner", combiner),
                          ("memory_limit", memory_limit), ("output", output), ("salt", salt),
                          ("output_format", output_format)):
            if val is not None:
                raise TypeError(f"{name}= applies to keyed jobs (mergeagg.KeyedJob), not to "
                                "an Aggregator")
    check_fan_in(fan_in)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 0):
        raise ValueError(f"workers must be None or an int >= 0, got {workers!r}")
    dask_client = _dask_backend(backend)
    plan = FaultPlan.parse(faults) if isinstance(faults, (str, type(None))) else faults
    config = PolicyConfig(max_attempts=max_attempts, max_lost=max_lost, backups=backups,
                          backup_after=backup_after, backup_factor=backup_factor,
                          verify=verify, heartbeat_timeout=heartbeat_timeout,
                          task_timeout=task_timeout)
    src = as_source(source, split_size=split_size, format=format, errors=errors)
    n = workers if workers is not None else (os.cpu_count() or 1)
    if n == 0 and plan is not None:
        raise ValueError("faults are injected into worker processes; workers=0 has none")
    start = time.perf_counter()
    if dask_client is not None and session is not None:
        raise ValueError("give either session= or a Dask backend=, not both (a session "
                         "runs on its own workers)")
    if dask_client is not None and keyed:
        from mergeagg.runtime.dask import run_keyed_dask

        spec = _keyed_spec(job, partitions, combiner, memory_limit, output, salt,
                           output_format)
        value, report, fp = run_keyed_dask(spec, src, client=dask_client, config=config,
                                           faults=plan, progress=progress)
        if output is not None:
            _commit_output(output, value, fp)
        report.wall_seconds = time.perf_counter() - start
        return Result(value, fp, report)
    if dask_client is not None:
        from mergeagg.runtime.dask import run_dask

        value, report = run_dask(job, src, client=dask_client, fan_in=fan_in, config=config,
                                 faults=plan, progress=progress)
        fp_start = time.perf_counter()
        fp = _root_fingerprint(job, report) or fingerprint(value)
        report.phases["fingerprint"] = time.perf_counter() - fp_start
        report.wall_seconds = time.perf_counter() - start
        return Result(value, fp, report)
    if keyed:
        spec = _keyed_spec(job, partitions, combiner, memory_limit, output, salt,
                           output_format)
        if session is not None:
            value, report, fp = session._run_keyed_spec(spec, src, config=config, faults=plan,
                                                        progress=progress)
        elif n > 0:
            from mergeagg.runtime.local import run_keyed_local

            value, report, fp = run_keyed_local(spec, src, workers=n, config=config,
                                                faults=plan, progress=progress,
                                                heartbeat_interval=heartbeat_interval,
                                                start_method=start_method)
        else:
            from mergeagg.runtime.serial import run_keyed_serial

            value, report, fp = run_keyed_serial(spec, src)
        if output is not None:
            _commit_output(output, value, fp)
        report.wall_seconds = time.perf_counter() - start
        return Result(value, fp, report)
    if session is not None:
        value, report = session._run(job, src, fan_in=fan_in, config=config,
                                     faults=plan, progress=progress)
    elif n > 0:
        from mergeagg.runtime.local import run_local

        value, report = run_local(job, src, workers=n, fan_in=fan_in, config=config,
                                  faults=plan, progress=progress,
                                  heartbeat_interval=heartbeat_interval,
                                  start_method=start_method)
    else:
        value, report = run_serial(job, src, fan_in=fan_in)
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


def _dask_backend(backend):
    """``None`` for the local backend, else the Dask client or scheduler address to use."""
    if backend == "local" or backend is None:
        return None
    if isinstance(backend, str):
        if "://" in backend or ":" in backend:
            return backend
        raise ValueError(f"unknown backend {backend!r}: use 'local', a dask.distributed "
                         "Client, or a scheduler address such as 'tcp://10.0.0.1:8786'")
    if type(backend).__module__.startswith("distributed"):
        return backend
    raise TypeError(f"backend must be 'local', a dask.distributed Client or a scheduler "
                    f"address, got {type(backend).__name__}")


def _keyed_spec(job, partitions, combiner, memory_limit, output, salt=None,
                output_format=None):
    from mergeagg.inputs import parse_size
    from mergeagg.runtime.shuffle import KeyedSpec

    R = 8 if partitions is None else partitions
    if isinstance(R, bool) or not isinstance(R, int) or R < 1:
        raise ValueError(f"partitions must be a positive int, got {partitions!r}")
    limit = None if memory_limit is None else parse_size(memory_limit)
    out = None
    if output is not None:
        out = os.path.abspath(os.fspath(output))
        if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
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
