"""The catalog: one module per algorithm, each a factory returning an Aggregator.

``mergeagg.algorithms.<name>`` is the factory of the catalog entry ``<name>`` (the module
itself is importable as ``from mergeagg.algorithms.<name> import ...``);
:func:`mergeagg.algorithms.registry.entries` lists them all.

>>> from mergeagg import algorithms
>>> agg = algorithms.wordcount()
>>> agg.reduce([["a rose is", "a rose"]])["rose"]
2
"""

from mergeagg.algorithms.registry import entries as _entries

for _name, _entry in _entries().items():
    globals()[_name] = _entry.factory

__all__ = sorted(_entries())
del _name, _entry
