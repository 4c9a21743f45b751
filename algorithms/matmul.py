"""Blocked matrix multiply ``C = A @ B`` as a keyed aggregation over output blocks.

``C`` is cut into ``block`` × ``block`` tiles; tile ``(I, J)`` is the sum over ``K`` of
``A[I, K] @ B[K, J]``. :func:`matmul_source` makes the tasks: each names one tile and a run of
its ``K`` blocks, and carries either the paths of ``A`` and ``B`` (``.npy`` files, which
each task memory-maps and reads block by block itself: the master never ships a matrix) or,
for in-memory arrays, just the slices it needs. :func:`matmul` is the Aggregator: the
accumulator is a dict ``(I, J) -> BlockSum``, and finalize assembles ``C`` (or, with
``assemble=False``, returns the dict of finished tiles).

**Tiles written in place.** With ``matmul_source(..., out="C.npy")`` the source creates
``C`` as a ``.npy`` file first, and each task writes its finished tile straight into its
place in that file (a memory map shared through the page cache) and returns only a
:class:`WrittenTile`: the tile's place and fingerprint. No tile travels to the driver and
nothing is assembled: finalize returns ``C`` memory-mapped from the file. Every attempt of a
task computes the same bits (the k-sum order below), so a retried, raced or killed attempt
can only write the bytes the winner writes. Each task then covers all ``K`` blocks of its
tile (``k_split`` must be left at its default).

**The k-sum order is fixed.** A :class:`BlockSum` adds the products of a tile strictly in
ascending ``K``: it folds the contiguous prefix ``K = 0, 1, 2, ...`` as soon as those
products are present, and holds any later one until its predecessors arrive. So each tile is
``((P0 + P1) + P2) + ...`` whichever tasks computed which products, whichever merged first,
and however the tasks were grouped into splits: the result is bitwise identical across
worker counts, failures, backups, fan-ins and ``k_split`` (for a given ``block``), and equal
to :func:`numpy.matmul` within floating-point tolerance (numpy sums in its own order).

>>> import numpy as np
>>> a, b = np.arange(12.0).reshape(3, 4), np.arange(8.0).reshape(4, 2)
>>> src = matmul_source(a, b, block=2)
>>> c = matmul().reduce(src.read(s) for s in src.splits())
>>> bool((c == a @ b).all()), len(src)
(True, 2)
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import multiprocessing
import os

import numpy as np

from mergeagg import inputs as _inputs
from mergeagg.aggregator import Aggregator
from mergeagg.algorithms._keyed import merge_into
from mergeagg.algorithms.registry import Entry, Flag
from mergeagg.fingerprint import fingerprint
from mergeagg.keyed import KeyedJob

__all__ = [
    "matmul",
    "matmul_source",
    "BlockSum",
    "WrittenTile",
    "BlockTask",
    "block_products",
    "assemble",
    "assemble_tiles",
    "DEFAULT_BLOCK",
    "run_matmul",
    "blas_threads",
    "default_threads",
]

DEFAULT_BLOCK = 1024


class BlockSum:
    """The products ``A[I, K] @ B[K, J]`` of one output tile, summed in ascending ``K``.

    ``n_k`` is how many ``K`` blocks the tile has; ``rows`` and ``cols`` its place in ``C``,
    ``shape`` the shape of ``C`` (so that finalize can tell a missing tile).
    Cost: one tile addition per product; memory: one tile plus any product whose
    predecessors have not arrived yet.

    >>> s = BlockSum(3, (0, 1), (0, 1), (1, 1))
    >>> s.add(2, np.array([[4.0]])); s.add(0, np.array([[1.0]]))
    >>> s.folded, sorted(s.pending)
    (1, [2])
    >>> s.add(1, np.array([[2.0]])); s.result()
    array([[7.]])
    """

    __slots__ = ("n_k", "rows", "cols", "shape", "folded", "total", "pending")

    def __init__(self, n_k, rows, cols, shape):
        self.n_k, self.rows, self.cols, self.shape = n_k, tuple(rows), tuple(cols), tuple(shape)
        self.folded = 0  # products 0 .. folded-1 are summed into total
        self.total = None
        self.pending = {}

    def add(self, k, product):
        """Add the product of ``K`` block ``k`` (owned by this sum from now on).

        Cost: one tile addition per product that becomes foldable.

        >>> s = BlockSum(2, (0, 1), (0, 1), (1, 1)); s.add(1, np.ones((1, 1))); s.folded
        0
        """
        if not 0 <= k < self.n_k:
            raise ValueError(f"K block {k} is outside 0..{self.n_k - 1} for the tile at rows "
                             f"{self.rows}, cols {self.cols}")
        if k < self.folded or k in self.pending:
            raise ValueError(f"K block {k} of the tile at rows {self.rows}, cols {self.cols} "
                             "arrived twice: two tasks computed the same product")
        self.pending[k] = product
        self._advance()

    def _advance(self):
        while self.folded in self.pending:
            product = self.pending.pop(self.folded)
            if self.total is None:
                self.total = product
            else:
                self.total += product
            self.folded += 1

    def merge(self, other):
        """Merge ``other`` (same tile, other ``K`` blocks) into this sum; returns this sum.

        ``other`` is not modified; its unfinished arrays are copied as they are taken.
        Cost: one tile copy or addition per ``K`` block of ``other``.

        >>> a, b = BlockSum(2, (0, 1), (0, 1), (1, 1)), BlockSum(2, (0, 1), (0, 1), (1, 1))
        >>> a.add(1, np.full((1, 1), 2.0)); b.add(0, np.ones((1, 1)))
        >>> a.merge(b).result()
        array([[3.]])
        """
        if not isinstance(other, BlockSum):
            raise TypeError(f"BlockSum.merge takes a BlockSum, got {type(other).__name__}")
        if (other.n_k, other.rows, other.cols, other.shape) != (
                self.n_k, self.rows, self.cols, self.shape):
            raise ValueError(f"cannot merge the tile at rows {other.rows}, cols {other.cols} "
                             f"({other.n_k} K blocks) into the tile at rows {self.rows}, cols "
                             f"{self.cols} ({self.n_k} K blocks)")
        if other.folded:
            if self.folded or any(k < other.folded for k in self.pending):
                raise ValueError(f"K blocks of the tile at rows {self.rows}, cols {self.cols} "
                                 "arrived twice: two tasks computed the same product")
            # A finished tile is never modified again, so it may be shared.
            done = other.folded == other.n_k
            self.total = other.total if done else other.total.copy()
            self.folded = other.folded
        for k, product in other.pending.items():
            if k in self.pending:
                raise ValueError(f"K block {k} of the tile at rows {self.rows}, cols "
                                 f"{self.cols} arrived twice")
            self.pending[k] = product.copy()
        self._advance()
        return self

    def copy(self):
        """An independent copy. A finished tile's array is shared, not copied: nothing ever
        modifies a finished tile (merging more ``K`` blocks into it is an error).

        Cost: one tile copy per unfinished array.

        >>> s = BlockSum(1, (0, 1), (0, 1), (1, 1)); s.add(0, np.ones((1, 1)))
        >>> s.copy().result() is s.result()
        True
        """
        out = BlockSum(self.n_k, self.rows, self.cols, self.shape)
        out.folded = self.folded
        if self.total is None or self.folded == self.n_k:
            out.total = self.total
        else:
            out.total = self.total.copy()
        out.pending = {k: p.copy() for k, p in self.pending.items()}
        return out

    def result(self):
        """The finished tile; ``ValueError`` if a ``K`` block is missing. Cost: O(1).

        >>> BlockSum(2, (0, 1), (0, 1), (1, 1)).result()
        Traceback (most recent call last):
        ...
        ValueError: the tile at rows (0, 1), cols (0, 1) is missing K block 0 of 2
        """
        if self.folded != self.n_k:
            raise ValueError(f"the tile at rows {self.rows}, cols {self.cols} is missing K "
                             f"block {self.folded} of {self.n_k}")
        return self.total

    def _check(self):
        """Assert every invariant (the tests call it after each mutation)."""
        assert 0 <= self.folded <= self.n_k, "folded count out of range"
        assert (self.total is None) == (self.folded == 0), "total and folded disagree"
        assert all(self.folded < k < self.n_k for k in self.pending), "a stray pending K"
        tile = (self.rows[1] - self.rows[0], self.cols[1] - self.cols[0])
        for arr in ([self.total] if self.total is not None else []) + list(self.pending.values()):
            assert arr.shape == tile, f"an array of shape {arr.shape} in a {tile} tile"

    def _state(self):
        return (self.n_k, self.rows, self.cols, self.shape, self.folded, self.total,
                self.pending)

    def __getstate__(self):
        return self._state()

    def __setstate__(self, state):
        (self.n_k, self.rows, self.cols, self.shape, self.folded, self.total,
         self.pending) = state

    def __mergeagg_fingerprint__(self):
        return self._state()


@dataclasses.dataclass(frozen=True)
class WrittenTile:
    """A finished tile that its task wrote into ``C``'s ``.npy`` file at ``path``: its place
    (``rows``, ``cols`` of ``C``, whose shape is ``shape``) and the fingerprint of its bytes.

    Merging two of one tile is an error (one task computes a whole tile). Cost: O(1); a
    :meth:`result` maps the file.

    >>> t = WrittenTile("C.npy", (0, 2), (0, 2), (2, 2), "ab12")
    >>> t.merge(t)
    Traceback (most recent call last):
    ...
    ValueError: the tile at rows (0, 2), cols (0, 2) of C.npy was written twice: ...
    """

    path: str
    rows: tuple
    cols: tuple
    shape: tuple
    fingerprint: str

    def merge(self, other):
        """Never valid: see the class. Raises ``ValueError``."""
        raise ValueError(f"the tile at rows {self.rows}, cols {self.cols} of {self.path} was "
                         "written twice: two tasks computed the same tile")

    def copy(self):
        """This tile (it is immutable). Cost: O(1)."""
        return self

    def result(self):
        """The tile, a read-only view of the memory-mapped file. Cost: one mapping."""
        c = _mapped_out(self.path, "r")
        return c[self.rows[0]:self.rows[1], self.cols[0]:self.cols[1]]

    def __mergeagg_fingerprint__(self):
        return ("WrittenTile", self.path, self.rows, self.cols, self.shape, self.fingerprint)


def _mapped_out(path, mode):
    """``C``'s ``.npy`` file memory-mapped (``"r+"`` to write tiles, ``"r"`` to read)."""
    try:
        return np.load(path, mmap_mode=mode)
    except (OSError, ValueError) as exc:
        raise _inputs.InputError(f"cannot map the output C at {path!r}: {exc}") from exc


@dataclasses.dataclass(frozen=True, eq=False)
class BlockTask:
    """One task: tile ``(i, j)`` of ``C`` and its ``K`` blocks ``k0 .. k1 - 1``.

    ``a`` and ``b`` are ``.npy`` paths (memory-mapped by the reader) or, for in-memory
    input, the slices ``A[rows, K range]`` and ``B[K range, cols]``. Cost: O(1) to
    build and to pickle when it carries paths.

    >>> t = matmul_source(np.ones((3, 3)), np.ones((3, 3)), block=2).splits()[0].payload[0]
    >>> (t.i, t.j, t.k0, t.k1, t.n_k)
    (0, 0, 0, 2, 2)
    """

    i: int
    j: int
    k0: int
    k1: int
    rows: tuple
    cols: tuple
    shape: tuple
    block: int
    inner: int
    a: object
    b: object
    out: object = None  # the path of C's .npy file when tiles are written in place

    @property
    def n_k(self):
        return -(-self.inner // self.block)

    def operands(self, k):
        """``(A[I, K], B[K, J])`` for ``K`` block ``k``, C-contiguous (see
        :func:`_blas_view`)."""
        lo, hi = k * self.block, min((k + 1) * self.block, self.inner)
        r0, r1 = self.rows
        c0, c1 = self.cols
        if isinstance(self.a, str):
            a = _mapped(self.a)[r0:r1, lo:hi]
        else:
            base = self.k0 * self.block
            a = self.a[:, lo - base:hi - base]
        if isinstance(self.b, str):
            b = _mapped(self.b)[lo:hi, c0:c1]
        else:
            base = self.k0 * self.block
            b = self.b[lo - base:hi - base, :]
        return _blas_view(a), _blas_view(b)


def _blas_view(x):
    """``x`` as a C-contiguous array (a copy unless it is one already). Handing BLAS a
    strided view of the memory map instead saved a copy, but the product's last bits then
    depended on the block's place in the matrix (hypothesis found a layout whose tile
    differed from the contiguous product): bitwise identity for every layout comes first."""
    return np.ascontiguousarray(x)


_MAPS = {}


def _mapped(path):
    stat = os.stat(path)
    key = (path, stat.st_size, stat.st_mtime_ns)
    arr = _MAPS.get(key)
    if arr is None:
        if len(_MAPS) > 8:
            _MAPS.clear()
        arr = _MAPS[key] = np.load(path, mmap_mode="r")
    return arr


def _openblas_controls():
    """``(get, set)`` of the OpenBLAS loaded in this process (numpy's wheels bundle one),
    found by ctypes under its known symbol names; ``None`` when there is none (another BLAS,
    or a platform without /proc/self/maps): threads are then left as they are."""
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower()
                            and line.split()[-1].startswith("/")})
    except OSError:
        return None
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for get_name, set_name in _OPENBLAS_SYMBOLS:
            get, put = getattr(lib, get_name, None), getattr(lib, set_name, None)
            if get is not None and put is not None:
                get.restype = ctypes.c_int
                put.argtypes = [ctypes.c_int]
                return get, put
    return None


_OPENBLAS_SYMBOLS = (
    ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
    ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
    ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
    ("openblas_get_num_threads", "openblas_set_num_threads"),
)
_CONTROLS = []


def blas_threads():
    """The number of threads the BLAS of this process uses (``None`` if it cannot tell).

    Cost: O(1) after the first call (which looks the library up once).

    >>> n = blas_threads(); n is None or n >= 1
    True
    """
    controls = _controls()
    return None if controls is None else int(controls[0]())


def _controls():
    if not _CONTROLS:
        _CONTROLS.append(_openblas_controls())
    return _CONTROLS[0]


@contextlib.contextmanager
def _blas_limited(threads):
    """Run the block with the BLAS limited to ``threads`` threads (restored after)."""
    controls = None if threads is None else _controls()
    if controls is None:
        yield
        return
    get, put = controls
    before = int(get())
    put(int(threads))
    try:
        yield
    finally:
        put(before)


def default_threads(workers=None):
    """BLAS threads per task so that ``workers`` × threads ≤ cores: ``cores // workers``
    (at least 1); ``None`` (BLAS's own setting) for ``workers=0`` (serial, in process).
    With ``workers=None`` it is 1 in a worker process (any number of workers up to the
    cores then never oversubscribes) and ``None`` in the main process. Cost: O(1).

    >>> default_threads(0) is None, default_threads(os.cpu_count() or 1)
    (True, 1)
    """
    if workers == 0:
        return None
    if workers is None:
        return 1 if multiprocessing.parent_process() is not None else None
    return max(1, (os.cpu_count() or 1) // workers)


class _Products:
    """The map of :func:`matmul`: :func:`block_products` with the BLAS limited to
    ``threads`` threads in the worker (picklable)."""

    __slots__ = ("threads",)

    def __init__(self, threads=None):
        self.threads = threads

    def __getstate__(self):
        return (self.threads,)  # a tuple: pickle skips __setstate__ for a false state

    def __setstate__(self, state):
        (self.threads,) = state

    def __call__(self, tasks):
        threads = self.threads if self.threads is not None else default_threads()
        with _blas_limited(threads):
            return block_products(tasks)


def block_products(tasks):
    """The map: a dict ``(I, J) -> BlockSum`` of a shard of :class:`BlockTask` s.

    Cost: one ``block`` × ``block`` × ``block`` product (2·block³ flops) per ``K`` block.

    >>> src = matmul_source(np.eye(2), np.ones((2, 2)), block=1, k_split=1)
    >>> part = block_products(src.read(src.splits()[0]))
    >>> sorted(part), part[(0, 0)].folded
    ([(0, 0)], 1)
    """
    out = {}
    for task in tasks:
        if not isinstance(task, BlockTask):
            raise TypeError(f"matmul reads BlockTasks (see matmul_source), got a "
                            f"{type(task).__name__}")
        s = out.get((task.i, task.j))
        if s is None:
            s = out[(task.i, task.j)] = BlockSum(task.n_k, task.rows, task.cols, task.shape)
        for k in range(task.k0, task.k1):
            a, b = task.operands(k)
            s.add(k, a @ b)
        if task.out is not None:
            out[(task.i, task.j)] = _write_tile(task, s.result())
    return out


def _write_tile(task, tile):
    """Write a finished tile into its place in ``C``'s file; its :class:`WrittenTile`."""
    c = _mapped_out(task.out, "r+")
    if c.shape != task.shape:
        raise _inputs.InputError(f"the output C at {task.out!r} is {c.shape[0]}x{c.shape[1]}, "
                                 f"not {task.shape[0]}x{task.shape[1]}: it changed after "
                                 "matmul_source created it")
    c[task.rows[0]:task.rows[1], task.cols[0]:task.cols[1]] = tile
    del c  # unmapped; the page cache holds the tile for the driver's mapping
    return WrittenTile(task.out, task.rows, task.cols, task.shape, fingerprint(tile))


def _merge_sum(a, b):
    return a.merge(b)


def _copy_sum(s):
    return s.copy()


def _combine(a, b):
    return merge_into(a, b, _merge_sum, _copy_sum)


def assemble(tiles):
    """The matrix ``C`` from a dict ``(I, J) -> BlockSum``; ``ValueError`` if a tile is missing.

    Cost: one copy of ``C``.

    >>> src = matmul_source(np.eye(2), np.ones((2, 2)), block=1)
    >>> tiles = {}
    >>> for split in src.splits():
    ...     tiles.update(block_products(src.read(split)))
    >>> assemble(tiles)
    array([[1., 1.],
           [1., 1.]])
    """
    if not tiles:
        raise ValueError("no tiles to assemble")
    m, p = next(iter(tiles.values())).shape
    area = sum((s.rows[1] - s.rows[0]) * (s.cols[1] - s.cols[0]) for s in tiles.values())
    if area != m * p:
        raise ValueError(f"the tiles cover {area} of the {m * p} entries of a {m}x{p} C; "
                         "some output blocks were never computed")
    paths = {s.path if isinstance(s, WrittenTile) else None for s in tiles.values()}
    if paths != {None}:
        if len(paths) != 1:
            raise ValueError("the tiles were not all written into one output file")
        return _mapped_out(paths.pop(), "r")  # C is already in place: nothing to copy
    first = next(iter(tiles.values())).result()
    c = np.empty((m, p), dtype=first.dtype)
    for s in tiles.values():
        c[s.rows[0]:s.rows[1], s.cols[0]:s.cols[1]] = s.result()
    return c


_assemble = assemble


def _result(tile):
    return tile.result()


def assemble_tiles(tiles):
    """``C`` from a dict ``(I, J) -> finished tile`` (a keyed matmul's result, or its parts).

    Raises ``ValueError`` when a tile is missing. Cost: one copy of ``C``.

    >>> src = matmul_source(np.eye(3), np.ones((3, 2)), block=2)
    >>> job = matmul(keyed=True)
    >>> assemble_tiles(job.reduce(src.read(s) for s in src.splits())).tolist()
    [[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]
    """
    if not isinstance(tiles, dict):
        tiles = tiles.to_dict()
    if not tiles:
        raise ValueError("no tiles to assemble")
    n_i = max(i for i, _ in tiles) + 1
    n_j = max(j for _, j in tiles) + 1
    missing = [(i, j) for i in range(n_i) for j in range(n_j) if (i, j) not in tiles]
    if missing:
        raise ValueError(f"{len(missing)} tile(s) of the {n_i}x{n_j} grid were never "
                         f"computed, the first {missing[0]}")
    return np.block([[tiles[(i, j)] for j in range(n_j)] for i in range(n_i)])


def _tiles(tiles):
    return {key: tiles[key].result() for key in sorted(tiles)}


def matmul(assemble=True, keyed=False, threads_per_worker=None):
    """An Aggregator of blocked ``A @ B`` over the tasks of :func:`matmul_source`.

    Returns ``C`` as an ndarray, or (``assemble=False``) a dict ``(I, J) -> tile``.
    ``threads_per_worker`` limits the BLAS threads of each task's products (OpenBLAS, as
    numpy's wheels ship it; other BLAS libraries are left alone); ``None`` is
    :func:`default_threads`: one per worker process, so that workers never fight over the
    cores (the command line gives ``cores // --workers``).
    ``keyed=True`` gives a :class:`~mergeagg.KeyedJob` over the same tasks: tiles shuffled
    by ``(I, J)`` and summed in ascending ``K`` by their reducers (for a ``C`` kept as part
    files); its result is the dict of tiles, and :func:`assemble_tiles` builds ``C``.
    Cost: 2·m·n·p flops in the partials; a combine costs O(tiles of its second operand)
    (copies only when a tile is split across operands); finalize one copy of ``C``.

    >>> src = matmul_source(np.eye(3), np.ones((3, 2)), block=2)
    >>> sorted(matmul(assemble=False).reduce(src.read(s) for s in src.splits()))
    [(0, 0), (1, 0)]
    """
    if not isinstance(assemble, bool):
        raise TypeError(f"assemble must be True or False, got {assemble!r}")
    if threads_per_worker is not None and (isinstance(threads_per_worker, bool) or not
                                           isinstance(threads_per_worker, int)
                                           or threads_per_worker < 1):
        raise ValueError(f"threads_per_worker must be a positive int or None, got "
                         f"{threads_per_worker!r}")
    products = _Products(threads_per_worker)
    if keyed:
        return KeyedJob(products, _merge_sum, _result, name="matmul")
    return Aggregator(products, _combine, _assemble if assemble else _tiles, name="matmul")


def _operand(x, label):
    if isinstance(x, (str, os.PathLike)):
        path = os.path.abspath(os.fspath(x))
        if not os.path.isfile(path):
            raise _inputs.InputError(f"no such file: {path!r} (matrix {label})")
        arr = np.load(path, mmap_mode="r")
        ref = path
    elif isinstance(x, np.ndarray):
        arr, ref = x, None
    else:
        raise TypeError(f"matrix {label} must be an ndarray or a .npy path, "
                        f"got {type(x).__name__}")
    if arr.ndim != 2:
        raise ValueError(f"matrix {label} must be 2-D, got shape {arr.shape}")
    if arr.dtype.kind not in "iufc":
        raise TypeError(f"matrix {label} must be numeric, got dtype {arr.dtype}")
    return arr, ref


def matmul_source(a, b, *, block=DEFAULT_BLOCK, k_split=None, tasks_per_split=1,
                  out=None):
    """The tasks of ``a @ b`` in ``block``-sized tiles, as a Source of splits.

    ``a`` and ``b`` are ndarrays or ``.npy`` paths. Each task covers one tile and
    ``k_split`` of its ``K`` blocks (default: all, so a task finishes its tile); each split
    holds ``tasks_per_split`` consecutive tasks (row-major over tiles, then ``K``). Raises
    ``ValueError`` for shapes that do not chain. ``out``: a ``.npy`` path that is created
    (replacing any file there) as an ``m`` x ``p`` array for the tasks to write their tiles
    into; the workers must see the same file system (one machine, or a shared one). Cost:
    O(number of tasks); nothing is read (with ``out``, a sparse file of ``C``'s size is
    created).

    >>> len(matmul_source(np.ones((4, 6)), np.ones((6, 4)), block=2, k_split=1))
    12
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "C.npy")
    >>> a = np.arange(6.0).reshape(2, 3)
    >>> c = matmul().reduce(s.payload for s in matmul_source(a, a.T, block=1, out=path).splits())
    >>> bool((c == a @ a.T).all()), bool((np.load(path) == c).all())
    (True, True)
    >>> os.remove(path); os.rmdir(os.path.dirname(path))
    """
    if isinstance(block, bool) or not isinstance(block, int):
        raise TypeError(f"block must be an int, got {type(block).__name__}")
    if block < 1:
        raise ValueError(f"block must be a positive number of rows/columns, got {block}")
    arr_a, ref_a = _operand(a, "A")
    arr_b, ref_b = _operand(b, "B")
    m, n = arr_a.shape
    n2, p = arr_b.shape
    if n != n2:
        raise ValueError(f"A is {m}x{n} and B is {n2}x{p}: A's columns must equal B's rows")
    n_i, n_j, n_k = -(-m // block), -(-p // block), -(-n // block)
    if m == 0 or p == 0 or n == 0:
        raise ValueError(f"cannot multiply empty matrices ({m}x{n} by {n2}x{p})")
    k_split = n_k if k_split is None else k_split
    if isinstance(k_split, bool) or not isinstance(k_split, int) or k_split < 1:
        raise ValueError(f"k_split must be a positive int, got {k_split!r}")
    if isinstance(tasks_per_split, bool) or not isinstance(tasks_per_split, int) \
            or tasks_per_split < 1:
        raise ValueError(f"tasks_per_split must be a positive int, got {tasks_per_split!r}")
    if out is not None:
        if k_split < n_k:
            raise ValueError(f"out= has each task write a whole tile: k_split ({k_split}) "
                             f"must cover all {n_k} K blocks (leave it at its default)")
        out = _create_out(out, (m, p), np.result_type(arr_a.dtype, arr_b.dtype))
    tasks = []
    for i in range(n_i):
        rows = (i * block, min((i + 1) * block, m))
        for j in range(n_j):
            cols = (j * block, min((j + 1) * block, p))
            for k0 in range(0, n_k, k_split):
                k1 = min(k0 + k_split, n_k)
                lo, hi = k0 * block, min(k1 * block, n)
                ta = ref_a if ref_a is not None else arr_a[rows[0]:rows[1], lo:hi]
                tb = ref_b if ref_b is not None else arr_b[lo:hi, cols[0]:cols[1]]
                tasks.append(BlockTask(i, j, k0, k1, rows, cols, (m, p), block, n, ta, tb,
                                       out))
    per = tasks_per_split
    splits = []
    for start in range(0, len(tasks), per):
        group = tasks[start:start + per]
        first, last = group[0], group[-1]
        splits.append(_inputs.Split(
            len(splits), f"matmul:{first.i},{first.j},{first.k0}-{last.i},{last.j},{last.k1}",
            "memory", payload=group))
    return _inputs.Source(splits, f"{m}x{n} @ {n}x{p} in {block}-blocks, {len(tasks)} tasks")


def _create_out(path, shape, dtype):
    """Create ``C``'s ``.npy`` file (sparse: no tile is written yet); its absolute path."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"out must be a path, got {type(path).__name__}")
    path = os.path.abspath(os.fspath(path))
    try:
        c = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
    except OSError as exc:
        raise _inputs.InputError(f"cannot create the output C at {path!r}: {exc}") from exc
    del c
    return path


def _make_source(inputs, split_size, params):
    if len(inputs) != 2:
        raise ValueError(f"matmul takes exactly two inputs, A.npy and B.npy; got {len(inputs)}")
    # A fold job without --k-split writes its tiles straight into --out (see out=).
    in_place = params.get("_out") and not params.get("keyed") and not params.get("_k_split")
    return matmul_source(inputs[0], inputs[1], block=params.get("_block") or DEFAULT_BLOCK,
                         k_split=params.get("_k_split"),
                         out=params["_out"] if in_place else None)


def run_matmul(job, source, **options):
    """The CLI's runner: :func:`mergeagg.run`, and for a keyed matmul the value the user
    gets (``C``, :func:`assemble_tiles`) with the fingerprint of ``C``, so that the fold and
    the keyed job at any ``--partitions`` print one fingerprint for one ``C``. Cost: the
    run, plus for a keyed matmul one copy and one hash of ``C``.

    >>> src = matmul_source(np.eye(3), np.ones((3, 2)), block=2)
    >>> a = run_matmul(matmul(), src, workers=0)
    >>> b = run_matmul(matmul(keyed=True), src, workers=0, partitions=2)
    >>> a.fingerprint == b.fingerprint == fingerprint(b.value)
    True
    """
    import mergeagg

    products = job.map if isinstance(job, KeyedJob) else job.partial
    if isinstance(products, _Products) and products.threads is None:
        products.threads = default_threads(options.get("workers"))
    result = mergeagg.run(job, source, **options)
    if isinstance(job, KeyedJob):
        value = assemble_tiles(result.value)
        result = dataclasses.replace(result, value=value, fingerprint=fingerprint(value))
    return result


def _summarize(value, params):
    if not isinstance(value, np.ndarray):
        value = assemble_tiles(value)
    lines = [f"C: {value.shape[0]}x{value.shape[1]} {value.dtype}"]
    out = params.get("_out")
    if out:
        if not (isinstance(value, np.memmap) and value.filename
                and os.path.samefile(value.filename, out)):
            np.save(out, value)  # (tiles written in place are there already)
        lines.append(f"written to {out}")
    return lines


ENTRY = Entry(
    name="matmul",
    summary="blocked matrix multiply C = A @ B of two .npy files, fixed k-sum order",
    factory=matmul,
    flags=(
        Flag("--block", type=int, default=DEFAULT_BLOCK, dest="_block",
             help=f"tile size in rows/columns (default {DEFAULT_BLOCK})"),
        Flag("--k-split", type=int, default=None, dest="_k_split",
             help="K blocks per task (default: all, one task per tile)"),
        Flag("--out", default=None, dest="_out", help="write C to this .npy file"),
        Flag("--keyed", action="store_true", default=False,
             help="run as a keyed job: tiles shuffled into --partitions R"),
        Flag("--threads-per-worker", type=int, default=None,
             help="BLAS threads in each worker (default: cores // --workers)"),
    ),
    make_source=_make_source,
    summarize=_summarize,
    runner=run_matmul,
)
