"""The ``mergeagg`` command: ``catalog``, ``run``, ``demo`` and ``master``.

``mergeagg run NAME INPUT... [--workers N] [--split-size BYTES] [--json FILE] [entry flags]``
runs a catalog entry (or ``module.path:factory``, a user's own aggregator) over input files
(``-`` for standard input) and prints the answer (a summary of the value), then its
fingerprint on a line of its own; the run's report goes to standard error (``--quiet``
drops it). ``--json FILE`` writes ``{algorithm, params, fingerprint, value, report}``;
``--json -`` writes that document to standard output instead of the summary.
``python -m mergeagg`` is the same command.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import math
import os
import re
import signal
import sys
import traceback

import numpy as np

from mergeagg.runtime.shuffle import OUTPUT_FORMATS

__all__ = ["main", "build_parser", "to_jsonable"]


def to_jsonable(value, *, strict=False):
    """A JSON-ready form of a result value.

    Cost: O(size of the value), plus sorting the members of sets and of mappings with
    non-str keys.

    Mappings with str keys become objects; mappings with other keys become lists of
    ``[key, value]`` pairs (sorted by the key's JSON text, for stability); tuples become
    lists; sets become sorted lists; numpy arrays become nested lists and numpy scalars
    numbers; non-finite floats become the strings ``"nan"``, ``"inf"``, ``"-inf"``; bytes
    become hex strings; an object with a ``to_jsonable()`` method becomes what it returns.
    Anything else becomes its ``repr``, or, with ``strict=True`` (how committed keyed
    output is written), raises :class:`TypeError` naming its type.

    >>> to_jsonable({"a": (1, 2.5), "b": {3, 1}})
    {'a': [1, 2.5], 'b': [1, 3]}
    >>> to_jsonable({(1, 2): 3})
    [[[1, 2], 3]]
    >>> to_jsonable([object])
    ["<class 'object'>"]
    >>> to_jsonable([object], strict=True)
    Traceback (most recent call last):
    TypeError: a type has no JSON form
    """
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: to_jsonable(v, strict=strict) for k, v in value.items()}
        pairs = [[to_jsonable(k, strict=strict), to_jsonable(v, strict=strict)]
                 for k, v in value.items()]
        return sorted(pairs, key=lambda kv: json.dumps(kv[0], sort_keys=True))
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, strict=strict) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [to_jsonable(v, strict=strict) for v in value]
        return sorted(items, key=lambda x: json.dumps(x, sort_keys=True))
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist(), strict=strict)
    if isinstance(value, np.generic):
        return to_jsonable(value.item(), strict=strict)
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, bytes):
        return value.hex()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "to_jsonable"):
        return value.to_jsonable()
    if strict:
        raise TypeError(f"a {type(value).__name__} has no JSON form")
    return repr(value)


def _share(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a share: {text!r} (a number in (0, 1])") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"a share must be in (0, 1], got {text}")
    return value


def _add_common(p):
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: one per CPU; 0: serial, in process)")
    p.add_argument("--split-size", default=None,
                   help="bytes per input split, K/M/G suffixes allowed (default 16M)")
    p.add_argument("--fan-in", type=int, default=8, help="children per combine-tree node")
    p.add_argument("--json", metavar="FILE", default=None,
                   help="write {algorithm, params, fingerprint, value, report} to FILE "
                        "(- for standard output, in place of the summary)")
    p.add_argument("--quiet", "-q", action="store_true", default=False,
                   help="print the answer only: no report on stderr (and no progress "
                        "unless --progress)")
    p.add_argument("--errors", default="strict",
                   choices=["strict", "replace", "ignore"],
                   help="what to do with invalid UTF-8 (default: stop with an error)")
    rt = p.add_argument_group("runtime (see docs/runtime.md)")
    rt.add_argument("--faults", default=None, metavar="SPEC",
                    help="inject seeded faults, e.g. kill=0.1,delay=0.05x10,seed=3 or chaos")
    rt.add_argument("--backups", dest="backups", action="store_true", default=True,
                    help="race a copy of stragglers near the end of a stage (default)")
    rt.add_argument("--no-backups", dest="backups", action="store_false",
                    help="never launch backup tasks")
    from mergeagg.runtime.speculation import NAMES

    rt.add_argument("--speculation", choices=NAMES, default=None,
                    help="the backup rule (default: after 75%% of a stage, a task past 1.5x "
                         "the median; late: by progress rate; see docs/simulate.md)")
    rt.add_argument("--verify", type=float, default=0.0, metavar="F",
                    help="re-run this fraction of map tasks on another worker to compare")
    rt.add_argument("--max-attempts", type=int, default=4, metavar="N",
                    help="failures a task may have before the job fails (default 4)")
    rt.add_argument("--task-timeout", type=float, default=None, metavar="SECONDS",
                    help="stop a task running longer than this (it counts as a failure)")
    rt.add_argument("--heartbeat-timeout", type=float, default=10.0, metavar="SECONDS",
                    help="declare a silent worker lost after this long (default 10)")
    rt.add_argument("--journal", default=None, metavar="DIR",
                    help="record completed tasks in DIR: rerun the same command to resume "
                         "after a crash, or after the input grew to run only what is new "
                         "(see docs/journal.md)")
    rt.add_argument("--skip-bad-records", type=int, default=None, metavar="N",
                    help="set aside up to N records on which the job's code fails (found "
                         "by bisection, listed in the report); default: fail naming the "
                         "first")
    rt.add_argument("--progress", dest="progress", action="store_true", default=None,
                    help="show progress on stderr (default: only on a terminal)")
    rt.add_argument("--no-progress", dest="progress", action="store_false")
    rt.add_argument("--dask", default=None, metavar="ADDRESS",
                    help="run on the dask.distributed scheduler at ADDRESS (e.g. "
                         "tcp://10.0.0.5:8786) instead of local worker processes; "
                         "see docs/dask.md")
    kj = p.add_argument_group("keyed jobs (see docs/shuffle.md)")
    kj.add_argument("--partitions", "-R", type=int, default=None, metavar="R",
                    help="reduce partitions of a keyed job (default 8)")
    kj.add_argument("--no-combiner", dest="combiner", action="store_false", default=None,
                    help="switch the map-side combiner off")
    kj.add_argument("--memory-limit", default=None, metavar="BYTES",
                    help="bytes a task may hold before it spills (K/M/G suffixes)")
    kj.add_argument("--output", default=None, metavar="DIR",
                    help="write a keyed job's result as part files in DIR (new or empty)")
    kj.add_argument("--output-format", default=None, choices=list(OUTPUT_FORMATS),
                    help="the part files' format: JSON lines (default), TSV, or framed "
                         "(Python values, exact; read back with mergeagg)")
    kj.add_argument("--salt", nargs="?", const=True, default=None, type=_share,
                    metavar="SHARE",
                    help="spread hot keys over several partitions (a key is hot in a map "
                         "task holding at least SHARE of its records; default 1/R)")


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
    demo = sub.add_parser("demo", help="word count twice, once with a worker killed: the "
                                       "fingerprints are equal")
    demo.add_argument("inputs", nargs="*", help="text files (default: a generated sample)")
    demo.add_argument("--workers", type=int, default=2)
    sub.add_parser("master", help="the failure detector as a JSON-lines node on "
                                  "stdin/stdout")
    run = sub.add_parser(
        "run", help="run a catalog entry or module.path:factory over input files",
        usage="mergeagg run NAME INPUT... [options]",
    )
    run.add_argument("name", help="catalog entry (see `mergeagg catalog`) or module:factory")
    run.add_argument("inputs", nargs="+", help="files, globs, directories, or - for stdin")
    _add_common(run)
    run.add_argument("--format", default=None, choices=["text", "jsonl", "csv", "tsv"],
                     help="how to read the input files (default: the entry's choice)")
    _add_simulate(sub)
    return parser


def _entry_parser(entry):
    """The parser of ``mergeagg run NAME``: inputs, the common flags and the entry's flags."""
    p = argparse.ArgumentParser(
        prog=f"mergeagg run {entry.name}",
        description=entry.summary,
        usage=f"mergeagg run {entry.name} INPUT... [options]",
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="files, globs, directories, or - for stdin")
    _add_common(p)
    p.add_argument("--format", default=None, choices=["text", "jsonl", "csv", "tsv"],
                   help="how to read the input files (default: the entry's choice)")
    group = p.add_argument_group(f"options of {entry.name}") if entry.flags else p
    for flag in entry.flags:
        kwargs = {"default": flag.default, "help": flag.help, "dest": flag.keyword}
        if flag.action:
            kwargs["action"] = flag.action
        else:
            kwargs["metavar"] = flag.keyword.lstrip("_").upper()
            if flag.type is not None:
                kwargs["type"] = flag.type
            if flag.choices is not None:
                kwargs["choices"] = flag.choices
                kwargs.pop("metavar")
        group.add_argument(flag.name, **kwargs)
    return p


_COMMON = ("inputs", "workers", "split_size", "fan_in", "json", "quiet", "errors", "format",
           "faults", "backups", "speculation", "verify", "max_attempts", "task_timeout",
           "heartbeat_timeout", "progress", "partitions", "combiner", "memory_limit", "output",
           "output_format", "salt", "dask", "journal", "skip_bad_records")


class _Usage(Exception):
    """A command-line mistake: the message is printed as one line, exit status 2."""


def _load_user_factory(spec):
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise _Usage(f"{spec!r} is not of the form module.path:factory")
    # Like `python -m`, look for the user's module in the current directory too (a console
    # script's sys.path starts with the script's own directory instead).
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise _Usage(f"cannot import module {module_name!r}: {exc}") from None
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise _Usage(f"module {module_name!r} has no {attr!r}{hint}") from None
    return obj


def _cmd_catalog(out):
    from mergeagg.algorithms.registry import entries

    table = entries()
    width = max(len(n) for n in table)
    for name, entry in table.items():
        print(f"{name:<{width}}  {entry.summary}", file=out)
    return 0


def _resolve_entry(name):
    from mergeagg import Aggregator
    from mergeagg.algorithms.registry import Entry, entries

    if ":" in name:
        obj = _load_user_factory(name)
        if isinstance(obj, Aggregator):
            factory = lambda: obj
        elif callable(obj):
            factory = obj
        else:
            raise _Usage(f"{name} is a {type(obj).__name__}, not an Aggregator or a factory")
        return Entry(name=name, summary="user aggregator", factory=factory)
    table = entries()
    if name not in table:
        close = difflib.get_close_matches(name, list(table), n=3, cutoff=0.6)
        if close:
            guess = " or ".join(repr(c) for c in close)
            raise _Usage(f"no catalog entry {name!r}; did you mean {guess}? (`mergeagg "
                         "catalog` lists them all; or give module.path:factory)")
        raise _Usage(f"no catalog entry {name!r}; known entries: {', '.join(table)} "
                     "(or give module.path:factory)")
    return table[name]


class _UserCodeError(Exception):
    """Code that builds the job (a factory) raised: one line naming what, where and why."""


def _build(what, name, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, where ``fn`` builds the job of entry ``name``.

    An exception becomes one line naming what failed, the cause and the line that raised
    it; a catalog entry's ``ValueError`` or ``TypeError`` (a bad flag value, already worded
    for the user) and the project's own errors print as they are.
    """
    from mergeagg.errors import MergeaggError

    as_is = (_Usage, MergeaggError, OSError)
    if ":" not in name:
        as_is += (ValueError, TypeError)
    try:
        return fn(*args, **kwargs)
    except as_is:
        raise
    except Exception as exc:
        frames = traceback.extract_tb(exc.__traceback__)
        where = ""
        if len(frames) > 1:  # the first frame is this function's own call
            f = frames[-1]
            where = f" (at {f.filename}:{f.lineno}, in {f.name})"
        raise _UserCodeError(f"{what} of {name} raised {type(exc).__name__}: {exc}"
                             f"{where}") from exc


def _json_target(path):
    """Check, before the job runs, that ``--json PATH`` can be written (``-``: stdout)."""
    if path is None or path == "-":
        return
    if os.path.isdir(path):
        raise _Usage(f"--json {path}: is a directory; give a file name (or - for standard "
                     "output)")
    existed = os.path.exists(path)
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise _Usage(f"cannot write the --json file {path!r}: {exc.strerror or exc}") from None
    if not existed:
        os.unlink(path)  # a job that fails leaves no empty file behind


def _cmd_run(name, argv, out):
    from mergeagg import inputs
    from mergeagg.runtime.api import run

    entry = _resolve_entry(name)
    args = _entry_parser(entry).parse_args(argv)
    _json_target(args.json)
    params = {k: v for k, v in vars(args).items() if k not in _COMMON}
    factory_params = {k: v for k, v in params.items() if not k.startswith("_")}
    split_size = inputs.parse_size(args.split_size) if args.split_size else None
    if entry.make_source is not None:
        source = _build("reading the inputs", entry.name, entry.make_source, args.inputs,
                        split_size, {**params, "_format": args.format})
    else:
        fmt = args.format or (None if entry.input_format == "text" else entry.input_format)
        source = inputs.as_source(list(args.inputs), split_size=split_size, format=fmt,
                                  errors=args.errors)
    job = _build("the factory", entry.name, entry.factory, **factory_params)
    from mergeagg.keyed import KeyedJob

    runner = entry.runner or run
    options = dict(workers=args.workers, fan_in=args.fan_in, faults=args.faults,
                   backups=args.backups, verify=args.verify, max_attempts=args.max_attempts,
                   task_timeout=args.task_timeout, heartbeat_timeout=args.heartbeat_timeout,
                   progress=False if args.quiet and args.progress is None else args.progress)
    if args.speculation is not None:
        options["speculation"] = args.speculation
    keyed_options = dict(partitions=args.partitions, combiner=args.combiner,
                         memory_limit=args.memory_limit, output=args.output, salt=args.salt,
                         output_format=args.output_format)
    if isinstance(job, KeyedJob):
        options.update(keyed_options)
    else:
        given = [k for k, v in keyed_options.items() if v is not None]
        if given:
            raise _Usage(f"{', '.join('--' + g.replace('_', '-') for g in given)} apply to "
                         f"keyed jobs; {entry.name} runs as a fold job"
                         + (" (try --keyed)" if any(f.name == "--keyed" for f in entry.flags)
                            else ""))
    if args.dask is not None:
        options["backend"] = args.dask
    if args.skip_bad_records is not None:
        if entry.runner is not None:
            raise _Usage(f"--skip-bad-records applies to jobs that run as one fold or keyed "
                         f"job; {entry.name} runs several")
        options["skip_bad_records"] = args.skip_bad_records
    if args.journal is not None:
        if entry.runner is not None:
            raise _Usage(f"--journal applies to jobs that run as one fold or keyed job; "
                         f"{entry.name} runs several")
        options["journal"] = args.journal
    result = runner(job, source, **options)
    doc = None
    if args.json:
        jsonable = entry.jsonable or to_jsonable
        doc = {
            "algorithm": entry.name,
            # Display-only flags (a leading underscore: not passed to the factory) are
            # shown under their flag's name.
            "params": to_jsonable({k.lstrip("_"): v for k, v in params.items()}),
            "fingerprint": result.fingerprint,
            "value": jsonable(result.value),
            "report": result.report.to_dict(),
        }
    if args.json == "-":
        # Standard output carries the document alone, for jq and friends.
        json.dump(doc, out)
        print(file=out)
    else:
        # The answer first; the fingerprint that proves it after it.
        if entry.summarize is not None:
            for line in entry.summarize(result.value, params):
                print(line, file=out)
        else:
            text = repr(result.value)
            print(text if len(text) < 2000 else text[:1997] + "...", file=out)
        print(f"fingerprint {result.fingerprint}", file=out)
    if not args.quiet:
        print(str(result.report), file=sys.stderr)
    if doc is not None and args.json != "-":
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(doc, f)
    return 0


def _split_run_argv(argv):
    """``(name, rest)`` of ``run ...`` tokens, or ``None`` when there is no entry name.

    The name is the first token that is neither an option nor the value of one of the
    common options, so ``run --workers 2 wordcount a.txt`` works as well.
    """
    from mergeagg.algorithms.registry import Entry

    takes_value = set()
    for action in _entry_parser(Entry(name="", summary="", factory=None))._actions:
        if action.option_strings and action.nargs != 0:
            takes_value.update(action.option_strings)
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            i += 1
            break
        if not token.startswith("-") or token == "-":
            return token, argv[:i] + argv[i + 1:]
        i += 2 if token in takes_value else 1
    if i < len(argv):
        return argv[i], argv[:i - 1] + argv[i + 1:]
    return None


def _error_text(exc):
    # An input error met while a task read its split reaches us wrapped in TaskFailed; the
    # input error alone says what to do.
    from mergeagg.errors import InputError

    cause = exc.__cause__
    if isinstance(cause, InputError):
        return str(cause)
    # From a worker process only the text crosses: the last line of its traceback.
    found = re.findall(r"^mergeagg\.errors\.InputError: (.*)$", getattr(exc, "traceback", "")
                       or "", re.M)
    if found:
        return found[-1]
    return str(exc)


def _silence_stdout():
    """Point standard output at /dev/null, so that flushing it at exit cannot fail again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test's capture)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def main(argv=None):
    """Entry point of the ``mergeagg`` console script. Returns the exit status.

    Errors in the input or the job print one line, ``mergeagg: error: ...``, and give a
    non-zero status (1 for input and job failures, 2 for a mistake on the command line,
    130 when interrupted by Ctrl-C and 143 by SIGTERM, after the job's workers are stopped
    and its directories removed).
    Cost: that of the job run.

    >>> import contextlib, io
    >>> out = io.StringIO()
    >>> with contextlib.redirect_stdout(out):
    ...     status = main(["catalog"])
    >>> status, "wordcount" in out.getvalue()
    (0, True)
    >>> with contextlib.redirect_stderr(io.StringIO()) as err:
    ...     main(["run", "wordcount", "/no/such/file.txt", "--workers", "0"])
    1
    >>> err.getvalue().strip()
    "mergeagg: error: no such file or directory: '/no/such/file.txt'"
    """
    from mergeagg.errors import MergeaggError

    argv = sys.argv[1:] if argv is None else list(argv)
    previous = _on_sigterm_raise()
    try:
        status = _dispatch(argv)
        sys.stdout.flush()  # a closed pipe is met here, where it is handled, not at exit
        return status
    except KeyboardInterrupt:
        # One Ctrl-C: the job's executor has already stopped its workers and removed its
        # directories on the way out (the driver's finally); say so in one line.
        print("mergeagg: interrupted", file=sys.stderr)
        return 130
    except _Terminated:
        print("mergeagg: terminated", file=sys.stderr)
        return 143
    except _Usage as exc:
        print(f"mergeagg: error: {exc}", file=sys.stderr)
        return 2
    except _UserCodeError as exc:
        print(f"mergeagg: error: {exc}", file=sys.stderr)
        return 1
    except MergeaggError as exc:
        print(f"mergeagg: error: {_error_text(exc)}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (``mergeagg run ... | head``): stop quietly, as cat does.
        _silence_stdout()
        return 1
    except OSError as exc:
        print(f"mergeagg: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return 1
    except (ValueError, TypeError) as exc:
        print(f"mergeagg: error: {exc}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that the job's executor cleans up on the way
    out as it does for Ctrl-C (Python's default for SIGTERM skips every ``finally``)."""


def _on_sigterm_raise():
    """Make SIGTERM raise :class:`_Terminated` while the command runs; the handler it
    replaced, or ``None`` when this is not the main thread (signals cannot be set)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise _Terminated()

    return signal.signal(signal.SIGTERM, handler)


def _dispatch(argv):
    if argv and argv[0] == "run":
        split = _split_run_argv(argv[1:])
        if split is not None:
            return _cmd_run(split[0], split[1], sys.stdout)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "catalog":
        return _cmd_catalog(sys.stdout)
    if args.command == "demo":
        from mergeagg.runtime.demo import demo

        return demo(args.inputs or None, workers=args.workers)
    if args.command == "master":
        from mergeagg.runtime.protocol import serve

        return serve()
    if args.command == "simulate":
        return _cmd_simulate(args, sys.stdout)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


# -- mergeagg simulate ---------------------------------------------------------------------

def _add_simulate(sub):
    from mergeagg.runtime.speculation import NAMES

    p = sub.add_parser(
        "simulate", help="simulate a job on a cluster of W machines with the real policy",
        description="Simulate a job on W machines on a virtual clock, driven by mergeagg's "
                    "own policy and driver: stragglers, machine failures, backup rules.")
    p.add_argument("--workers", type=int, default=100, help="machines (default 100)")
    p.add_argument("--maps", type=int, default=100, help="map tasks (default 100)")
    p.add_argument("--reduces", type=int, default=0, help="reduce tasks (default 0: map only)")
    d = p.add_mutually_exclusive_group()
    d.add_argument("--duration", type=float, default=10.0,
                   help="seconds per task (default 10)")
    d.add_argument("--lognormal", metavar="MEDIAN,SIGMA",
                   help="task seconds from a lognormal of this median and sigma")
    d.add_argument("--trace", metavar="FILE", help="task seconds from a file, one per line")
    p.add_argument("--slow-attempts", type=float, default=0.0,
                   help="share of attempts slowed by --slow-factor")
    p.add_argument("--slow-machines", type=float, default=0,
                   help="machines slowed by --slow-factor (a count, or a share below 1)")
    p.add_argument("--slow-factor", type=float, default=5.0)
    p.add_argument("--failure-p", type=float, default=0.0,
                   help="probability that a machine crashes during the job")
    p.add_argument("--crash-at", type=float, nargs="*", default=[], metavar="T",
                   help="times at which one machine crashes")
    p.add_argument("--kill-at", type=float, nargs="*", default=[], metavar="T",
                   help="times at which one worker is killed (replaced after "
                        "--restart-seconds)")
    p.add_argument("--restart-seconds", type=float, default=None)
    p.add_argument("--heartbeat-interval", type=float, default=1.0)
    p.add_argument("--heartbeat-timeout", type=float, default=10.0)
    p.add_argument("--start-latency", type=float, default=0.0)
    p.add_argument("--transfer-per-byte", type=float, default=0.0)
    p.add_argument("--map-output-bytes", type=int, default=0)
    p.add_argument("--speculation", choices=NAMES, default="default",
                   help="backup rule (default: 75%% done, 1.5x the median)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def _cmd_simulate(args, out):
    """``mergeagg simulate``: one simulated job, its summary on ``out``.

    >>> main(["simulate", "--slow-machines", "1", "--slow-factor", "6",
    ...       "--speculation", "none"])  # doctest: +ELLIPSIS
    simulated 100 workers, 100 maps: 60.0 s, 0 backups (0 won), 0 retries, 0 workers lost
    task-seconds 1050 (0.0% beyond the winning attempts'), 6100 policy events in ... s
    0
    """
    from mergeagg.runtime.simulate import simulate

    duration = args.duration
    if args.lognormal:
        try:
            median, sigma = (float(x) for x in args.lognormal.split(","))
        except ValueError:
            raise _Usage(f"--lognormal wants MEDIAN,SIGMA, got {args.lognormal!r}") from None
        duration = ("lognormal", median, sigma)
    elif args.trace:
        duration = args.trace
    slow = args.slow_machines
    slow = int(slow) if slow >= 1 or slow == 0 else slow
    sim = simulate(workers=args.workers, maps=args.maps, reduces=args.reduces,
                   duration=duration, slow_attempts=args.slow_attempts, slow_machines=slow,
                   slow_factor=args.slow_factor, failure_p=args.failure_p,
                   crash_at=args.crash_at, kill_at=args.kill_at,
                   restart_seconds=args.restart_seconds,
                   heartbeat_interval=args.heartbeat_interval,
                   heartbeat_timeout=args.heartbeat_timeout, start_latency=args.start_latency,
                   transfer_per_byte=args.transfer_per_byte,
                   map_output_bytes=args.map_output_bytes, speculation=args.speculation,
                   seed=args.seed, timeline=False)
    summary = {"workers": args.workers, "maps": args.maps, "reduces": args.reduces,
               "seconds": sim.seconds, "backups_launched": sim.backups_launched,
               "backups_won": sim.backups_won, "retries": sim.retries,
               "workers_lost": sim.workers_lost, "task_seconds": sim.task_seconds,
               "extra_work": sim.extra_work, "events": sim.events,
               "wall_seconds": sim.wall_seconds}
    if args.json:
        out.write(json.dumps(summary) + "\n")
        return 0
    jobs = f"{args.maps} maps" + (f", {args.reduces} reduces" if args.reduces else "")
    out.write(f"simulated {args.workers} workers, {jobs}: {sim.seconds:.1f} s, "
              f"{sim.backups_launched} backups ({sim.backups_won} won), {sim.retries} "
              f"retries, {sim.workers_lost} workers lost\n")
    out.write(f"task-seconds {sim.task_seconds:.0f} ({100 * sim.extra_work:.1f}% beyond the "
              f"winning attempts'), {sim.events} policy events in {sim.wall_seconds:.2f} s\n")
    return 0
