"""The ``mergeagg`` command: ``catalog``, ``run``, ``demo`` and ``master``.

``mergeagg run NAME INPUT... [--workers N] [--split-size BYTES] [--json FILE] [entry flags]``
runs a catalog entry (or ``module.path:factory``, a user's own aggregator) over input files
(``-`` for standard input) and prints the fingerprint and a summary of the value.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys

import numpy as np

__all__ = ["main", "build_parser", "to_jsonable"]


def to_jsonable(value):
    """A JSON-ready form of a result value.

    Mappings with str keys become objects; mappings with other keys become lists of
    ``[key, value]`` pairs (sorted by the key's fingerprint-independent repr for stability);
    sets become sorted lists; numpy arrays become nested lists; non-finite floats become
    strings.

    >>> to_jsonable({"a": (1, 2.5), "b": {3, 1}})
    {'a': [1, 2.5], 'b': [1, 3]}
    >>> to_jsonable({(1, 2): 3})
    [[[1, 2], 3]]
    """
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: to_jsonable(v) for k, v in value.items()}
        pairs = [[to_jsonable(k), to_jsonable(v)] for k, v in value.items()]
        return sorted(pairs, key=lambda kv: json.dumps(kv[0], sort_keys=True))
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [to_jsonable(v) for v in value]
        return sorted(items, key=lambda x: json.dumps(x, sort_keys=True))
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, bytes):
        return value.hex()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "to_jsonable"):
        return value.to_jsonable()
    return repr(value)


def _add_common(p):
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: one per CPU; 0: serial, in process)")
    p.add_argument("--split-size", default=None,
                   help="bytes per input split, K/M/G suffixes allowed (default 16M)")
    p.add_argument("--fan-in", type=int, default=8, help="children per combine-tree node")
    p.add_argument("--json", metavar="FILE", default=None,
                   help="write {algorithm, params, fingerprint, value, report} to FILE")
    p.add_argument("--errors", default="strict",
                   choices=["strict", "replace", "ignore"],
                   help="what to do with invalid UTF-8 (default: stop with an error)")


def build_parser(entries=None):
    """The argparse parser; ``run`` gets one sub-parser per catalog entry's flags."""
    parser = argparse.ArgumentParser(
        prog="mergeagg",
        description="Run mergeable aggregations: partial + combine, fault tolerant, proven "
                    "by fingerprint.",
    )
    from mergeagg._version import __version__

    parser.add_argument("--version", action="version", version=f"mergeagg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("catalog", help="list the catalog's entries")
    run = sub.add_parser(
        "run", help="run a catalog entry or module.path:factory over input files",
        usage="mergeagg run NAME INPUT... [options]",
    )
    run.add_argument("name", help="catalog entry (see `mergeagg catalog`) or module:factory")
    run.add_argument("inputs", nargs="+", help="files, globs, directories, or - for stdin")
    _add_common(run)
    run.add_argument("--format", default=None, choices=["text", "jsonl", "csv"],
                     help="how to read the input files (default: the entry's choice)")
    return parser


def _entry_parser(entry):
    p = argparse.ArgumentParser(prog=f"mergeagg run {entry.name}", add_help=False)
    for flag in entry.flags:
        kwargs = {"default": flag.default, "help": flag.help, "dest": flag.keyword}
        if flag.action:
            kwargs["action"] = flag.action
        else:
            if flag.type is not None:
                kwargs["type"] = flag.type
            if flag.choices is not None:
                kwargs["choices"] = flag.choices
        p.add_argument(flag.name, **kwargs)
    return p


def _load_user_factory(spec):
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"mergeagg: {spec!r} is not of the form module.path:factory")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"mergeagg: cannot import module {module_name!r}: {exc}") from None
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise SystemExit(f"mergeagg: module {module_name!r} has no {attr!r}") from None
    return obj


def _cmd_catalog(out):
    from mergeagg.algorithms.registry import entries

    table = entries()
    width = max(len(n) for n in table)
    for name, entry in table.items():
        print(f"{name:<{width}}  {entry.summary}", file=out)
    return 0


def _cmd_run(args, extra, out):
    from mergeagg import Aggregator, inputs
    from mergeagg.algorithms.registry import Entry, entries
    from mergeagg.runtime.api import run

    if ":" in args.name:
        obj = _load_user_factory(args.name)
        factory = obj if not isinstance(obj, Aggregator) else (lambda: obj)
        entry = Entry(name=args.name, summary="user aggregator", factory=factory)
    else:
        table = entries()
        if args.name not in table:
            print(f"mergeagg: no catalog entry {args.name!r}; known entries: "
                  f"{', '.join(table)}", file=sys.stderr)
            return 2
        entry = table[args.name]
    ep = _entry_parser(entry)
    entry_args, unknown = ep.parse_known_args(extra)
    if unknown:
        print(f"mergeagg run {entry.name}: unknown option(s) {' '.join(unknown)}; "
              f"the entry's options are: {' '.join(f.name for f in entry.flags) or 'none'}",
              file=sys.stderr)
        return 2
    params = vars(entry_args)
    factory_params = {k: v for k, v in params.items() if not k.startswith("_")}
    split_size = inputs.parse_size(args.split_size) if args.split_size else None
    if entry.make_source is not None:
        source = entry.make_source(args.inputs, split_size, params)
    else:
        fmt = args.format or entry.input_format
        if args.inputs == ["-"]:
            source = inputs.stdin(format=fmt, errors=args.errors)
        else:
            source = inputs.files(args.inputs, split_size=split_size, format=fmt,
                                  errors=args.errors)
    job = entry.factory(**factory_params)
    runner = entry.runner or run
    result = runner(job, source, workers=args.workers, fan_in=args.fan_in)
    print(f"fingerprint {result.fingerprint}", file=out)
    if entry.summarize is not None:
        for line in entry.summarize(result.value, params):
            print(line, file=out)
    else:
        text = repr(result.value)
        print(text if len(text) < 2000 else text[:1997] + "...", file=out)
    print(str(result.report), file=sys.stderr)
    if args.json:
        jsonable = entry.jsonable or to_jsonable
        doc = {
            "algorithm": entry.name,
            "params": to_jsonable(params),
            "fingerprint": result.fingerprint,
            "value": jsonable(result.value),
            "report": result.report.to_dict(),
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(doc, f)
    return 0


def main(argv=None):
    """Entry point of the ``mergeagg`` console script. Returns the exit status."""
    from mergeagg.errors import MergeaggError

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        if args.command == "catalog":
            if extra:
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
            return _cmd_catalog(sys.stdout)
        if args.command == "run":
            return _cmd_run(args, extra, sys.stdout)
    except MergeaggError as exc:
        print(f"mergeagg: error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as exc:
        print(f"mergeagg: error: {exc}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
