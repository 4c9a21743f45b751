"""The exception types of mergeagg, in one place.

Wrong types raise :class:`TypeError` and bad values :class:`ValueError`, as everywhere in
Python; the classes below are for what goes wrong while a job runs or while input is read.
Every message says what happened, where (file, split, byte offset, task, attempt) and, where
there is one, what to do.

>>> issubclass(InputError, ValueError), issubclass(JobFailed, MergeaggError)
(True, True)
>>> issubclass(RecordShapeError, InputError), issubclass(RecordShapeError, TypeError)
(True, True)
"""

from __future__ import annotations

__all__ = [
    "MergeaggError",
    "InputError",
    "RecordShapeError",
    "JobFailed",
    "TaskFailed",
    "NondeterminismError",
    "BadRecords",
    "JournalError",
    "JournalMismatch",
    "IncompatibleMergeError",
    "WorkerLost",
    "CorruptSpillError",
]


class MergeaggError(Exception):
    """Base class of every error mergeagg raises for a job or its input."""


class InputError(MergeaggError, ValueError):
    """The input cannot be read as asked: a missing file, an empty source, invalid UTF-8.

    The message names the file and, where it applies, the byte offset.
    """


class RecordShapeError(InputError, TypeError):
    """A record is not of the shape the aggregator needs: a line of text where it needs a
    mapping (``field=``), a mapping where it needs a number, an unhashable item to count.

    The input gives the same record on every attempt, so the job stops at once (an
    :class:`InputError`); as a wrong type it is also a :class:`TypeError`. The message names
    what was expected, what came, and how to read the input instead (``--format csv``).
    """


class JobFailed(MergeaggError):
    """A job stopped before it produced its result; the message says why and where."""


class TaskFailed(JobFailed):
    """A task's user code raised on every one of its attempts.

    ``task`` names the task, ``split`` its input, ``attempts`` how many were tried and
    ``traceback`` is the text of the last attempt's traceback.
    """

    def __init__(self, message, *, task=None, split=None, attempts=0, traceback=""):
        super().__init__(message)
        self.task = task
        self.split = split
        self.attempts = attempts
        self.traceback = traceback

    def __reduce__(self):
        return (
            _rebuild_task_failed,
            (self.args[0], self.task, self.split, self.attempts, self.traceback),
        )


def _rebuild_task_failed(message, task, split, attempts, traceback):
    return TaskFailed(message, task=task, split=split, attempts=attempts, traceback=traceback)


class NondeterminismError(JobFailed):
    """Two completed attempts of one task produced outputs with different fingerprints.

    A task must be a pure function of its input; ``task`` and ``fingerprints`` say which
    task and what the two attempts gave.
    """

    def __init__(self, message, *, task=None, fingerprints=()):
        super().__init__(message)
        self.task = task
        self.fingerprints = tuple(fingerprints)

    def __reduce__(self):
        return (_rebuild_nondeterminism, (self.args[0], self.task, self.fingerprints))


def _rebuild_nondeterminism(message, task, fingerprints):
    return NondeterminismError(message, task=task, fingerprints=fingerprints)


class IncompatibleMergeError(MergeaggError, ValueError):
    """Two accumulators (sketches) with different parameters were asked to merge.

    The message lists each parameter that differs with both values.
    """


class WorkerLost(MergeaggError):
    """A worker process died or went silent while the job needed it."""


class CorruptSpillError(MergeaggError):
    """A spill or part file failed its checksum or was torn; its producer must run again."""


class JournalError(MergeaggError):
    """A job journal cannot be used: it is in use by another run, or it cannot keep an
    output of this executor."""


class JournalMismatch(JournalError, ValueError):
    """A journal was written by a different job; ``differences`` names what differs (the
    job's code, a parameter, the inputs, mergeagg's version), the message says how."""

    def __init__(self, message, differences=()):
        super().__init__(message)
        self.differences = list(differences)

    def __reduce__(self):
        return (type(self), (str(self), self.differences))


class BadRecords(TaskFailed):
    """A map task's user code failed on records of its split that bisection found
    (``records``: where each is, its exception and the line that raised), more than
    ``skip_bad_records`` allows, or failed on no single record alone. A
    :class:`TaskFailed`, so code that catches a task's failure catches this one too."""

    def __init__(self, message, records=(), *, task=None, split=None, attempts=0,
                 traceback=""):
        super().__init__(message, task=task, split=split, attempts=attempts,
                         traceback=traceback)
        self.records = list(records)

    def __reduce__(self):
        return (_rebuild_bad_records, (self.args[0], self.records, self.task, self.split,
                                       self.attempts, self.traceback))


def _rebuild_bad_records(message, records, task, split, attempts, traceback):
    return BadRecords(message, records, task=task, split=split, attempts=attempts,
                      traceback=traceback)
