"""The job journal: runs that survive their driver, and runs that grow with their input.

``run(..., journal=DIR)`` (``--journal DIR``) keeps, in ``DIR``:

* ``journal.log``: an append-only log of records, each framed by a magic word, its length
  and its CRC-32: a header naming the job (see :func:`job_identity`), the content digests
  of the input splits, and one record per completed task (its output's location and
  fingerprint, and the output itself when it is small);
* ``outputs/``: the completed tasks' outputs too large for the log (moved there from the
  worker that made them, never copied through the driver when they are on the same disk);
* ``work/``: the executor's scratch space during a run.

Every task has a **content key**: a map task's is a digest of its split's identity (file,
byte range, format) and content (a SHA-256 of the bytes it reads; skipped when the file's
device, inode, size and modification time are those the journal saw), a combine's or a
reducer's is a digest of its children's keys. A rerun with the same journal takes every
task whose key the journal holds as done (its output checked against its recorded size
and CRC-32 before use), runs no task whose consumers are all done, and runs the rest. So a
driver killed at any point resumes where it stopped, and after files were appended to or
added, only the splits whose content is new run (with the combines above them): the tree
is the same as a full run's, so the result's bytes are too.

A torn tail (the driver died mid-write) and a damaged record end the log where they are:
what follows is ignored and runs again. A journal written by a different job is refused,
naming what differs. Only one run uses a journal at a time (a lock on ``DIR/.lock``).
Records are written (not fsynced) as tasks complete: they survive the driver's death, not
the machine's.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pickle
import shutil
import struct
import types
import zlib
from dataclasses import dataclass

from mergeagg._version import __version__
from mergeagg.errors import JournalError, JournalMismatch
from mergeagg.fingerprint import fingerprint
from mergeagg.runtime.refs import INLINE_LIMIT, Ref
from mergeagg.runtime.shuffle import MapOutput, PartRef

__all__ = ["Journal", "job_identity", "read_records", "JournalError", "JournalMismatch"]

_FRAME = struct.Struct("<4sII")  # magic, payload length, CRC-32 of the payload
_MAGIC = b"MAJ1"
LOG = "journal.log"


@dataclass
class Entry:
    """A completed task as the journal holds it."""

    task: str
    fingerprint: str
    stats: dict
    ref: object


class Journal:
    """The journal in ``directory`` for the job named by ``identity``; see the module
    docstring. Opening it reads the log (dropping a torn tail), removes what a killed run
    left in ``work/``, and refuses a journal of another job with :class:`JournalMismatch`.
    Use as a context manager, or call :meth:`close`.

    Cost of opening: one read of the log; of a task's completion: a rename of its output
    file (a copy across file systems) and one appended record.
    """

    def __init__(self, directory, identity):
        self.directory = os.path.abspath(os.fspath(directory))
        os.makedirs(self.directory, exist_ok=True)
        self.outputs = os.path.join(self.directory, "outputs")
        self.workdir = os.path.join(self.directory, "work")
        self._lock = open(os.path.join(self.directory, ".lock"), "a+")  # noqa: SIM115
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise JournalError(f"journal {self.directory} is in use by another run") from None
        self._log = None
        try:
            shutil.rmtree(self.workdir, ignore_errors=True)  # a killed driver's scratch
            os.makedirs(self.outputs, exist_ok=True)
            self.entries = {}  # content key -> Entry
            self.digests = {}  # (path, start, end, stat) -> content digest of the range
            self.torn_bytes = 0
            self.header = None
            self._read()
            if self.header is not None:
                self._check(identity)
            self._log = open(os.path.join(self.directory, LOG), "ab")  # noqa: SIM115
            if self.header is None:
                self.header = {"t": "header", "identity": identity, "dir": self.directory}
                self._append(self.header)
        except BaseException:
            self.close()
            raise
        self.identity = identity
        self.output_dir = None  # a keyed job's output directory (its parts are reusable)
        self.keys = {}
        self.reused = 0
        self.skipped = 0
        self.recorded = 0
        self.unusable = []  # (task, why) of journaled outputs that could not be used
        self._new_digests = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Release the journal (the log stays; ``work/`` is removed)."""
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._lock is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self._lock.close()
            self._lock = None

    # -- the log ---------------------------------------------------------------------------

    def _read(self):
        path = os.path.join(self.directory, LOG)
        records, good, size = read_records(path)
        for rec in records:
            self._take(rec)
        if good < size:
            self.torn_bytes = size - good
            with open(path, "r+b") as f:
                f.truncate(good)

    def _take(self, rec):
        kind = rec.get("t")
        if kind == "header":
            if self.header is None:
                self.header = rec
        elif kind == "splits":
            self.digests.update(rec["digests"])
        elif kind == "done":
            ref = rec["ref"]
            old = self.header.get("dir") if self.header else None
            if old and old != self.directory:
                ref = _rebase(ref, old, self.directory)
            self.entries[rec["key"]] = Entry(rec["task"], rec["fp"], rec["stats"], ref)

    def _append(self, rec):
        body = pickle.dumps(rec, protocol=5)
        self._log.write(_FRAME.pack(_MAGIC, len(body), zlib.crc32(body)) + body)
        self._log.flush()

    def _check(self, identity):
        old = self.header.get("identity", {})
        diffs = _differences(old, identity)
        if diffs:
            raise JournalMismatch(
                f"journal {self.directory} was written by a different job, so its outputs "
                f"cannot be used for this one: " + "; ".join(diffs) + ". Give this job its "
                "own journal directory (or remove this one to start afresh).",
                differences=[d.split(":", 1)[0] for d in diffs])

    # -- keys ------------------------------------------------------------------------------

    def bind(self, policy):
        """Compute every task's content key (hashing input splits the journal cannot vouch
        for by their files' stat) and record the splits' digests. Returns the keys."""
        keys = {}
        for tid in policy.order:
            d = policy.tasks[tid].d
            if d.kind == "map":
                keys[tid] = _h("map", self.split_key(d.split))
            else:
                tag = f"{d.kind}-{d.index}" if d.kind == "reduce" else d.kind
                keys[tid] = _h(tag, *(keys[c] for c in d.children))
        if self._new_digests:
            self._append({"t": "splits", "digests": self._new_digests})
            self.digests.update(self._new_digests)
            self._new_digests = {}
        self.keys = keys
        return keys

    def split_key(self, split):
        """A split's content key: its identity (kind, file, range, format, decoding, tag)
        and a digest of the records it holds."""
        ident = (split.kind, split.path, split.start, split.end, split.format, split.errors,
                 repr(split.tag))
        return _h("split", *map(str, ident), self._content(split))

    def _content(self, split):
        kind = split.kind
        if kind in ("memory", "rows"):
            return fingerprint(split.payload)
        try:
            st = os.stat(split.path)
        except OSError as exc:
            return f"unreadable: {exc}"  # the map task reports it as it reads
        stat = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        where = (split.path, split.start, split.end, stat)
        digest = self.digests.get(where) or self._new_digests.get(where)
        if digest is None:
            digest = _file_digest(split)
            self._new_digests[where] = digest
        return digest

    # -- outputs ---------------------------------------------------------------------------

    def restore(self, policy, adopt=None):
        """Give ``policy`` every task this journal holds as done, then let it skip the
        tasks no task still to run needs. ``adopt(ref, fingerprint)``, when the executor
        has one, turns a journaled output into a reference its tasks can read (Dask:
        a future holding it). Returns ``(restored, skipped)``."""
        keys = self.keys or self.bind(policy)
        for tid in policy.order:
            entry = self.entries.get(keys[tid])
            if entry is None:
                continue
            why = _unusable(entry.ref)
            if why is None and isinstance(entry.ref, PartRef) and (
                    os.path.dirname(entry.ref.path) != self.output_dir):
                why = "its part file was committed to another output directory"
            if why is not None:
                self.unusable.append((tid, why))
                continue
            ref = entry.ref if adopt is None else adopt(entry.ref, entry.fingerprint)
            policy.restore(tid, ref, entry.fingerprint, entry.stats)
        self.reused = policy.restored
        self.skipped = policy.skip_unneeded()
        return self.reused, self.skipped

    def keep(self, task, ref, executor=None):
        """Move the output ``ref`` of ``task`` into the journal. Returns ``(ref to use in
        this run, ref to record)``: the same one (which survives every worker) when the
        output was on this machine; else the executor's own, and a copy here of its bytes
        (the executor's ``output_bytes(ref)``, or a keyed map's ``map_buckets(ref)``)."""
        key = self.keys[task]
        if isinstance(ref, Ref):
            kept = self._keep_ref(key, ref)
            return kept, kept
        output_bytes = getattr(executor, "output_bytes", None)
        if output_bytes is not None:
            data = output_bytes(ref)
            if isinstance(data, (bytes, bytearray)):
                return ref, self._keep_ref(key, Ref(None, ref.key, data=bytes(data),
                                                    nbytes=len(data)))
            map_buckets = getattr(executor, "map_buckets", None)
            if data is None and map_buckets is not None:
                salted, buckets = map_buckets(ref)
                dst = os.path.join(self.outputs, key)
                shutil.rmtree(dst, ignore_errors=True)
                os.makedirs(dst)
                kept = []
                for r, (data, entries) in enumerate(buckets):
                    path = os.path.join(dst, f"b{r}.spill")
                    with open(path, "wb") as f:
                        f.write(data)
                    kept.append((path, len(data), entries))
                return ref, MapOutput(None, ref.key, dst, kept, salted)
        if isinstance(ref, MapOutput):
            dst = os.path.join(self.outputs, key)
            shutil.rmtree(dst, ignore_errors=True)
            shutil.move(ref.directory, dst)
            kept = _rebase(ref, ref.directory, dst, worker=None)
            return kept, kept
        if isinstance(ref, PartRef):
            if ref.side_ref is not None:
                part = PartRef(ref.key, ref.path, ref.entries, ref.digest)
                part.side_ref = self.keep_side(task, ref.side_ref)
                return part, part
            return ref, ref
        raise JournalError(f"the output of {task} ({type(ref).__name__}) cannot be kept in "
                           "a journal on this executor")

    def keep_side(self, task, ref):
        return self._keep_ref(self.keys[task] + "-side", ref)

    def _keep_ref(self, key, ref):
        """A small output rides in its record; a larger one is a file in ``outputs/``
        (moved there when the worker wrote one, written when it was held in memory)."""
        dst = os.path.join(self.outputs, key + ".out")
        if ref.data is not None:
            if len(ref.data) <= INLINE_LIMIT:
                return Ref(None, ref.key, data=ref.data, nbytes=ref.nbytes)
            with open(dst, "wb") as f:
                f.write(ref.data)
            return Ref(None, ref.key, path=dst, nbytes=len(ref.data),
                       crc=zlib.crc32(ref.data))
        shutil.move(ref.path, dst)
        return Ref(None, ref.key, path=dst, nbytes=ref.nbytes, crc=ref.crc)

    def record(self, task, fingerprint, stats, ref):
        """Append task ``task``'s completion (after the policy took it)."""
        stats = {k: v for k, v in (stats or {}).items() if k != "restored"}
        stats["bytes_read"] = 0  # this run's reads are counted by this run only
        key = self.keys[task]
        self.entries[key] = Entry(task, fingerprint, stats, ref)
        self._append({"t": "done", "key": key, "task": task, "fp": fingerprint,
                      "stats": stats, "ref": ref})
        self.recorded += 1

    def compact(self, policy):
        """After a successful run: rewrite the log with only this job's tasks, and remove
        the outputs nothing refers to any more (an earlier run's, before the input grew)."""
        keep = {}
        for tid, key in self.keys.items():
            entry = self.entries.get(key)
            if entry is not None and policy.tasks[tid].ref is not None:
                keep[key] = entry
        path = os.path.join(self.directory, LOG)
        tmp = path + ".tmp"
        digests = {k: v for k, v in self.digests.items() if os.path.exists(k[0])}
        old_log, self._log = self._log, open(tmp, "wb")  # noqa: SIM115
        try:
            self.header = {"t": "header", "identity": self.identity, "dir": self.directory}
            self._append(self.header)
            self._append({"t": "splits", "digests": digests})
            for key, e in keep.items():
                self._append({"t": "done", "key": key, "task": e.task, "fp": e.fingerprint,
                              "stats": e.stats, "ref": e.ref})
            self._log.close()
            os.replace(tmp, path)
        finally:
            old_log.close()
            self._log = open(path, "ab")  # noqa: SIM115
        self.entries = keep
        used = set()
        for e in keep.values():
            used.update(_paths(e.ref))
        for name in os.listdir(self.outputs):
            p = os.path.join(self.outputs, name)
            if p not in used:
                if os.path.isdir(p):
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    os.unlink(p)

    def summary(self):
        """What the report says of the journal."""
        out = {"directory": self.directory, "tasks_reused": self.reused,
               "tasks_skipped": self.skipped, "tasks_recorded": self.recorded}
        if self.torn_bytes:
            out["torn_tail_bytes"] = self.torn_bytes
        if self.unusable:
            out["unusable"] = [f"{t}: {why}" for t, why in self.unusable]
        return out


def read_records(path):
    """The records of the journal log at ``path`` up to the first torn or damaged one:
    ``(records, bytes of good records, size of the file)``."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return [], 0, 0
    records, pos = [], 0
    while pos + _FRAME.size <= len(data):
        magic, n, crc = _FRAME.unpack_from(data, pos)
        body = data[pos + _FRAME.size: pos + _FRAME.size + n]
        if magic != _MAGIC or len(body) != n or zlib.crc32(body) != crc:
            break
        try:
            records.append(pickle.loads(body))
        except Exception:  # a record that passes its CRC but does not load: stop here
            break
        pos += _FRAME.size + n
    return records, pos, len(data)


# -- identity --------------------------------------------------------------------------------

def job_identity(job, source, parameters):
    """What names a job for its journal: mergeagg's version, the job's code and state, the
    inputs as given (paths, globs and directories, not the files they expand to, so that
    an added file is an incremental run, not another job) and the parameters that shape
    its tasks."""
    from mergeagg.keyed import KeyedJob

    if isinstance(job, KeyedJob):
        code = {"kind": "keyed", "name": job.name, "map": describe(job.map),
                "combine": describe(job.combine), "finalize": describe(job.finalize)}
    else:
        code = {"kind": "fold", "name": job.name, "partial": describe(job.partial),
                "combine": describe(job.combine), "finalize": describe(job.finalize)}
    return {"mergeagg": __version__, "job": code, "inputs": _inputs_given(source),
            "parameters": {k: repr(v) for k, v in sorted(parameters.items())}}


def _inputs_given(source):
    if isinstance(source, (str, os.PathLike)):
        source = [source]
    if isinstance(source, (list, tuple)) and source and all(
            isinstance(s, (str, os.PathLike)) for s in source):
        return [s if s == "-" else os.path.abspath(os.fspath(s)) for s in source]
    from mergeagg.inputs import Source

    if isinstance(source, Source):
        given = getattr(source, "given", None)
        return given if given else f"a Source: {source.description}"
    return f"in memory ({type(source).__name__})"


def describe(fn, depth=0):
    """A stable description of a callable: its qualified name and a digest of its code,
    defaults and closure (of its state, for a bound method or a callable object), the same
    in every process."""
    if fn is None:
        return "None"
    if isinstance(fn, types.MethodType):
        return f"{describe_object(fn.__self__)}.{fn.__func__.__name__}@{_code(fn.__func__)}"
    if isinstance(fn, types.FunctionType):
        h = hashlib.sha256(_code(fn).encode())
        if depth < 4:
            for v in (fn.__defaults__ or ()) + tuple(fn.__kwdefaults__ or {}.items()):
                h.update(_value(v, depth).encode())
            for cell in fn.__closure__ or ():
                try:
                    h.update(_value(cell.cell_contents, depth).encode())
                except ValueError:  # an empty cell
                    h.update(b"<empty>")
        return f"{fn.__module__}.{fn.__qualname__}@{h.hexdigest()[:16]}"
    if isinstance(fn, (types.BuiltinFunctionType, type)):
        return f"{getattr(fn, '__module__', '')}.{fn.__qualname__}"
    call = type(fn).__dict__.get("__call__")  # the class's own, if it defines one
    code = _code(call) if isinstance(call, types.FunctionType) else ""
    return f"{describe_object(fn)}@{code}"


def describe_object(obj):
    """A callable object's type and a digest of its state."""
    t = type(obj)
    getstate = getattr(obj, "__getstate__", None)
    try:
        state = getstate() if getstate is not None else vars(obj)
    except TypeError:
        state = None
    return f"{t.__module__}.{t.__qualname__}[{_value(state, 1)[:16]}]"


def _code(fn):
    h = hashlib.sha256()
    _code_into(fn.__code__, h)
    return h.hexdigest()[:16]


def _code_into(code, h):
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            _code_into(c, h)
        else:
            h.update(_value(c, 0).encode())


def _value(v, depth):
    if callable(v) and not isinstance(v, type):
        return describe(v, depth + 1)
    try:
        return fingerprint(v)
    except Exception:
        pass
    try:
        from mergeagg.runtime.pickling import dumps

        return hashlib.sha256(dumps(v)).hexdigest()
    except Exception:
        return f"<{type(v).__qualname__}>"


def _differences(old, new, prefix=""):
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        name = f"{prefix}{k}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(_differences(a, b, name + "."))
        elif a != b:
            out.append(f"{_label(name)}: the journal has {_short(a)}, this run has {_short(b)}")
    return out


_LABELS = {"mergeagg": "the mergeagg version", "inputs": "the inputs"}


def _label(name):
    if name in _LABELS:
        return _LABELS[name]
    if name.startswith("job."):
        return f"the job's {name[4:]}"
    if name.startswith("parameters."):
        return f"the parameter {name[11:]}"
    return name


def _short(v, limit=120):
    text = repr(v)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# -- helpers ---------------------------------------------------------------------------------

def _h(*parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:32]


def _file_digest(split):
    """SHA-256 of the bytes a file split's records come from (a CSV split's header too)."""
    h = hashlib.sha256()
    if split.kind == "npy":
        import numpy as np

        arr = np.load(split.path, mmap_mode="r")
        h.update(f"{arr.dtype.str}{arr.shape[1:]}".encode())
        h.update(np.ascontiguousarray(arr[split.start:split.end]).tobytes())
        return h.hexdigest()
    start, end = (split.start, split.end) if split.kind == "text" else (0, None)
    if split.kind == "text" and split.format in ("csv", "tsv") and start > 0:
        from mergeagg.inputs import csv_header

        h.update(repr(csv_header(split.path, format=split.format,
                                 errors=split.errors)).encode())
    with open(split.path, "rb") as f:
        f.seek(start)
        left = None if end is None else end - start
        while left is None or left > 0:
            chunk = f.read(1 << 20 if left is None else min(1 << 20, left))
            if not chunk:
                break
            h.update(chunk)
            if left is not None:
                left -= len(chunk)
    return h.hexdigest()


def _rebase(ref, old, new, worker=False):
    """``ref`` with its paths under directory ``old`` moved under ``new`` (``worker``:
    also set its worker, e.g. ``None`` once the journal holds it)."""
    def move(p):
        return os.path.normpath(os.path.join(new, os.path.relpath(p, old))) \
            if p is not None else None

    if isinstance(ref, Ref):
        out = Ref(ref.worker if worker is False else worker, ref.key, path=move(ref.path),
                  data=ref.data, nbytes=ref.nbytes, crc=ref.crc) \
            if ref.path is not None and ref.path.startswith(old) else ref
        return out
    if isinstance(ref, MapOutput):
        buckets = [(move(p), n, e) for p, n, e in ref.buckets]
        return MapOutput(ref.worker if worker is False else worker, ref.key,
                         move(ref.directory), buckets, ref.salted)
    if isinstance(ref, PartRef) and ref.side_ref is not None:
        part = PartRef(ref.key, ref.path, ref.entries, ref.digest)
        part.side_ref = _rebase(ref.side_ref, old, new)
        return part
    return ref


def _paths(ref):
    if isinstance(ref, Ref):
        return [ref.path] if ref.path is not None else []
    if isinstance(ref, MapOutput):
        return [ref.directory]
    if isinstance(ref, PartRef) and ref.side_ref is not None:
        return _paths(ref.side_ref)
    return []


def _unusable(ref):
    """Why a journaled output cannot be used (gone, or not the bytes recorded), or None.
    Cost: one read of the output's file."""
    if isinstance(ref, Ref):
        if ref.path is None:
            return None
        size, crc = 0, 0
        try:
            with open(ref.path, "rb") as f:
                while chunk := f.read(1 << 20):  # a CRC in chunks: no copy of a big output
                    size += len(chunk)
                    crc = zlib.crc32(chunk, crc)
        except OSError as exc:
            return f"output file unreadable ({exc})"
        if size != ref.nbytes or crc != ref.crc:
            return f"output file {ref.path} is torn or changed ({size} of {ref.nbytes} bytes)"
        return None
    if isinstance(ref, MapOutput):
        for path, nbytes, _n in ref.buckets:
            try:
                size = os.path.getsize(path)
            except OSError as exc:
                return f"spill file unreadable ({exc})"
            if size != nbytes:
                return f"spill file {path} is torn ({size} of {nbytes} bytes)"
        return None
    if isinstance(ref, PartRef):
        if not os.path.exists(ref.path):
            return f"part file {ref.path} is gone"
        return _unusable(ref.side_ref) if ref.side_ref is not None else None
    return f"an output of type {type(ref).__name__} cannot be reused"
