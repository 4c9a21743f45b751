"""The report of a run: what ran, how often, what failed, what raced, and how long it took."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

__all__ = ["Report", "TaskRecord", "FailureRecord"]


@dataclass(slots=True)
class TaskRecord:
    """One task: its id, its input (a split id or the tree node it folds) and its attempts."""

    task: str
    kind: str  # "map" or "combine"
    split: str | None
    attempts: int = 0
    seconds: float = 0.0
    worker: str | None = None
    bytes_read: int = 0
    fingerprint: str | None = None


@dataclass
class FailureRecord:
    """One failed attempt: the task, the attempt number, the worker and the cause."""

    task: str
    attempt: int
    worker: str | None
    cause: str
    detail: str = ""


@dataclass
class Report:
    """Per-task attempts, failures with causes, backups, bytes read and phase timings.

    ``attempts`` lists the map tasks' attempt counts in split order (``[1, 1, 2, 1]`` when
    the third task's first attempt died, or got a backup copy, or was verified): every
    attempt launched. Kept apart: :attr:`retried` counts tasks run again after a failure,
    ``backups_launched`` the backup copies of stragglers, ``verified`` the verify re-runs.
    Printable with ``str()``; ``to_dict()`` is JSON.
    """

    mode: str = "serial"
    workers: int = 0
    fan_in: int = 0
    tasks: list[TaskRecord] = field(default_factory=list)
    failures: list[FailureRecord] = field(default_factory=list)
    backups_launched: int = 0
    backups_won: int = 0
    verified: int = 0
    bytes_read: int = 0
    phases: dict[str, float] = field(default_factory=dict)
    wall_seconds: float = 0.0
    workers_lost: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    reducers: list[dict] = field(default_factory=list)
    journal: dict = field(default_factory=dict)
    skipped_records: list[dict] = field(default_factory=list)

    @property
    def attempts(self):
        """Attempts per map task, in split order."""
        return [t.attempts for t in self.tasks if t.kind == "map"]

    @property
    def retried(self):
        """How many tasks ran again because an attempt of theirs failed.

        Cost: O(tasks + failures). An attempt failed when its code raised, it timed out,
        its worker was lost, it could not read its input, or its finished output was lost
        with its worker (the failure records say which); the task was retried when a later
        attempt of it exists. Backup copies of stragglers (``backups_launched``) and verify
        re-runs (``verified``) are extra attempts too, but not retries: a task whose only
        extra attempt was a backup is not counted.

        >>> r = Report(tasks=[TaskRecord("map-0", "map", "s0", attempts=2),
        ...                   TaskRecord("map-1", "map", "s1", attempts=2),
        ...                   TaskRecord("map-2", "map", "s2", attempts=2)],
        ...            failures=[FailureRecord("map-1", 1, "w1", "worker lost"),
        ...                      FailureRecord("map-2", 2, "w2", "audit raise")],
        ...            backups_launched=1)
        >>> r.retried, r.retries, r.attempts
        (1, 1, [2, 2, 2])
        """
        return len({f.task for f in self._retried_failures()})

    @property
    def retries(self):
        """How many failed attempts were followed by another attempt of their task.

        Cost: O(tasks + failures). At least :attr:`retried`; more when one task failed
        several times.
        """
        return sum(1 for _ in self._retried_failures())

    def _retried_failures(self):
        launched = {t.task: t.attempts for t in self.tasks}
        for f in self.failures:
            # A failed audit (a verify re-run) is not a retry of its task; and an attempt
            # that was the task's last one (a backup that failed while the original won,
            # or the failure that stopped the job) was not followed by another. (An
            # attempt that only waited in a dead worker's queue is no failure: it moves.)
            if not f.cause.startswith("audit") and f.attempt < launched.get(f.task, 0):
                yield f

    def to_dict(self):
        """A JSON-serialisable dict of everything in the report.

        Cost: O(size of the report). The dataclass's fields, plus ``attempts`` (per map
        task), ``retried`` (tasks run again after a failure) and ``retries`` (failed
        attempts that were run again); backup copies are ``backups_launched``.

        >>> d = Report().to_dict()
        >>> d["retried"], d["retries"], d["backups_launched"], d["attempts"]
        (0, 0, 0, [])
        """
        d = asdict(self)
        d["attempts"] = self.attempts
        d["retried"] = self.retried
        d["retries"] = self.retries
        return d

    def to_json(self):
        return json.dumps(self.to_dict(), sort_keys=True)

    def __str__(self):
        maps = [t for t in self.tasks if t.kind == "map"]
        combines = [t for t in self.tasks if t.kind != "map"]
        lines = [
            f"mode {self.mode}, {self.workers} worker(s), fan-in {self.fan_in}, "
            f"wall {self.wall_seconds:.3f}s",
            f"map tasks {len(maps)}, {'reduce' if self.reducers else 'combine'} tasks "
            f"{len(combines)}, "
            f"retried {self.retried}, failures {len(self.failures)}, "
            f"workers lost {self.workers_lost}",
            f"backups launched {self.backups_launched}, won {self.backups_won}; "
            f"verified {self.verified}",
            f"bytes read {self.bytes_read}",
            "attempts per map task " + _compact(self.attempts),
        ]
        if self.counters:
            lines.append("counters " + ", ".join(f"{k} {v}" for k, v in
                                                 sorted(self.counters.items())))
        if self.journal:
            j = self.journal
            lines.append(f"journal {j['directory']}: tasks reused {j['tasks_reused']}, "
                         f"skipped {j.get('tasks_skipped', 0)}, recorded "
                         f"{j['tasks_recorded']}"
                         + (f", torn tail of {j['torn_tail_bytes']} bytes dropped"
                            if j.get("torn_tail_bytes") else "")
                         + (f", {len(j['unusable'])} journaled output(s) unusable"
                            if j.get("unusable") else ""))
        if self.skipped_records:
            lines.append(f"skipped records {len(self.skipped_records)}:")
            for rec in self.skipped_records[:20]:
                lines.append(f"  task {rec['task']}: {rec['record']}")
            if len(self.skipped_records) > 20:
                lines.append(f"  ... and {len(self.skipped_records) - 20} more")
        if self.reducers:
            recs = [r["records_in"] for r in self.reducers]
            secs = [r["seconds"] for r in self.reducers]
            lines.append(f"reducers {len(recs)}: records in min {min(recs)} max {max(recs)}; "
                         f"seconds min {min(secs):.3f} max {max(secs):.3f}")
        if self.phases:
            lines.append("phases " + ", ".join(f"{k} {v:.3f}s" for k, v in self.phases.items()))
        for f in self.failures[:20]:
            lines.append(f"  failure: task {f.task} attempt {f.attempt} on {f.worker}: {f.cause}")
        if len(self.failures) > 20:
            lines.append(f"  ... and {len(self.failures) - 20} more failures")
        return "\n".join(lines)


def _compact(xs):
    if len(xs) <= 40:
        return str(xs)
    return f"{xs[:40]}... ({len(xs)} tasks)".replace("]...", ", ...]")
