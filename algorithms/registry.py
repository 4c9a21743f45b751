"""The catalog's registry: every module in ``mergeagg.algorithms`` that defines ``ENTRY``
(or ``ENTRIES``) is listed, and the CLI reads its name, summary and flags from here.

An algorithm module registers itself by defining, at module level::

    ENTRY = Entry(name="wordcount", summary="...", factory=wordcount,
                  flags=(Flag("--lowercase", action="store_true", help="..."),))

Nothing else needs editing: discovery walks the package.

>>> "wordcount" in entries()
True
>>> get("wordcount").summary
'count each whitespace-separated word in text files'
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field

__all__ = ["Entry", "Flag", "entries", "get"]


@dataclass(frozen=True)
class Flag:
    """One command-line flag of a catalog entry; ``dest`` is the factory's keyword."""

    name: str
    type: type | None = None
    default: object = None
    help: str = ""
    choices: tuple | None = None
    action: str | None = None
    dest: str | None = None

    @property
    def keyword(self):
        return self.dest or self.name.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Entry:
    """A catalog entry: a name, a one-line summary, a factory and its flags.

    ``factory(**params)`` returns an Aggregator (or a job the runtime knows). ``input_format``
    is how ``mergeagg run`` reads plain input files (``"text"``, ``"jsonl"``, ``"csv"``).
    ``make_source(inputs, split_size, params)``, when given, replaces that reading (for
    entries whose input is not a set of record files). ``summarize(value, params)`` returns
    the lines the CLI prints; ``jsonable(value)`` the value for ``--json``.
    """

    name: str
    summary: str
    factory: object
    flags: tuple = ()
    input_format: str = "text"
    make_source: object = None
    summarize: object = None
    jsonable: object = None
    runner: object = None
    extra: dict = field(default_factory=dict)


_ENTRIES: dict[str, Entry] | None = None


def entries():
    """All catalog entries by name, discovered from the package's modules (cached)."""
    global _ENTRIES
    if _ENTRIES is None:
        import mergeagg.algorithms as pkg

        found = {}
        for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
            if info.name.startswith("_") or info.name == "registry":
                continue
            module = importlib.import_module(f"mergeagg.algorithms.{info.name}")
            listed = list(getattr(module, "ENTRIES", ()))
            if hasattr(module, "ENTRY"):
                listed.append(module.ENTRY)
            for entry in listed:
                if entry.name in found:
                    raise RuntimeError(f"catalog entry {entry.name!r} is defined twice")
                found[entry.name] = entry
        _ENTRIES = dict(sorted(found.items()))
    return _ENTRIES


def get(name):
    """The entry called ``name``; ``KeyError`` listing the known names otherwise."""
    table = entries()
    try:
        return table[name]
    except KeyError:
        raise KeyError(
            f"no catalog entry {name!r}; known entries: {', '.join(table)}"
        ) from None
