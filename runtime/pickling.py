"""Shipping user code to workers: cloudpickle, keeping each function's file name.

cloudpickle (3.1 and newer) writes every code object it ships by value with the file name
``<dynamic-code>``, so that its bytes do not depend on where a function was defined. A
traceback from a worker then reads ``File "<dynamic-code>", line 15, in combine``: no file,
no source line. mergeagg ships a job's functions once per job, so the few bytes of a file
name cost nothing, and a user debugging a failed task needs them: :func:`dumps` keeps the
original ``co_filename`` of every code object (nested ones included), and the worker's
traceback shows the user's file, line and, where the file is readable there, its source.

Cost: as ``cloudpickle.dumps``, plus one ``code.replace`` per code object when loading.

>>> g = lambda x: x + 1
>>> f = pickle.loads(dumps(g))
>>> f(1), f.__code__.co_filename == g.__code__.co_filename
(2, True)
"""

from __future__ import annotations

import copyreg
import io
import pickle
import types
from collections import ChainMap

import cloudpickle

__all__ = ["dumps", "Pickler", "Shipped"]

_CLOUDPICKLE_CODE_REDUCE = cloudpickle.Pickler.dispatch_table[types.CodeType]


def _rebuild_code(constructor, args, filename):
    """The inverse of :func:`_reduce_code`: cloudpickle's code object, its name restored."""
    code = constructor(*args)
    return code.replace(co_filename=filename) if code.co_filename != filename else code


def _reduce_code(code):
    constructor, args = _CLOUDPICKLE_CODE_REDUCE(code)
    return _rebuild_code, (constructor, args, code.co_filename)


class Pickler(cloudpickle.Pickler):
    """cloudpickle's pickler, except that code objects keep their file name."""

    dispatch_table = ChainMap({types.CodeType: _reduce_code},
                              cloudpickle.Pickler.dispatch_table, copyreg.dispatch_table)


def dumps(obj, protocol=5):
    """Pickle ``obj`` as cloudpickle does, keeping the file names of functions shipped by
    value (``pickle.loads`` reads the bytes; mergeagg need not be imported first, it is
    imported by the reference to :func:`_rebuild_code`)."""
    buf = io.BytesIO()
    Pickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


class Shipped:
    """A function that travels as :func:`dumps` bytes inside another framework's message
    (a Dask task's argument), so that it keeps its file name there too; calling it loads
    the function once and calls it.

    >>> double = pickle.loads(pickle.dumps(Shipped(lambda x: 2 * x)))
    >>> double(21)
    42
    """

    __slots__ = ("blob", "_fn")

    def __init__(self, fn):
        self.blob = dumps(fn)
        self._fn = fn

    def __reduce__(self):
        return _shipped, (self.blob,)

    def __call__(self, *args, **kwargs):
        if self._fn is None:
            self._fn = pickle.loads(self.blob)
        return self._fn(*args, **kwargs)


def _shipped(blob):
    s = Shipped.__new__(Shipped)
    s.blob, s._fn = blob, None
    return s
