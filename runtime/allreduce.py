"""Tree, ring and keyed all-reduce over worker OS processes: mergeagg's runtime, laid bare.

Each of ``p`` processes computes one accumulator (``aggregator.partial(shard)``: the map) and
the collective leaves **every** process holding the combined value; the master only starts
the processes, says "go", and collects each one's fingerprint (they must all agree) and byte
counts. Data moves between the processes themselves, over pipes and shared memory, never
through the master. POSIX only (non-blocking pipes, ``readv``/``writev``, ``/dev/shm``).

* ``algorithm="tree"`` — any accumulator. Reduce along the fold runtime's fixed tree
  (:mod:`mergeagg.runtime.tree`, same ``fan_in``): node ``(level, i)`` lives on the process
  of its leftmost leaf, which folds its children's values left to right,
  ``combine(combine(c0, c1), c2)``; then the root's bytes are broadcast back down the same
  edges. **Order**: exactly ``fold_fixed(partials, combine, fan_in)``, so the result is
  bitwise the fold runtime's, floats included.
* ``algorithm="ring"`` — array accumulators whose combine is element-wise (an
  :class:`ArrayView`: float or int vectors summed, count-min tables, HyperLogLog registers).
  The flat array is cut into ``p`` chunks (sizes differ by at most one element); a
  reduce-scatter of ``p - 1`` steps (process ``r`` sends chunk ``r - s`` to ``r + 1`` and
  folds chunk ``r - s - 1`` from ``r - 1``) leaves process ``r`` with the finished chunk
  ``r + 1``; an all-gather of ``p - 1`` steps passes finished chunks on. **Order**: chunk
  ``c`` is folded around the ring starting at process ``c``,
  ``((x_c op x_{c+1}) op x_{c+2}) ... op x_{c-1}`` (indices mod ``p``):
  :func:`ring_reference` computes it in one process, bitwise. For integer sums and max this
  equals every other order; for float sums it differs from the tree's in the last bits.
  Transport (``transport=``): ``"shm"`` (default) — each ring edge has a two-slot
  shared-memory mailbox (a file in ``/dev/shm`` that the master removes); the sender copies
  its chunk in and sends a 16-byte token down a pipe, the receiver combines straight from
  the slot and acks; ``"pipe"`` — the chunk itself travels through the pipe.
* ``algorithm="keyed"`` — mapping accumulators (a dict, a ``Counter``, a ``KeyedTable``).
  Reduce-scatter by a stable key hash (:func:`partition_of`: the keyed shuffle's own
  partitioner, ``key_hashes`` of the canonical encoding modulo ``p``, never Python's
  ``hash()``): process ``r`` sends the keys of partition ``j``
  to process ``j``, which folds the ``p`` pieces in rank order with ``combine``; then an
  all-gather of the disjoint finished partitions, folded in rank order again. **Order**:
  each key's values combine in rank order ``0 .. p-1``, which is the fold tree's order
  whenever ``p <= fan_in``.

Byte accounting: every process counts the bytes it writes and reads on its pipes (16-byte
frame headers and pickling included); :class:`AllReduceResult` prints them beside the
textbook figure (ring: ``2 (p - 1) / p * N`` each way per process).

Failures: a process that dies during the collective, or goes silent for ``timeout``
seconds, stops the whole collective with :class:`~mergeagg.errors.WorkerLost` naming its
rank and pid (user code that raises: :class:`~mergeagg.errors.JobFailed` with its
traceback); every process of the collective is killed and reaped, and the shared-memory
files removed, before the error is raised.

>>> import numpy as np
>>> import mergeagg as ma
>>> vec = ma.Aggregator(lambda seed: np.arange(7.0) * seed, lambda a, b: a + b)
>>> r = allreduce(vec, [1, 2, 3], algorithm="ring", view=SUM)
>>> r.value.tolist(), r.processes
([0.0, 6.0, 12.0, 18.0, 24.0, 30.0, 36.0], 3)
>>> r.fingerprint == ma.fingerprint(r.value) == allreduce(vec, [1, 2, 3]).fingerprint
True
"""

from __future__ import annotations

import copy
import errno
import mmap
import multiprocessing as mp
import os
import pickle
import selectors
import shutil
import signal
import struct
import tempfile
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field

import cloudpickle
import numpy as np

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: allreduce() cannot run here anyway
    fcntl = None

from mergeagg.aggregator import Aggregator
from mergeagg.errors import JobFailed, WorkerLost
from mergeagg.fingerprint import fingerprint, key_hashes
from mergeagg.runtime.api import DEFAULT_FAN_IN  # mergeagg.run's: the same tree by default
from mergeagg.runtime.pickling import dumps as ship_dumps
from mergeagg.runtime.tree import check_fan_in, level_sizes

__all__ = [
    "allreduce",
    "AllReduceResult",
    "ArrayView",
    "SUM",
    "MAX",
    "COUNTMIN",
    "HYPERLOGLOG",
    "ring_reference",
    "chunk_bounds",
    "partition_of",
    "tree_edges",
    "ALGORITHMS",
]

ALGORITHMS = ("tree", "ring", "keyed")

_HEADER = struct.Struct("<IIQ")  # tag, step, payload bytes
_PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux: a pipe's capacity
_TAGS = {"hello": 1, "reduce-scatter": 2, "all-gather": 3, "reduce": 4, "broadcast": 5,
         "ack": 6}


# -- array views ---------------------------------------------------------------------------


class ArrayView:
    """How the ring sees an accumulator: one flat array and an element-wise ufunc.

    ``to_array(acc)`` gives a flat, C-contiguous array (it may be ``acc``'s own memory: the
    ring writes into it); ``from_array(acc, arr)`` rebuilds the accumulator from the reduced
    array; ``signature(acc)`` is a string that must be equal on every process (shape, dtype,
    sketch parameters). Cost: whatever the three functions cost, O(size) for the ones here.

    >>> SUM.ufunc.__name__, MAX.ufunc.__name__, COUNTMIN.ufunc.__name__
    ('add', 'maximum', 'add')
    >>> SUM.from_array(np.zeros((2, 2)), SUM.to_array(np.eye(2))).tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """

    __slots__ = ("ufunc", "to_array", "from_array", "signature", "name")

    def __init__(self, ufunc, to_array=None, from_array=None, signature=None, name=None):
        if not isinstance(ufunc, np.ufunc) or ufunc.nin != 2:
            raise TypeError(f"an ArrayView needs a binary numpy ufunc, got {ufunc!r}")
        self.ufunc = ufunc
        self.to_array = to_array or _plain_to_array
        self.from_array = from_array or _plain_from_array
        self.signature = signature or _plain_signature
        self.name = name or ufunc.__name__

    def __getstate__(self):
        return (self.ufunc, self.to_array, self.from_array, self.signature, self.name)

    def __setstate__(self, state):
        self.ufunc, self.to_array, self.from_array, self.signature, self.name = state

    def __repr__(self):
        return f"ArrayView({self.name})"


def _plain_to_array(acc):
    if not isinstance(acc, np.ndarray):
        raise TypeError(f"the ring all-reduce's array view needs a numpy array, got "
                        f"{type(acc).__name__}; pass view= for other accumulators")
    return np.ascontiguousarray(acc).reshape(-1)


def _plain_from_array(acc, arr):
    return arr.reshape(acc.shape)


def _plain_signature(acc):
    return f"ndarray {acc.dtype.str} {acc.shape}"


def _sketch_signature(acc):
    return f"{type(acc).__name__} {sorted(acc.params().items())}"


def _cm_to_array(cm):
    # The table's cells and the total, summed together (the total is a sum too).
    return np.concatenate([cm.table.reshape(-1), np.array([cm.total], dtype=np.int64)])


def _cm_from_array(cm, arr):
    cm.table = arr[:-1].reshape(cm.table.shape)
    cm.total = int(arr[-1])
    return cm


def _hll_to_array(hll):
    return hll.registers


def _hll_from_array(hll, arr):
    hll.registers = arr
    return hll


SUM = ArrayView(np.add, name="sum")
MAX = ArrayView(np.maximum, name="max")
COUNTMIN = ArrayView(np.add, _cm_to_array, _cm_from_array, _sketch_signature, "countmin")
HYPERLOGLOG = ArrayView(np.maximum, _hll_to_array, _hll_from_array, _sketch_signature,
                        "hyperloglog")


def chunk_bounds(n, p):
    """The ring's chunk ``c`` is ``[bounds[c], bounds[c + 1])``: sizes differ by at most one.

    Cost: O(p).

    >>> chunk_bounds(10, 3)
    [0, 3, 6, 10]
    >>> chunk_bounds(2, 4)
    [0, 0, 1, 1, 2]
    """
    return [c * n // p for c in range(p + 1)]


def ring_reference(arrays, ufunc=np.add):
    """The ring all-reduce's result computed in one process, in the ring's exact order.

    Chunk ``c`` (see :func:`chunk_bounds`) is folded starting at array ``c`` and going
    round: ``ufunc(ufunc(x_c, x_{c+1}), x_{c+2}) ...``. Cost: ``(p - 1) * N`` ufunc calls.

    >>> ring_reference([np.array([1.0, 2.0]), np.array([3.0, 4.0])]).tolist()
    [4.0, 6.0]
    """
    arrays = [np.ascontiguousarray(a).reshape(-1) for a in arrays]
    p = len(arrays)
    out = arrays[0].copy()
    bounds = chunk_bounds(out.shape[0], p)
    for c in range(p):
        lo, hi = bounds[c], bounds[c + 1]
        acc = arrays[c][lo:hi].copy()
        for k in range(1, p):
            acc = ufunc(acc, arrays[(c + k) % p][lo:hi])
        out[lo:hi] = acc
    return out


def partition_of(key, parts):
    """The partition (``0 .. parts-1``) of a key: ``key_hashes([key])[0] % parts``.

    :func:`mergeagg.fingerprint.key_hashes` is the stable 64-bit hash of the key's
    canonical digest that the keyed runtime's shuffle partitions by, so with ``parts``
    equal to its partition count a key lands in the same partition here and there. The
    same in every process and run (never Python's salted ``hash()``).

    Cost: one canonical digest of the key (about a microsecond).

    >>> partition_of("apple", 4) == partition_of("apple", 4)
    True
    >>> sorted({partition_of(k, 3) for k in range(50)})
    [0, 1, 2]
    """
    return int(key_hashes([key])[0] % np.uint64(parts))


def tree_edges(p, fan_in=DEFAULT_FAN_IN):
    """The fold tree over ``p`` leaves as process edges ``(child, parent, level)``.

    Node ``(level, i)`` lives on process ``i * fan_in**level`` (its leftmost leaf); the
    edges are listed in the order a parent folds them (by level, then child index).
    Cost: O(p).

    >>> tree_edges(5, 2)
    [(1, 0, 1), (3, 2, 1), (2, 0, 2), (4, 0, 3)]
    """
    check_fan_in(fan_in)
    edges = []
    sizes = level_sizes(p, fan_in)
    for level in range(1, len(sizes)):
        span = fan_in ** (level - 1)
        for j in range(sizes[level - 1]):
            if j % fan_in:
                edges.append((j * span, (j // fan_in) * fan_in * span, level))
    return edges


# -- the result ----------------------------------------------------------------------------


@dataclass
class AllReduceResult:
    """What :func:`allreduce` gives back.

    ``value`` is ``aggregator.finalize`` of process 0's combined accumulator (``None`` with
    ``return_value=False``), as ``mergeagg.run``'s value is; ``fingerprint`` its
    fingerprint, which every process computed on its own copy and reported identically; ``seconds``
    one wall time per repetition of the collective (the slowest process's);
    ``bytes_sent``/``bytes_received`` per process, per repetition; ``textbook`` the ideal
    bytes each process sends (and receives) for ``nbytes`` (the accumulator's size: the
    array's bytes for the ring, the pickled size otherwise); ``order`` the combine order;
    ``shares`` (keyed, with ``return_shares=True``) each process's reduce-scatter output:
    the un-finalized mapping of the keys ``k`` with ``partition_of(k, p) == rank``.
    Cost: O(p) to print.

    >>> r = allreduce(Aggregator(len, lambda a, b: a + b), [[1, 2]])
    >>> r.value, r.processes, r.bytes_sent, r.textbook
    (2, 1, [0], [0.0])
    """

    algorithm: str
    processes: int
    value: object
    fingerprint: str
    seconds: list
    bytes_sent: list
    bytes_received: list
    textbook: list
    nbytes: int
    order: str
    pids: list = field(default_factory=list)
    shares: list | None = None

    def __str__(self):
        best = min(self.seconds) if self.seconds else float("nan")
        lines = [f"{self.algorithm} all-reduce over {self.processes} processes, "
                 f"{self.nbytes:,} B per accumulator, {best:.4f} s (best of "
                 f"{len(self.seconds)})", f"order: {self.order}",
                 f"{'process':>8} {'sent B':>14} {'received B':>14} {'textbook B':>14}"]
        for r in range(self.processes):
            lines.append(f"{r:>8} {self.bytes_sent[r]:>14,} {self.bytes_received[r]:>14,} "
                         f"{round(self.textbook[r]):>14,}")
        return "\n".join(lines)


def _textbook(algorithm, p, fan_in, nbytes):
    if algorithm == "ring":
        return [2 * (p - 1) / p * nbytes] * p
    if algorithm == "tree":
        out = [0.0] * p
        for child, parent, _level in tree_edges(p, fan_in):
            out[child] += nbytes  # up in the reduce (its broadcast copy is received)
            out[parent] += nbytes  # down in the broadcast (its reduce copy is received)
        return out
    return [2 * (p - 1) / p * nbytes] * p  # keyed: a 1/p share out, the rest's shares in


# -- pipes between processes ---------------------------------------------------------------


class _PeerLost(Exception):
    def __init__(self, peer, phase, step, how):
        peer = peer[0] if isinstance(peer, tuple) else peer  # (peer, "ack"): its ack pipe
        super().__init__(f"process {peer} {how} ({phase} step {step})")
        self.peer, self.phase, self.step, self.how = peer, phase, step, how


class _Abort(Exception):
    pass


class _Links:
    """One process's pipe ends: ``out[peer]`` write fds, ``inp[peer]`` read fds."""

    def __init__(self, rank, out, inp, ctl_fd, deadline, shm_dir=None):
        self.rank = rank
        self.shm_dir = shm_dir
        self._boxes = {}
        self.out = out
        self.inp = inp
        self.ctl_fd = ctl_fd
        self.deadline = deadline
        self.sent = 0
        self.received = 0
        for fd in list(out.values()) + list(inp.values()):
            os.set_blocking(fd, False)

    def mailbox(self, which, owner, dtype, count):
        """Two slots of ``count`` elements in the shared-memory file of ``owner``'s outbox
        (created by its owner, opened by its reader); cached for repetitions."""
        key = (which, owner, np.dtype(dtype).str, count)
        if key not in self._boxes:
            itemsize = np.dtype(dtype).itemsize
            slot = max(64, -(-count * itemsize // 64) * 64)
            path = os.path.join(self.shm_dir, f"ring-{owner}-{count}-{np.dtype(dtype).str}")
            if which == "out":
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                os.ftruncate(fd, 2 * slot)
            else:
                fd = os.open(path, os.O_RDWR)
            try:
                mm = mmap.mmap(fd, 2 * slot)
            finally:
                os.close(fd)
            self._boxes[key] = [np.frombuffer(mm, dtype=dtype, count=count, offset=i * slot)
                                for i in (0, 1)]
        return self._boxes[key]

    def exchange(self, sends, recvs, phase, step, meta=False):
        """Write every message of ``sends`` (``{peer: [buffers]}``) while reading one framed
        message from each peer of ``recvs`` (``{peer: target memoryview or None}``).

        Returns ``{peer: payload}``. Detects a dead peer (EOF, EPIPE), the master going away
        and the deadline.
        """
        tag = _TAGS[phase] + (100 if meta else 0)
        sel = selectors.DefaultSelector()
        pending_out = {}
        for peer, bufs in sends.items():
            views = []
            for b in bufs:
                mv = memoryview(b).cast("B")
                views.append(memoryview(_HEADER.pack(tag, step, mv.nbytes)))
                if mv.nbytes:
                    views.append(mv)
            pending_out[peer] = views
            sel.register(self.out[peer], selectors.EVENT_WRITE, ("out", peer))
        state = {}
        for peer, target in recvs.items():
            state[peer] = [bytearray(_HEADER.size), 0, target, None]
            sel.register(self.inp[peer], selectors.EVENT_READ, ("in", peer))
        sel.register(self.ctl_fd, selectors.EVENT_READ, ("ctl", None))
        results = {}
        try:
            while pending_out or len(results) < len(recvs):
                left = self.deadline - time.monotonic()
                if left <= 0:
                    waiting = list(pending_out) + [q for q in recvs if q not in results]
                    raise _PeerLost(waiting[0], phase, step, "did not answer before the "
                                    "deadline")
                for key, _mask in sel.select(left):
                    kind, peer = key.data
                    if kind == "ctl":
                        raise _Abort()
                    if kind == "out":
                        self._write(sel, pending_out, peer, phase, step)
                    else:
                        done = self._read(state[peer], peer, tag, step, phase)
                        if done is not None:
                            results[peer] = done
                            sel.unregister(self.inp[peer])
        finally:
            sel.close()
        return results

    def _write(self, sel, pending_out, peer, phase, step):
        views = pending_out[peer]
        try:
            n = os.writev(self.out[peer], views[:64])
        except BlockingIOError:
            return
        except (BrokenPipeError, ConnectionResetError):
            raise _PeerLost(peer, phase, step, "stopped reading") from None
        self.sent += n
        while n and views:
            head = views[0]
            if n >= head.nbytes:
                n -= head.nbytes
                views.pop(0)
            else:
                views[0] = head[n:]
                n = 0
        if not views:
            del pending_out[peer]
            sel.unregister(self.out[peer])

    def _read(self, st, peer, tag, step, phase):
        header, got, target, payload = st
        fd = self.inp[peer]
        try:
            if payload is None:
                n = os.readv(fd, [memoryview(header)[got:]])
                if n == 0:
                    raise _PeerLost(peer, phase, step, "closed its pipe")
                self.received += n
                got += n
                st[1] = got
                if got < _HEADER.size:
                    return None
                rtag, rstep, size = _HEADER.unpack(header)
                if (rtag, rstep) != (tag, step):
                    raise JobFailed(f"process {self.rank} expected {phase} step {step} from "
                                    f"process {peer}, got message tag {rtag} step {rstep}")
                if target is None:
                    target = memoryview(bytearray(size))
                elif target.nbytes != size:
                    raise JobFailed(f"process {self.rank} expected {target.nbytes} bytes from "
                                    f"process {peer} in {phase} step {step}, got {size}")
                st[2], st[3], st[1] = target, [0], 0
                payload = st[3]
                if size == 0:
                    return target
            n = os.readv(fd, [target[payload[0]:]])
            if n == 0:
                raise _PeerLost(peer, phase, step, "closed its pipe")
            self.received += n
            payload[0] += n
            return target if payload[0] == target.nbytes else None
        except BlockingIOError:
            return None


# -- what each process runs ----------------------------------------------------------------


def _maybe_die(die, rank, phase, step):
    """The tests' fault hook: ``(rank, phase, step)`` kills that process there (SIGKILL);
    ``(rank, phase, step, "stop")`` freezes it (SIGSTOP: alive and silent)."""
    if die is not None and tuple(die[:3]) == (rank, phase, step):
        os.kill(os.getpid(), signal.SIGSTOP if die[3:] == ("stop",) else signal.SIGKILL)


def _ring(links, acc, view, p, die, transport):
    rank = links.rank
    arr = view.to_array(acc)
    if not (isinstance(arr, np.ndarray) and arr.ndim == 1 and arr.flags.c_contiguous):
        raise TypeError(f"{view!r}.to_array must give a flat C-contiguous ndarray")
    if not arr.flags.writeable:
        arr = arr.copy()
    if p > 1:
        right, left = (rank + 1) % p, (rank - 1) % p
        sig = f"{view.signature(acc)} | {arr.dtype.str} x {arr.shape[0]}".encode()
        bounds = chunk_bounds(arr.shape[0], p)
        chunks = [arr[bounds[c]:bounds[c + 1]] for c in range(p)]
        most = max(c.shape[0] for c in chunks)
        if transport == "shm":
            outbox = links.mailbox("out", rank, arr.dtype, most)
        got = links.exchange({right: [sig]}, {left: None}, "hello", 0)[left]
        if bytes(got) != sig:
            raise JobFailed(f"ring all-reduce: process {rank} holds {sig.decode()!r} but "
                            f"process {left} holds {bytes(got).decode()!r}; every process "
                            "needs an accumulator of the same shape, dtype and parameters")
        if transport == "shm":
            _ring_shm(links, chunks, view.ufunc, p, die, outbox,
                      links.mailbox("in", left, arr.dtype, most))
        else:
            _ring_pipe(links, chunks, view.ufunc, p, die, most)
    return view.from_array(acc, arr)


def _ring_pipe(links, chunks, ufunc, p, die, most):
    """Chunks travel inside the pipe: written by the sender, read into a scratch buffer."""
    rank = links.rank
    right, left = (rank + 1) % p, (rank - 1) % p
    scratch = np.empty(most, dtype=chunks[0].dtype)
    for s in range(p - 1):
        _maybe_die(die, rank, "reduce-scatter", s)
        out_c, in_c = (rank - s) % p, (rank - s - 1) % p
        buf = scratch[:chunks[in_c].shape[0]]
        links.exchange({right: [chunks[out_c]]}, {left: memoryview(buf).cast("B")},
                       "reduce-scatter", s)
        ufunc(buf, chunks[in_c], out=chunks[in_c])  # received (earlier ranks) first
    for s in range(p - 1):
        _maybe_die(die, rank, "all-gather", s)
        out_c, in_c = (rank + 1 - s) % p, (rank - s) % p
        links.exchange({right: [chunks[out_c]]},
                       {left: memoryview(chunks[in_c]).cast("B")}, "all-gather", s)


def _ring_shm(links, chunks, ufunc, p, die, outbox, inbox):
    """Chunks travel through a two-slot shared-memory mailbox per ring edge.

    The sender copies its chunk into slot ``k % 2`` of its outbox and sends a 16-byte token
    down the pipe; the receiver combines (or copies) straight from that slot and sends an
    ack back, which the sender awaits before it reuses the slot two steps later.
    """
    rank = links.rank
    right, left = (rank + 1) % p, (rank - 1) % p
    ack_out, ack_in = (left, "ack"), (right, "ack")
    steps = 2 * (p - 1)
    for k in range(steps):
        rs = k < p - 1
        s = k if rs else k - (p - 1)
        phase = "reduce-scatter" if rs else "all-gather"
        _maybe_die(die, rank, phase, s)
        out_c = (rank - s) % p if rs else (rank + 1 - s) % p
        in_c = (rank - s - 1) % p if rs else (rank - s) % p
        if k >= 2:
            links.exchange({}, {ack_in: None}, "ack", k - 2)
        slot = outbox[k % 2]
        n_out = chunks[out_c].shape[0]
        np.copyto(slot[:n_out], chunks[out_c])
        links.exchange({right: [b""]}, {left: None}, phase, s)
        got = inbox[k % 2][:chunks[in_c].shape[0]]
        if rs:
            ufunc(got, chunks[in_c], out=chunks[in_c])  # received (earlier ranks) first
        else:
            np.copyto(chunks[in_c], got)
        links.exchange({ack_out: [b""]}, {}, "ack", k)
        links.sent += chunks[out_c].nbytes
        links.received += got.nbytes
    for k in range(max(0, steps - 2), steps):  # the last acks: the slots are free again
        links.exchange({}, {ack_in: None}, "ack", k)


def _dumps_frames(value):
    frames = []
    meta = pickle.dumps(value, protocol=5, buffer_callback=frames.append)
    frames = [f.raw() for f in frames]
    head = struct.pack(f"<{len(frames) + 1}Q", len(meta), *(f.nbytes for f in frames))
    return head, [meta, *frames]


def _send_value(links, peer, frames, phase, step):
    head, bufs = frames
    links.exchange({peer: [head]}, {}, phase, step, meta=True)
    links.exchange({peer: bufs}, {}, phase, step)


def _recv_value(links, peer, phase, step):
    head = bytes(links.exchange({}, {peer: None}, phase, step, meta=True)[peer])
    sizes = struct.unpack(f"<{len(head) // 8}Q", head)
    parts = []
    for size in sizes:
        parts.append(links.exchange({}, {peer: memoryview(bytearray(size))}, phase, step)[peer])
    return pickle.loads(parts[0], buffers=parts[1:])


def _tree(links, acc, combine, p, fan_in, die):
    rank = links.rank
    edges = tree_edges(p, fan_in)
    parent_edge = next((e for e in edges if e[0] == rank), None)
    kids = [e for e in edges if e[1] == rank]
    for child, _parent, level in kids:  # already in fold order
        _maybe_die(die, rank, "reduce", level)
        acc = combine(acc, _recv_value(links, child, "reduce", level))
    if parent_edge is not None:
        _maybe_die(die, rank, "reduce", parent_edge[2])
        _send_value(links, parent_edge[1], _dumps_frames(acc), "reduce", parent_edge[2])
        acc = _recv_value(links, parent_edge[1], "broadcast", parent_edge[2])
    if kids:
        frames = _dumps_frames(acc)
        for child, _parent, level in reversed(kids):  # the top of the tree first
            _maybe_die(die, rank, "broadcast", level)
            _send_value(links, child, frames, "broadcast", level)
    return acc


def _mapping_items(acc):
    if isinstance(acc, Mapping):
        return acc.items()
    data = getattr(acc, "data", None)  # a KeyedTable wraps its dict as .data
    if isinstance(data, Mapping):
        return data.items()
    raise TypeError(f"the keyed all-reduce needs a mapping accumulator (a dict, a Counter, a "
                    f"KeyedTable), got {type(acc).__name__}")


def _empty_like(acc):
    new = copy.copy(acc)
    if isinstance(acc, Mapping):
        new.clear()
    else:
        new.data = {}
    return new


def _split_mapping(acc, p):
    parts = [_empty_like(acc) for _ in range(p)]
    targets = [part if isinstance(part, Mapping) else part.data for part in parts]
    items = list(_mapping_items(acc))
    where = (key_hashes([k for k, _v in items]) % np.uint64(p)).tolist()
    for (k, v), j in zip(items, where):
        targets[j][k] = v
    return parts


def _keyed(links, acc, combine, p, die):
    rank = links.rank
    parts = _split_mapping(acc, p)
    peers = [q for q in range(p) if q != rank]
    _maybe_die(die, rank, "reduce-scatter", 0)
    sends = {q: [pickle.dumps(parts[q], protocol=5)] for q in peers}
    got = links.exchange(sends, dict.fromkeys(peers), "reduce-scatter", 0)
    pieces = [parts[q] if q == rank else pickle.loads(got[q]) for q in range(p)]
    mine = pieces[0]
    for piece in pieces[1:]:
        mine = combine(mine, piece)
    _maybe_die(die, rank, "all-gather", 0)
    blob = pickle.dumps(mine, protocol=5)
    got = links.exchange({q: [blob] for q in peers}, dict.fromkeys(peers), "all-gather", 0)
    owned = [mine if q == rank else pickle.loads(got[q]) for q in range(p)]
    whole = owned[0]
    for piece in owned[1:]:
        whole = combine(whole, piece)
    return whole, blob  # the combined mapping, and this process's reduce-scatter share


def _member(rank, p, algorithm, blob, ctl, outs, inps, opts):
    """The body of one all-reduce process (module level, so every start method finds it)."""
    try:
        aggregator, view, shard = cloudpickle.loads(blob)
        acc0 = aggregator.partial(shard)
        ctl.send(("ready", rank))
        if ctl.recv()[0] != "go":
            return
        deadline = time.monotonic() + opts["timeout"]
        links = _Links(rank, {q: c.fileno() for q, c in outs.items()},
                       {q: c.fileno() for q, c in inps.items()}, ctl.fileno(), deadline,
                       opts["shm_dir"])
        seconds, sent, received, share = [], [], [], None
        repeat = opts["repeat"]
        for i in range(repeat):
            acc = acc0 if i == repeat - 1 else copy.deepcopy(acc0)
            links.sent = links.received = 0
            t0 = time.perf_counter()
            if algorithm == "ring":
                value = _ring(links, acc, view, p, opts["die"], opts["transport"])
            elif algorithm == "tree":
                value = _tree(links, acc, aggregator.combine, p, opts["fan_in"], opts["die"])
            else:
                value, share = _keyed(links, acc, aggregator.combine, p, opts["die"])
            seconds.append(time.perf_counter() - t0)
            sent.append(links.sent)
            received.append(links.received)
        if algorithm == "ring":
            nbytes = view.to_array(value).nbytes
        else:
            nbytes = len(pickle.dumps(acc0 if algorithm == "keyed" else value, protocol=5))
        payload = None
        if rank == 0 and opts["return_value"]:
            payload = ship_dumps(aggregator.finalize(value))
        # Every process finalizes and fingerprints its copy: the proof that all hold it.
        fp = fingerprint(aggregator.finalize(value))
        if not opts["return_shares"]:
            share = None
        ctl.send(("done", rank, fp, seconds, sent, received, nbytes, payload, share))
    except _Abort:
        pass
    except _PeerLost as exc:
        _report(ctl, ("peer", rank, exc.peer, exc.phase, exc.step, exc.how))
        os._exit(3)
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the master
        _report(ctl, ("error", rank, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        os._exit(4)


def _report(ctl, msg):
    try:
        ctl.send(msg)
    except (OSError, ValueError):
        pass


# -- the master ----------------------------------------------------------------------------


def _pipe(ctx):
    r, w = ctx.Pipe(duplex=False)
    try:
        if fcntl is not None:
            fcntl.fcntl(w.fileno(), _F_SETPIPE_SZ, _PIPE_SIZE)
    except OSError:
        pass  # the default 64 KiB works too, with more context switches
    return r, w


def _plan_links(algorithm, p, fan_in, transport):
    """``(sender, receiver, key)`` of every pipe: the receiver reads it as ``key``-from-
    sender, the sender writes it as ``key``-to-receiver (``key`` None: the data pipe)."""
    if p == 1:
        return []
    if algorithm == "ring":
        links = [(r, (r + 1) % p, None) for r in range(p)]
        if transport == "shm":
            links += [((r + 1) % p, r, "ack") for r in range(p)]
        return links
    if algorithm == "tree":
        pairs = []
        for child, parent, _level in tree_edges(p, fan_in):
            pairs += [(child, parent, None), (parent, child, None)]
        return pairs
    return [(a, b, None) for a in range(p) for b in range(p) if a != b]


def allreduce(aggregator, shards, *, algorithm="tree", view=None, fan_in=DEFAULT_FAN_IN,
              transport="shm", timeout=120.0, repeat=1, return_value=True,
              return_shares=False, start_method=None, _die=None):
    """Start one process per shard; each computes ``aggregator.partial(shard)``; all-reduce.

    Returns an :class:`AllReduceResult` once every process holds the combined value (all
    their fingerprints agree). ``algorithm`` is ``"tree"`` (any accumulator; bitwise the
    fold runtime's result for the same ``fan_in``), ``"ring"`` (array accumulators; give
    ``view``, default :data:`SUM`) or ``"keyed"`` (mapping accumulators). ``repeat`` runs
    the collective that many times on copies of the partials (for timing); ``timeout``
    bounds the whole collective. Shards and the aggregator are cloudpickled to each process.
    ``transport`` (ring only): ``"shm"`` mailboxes or ``"pipe"`` (see the module's notes).
    ``return_shares`` (keyed only) also returns each process's reduce-scatter share.

    Cost: starting ``p`` processes (milliseconds each under forkserver), one ``partial``
    each, then per process: ring ``2 (p - 1) / p * N`` bytes each way in ``2 (p - 1)``
    steps; tree ``N`` up and down per edge (the root handles its children's ``N`` each);
    keyed about ``2 (p - 1) / p`` of the mapping's pickled size.

    Raises :class:`~mergeagg.errors.WorkerLost` naming the rank and pid of a process that
    died, :class:`~mergeagg.errors.JobFailed` when user code raised in a process (with its
    traceback) or the collective timed out; no process of the collective outlives the call.

    >>> import mergeagg as ma
    >>> from collections import Counter
    >>> wc = ma.Aggregator(lambda s: Counter(s.split()), lambda a, b: a + b)
    >>> r = allreduce(wc, ["a b", "b c", "c a b"], algorithm="keyed")
    >>> r.value == Counter("aabbbcc"), r.processes
    (True, 3)
    """
    if not isinstance(aggregator, Aggregator):
        raise TypeError(f"allreduce needs an Aggregator, got {type(aggregator).__name__}")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; choose one of {ALGORITHMS}")
    check_fan_in(fan_in)
    shards = list(shards)
    p = len(shards)
    if p < 1:
        raise ValueError("allreduce needs at least one shard (one process per shard)")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"repeat must be an int >= 1, got {repeat!r}")
    if view is None:
        view = SUM
    elif not isinstance(view, ArrayView):
        raise TypeError(f"view must be an ArrayView, got {type(view).__name__}")
    if algorithm != "ring":
        view = None
    method = start_method or ("forkserver" if "forkserver" in mp.get_all_start_methods()
                              else "spawn")
    ctx = mp.get_context(method)
    if method == "forkserver":  # processes fork from a server that has imported us already
        ctx.set_forkserver_preload(["mergeagg.runtime.worker", "mergeagg.runtime.allreduce"])
    if return_shares and algorithm != "keyed":
        raise ValueError("return_shares needs algorithm='keyed' (the shares of a key "
                         "reduce-scatter)")
    if transport not in ("shm", "pipe"):
        raise ValueError(f"transport must be 'shm' or 'pipe', got {transport!r}")
    shm_dir = None
    if algorithm == "ring" and transport == "shm" and p > 1:
        shm_dir = tempfile.mkdtemp(prefix="mergeagg-allreduce-",
                                   dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    opts = {"timeout": float(timeout), "repeat": repeat, "die": _die, "fan_in": fan_in,
            "return_value": return_value, "transport": transport, "shm_dir": shm_dir,
            "return_shares": bool(return_shares)}
    procs, ctls = [], []
    try:
        ends = {}
        for a, b, kind in _plan_links(algorithm, p, fan_in, transport):
            ends[a, b, kind] = _pipe(ctx)  # (read end for b, write end for a)
        for rank in range(p):
            parent, child = ctx.Pipe(duplex=True)
            outs = {b if k is None else (b, k): e[1] for (a, b, k), e in ends.items()
                    if a == rank}
            inps = {a if k is None else (a, k): e[0] for (a, b, k), e in ends.items()
                    if b == rank}
            blob = ship_dumps((aggregator, view, shards[rank]))
            proc = ctx.Process(target=_member, name=f"mergeagg-allreduce-{rank}",
                               args=(rank, p, algorithm, blob, child, outs, inps, opts),
                               daemon=True)
            proc.start()
            child.close()
            procs.append(proc)
            ctls.append(parent)
        for r, w in ends.values():  # the children hold their own copies now
            r.close()
            w.close()
        return _drive(algorithm, p, fan_in, procs, ctls, opts)
    finally:
        _reap(procs, ctls)
        if shm_dir is not None:
            shutil.rmtree(shm_dir, ignore_errors=True)


def _drive(algorithm, p, fan_in, procs, ctls, opts):
    sel = selectors.DefaultSelector()
    for rank, (proc, conn) in enumerate(zip(procs, ctls)):
        sel.register(conn, selectors.EVENT_READ, ("ctl", rank))
        sel.register(proc.sentinel, selectors.EVENT_READ, ("dead", rank))
    done, ready, reports, dead = {}, set(), [], set()
    went = False
    deadline = time.monotonic() + opts["timeout"] + 60.0  # the partials run before the clock
    try:
        while len(done) < p:
            left = deadline - time.monotonic()
            if left <= 0:
                raise JobFailed(f"{algorithm} all-reduce over {p} processes timed out; "
                                f"finished: {sorted(done)}")
            for key, _mask in sel.select(left):
                kind, rank = key.data
                if kind == "dead":
                    sel.unregister(key.fileobj)
                    procs[rank].join(1)
                    try:
                        _drain(ctls[rank], rank, done, ready, reports)
                    except (EOFError, OSError):
                        pass
                    if rank not in done and procs[rank].exitcode not in (3, 4):
                        dead.add(rank)  # it died without a word: the culprit
                    continue
                try:
                    _drain(ctls[rank], rank, done, ready, reports)
                except (EOFError, OSError):
                    sel.unregister(key.fileobj)
            if dead or reports:
                # Before "go" nobody else is talking to the failed process: no grace.
                _settle(procs, ctls, done, ready, reports, dead, grace=2.0 if went else 0.0)
                _raise_failure(algorithm, p, procs, dead, reports, done, opts["timeout"])
            if not went and len(ready) == p:
                for conn in ctls:
                    conn.send(("go",))
                went = True
    finally:
        sel.close()
    fps = {r: done[r][0] for r in range(p)}
    if len(set(fps.values())) != 1:
        raise JobFailed(f"{algorithm} all-reduce: the processes ended with different values "
                        f"(fingerprints by process: {fps})")
    _fp, seconds, sent, received, nbytes, payload, _share = done[0]
    per_rep = [max(done[r][1][i] for r in range(p)) for i in range(len(seconds))]
    value = pickle.loads(payload) if payload is not None else None
    order = {"tree": f"the fold tree's (fan_in={fan_in}): fold_fixed(partials, combine, "
                     f"{fan_in})",
             "ring": "chunk c folded around the ring from process c: "
                     "((x_c op x_c+1) op ...) op x_c-1",
             "keyed": "per key, in process order 0..p-1"}[algorithm]
    return AllReduceResult(
        algorithm=algorithm, processes=p, value=value, fingerprint=_fp, seconds=per_rep,
        bytes_sent=[done[r][2][-1] for r in range(p)],
        bytes_received=[done[r][3][-1] for r in range(p)],
        textbook=_textbook(algorithm, p, fan_in, nbytes), nbytes=nbytes, order=order,
        pids=[proc.pid for proc in procs],
        shares=[pickle.loads(done[r][-1]) for r in range(p)] if opts["return_shares"]
        else None)


def _drain(conn, rank, done, ready, reports):
    try:
        while conn.poll():
            msg = conn.recv()
            if msg[0] == "ready":
                ready.add(rank)
            elif msg[0] == "done":
                done[rank] = msg[2:]
            else:
                reports.append(msg)
    except (EOFError, OSError):
        if rank not in done:
            raise


def _settle(procs, ctls, done, ready, reports, dead, grace=2.0):
    """After a failure, give the others a moment to report what they saw, then stop."""
    end = time.monotonic() + grace
    for rank, proc in enumerate(procs):
        proc.join(max(0.0, end - time.monotonic()))
        try:
            _drain(ctls[rank], rank, done, ready, reports)
        except (EOFError, OSError):
            pass
        if not proc.is_alive() and proc.exitcode not in (0, 3, 4) and rank not in done:
            dead.add(rank)


def _raise_failure(algorithm, p, procs, dead, reports, done, timeout):
    errors = [m for m in reports if m[0] == "error"]
    seen = [m for m in reports if m[0] == "peer"]
    spoke = {m[1] for m in reports} | set(done)
    silent = [r for r in range(p) if r not in spoke and procs[r].is_alive()]
    _reap(procs, [])
    if not dead and not errors and silent and seen:
        rank = silent[0]
        saw = "; ".join(f"process {m[1]} saw process {m[2]} {m[5]} in {m[3]} step {m[4]}"
                        for m in seen)
        err = WorkerLost(f"{algorithm} all-reduce over {p} processes failed: process {rank} "
                         f"(pid {procs[rank].pid}) went silent (alive, but no progress within "
                         f"timeout={timeout} s); {saw}. All {p} processes of the collective "
                         "have been stopped.")
        err.rank, err.pids = rank, [proc.pid for proc in procs]
        raise err
    if dead:
        rank = min(dead)
        code = procs[rank].exitcode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else \
            f"exited with code {code}"
        saw = "; ".join(f"process {m[1]} saw process {m[2]} {m[5]} in {m[3]} step {m[4]}"
                        for m in seen)
        err = WorkerLost(f"{algorithm} all-reduce over {p} processes failed: process {rank} "
                         f"(pid {procs[rank].pid}) {how}" + (f"; {saw}" if saw else "") +
                         f". All {p} processes of the collective have been stopped.")
        err.rank, err.pids = rank, [proc.pid for proc in procs]
        raise err
    if errors:
        _tag, rank, text, tb = errors[0]
        err = JobFailed(f"{algorithm} all-reduce over {p} processes failed: process {rank} "
                        f"(pid {procs[rank].pid}) raised {text}\n{tb}")
        err.rank, err.pids = rank, [proc.pid for proc in procs]
        raise err
    m = seen[0]
    err = WorkerLost(f"{algorithm} all-reduce over {p} processes failed: process {m[1]} saw "
                     f"process {m[2]} {m[5]} in {m[3]} step {m[4]}. All {p} processes of the "
                     "collective have been stopped.")
    err.rank, err.pids = m[2], [proc.pid for proc in procs]
    raise err


def _reap(procs, ctls):
    for proc in procs:
        if proc.is_alive():
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except OSError as exc:
                if exc.errno != errno.ESRCH:
                    raise
    for proc in procs:
        proc.join(5)
    for conn in ctls:
        conn.close()
