"""The shuffle of keyed jobs: map-side combine, R partitions, spill files, external merge,
committed part files.

Data flow (see ``docs/shuffle.md``):

1. **Map task** ``i`` runs the job's ``map`` over its split and folds values per key in a
   dict (the *combiner*; switchable off). If the table outgrows ``memory_limit`` it is
   written as a sorted *run* and the task goes on **without** combining, buffering raw
   pairs and spilling further sorted runs; at the end the runs are merged and each key
   folded left to right in run order, which is exactly the fold an unspilled table would
   have made. Keys go to partition ``hash(key) % R`` by a stable 64-bit hash of their
   canonical encoding (never Python's salted ``hash()``). The output is one spill file
   per partition in the worker's own directory, sorted by key hash.
2. **Reduce task** ``r`` reads partition ``r`` of every map output in split order and folds
   per key: in memory when the inputs fit in ``memory_limit``, otherwise by an external
   k-way merge of the sorted files. Either way each key's values are folded in split
   order. It finalizes each key and returns its partition, or commits it as a part file.

Spill file format, version 1: a sequence of frames, then a trailer.

* frame: ``b"MGSF"``, version (u8), 3 pad bytes, entries (u32), payload length (u64),
  CRC-32 of the payload (u32); payload = pickle of ``(hashes, keys, values)`` where
  ``hashes`` is the little-endian uint64 bytes of the keys' hashes;
* trailer: ``b"MGSE"``, version (u8), 3 pad bytes, frames (u32), entries (u64), bytes of
  all frames (u64).

Files are written to a temporary name and renamed when complete; a reader checks every
frame's CRC and the trailer, and treats a torn or corrupted file as lost map output
(:class:`~mergeagg.errors.CorruptSpillError`), so its map task runs again.

Committed output (a job with ``output=DIR``) is for other tools: part files in JSON lines
(``part-RRRRR.jsonl``, the default) or TSV (``.tsv``), or, on request, in the framed format
above (``framed``, Python values exactly); see :data:`OUTPUT_FORMATS` and
``docs/shuffle.md``.
"""

from __future__ import annotations

import functools
import gc
import heapq
import json
import os
import pickle
import struct
import threading
import zlib
from collections import Counter
from itertools import islice
from json.encoder import encode_basestring
from operator import itemgetter

import numpy as np

from mergeagg.errors import CorruptSpillError
from mergeagg.fingerprint import Fingerprinter, MappingDigest, fingerprint, key_hashes
from mergeagg.keyed import pairs_of

__all__ = [
    "KeyedSpec",
    "MapOutput",
    "PartRef",
    "SpillWriter",
    "iter_spill",
    "run_map",
    "run_reduce",
    "keyed_tasks",
    "KeyedOutput",
    "FRAME_ENTRIES",
    "run_merge",
    "side_of",
    "reducer_fingerprint",
    "OUTPUT_FORMATS",
]

_FRAME = struct.Struct("<4sB3xIQI")
_TRAILER = struct.Struct("<4sB3xIQQ")
_VERSION = 1
FRAME_ENTRIES = 32768
_CHECK_EVERY = 512
_MIN_HOT = 64  # a key needs at least this many records in a map task to be salted

#: The formats of committed part files, by the suffix of their names: JSON lines (the
#: default), TSV, and the framed spill format (pickled Python values, exact).
OUTPUT_FORMATS = {"jsonl": ".jsonl", "tsv": ".tsv", "framed": ""}


class KeyedSpec:
    """What a worker needs to run a keyed job's tasks: the job and the shuffle settings.

    ``salt`` is ``None`` (no salting) or the share of a map task's records above which a
    key is hot there and gets salted across partitions. ``output_format`` is one of
    :data:`OUTPUT_FORMATS`, for part files in ``output``.
    """

    __slots__ = ("job", "partitions", "combiner", "memory_limit", "output", "salt",
                 "output_format")

    def __init__(self, job, partitions, combiner, memory_limit, output, salt=None,
                 output_format="jsonl"):
        if output_format not in OUTPUT_FORMATS:
            raise ValueError(f"unknown output format {output_format!r}; choose one of "
                             f"{', '.join(OUTPUT_FORMATS)}")
        self.job = job
        self.partitions = partitions
        self.combiner = combiner
        self.memory_limit = memory_limit
        self.output = output
        self.salt = salt
        self.output_format = output_format

    def __getstate__(self):
        return (self.job, self.partitions, self.combiner, self.memory_limit, self.output,
                self.salt, self.output_format)

    def __setstate__(self, state):
        (self.job, self.partitions, self.combiner, self.memory_limit, self.output,
         self.salt, self.output_format) = state


class MapOutput:
    """A map task's output: one spill file per partition in ``directory`` on ``worker``.

    ``buckets[r]`` is ``(path, nbytes, entries)``; ``salted`` lists the keys this task
    found hot and spread across partitions. Losing the worker loses the files.
    """

    __slots__ = ("worker", "key", "directory", "buckets", "salted")

    def __init__(self, worker, key, directory, buckets, salted=()):
        self.worker = worker
        self.key = key
        self.directory = directory
        self.buckets = buckets
        self.salted = tuple(salted)

    def __getstate__(self):
        return (self.worker, self.key, self.directory, self.buckets, self.salted)

    def __setstate__(self, state):
        self.worker, self.key, self.directory, self.buckets, self.salted = state

    def __repr__(self):
        n = sum(b[2] for b in self.buckets)
        return f"MapOutput({self.key} on {self.worker}, {n} entries)"


class PartRef:
    """A committed part file of a keyed job's output (it survives its worker).

    With salting, ``side`` holds (before the worker stores it) or ``side_ref`` points to
    the reducer's unfinalized partials of salted keys, for the final merge.
    """

    __slots__ = ("worker", "key", "path", "entries", "digest", "side", "side_ref")

    def __init__(self, key, path, entries, digest, side=None):
        self.worker = None
        self.key = key
        self.path = path
        self.entries = entries
        self.digest = digest
        self.side = side
        self.side_ref = None

    def __getstate__(self):
        return (self.key, self.path, self.entries, self.digest, self.side, self.side_ref)

    def __setstate__(self, state):
        self.worker = None
        self.key, self.path, self.entries, self.digest, self.side, self.side_ref = state


_GC_THRESHOLDS = (100_000, 50, 100)
_gc_lock = threading.Lock()
_gc_state = {"depth": 0, "saved": None}


def _gc_paused(fn):
    """Run ``fn`` with the cyclic garbage collector's thresholds raised to
    ``_GC_THRESHOLDS`` (collections of the youngest objects every 100,000 allocations
    rather than 700, of all objects far less often); restored when the last such task in
    the process ends.

    A shuffle task makes and keeps millions of containers (unpickled frames, per-key
    lists); each one counts towards the collector's thresholds, so with the defaults, a
    task that keeps a growing table pays for traversing that table again and again: a
    reducer folding a million small lists ran 1.7x slower in a fresh process (and 5x slower
    in a worker that had not frozen a large parent's heap, see ``worker.serve``). Cyclic
    garbage made by user code is still collected during the task, only in larger batches.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _gc_lock:
            if _gc_state["depth"] == 0:
                _gc_state["saved"] = gc.get_threshold()
                gc.set_threshold(*(max(a, b) for a, b in zip(_gc_state["saved"],
                                                             _GC_THRESHOLDS)))
            _gc_state["depth"] += 1
        try:
            return fn(*args, **kwargs)
        finally:
            with _gc_lock:
                _gc_state["depth"] -= 1
                if _gc_state["depth"] == 0:
                    gc.set_threshold(*_gc_state["saved"])

    return wrapper


# -- spill files ---------------------------------------------------------------------------


class SpillWriter:
    """Write frames of ``(hashes, keys, values)`` to ``path`` atomically.

    Cost: one pickle and one CRC-32 per frame; ``close()`` writes the trailer and renames
    the temporary file into place. Returns ``(path, nbytes, entries)`` from ``close``.

    >>> import tempfile, os
    >>> tmp = tempfile.TemporaryDirectory(); p = os.path.join(tmp.name, "b0.spill")
    >>> w = SpillWriter(p); w.write(np.array([7], dtype=np.uint64), ["k"], [1])
    >>> w.close()[2]
    1
    >>> [(list(k), list(v)) for _h, k, v in iter_spill(p)]
    [(['k'], [1])]
    >>> tmp.cleanup()
    """

    def __init__(self, path):
        self.path = path
        self.tmp = f"{path}.tmp-{os.getpid()}"
        self.f = open(self.tmp, "wb")
        self.frames = 0
        self.entries = 0
        self.nbytes = 0

    def write(self, hashes, keys, values):
        """Append entries (split into frames of at most 32,768)."""
        n = len(keys)
        for lo in range(0, n, FRAME_ENTRIES):
            hi = min(lo + FRAME_ENTRIES, n)
            payload = pickle.dumps((np.ascontiguousarray(hashes[lo:hi], dtype="<u8").tobytes(),
                                    list(keys[lo:hi]), list(values[lo:hi])), protocol=5)
            header = _FRAME.pack(b"MGSF", _VERSION, hi - lo, len(payload), zlib.crc32(payload))
            self.f.write(header)
            self.f.write(payload)
            self.frames += 1
            self.entries += hi - lo
            self.nbytes += len(header) + len(payload)

    def close(self):
        self.f.write(_TRAILER.pack(b"MGSE", _VERSION, self.frames, self.entries, self.nbytes))
        self.f.close()
        os.replace(self.tmp, self.path)
        return self.path, self.nbytes + _TRAILER.size, self.entries

    def abort(self):
        self.f.close()
        try:
            os.unlink(self.tmp)
        except OSError:
            pass


def _corrupt(path, message):
    exc = CorruptSpillError(message)
    exc.path = path
    return exc


def iter_spill(path):
    """Frames ``(hashes: uint64 array, keys, values)`` of a spill file, checked as read.

    Raises :class:`CorruptSpillError` naming the file if it is missing, torn or corrupt.
    """
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise _corrupt(path, f"spill file {path} is gone ({exc.strerror})") from None
    with f:
        frames = entries = nbytes = 0
        while True:
            head = f.read(_FRAME.size)
            if len(head) >= 4 and head[:4] == b"MGSE":
                head += f.read(_TRAILER.size - len(head))
                if len(head) != _TRAILER.size:
                    raise _corrupt(path, f"spill file {path} is torn: short trailer")
                _m, version, t_frames, t_entries, t_bytes = _TRAILER.unpack(head)
                if (version, t_frames, t_entries, t_bytes) != (_VERSION, frames, entries,
                                                               nbytes) or f.read(1):
                    raise _corrupt(path, f"spill file {path} is corrupt: its trailer does "
                                            "not match its frames")
                return
            if len(head) != _FRAME.size:
                raise _corrupt(path, f"spill file {path} is torn: it ends after "
                                        f"{frames} frame(s) without a trailer")
            magic, version, n, length, crc = _FRAME.unpack(head)
            if magic != b"MGSF" or version != _VERSION:
                raise _corrupt(path, f"spill file {path} is corrupt: bad frame header at "
                                        f"frame {frames}")
            payload = f.read(length)
            if len(payload) != length or zlib.crc32(payload) != crc:
                raise _corrupt(path, f"spill file {path} is corrupt: frame {frames} fails "
                                        "its checksum")
            hb, keys, values = pickle.loads(payload)
            hashes = np.frombuffer(hb, dtype="<u8")
            if len(keys) != n or len(values) != n or hashes.shape[0] != n:
                raise _corrupt(path, f"spill file {path} is corrupt: frame {frames} "
                                        "has the wrong number of entries")
            frames += 1
            entries += n
            nbytes += len(head) + length
            yield hashes, keys, values


def _entries(path):
    for hashes, keys, values in iter_spill(path):
        yield from zip(hashes.tolist(), keys, values)


# -- the map side --------------------------------------------------------------------------


def _sorted_by_partition(keys, values, partitions, salted=None, salt=0):
    """Keys and values ordered by (partition, hash), stable; with partition bounds.

    Keys in ``salted`` go to partition ``(hash + salt) % partitions`` instead of their home.
    """
    h = key_hashes(keys)
    part = h % np.uint64(partitions)
    if salted:
        mask = np.fromiter(map(salted.__contains__, keys), dtype=bool, count=len(keys))
        part[mask] = (h[mask] + np.uint64(salt)) % np.uint64(partitions)
    order = np.lexsort((h, part))
    h = h[order]
    part = part[order]
    order = order.tolist()
    keys = list(map(keys.__getitem__, order))
    values = list(map(values.__getitem__, order))
    bounds = np.searchsorted(part, np.arange(partitions + 1, dtype=np.uint64))
    return h, part, keys, values, bounds


class _EntrySize:
    """A rough in-memory size of a table entry, from a pickled sample (plus overhead)."""

    def __init__(self):
        self.per_entry = None

    def estimate(self, items, count):
        if self.per_entry is None:
            sample = []
            for item in items:
                sample.append(item)
                if len(sample) >= 64:
                    break
            if not sample:
                return 0
            self.per_entry = len(pickle.dumps(sample, protocol=5)) / len(sample) * 2 + 100
        return count * self.per_entry


def _write_run(directory, index, keys, values, partitions, counters):
    h, _part, keys, values, _bounds = _sorted_by_partition(keys, values, partitions)
    w = SpillWriter(os.path.join(directory, f"run-{index}.spill"))
    w.write(h, keys, values)
    path, nbytes, _n = w.close()
    counters["spills"] += 1
    counters["spill_bytes"] += nbytes
    return path


@_gc_paused
def run_map(spec, records, directory, worker, key):
    """Run one map task; returns ``(MapOutput, fingerprint, counters)``.

    Cost: O(records) to map and combine, O(entries log entries) to sort the output; with
    spills, every run is written and read once more.
    """
    job, R = spec.job, spec.partitions
    os.makedirs(directory, exist_ok=True)
    combine = job.combine
    limit = spec.memory_limit
    sizer = _EntrySize()
    counters = {"records_in": 0, "records_out": 0, "spills": 0, "spill_bytes": 0,
                "shuffle_bytes_written": 0}
    runs = []
    mapped = job.map(records)
    pairs = pairs_of(mapped)
    table = {} if spec.combiner else None
    raw_keys, raw_values = [], []
    counts = {} if spec.salt is not None and table is not None else None
    n = 0
    if (table is not None and isinstance(mapped, dict) and spec.salt is None
            and (not limit or sizer.estimate(mapped.items(), len(mapped)) <= limit)):
        # The map already combined (it returned a mapping: one value per key).
        table = mapped
        n = len(mapped)
        pairs = iter(())
    elif table is not None:
        for k, v in pairs:
            n += 1
            if k in table:
                table[k] = combine(table[k], v)
            else:
                table[k] = v
            if counts is not None:
                counts[k] = counts.get(k, 0) + 1
            if limit and n % _CHECK_EVERY == 0 and \
                    sizer.estimate(table.items(), len(table)) > limit:
                runs.append(_write_run(directory, 0, list(table), list(table.values()), R,
                                       counters))
                table = None  # from here on, no combining: the fold continues at the merge
                break
    while True:
        # _CHECK_EVERY pairs at a time, split into keys and values by C loops.
        block = list(islice(pairs, _CHECK_EVERY))
        n += len(block)
        _split_pairs(block, raw_keys, raw_values)
        if limit and len(raw_keys) % _CHECK_EVERY == 0 and raw_keys and \
                sizer.estimate(zip(raw_keys, raw_values), len(raw_keys)) > limit:
            runs.append(_write_run(directory, len(runs), raw_keys, raw_values, R, counters))
            raw_keys, raw_values = [], []
        if len(block) < _CHECK_EVERY:
            break
    counters["records_in"] = n
    fp = Fingerprinter()
    buckets = []
    hot = ()
    if not runs:
        if table is not None:
            keys, values = list(table), list(table.values())
        else:
            keys, values = raw_keys, raw_values
        if spec.salt is not None and R > 1 and n:
            if counts is None:
                counts = Counter(raw_keys)
            threshold = max(_MIN_HOT, spec.salt * n)
            hot = [k for k, c in counts.items() if c >= threshold]
        index = int(key.rsplit("-", 1)[1]) if "-" in str(key) else 0
        h, _part, keys, values, bounds = _sorted_by_partition(keys, values, R, set(hot),
                                                              index % R)
        for r in range(R):
            lo, hi = int(bounds[r]), int(bounds[r + 1])
            w = SpillWriter(os.path.join(directory, f"b{r}.spill"))
            _write_frames(w, fp, h[lo:hi], keys[lo:hi], values[lo:hi])
            buckets.append(w.close())
    else:
        if raw_keys:
            runs.append(_write_run(directory, len(runs), raw_keys, raw_values, R, counters))
        buckets = _merge_runs(runs, directory, R, combine if spec.combiner else None, fp)
        for path in runs:
            os.unlink(path)
    counters["records_out"] = sum(b[2] for b in buckets)
    counters["shuffle_bytes_written"] = sum(b[1] for b in buckets)
    counters["salted_keys"] = len(hot)
    if hot:
        fp.update(sorted(key_hashes(hot).tolist()))
    return MapOutput(worker, key, directory, buckets, hot), fp.hexdigest(), counters


_first, _second = itemgetter(0), itemgetter(1)


def _split_pairs(block, keys, values):
    """Append the keys and the values of the ``(key, value)`` pairs in ``block``.

    Pairs that are tuples or lists of two go through ``map`` (no Python-level loop); any
    other item is unpacked as ``for k, v in`` would, raising the same error for an item
    that is not a pair, so nothing is ever silently cut.
    """
    if set(map(type, block)) <= _PAIR_TYPES and set(map(len, block)) <= {2}:
        keys.extend(map(_first, block))
        values.extend(map(_second, block))
        return
    for k, v in block:
        keys.append(k)
        values.append(v)


_PAIR_TYPES = {tuple, list}


def _write_frames(writer, fp, h, keys, values):
    for lo in range(0, len(keys), FRAME_ENTRIES):
        hi = min(lo + FRAME_ENTRIES, len(keys))
        fp.update(np.ascontiguousarray(h[lo:hi]))
        fp.update(list(values[lo:hi]))
    writer.write(h, keys, values)


def _merge_runs(runs, directory, R, combine, fp):
    """Merge sorted runs into one spill file per partition, folding equal keys in run
    order when ``combine`` is given (the first run holds partials, later ones raw values)."""
    streams = [_entries(p) for p in runs]
    merged = heapq.merge(*streams, key=lambda e: (e[0] % R, e[0]))
    buckets = []
    current = -1
    writer = None
    buf_h, buf_k, buf_v = [], [], []

    def flush(final=False):
        # Frames start at multiples of FRAME_ENTRIES within the bucket, as in the unspilled
        # path, so the fingerprint does not depend on where runs were cut.
        while len(buf_k) >= FRAME_ENTRIES or (final and buf_k):
            n = min(FRAME_ENTRIES, len(buf_k))
            _write_frames(writer, fp, np.array(buf_h[:n], dtype=np.uint64), buf_k[:n],
                          buf_v[:n])
            del buf_h[:n], buf_k[:n], buf_v[:n]

    def finish_bucket():
        flush(final=True)
        buckets.append(writer.close())

    group_h = None
    group = {}
    for h, k, v in merged:
        part = h % R
        if part != current:
            if group:
                _emit_group(group, group_h, buf_h, buf_k, buf_v)
                group = {}
            while current < part:
                if writer is not None:
                    finish_bucket()
                current += 1
                writer = SpillWriter(os.path.join(directory, f"b{current}.spill"))
            group_h = None
        if h != group_h:
            if group:
                _emit_group(group, group_h, buf_h, buf_k, buf_v)
                group = {}
            group_h = h
        if combine is None:
            # No combiner: keep every value, in order.
            buf_h.append(h)
            buf_k.append(k)
            buf_v.append(v)
        elif k in group:
            group[k] = combine(group[k], v)
        else:
            group[k] = v
        if len(buf_k) >= FRAME_ENTRIES:
            flush()
    if group:
        _emit_group(group, group_h, buf_h, buf_k, buf_v)
    while current < R - 1:
        if writer is not None:
            finish_bucket()
        current += 1
        writer = SpillWriter(os.path.join(directory, f"b{current}.spill"))
    finish_bucket()
    return buckets


def _emit_group(group, h, buf_h, buf_k, buf_v):
    for k, v in group.items():
        buf_h.append(h)
        buf_k.append(k)
        buf_v.append(v)


# -- the reduce side -----------------------------------------------------------------------


@_gc_paused
def run_reduce(spec, inputs, r, attempt):
    """Reduce partition ``r`` of the map outputs ``inputs`` (in split order).

    Returns ``(value, digest_state, counters)``: ``value`` is ``(keys, values)`` of the
    finalized partition ordered by key hash, or a :class:`PartRef` when the job writes an
    output directory. Raises :class:`CorruptSpillError` (with ``.lost`` naming the map
    outputs that could not be read) if an input file is gone or corrupt.
    """
    job = spec.job
    combine, finalize = job.combine, job.finalize
    salted = _salted_keys(inputs)
    if salted:
        finalize = _SideFinalize(finalize, salted)
    paths = [m.buckets[r][0] for m in inputs]
    in_bytes = sum(m.buckets[r][1] for m in inputs)
    counters = {"shuffle_bytes_read": in_bytes, "reduce_records_in": 0, "external_merge": 0}
    limit = spec.memory_limit
    try:
        # In memory a table takes about ten times its pickled size.
        if limit is None or in_bytes * 10 <= limit:
            table = {}
            n = 0
            for path in paths:
                for _h, keys, values in iter_spill(path):
                    n += len(keys)
                    for k, v in zip(keys, values):
                        if k in table:
                            table[k] = combine(table[k], v)
                        else:
                            table[k] = v
            counters["reduce_records_in"] = n
            if salted:
                finalize.side = {k: table.pop(k) for k in salted if k in table}
            keys = list(table)
            values = [finalize(v) for v in table.values()]
            h = key_hashes(keys)
            order = np.argsort(h, kind="stable").tolist()
            out = ([keys[i] for i in order], [values[i] for i in order], h[order])
            chunks = [out]
        else:
            counters["external_merge"] = 1
            chunks = _external_reduce(paths, combine, finalize, counters)
            if salted:
                chunks = list(chunks)  # the side partials are known once it has run
        side = None
        if salted:
            side = (list(finalize.side), list(finalize.side.values()))
        return _emit(spec, chunks, r, attempt, counters, side)
    except CorruptSpillError as exc:
        bad = getattr(exc, "path", None)
        lost = [m.key for m in inputs if m.buckets[r][0] == bad] if bad else []
        if not lost:
            lost = [m.key for m in inputs if not os.path.exists(m.buckets[r][0])]
        exc.lost = lost
        raise


def _external_reduce(paths, combine, finalize, counters):
    """Yield ``(keys, values, hashes)`` chunks of the partition from a k-way merge."""
    streams = [_entries(p) for p in paths]
    merged = heapq.merge(*streams, key=lambda e: e[0])
    keys, values, hs = [], [], []
    group, group_h = {}, None
    n = 0
    side = getattr(finalize, "side", None)
    salted = getattr(finalize, "salted", ())
    for h, k, v in merged:
        n += 1
        if h != group_h:
            for gk, gv in group.items():
                if gk in salted:
                    side[gk] = gv
                    continue
                keys.append(gk)
                values.append(finalize(gv))
                hs.append(group_h)
            group, group_h = {}, h
            if len(keys) >= FRAME_ENTRIES:
                yield keys, values, np.array(hs, dtype=np.uint64)
                keys, values, hs = [], [], []
        if k in group:
            group[k] = combine(group[k], v)
        else:
            group[k] = v
    for gk, gv in group.items():
        if gk in salted:
            side[gk] = gv
            continue
        keys.append(gk)
        values.append(finalize(gv))
        hs.append(group_h)
    counters["reduce_records_in"] = n
    if keys:
        yield keys, values, np.array(hs, dtype=np.uint64)


def _emit(spec, chunks, r, attempt, counters, side=None, name=None):
    digest = MappingDigest()
    if spec.output is None:
        all_k, all_v = [], []
        for keys, values, _h in chunks:
            digest.update(dict(zip(keys, values)))
            all_k.extend(keys)
            all_v.extend(values)
        counters["reduce_records_out"] = len(all_k)
        value = (all_k, all_v) if side is None else (all_k, all_v, side[0], side[1])
        return value, digest.state(), counters
    name = (name or f"part-{r:05d}") + OUTPUT_FORMATS[spec.output_format]
    final = os.path.join(spec.output, name)
    tmp_final = os.path.join(spec.output, f".{name}.{attempt.replace('#', '_')}")
    if spec.output_format == "framed":
        w = SpillWriter(tmp_final)
        try:
            for keys, values, h in chunks:
                digest.update(dict(zip(keys, values)))
                w.write(h, keys, values)
            tmp_final, _nbytes, entries = w.close()
        except BaseException:
            w.abort()
            raise
    else:
        entries = _write_text_part(tmp_final, chunks, spec.output_format, digest, name)
    try:
        os.link(tmp_final, final)  # exclusive: only one attempt can commit a part
    except FileExistsError:
        pass  # another attempt committed it first; the policy compares fingerprints
    finally:
        os.unlink(tmp_final)
    counters["reduce_records_out"] = entries
    return PartRef(attempt, final, entries, digest.state(), side), digest.state(), counters


def _write_text_part(path, chunks, fmt, digest, name):
    """Write the entries of ``chunks`` to ``path`` as lines of ``fmt``; the entry count."""
    line = _jsonl_line if fmt == "jsonl" else _tsv_line
    n = 0
    try:
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            for keys, values, _h in chunks:
                digest.update(dict(zip(keys, values)))
                try:
                    f.write("".join(map(line, keys, values)))
                except TypeError:
                    _raise_no_json_form(keys, values, name)
                n += len(keys)
    except BaseException:
        try:
            os.unlink(path)
        except OSError:
            pass
        raise
    return n


def _raise_no_json_form(keys, values, name):
    """Find the entry that has no JSON form and say which key it is, and what to do."""
    for k, v in zip(keys, values):
        for what, x in (("key", k), ("value", v)):
            try:
                _json_text(x)
            except TypeError as exc:
                text = repr(k)
                text = text if len(text) <= 60 else text[:57] + "..."
                raise TypeError(
                    f"cannot write part file {name}: the {what} of the {type(k).__name__} "
                    f"key {text}: {exc}. Give that type a to_jsonable() method, or pass "
                    "output_format='framed' (CLI --output-format framed) to keep the "
                    "Python values as they are") from None
    raise AssertionError("unreachable: an entry failed to encode")  # pragma: no cover


_json_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"),
                                allow_nan=False).encode


def _json_text(x):
    """The JSON text of a key or value: plain str, int, float, bool and None directly,
    anything else through :func:`mergeagg.cli.to_jsonable` (``strict``: no ``repr``)."""
    t = type(x)
    if t is str:
        return encode_basestring(x)
    if t is int:
        return int.__repr__(x)
    if t is float and x - x == 0.0:  # finite
        return float.__repr__(x)
    if x is None or t is bool:
        return "null" if x is None else ("true" if x else "false")
    from mergeagg.cli import to_jsonable

    return _json_encode(to_jsonable(x, strict=True))


def _jsonl_line(key, value):
    return f'{{"key":{_json_text(key)},"value":{_json_text(value)}}}\n'


_TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
_JSON_WORDS = frozenset(("true", "false", "null", "NaN", "Infinity", "-Infinity"))


def _may_be_json(text):
    """False when ``text`` certainly does not parse as JSON (checked without parsing)."""
    s = text.strip(" ")
    return bool(s) and (s[0] in '"[{-0123456789' or s in _JSON_WORDS)


def _tsv_field(x):
    """A TSV field: a str as its text (tab, newline, CR and backslash escaped), unless that
    text would read back as another JSON value (``3``, ``true``, ``"a"``), and anything else
    as its JSON text."""
    if type(x) is str:
        text = x.translate(_TSV_ESCAPES) if ("\\" in x or "\t" in x or "\n" in x
                                             or "\r" in x) else x
        if not _may_be_json(text):
            return text
        try:
            json.loads(text)
        except ValueError:
            return text
        return encode_basestring(x)
    return _json_text(x)


def _tsv_line(key, value):
    return f"{_tsv_field(key)}\t{_tsv_field(value)}\n"


_TSV_UNESCAPE = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def _tsv_value(field):
    if _may_be_json(field):
        try:
            return json.loads(field)
        except ValueError:
            pass
    if "\\" not in field:
        return field
    out = []
    it = iter(field)
    for ch in it:
        if ch == "\\":
            nxt = next(it, "")
            out.append(_TSV_UNESCAPE.get(nxt, "\\" + nxt))
        else:
            out.append(ch)
    return "".join(out)


def _as_key(x):
    """A key read back from JSON: arrays become tuples, so that it can key a dict."""
    if type(x) is list:
        return tuple(_as_key(v) for v in x)
    return x


class _SideFinalize:
    """finalize for a reducer under salting: salted keys are kept aside, unfinalized."""

    def __init__(self, finalize, salted):
        self.finalize = finalize
        self.salted = salted
        self.side = {}

    def __call__(self, acc):
        return self.finalize(acc)


def _salted_keys(inputs):
    keys = {}
    for m in inputs:
        for k in getattr(m, "salted", ()):
            keys[k] = True
    return keys


def side_of(value):
    """The salted partials ``(keys, values)`` a reducer's stored output carries."""
    if isinstance(value, tuple) and len(value) == 4:
        return value[2], value[3]
    return [], []


def reducer_fingerprint(digest, value):
    """A reducer attempt's fingerprint: its partition's digest, and under salting the
    unfinalized partials of salted keys it passes on (they are part of its output).
    Cost: O(1), plus one fingerprint of the salted partials when there are any."""
    fp = MappingDigest(*digest).fingerprint()
    side = value.side if isinstance(value, PartRef) else (
        side_of(value) if len(value) == 4 else None)
    return fp if side is None else fingerprint((fp, side))


@_gc_paused
def run_merge(spec, sides, attempt):
    """The final small step under salting: fold each salted key's partials from the
    reducers in partition order, finalize, and emit (as ``part-salted`` with an output
    directory). Returns ``(value, digest_state, counters)``."""
    combine, finalize = spec.job.combine, spec.job.finalize
    table = {}
    n = 0
    for keys, values in sides:
        n += len(keys)
        for k, v in zip(keys, values):
            table[k] = combine(table[k], v) if k in table else v
    keys = list(table)
    values = [finalize(v) for v in table.values()]
    h = key_hashes(keys)
    order = np.argsort(h, kind="stable").tolist()
    chunk = ([keys[i] for i in order], [values[i] for i in order], h[order])
    counters = {"merge_records_in": n}
    return _emit(spec, [chunk], 0, attempt, counters, name="part-salted")


def keyed_tasks(splits, partitions, salt=False):
    """The task list of a keyed job: map tasks read by every reducer, reducers as sinks
    (with salting, reducers are outputs that also feed one final ``merge`` task).

    >>> [t.id for t in keyed_tasks(["a", "b"], 2)]
    ['map-0', 'map-1', 'reduce-0', 'reduce-1']
    """
    from mergeagg.runtime.master import TaskDef

    reduce_ids = tuple(f"reduce-{r}" for r in range(partitions))
    maps = [TaskDef(f"map-{i}", "map", split=s, parents=reduce_ids, index=i)
            for i, s in enumerate(splits)]
    map_ids = tuple(t.id for t in maps)
    after = ("merge-salted",) if salt else ()
    reduces = [TaskDef(rid, "reduce", children=map_ids, index=r, parents=after,
                       output=bool(salt))
               for r, rid in enumerate(reduce_ids)]
    tasks = maps + reduces
    if salt:
        tasks.append(TaskDef("merge-salted", "merge", children=reduce_ids))
    return tasks


class KeyedOutput:
    """A keyed job's output written as part files in ``directory``, read back lazily.

    Iterating gives ``(key, value)`` pairs part by part (``part-00000`` first); inside a
    part, keys are in the order of their stable 64-bit hash. ``len()`` is the number of
    keys; :meth:`to_dict` loads everything. ``parts`` lists ``(path, entries)``; each part's
    format (:data:`OUTPUT_FORMATS`) is told by its name's suffix. JSON lines and TSV give
    the JSON form of what was written (keys that were tuples come back as tuples, other
    arrays as lists); ``framed`` parts give the Python values themselves.

    Cost: reading one part at a time; O(1) memory beyond one frame or line.

    >>> import mergeagg as ma, tempfile, os
    >>> job = ma.KeyedJob(lambda lines: ((w, 1) for l in lines for w in l.split()),
    ...                   lambda a, b: a + b)
    >>> out = os.path.join(tempfile.mkdtemp(), "counts")
    >>> r = ma.run(job, [["to be or not"], ["to be"]], workers=0, partitions=2, output=out)
    >>> sorted(r.value.items()), len(r.value)
    ([('be', 2), ('not', 1), ('or', 1), ('to', 2)], 4)
    >>> import shutil; shutil.rmtree(os.path.dirname(out))
    """

    def __init__(self, directory, parts):
        self.directory = directory
        self.parts = list(parts)  # (path, entries)

    def __len__(self):
        return sum(n for _p, n in self.parts)

    @property
    def format(self):
        """The parts' format, one of :data:`OUTPUT_FORMATS`, told by their names' suffix.

        Cost: O(parts). Directories written before JSON lines was the default hold framed
        parts, with no suffix, and still read back.
        """
        for fmt, suffix in OUTPUT_FORMATS.items():
            if suffix and self.parts and all(p.endswith(suffix) for p, _n in self.parts):
                return fmt
        return "framed"

    def __iter__(self):
        for path, n in self.parts:
            if path.endswith(OUTPUT_FORMATS["jsonl"]):
                yield from _read_text_part(path, n, "jsonl")
            elif path.endswith(OUTPUT_FORMATS["tsv"]):
                yield from _read_text_part(path, n, "tsv")
            else:
                for _h, keys, values in iter_spill(path):
                    yield from zip(keys, values)

    def items(self):
        """``(key, value)`` pairs, lazily, in part then hash order."""
        return iter(self)

    def to_dict(self):
        """Every entry in one dict (loads the whole output)."""
        return dict(iter(self))

    def __repr__(self):
        return f"KeyedOutput({self.directory!r}, {len(self.parts)} parts, {len(self)} keys)"

    def to_jsonable(self):
        return {"output": self.directory, "parts": [p for p, _n in self.parts],
                "keys": len(self)}


def _read_text_part(path, entries, fmt):
    """``(key, value)`` pairs of a JSON-lines or TSV part; a line that does not parse, or a
    part holding another number of entries than its task wrote, is an error naming it."""
    n = 0
    with open(path, encoding="utf-8", newline="\n") as f:
        while True:
            lines = f.readlines(1 << 20)
            if not lines:
                break
            if fmt == "jsonl":
                try:  # one parse for a megabyte of lines
                    batch = json.loads("[" + ",".join(lines) + "]")
                    pairs = [(k if type(k) is not list else _as_key(k), e["value"])
                             for e in batch for k in (e["key"],)]
                except (ValueError, KeyError, TypeError):
                    pairs = None
            if fmt != "jsonl" or pairs is None:
                pairs = []
                for i, line in enumerate(lines, n + 1):
                    try:
                        pairs.append(_text_entry(line, fmt))
                    except (ValueError, KeyError, TypeError) as exc:
                        raise ValueError(f"part file {path}, line {i}: not an entry of a "
                                         f"keyed output ({type(exc).__name__}: {exc})") from None
            n += len(lines)
            yield from pairs
    if n != entries:
        raise ValueError(f"part file {path} holds {n} entries; its reduce task wrote "
                         f"{entries}: the file was changed after the job")


def _text_entry(line, fmt):
    if not line.endswith("\n"):
        raise ValueError("the line is cut short")
    if fmt == "jsonl":
        entry = json.loads(line)
        return _as_key(entry["key"]), entry["value"]
    key, value = line[:-1].split("\t")
    return _as_key(_tsv_value(key)), _tsv_value(value)
