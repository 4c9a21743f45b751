"""The master's end of a worker's socket: framed messages that never block the master.

The deadlock this prevents: a master blocked writing a batch of tasks to a worker whose
threads are all blocked writing results to the master. Neither side reads, and no timeout
can fire because the master itself is stuck. So the master never blocks in a write: a
:class:`Channel` queues outgoing frames and writes what the socket takes now; the rest goes
out when the selector says the socket is writable again, while the master goes on reading.
(The worker side may block in its writes: the master always drains them.)

Frames are in the wire format of :class:`multiprocessing.connection.Connection` (a 4-byte
big-endian length, or ``-1`` and an 8-byte length past 2 GiB), so the worker keeps using
its ``Connection``'s ``send_bytes``/``recv_bytes``.

>>> import multiprocessing as mp
>>> master, worker = mp.Pipe()
>>> ch = Channel(master)
>>> ch.queue(b"hello"); ch.flush()
True
>>> worker.recv_bytes()
b'hello'
>>> worker.send_bytes(b"x" * 5); worker.send_bytes(b"y")
>>> ch.read()
[b'xxxxx', b'y']
>>> ch.close(); worker.close()
"""

from __future__ import annotations

import os
import struct
from collections import deque

__all__ = ["Channel"]

_SMALL = 16384  # frames up to this size are written with their header in one piece
_READ_CHUNK = 1 << 20


class Channel:
    """Non-blocking framed I/O on the master's end of one worker's socket pair.

    Cost: ``queue`` is O(1) (plus one copy of frames up to 16 KiB, to join the header);
    ``flush`` and ``read`` make one system call per 1 MiB moved, and never wait.
    """

    __slots__ = ("conn", "fd", "_out", "_in", "_pos", "_eof", "pending_bytes")

    def __init__(self, conn):
        self.conn = conn  # owns the descriptor
        self.fd = conn.fileno()
        os.set_blocking(self.fd, False)
        self._out = deque()
        self._in = bytearray()
        self._pos = 0
        self._eof = False
        self.pending_bytes = 0

    def queue(self, payload):
        """Queue one frame; :meth:`flush` writes it."""
        n = len(payload)
        if n > 0x7FFFFFFF:
            self._out.append(struct.pack("!iQ", -1, n))
            self._out.append(memoryview(payload))
        elif n <= _SMALL:
            self._out.append(struct.pack("!i", n) + payload)
        else:
            self._out.append(struct.pack("!i", n))
            self._out.append(memoryview(payload))
        self.pending_bytes += n

    def flush(self):
        """Write what the socket takes without blocking; ``True`` when nothing is left.
        Raises ``OSError`` (``BrokenPipeError``) when the worker's end is closed."""
        out = self._out
        while out:
            head = out[0]
            try:
                k = os.write(self.fd, head)
            except BlockingIOError:
                return False
            if k < len(head):
                out[0] = memoryview(head)[k:]
                return False
            out.popleft()
        self.pending_bytes = 0
        return True

    @property
    def idle(self):
        """Whether every queued frame has been written."""
        return not self._out

    def read(self, budget=16 * _READ_CHUNK):
        """The complete frames that have arrived (reading at most about ``budget`` bytes,
        so one chatty worker cannot starve the others). Raises ``EOFError`` when the
        worker's end is closed."""
        buf = self._in
        got = 0
        while got < budget and not self._eof:
            try:
                chunk = os.read(self.fd, _READ_CHUNK)
            except BlockingIOError:
                break
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self._eof = True
                break
            buf += chunk
            got += len(chunk)
            if len(chunk) < _READ_CHUNK:
                break
        frames = []
        pos = self._pos
        end = len(buf)
        while end - pos >= 4:
            (n,) = struct.unpack_from("!i", buf, pos)
            head = 4
            if n == -1:
                if end - pos < 12:
                    break
                (n,) = struct.unpack_from("!Q", buf, pos + 4)
                head = 12
            if end - pos - head < n:
                break
            frames.append(bytes(buf[pos + head:pos + head + n]))
            pos += head + n
        if pos == end:
            buf.clear()
            pos = 0
        elif pos > _READ_CHUNK:
            del buf[:pos]
            pos = 0
        self._pos = pos
        if self._eof and not frames:
            raise EOFError("worker connection closed")
        return frames

    def close(self):
        """Close the master's end (the worker sees EOF)."""
        self._out.clear()
        self.conn.close()
