"""mergeagg: write ``partial`` and ``combine``; mergeagg runs, retries, races and proves.

A tour (every line runs in the test suite):

>>> import mergeagg as ma
>>> from collections import Counter
>>> wc = ma.Aggregator(
...     partial=lambda lines: Counter(w for line in lines for w in line.split()),
...     combine=lambda a, b: a + b,
... )
>>> result = ma.run(wc, [["to be or"], ["not to be"]], workers=0)
>>> result.value["to"], result.value["be"]
(2, 2)
>>> result.fingerprint == ma.fingerprint(Counter({"to": 2, "be": 2, "or": 1, "not": 1}))
True

Several aggregations in one pass, with a finalize that divides only at the end:

>>> count = ma.Aggregator(len, lambda a, b: a + b)
>>> mean = ma.Aggregator(lambda xs: (sum(xs), len(xs)),
...                      lambda a, b: (a[0] + b[0], a[1] + b[1]),
...                      lambda acc: acc[0] / acc[1])
>>> ma.run(ma.product(n=count, mean=mean), [[1, 2, 3], [6]], workers=0).value
{'n': 4, 'mean': 3.0}

The catalog ships ready-made aggregators:

>>> ma.run(ma.algorithms.wordcount(), [["a b a"]], workers=0).value["a"]
2
"""

from mergeagg import laws  # noqa: E402  (after the core they build on)
from mergeagg._version import __version__
from mergeagg.aggregator import Aggregator, product
from mergeagg.errors import (
    IncompatibleMergeError,
    InputError,
    JobFailed,
    MergeaggError,
    NondeterminismError,
    TaskFailed,
)
from mergeagg.fingerprint import fingerprint
from mergeagg.inputs import array_rows, files, shards, stdin
from mergeagg.keyed import KeyedJob
from mergeagg.runtime.api import Result, run
from mergeagg.runtime.session import Session

__all__ = [
    "__version__",
    "Aggregator",
    "product",
    "KeyedJob",
    "fingerprint",
    "run",
    "Result",
    "Session",
    "files",
    "shards",
    "stdin",
    "array_rows",
    "algorithms",
    "laws",
    "MergeaggError",
    "InputError",
    "JobFailed",
    "TaskFailed",
    "NondeterminismError",
    "IncompatibleMergeError",
]


def __getattr__(name):
    # The catalog is imported on first use (PEP 562): every worker process imports this
    # package when it starts, and most jobs need no more than the one catalog module
    # their aggregator comes from.
    if name == "algorithms":
        import importlib

        return importlib.import_module("mergeagg.algorithms")
    raise AttributeError(f"module 'mergeagg' has no attribute {name!r}")
