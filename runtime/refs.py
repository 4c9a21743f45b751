"""What crosses between attempts: output references, their files, and the exceptions an
attempt's inputs can raise.

An output up to :data:`INLINE_LIMIT` (64 KiB) pickled rides inside its completion message
(:class:`Ref` with ``data``); a larger one is written once, where it was made, to a file
(temporary name, then rename) whose size and CRC-32 the reference carries, so a torn or
missing file is found when it is read (:func:`load_ref` raises :class:`InputLost` naming
the task that made it, which runs again).

>>> ref = Ref(None, AttemptId("map-0", 1), data=dumps([1, 2]), nbytes=0)
>>> load_ref(ref)
[1, 2]
"""

from __future__ import annotations

import os
import pickle
import zlib
from dataclasses import dataclass

from mergeagg.runtime.pickling import dumps as ship_dumps
from mergeagg.runtime.port import AttemptId

__all__ = ["INLINE_LIMIT", "Ref", "ResidentPartition", "CachedPartition", "InputLost",
           "RecomputedInput", "Cancel", "dumps", "load_ref", "store"]

INLINE_LIMIT = 64 * 1024


@dataclass(slots=True)
class Ref:
    """Where a task's output is: inline ``data`` (held by the master), or a file ``path``
    in ``worker``'s directory with its ``crc``. ``key`` is the attempt that made it,
    ``nbytes`` the pickled size."""

    worker: str | None
    key: AttemptId
    path: str | None = None
    data: bytes | None = None
    nbytes: int = 0
    crc: int = 0

    def __repr__(self):
        where = "inline" if self.data is not None else f"{self.worker}:{self.path}"
        return f"Ref({self.key}, {where}, {self.nbytes} B)"


class ResidentPartition:
    """A map task's input that stays in a worker's memory between jobs (a persisted
    dataset's partition): the attempt runner asks its host for the loaded form."""

    __slots__ = ()


class RecomputedInput(Exception):
    """An input whose fingerprint is not the one its task's first completion had (an
    executor recomputed it and it came out different): the job must stop."""


class CachedPartition(ResidentPartition):
    """A map task's input that stays in a worker's memory: partition ``split.index`` of
    dataset ``dataset``, with its lineage: ``split`` (the input it is read from) or
    ``parent`` (the cached partition it is derived from), and ``load_job``, the id of the
    executor job whose payload is the function that turns the split's records (or the
    parent's loaded form) into the kept form. The function is shipped to every worker once,
    as a job; a descriptor is a few words.

    >>> from mergeagg.inputs import shards
    >>> p = CachedPartition("d1", shards([[1, 2]]).splits()[0], 7)
    >>> p.id, p.index, CachedPartition("d2", p.split, 8, parent=p).parent.dataset
    ('d1/shard:0', 0, 'd1')
    """

    __slots__ = ("dataset", "split", "load_job", "parent")

    def __init__(self, dataset, split, load_job, parent=None):
        self.dataset = dataset
        self.split = split
        self.load_job = load_job
        self.parent = parent

    @property
    def index(self):
        return self.split.index

    @property
    def id(self):
        return f"{self.dataset}/{self.split.id}"

    def __getstate__(self):
        return (self.dataset, self.split, self.load_job, self.parent)

    def __setstate__(self, state):
        self.dataset, self.split, self.load_job, self.parent = state

    def __repr__(self):
        return f"CachedPartition({self.id})"


class InputLost(Exception):
    """A task's input output reference could not be read (its worker died, or it is torn).

    ``worker`` names the worker that held it, ``task`` the task that made it.
    """

    def __init__(self, message, worker=None, task=None):
        super().__init__(message)
        self.worker = worker
        self.task = task


class Cancel(BaseException):
    """Raised inside the running attempt when the master cancels it (a backup's loser).

    A BaseException, so that user code's ``except Exception`` does not swallow it.
    """


def dumps(value):
    """Pickle a task output (protocol 5; cloudpickle when it holds lambdas or closures)."""
    try:
        return pickle.dumps(value, protocol=5)
    except (pickle.PicklingError, TypeError, AttributeError):
        return ship_dumps(value)


def load_ref(ref):
    """The value behind ``ref``; :class:`InputLost` if its file is gone or torn."""
    if ref.data is not None:
        return pickle.loads(ref.data)
    try:
        with open(ref.path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise InputLost(f"output {ref.key} on worker {ref.worker} is gone ({exc})",
                        worker=ref.worker, task=ref.key.task) from None
    if len(data) != ref.nbytes or zlib.crc32(data) != ref.crc:
        raise InputLost(f"output {ref.key} on worker {ref.worker} is torn or corrupted "
                        f"({len(data)} of {ref.nbytes} bytes, checksum mismatch)",
                        worker=ref.worker, task=ref.key.task)
    return pickle.loads(data)


def store(directory, worker, aid, data):
    """Keep pickled output ``data`` of attempt ``aid``: inline up to :data:`INLINE_LIMIT`,
    else in a file of ``directory`` written atomically. Returns its :class:`Ref`."""
    if len(data) <= INLINE_LIMIT:
        return Ref(None, aid, data=data, nbytes=len(data))
    path = os.path.join(directory, str(aid).replace("#", "_") + ".out")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return Ref(worker, aid, path=path, nbytes=len(data), crc=zlib.crc32(data))
