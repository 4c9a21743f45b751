"""Runtime figures (issue 13): backups on versus off on a clean run, and the driver's memory.

Two measurements of the fold word count (``mergeagg.algorithms.wordcount()``, 2 workers):

* **backups on vs off, clean run** (no faults): each pair runs the same job with
  ``backups=True`` and ``backups=False`` back to back in one process (the order alternates
  from pair to pair), after an untimed first run in that process (it starts the workers'
  machinery and warms the page cache; its time is printed as ``cold``). For each run: the
  time of the ``run`` call, the report's ``wall_seconds``, the sum of ``report.phases``,
  backups launched/won. Target: on/off within 3% (it used to stall ~1 s at close whenever
  a backup had been launched). Workloads: a small job (``/usr/share/common-licenses/*``,
  or 17 small generated files where that is missing), a ~20 MB and the 200 MB Zipf corpus
  of ``workloads.py``.
* **driver memory**: each job runs in a fresh process, which reports its own peak RSS
  (``VmHWM``, the high-water mark that ``getrusage(RUSAGE_SELF).ru_maxrss`` reports,
  read from /proc/self/status: the driver only, never its workers), its RSS
  before the job, and the bytes that passed through the master: the report's
  ``master_bytes_sent``/``master_bytes_received`` counters where the runtime has them
  ("n/a" otherwise), and, for every runtime, the growth of the process's ``rchar`` and
  ``wchar`` (``/proc/self/io``: every byte it read or wrote by system call, sockets, pipes
  and files alike) over the job. Inputs: the ~20 MB corpus and 1 GB made of five copies
  of the 200 MB corpus, each with its lines rotated by a different offset (copy 0 is the
  corpus itself), so the files differ. Target: peak(1 GB) <= 1.2x peak(20 MB).

Every job runs in a child process of the interpreter that runs this script, so the figures
are those of the mergeagg installed there. ``--baseline-python PATH`` adds a second
interpreter (another venv, e.g. an older build): each repetition then runs the same
measurement under both, in alternating order, and prints the after/before ratio of each
adjacent pair. Every line carries ``/proc/loadavg`` as read when its job ran; read ratios
within one pair. A child that does not finish within ``--timeout`` seconds is killed with
its process group and reported as HANG.

Files: the Zipf corpora are cached by ``workloads.zipf_corpus`` (``$MERGEAGG_BENCH_CACHE``
or ``<tmp>/mergeagg-bench``); the four rotated copies (800 MB at the reference size) are
written to a temporary directory inside that cache and removed at the end, unless
``--keep-corpus`` keeps them there for the next run (the script prints where and how big).

    python benchmarks/bench_runtime.py                       # reference sizes, 2 repetitions
    python benchmarks/bench_runtime.py --baseline-python /path/to/old/.venv/bin/python
    python benchmarks/bench_runtime.py --only memory         # or: --only backups
    python benchmarks/bench_runtime.py --smoke               # what CI runs: tiny, seconds
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from workloads import SMOKE_CORPUS_BYTES, cache_dir, parse_size, zipf_corpus  # noqa: E402

BACKUPS_TARGET = 0.03  # |on / off - 1|
MEMORY_TARGET = 1.2  # peak RSS on the big input / on the small one
WORKERS = 2
SMALL_FILES = "/usr/share/common-licenses/*"
COUNTERS = ("master_bytes_sent", "master_bytes_received")


# ---------------------------------------------------------------------------------------
# The child: runs jobs with the mergeagg of its interpreter, prints one JSON line.

def _loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") \
            else "n/a"


def _proc_io():
    """``(rchar, wchar)`` of this process, or ``None`` where /proc/self/io is missing."""
    try:
        with open("/proc/self/io") as f:
            fields = dict(line.split(":") for line in f if ":" in line)
        return int(fields["rchar"]), int(fields["wchar"])
    except (OSError, KeyError, ValueError):
        return None


def _rss_now():
    """Current RSS in bytes (from /proc/self/statm), or ``None``."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _peak_rss():
    """This process's peak RSS in bytes: ``VmHWM`` of /proc/self/status where it exists,
    else ``getrusage(RUSAGE_SELF).ru_maxrss``.

    On Linux, ``ru_maxrss`` survives ``execve``: a child starts with its parent's peak at
    the fork (here a Python with numpy, ~55 MiB), which would hide a smaller driver's peak.
    ``VmHWM`` is the high-water mark of the current address space only (the same counter
    the kernel folds into ``ru_maxrss``), so it is the driver's own peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux: KiB


def _one_run(mergeagg, agg, paths, backups):
    load = _loadavg()
    start = time.perf_counter()
    result = mergeagg.run(agg, paths, workers=WORKERS, backups=backups, progress=False)
    call = time.perf_counter() - start
    rep = result.report
    return {"backups": backups, "call": call, "wall": rep.wall_seconds,
            "phases": sum(rep.phases.values()), "phase_detail": dict(rep.phases),
            "launched": rep.backups_launched, "won": rep.backups_won,
            "maps": len(rep.attempts), "fingerprint": result.fingerprint, "load": load}


def child_backups(spec):
    import mergeagg
    agg = mergeagg.algorithms.wordcount()
    cold = _one_run(mergeagg, agg, spec["warmup"], True)
    pairs = []
    for i in range(spec["pairs"]):
        first = (i + spec["first_off"]) % 2 == 0
        runs = {}
        for backups in (first, not first):
            runs["on" if backups else "off"] = _one_run(mergeagg, agg, spec["paths"], backups)
        runs["order"] = "on,off" if first else "off,on"
        pairs.append(runs)
    return {"cold": cold, "pairs": pairs}


def child_memory(spec):
    import mergeagg
    agg = mergeagg.algorithms.wordcount()
    rss_before, peak_before, io_before = _rss_now(), _peak_rss(), _proc_io()
    load = _loadavg()
    start = time.perf_counter()
    result = mergeagg.run(agg, spec["paths"], workers=WORKERS, progress=False)
    call = time.perf_counter() - start
    io_after, peak = _proc_io(), _peak_rss()
    rep = result.report
    counters = getattr(rep, "counters", None) or {}
    return {"load": load, "call": call, "peak": peak, "peak_before": peak_before,
            "rss_before": rss_before, "maps": len(rep.attempts),
            "bytes_read": rep.bytes_read, "fingerprint": result.fingerprint,
            "counters": {k: counters.get(k) for k in COUNTERS},
            "rchar": None if io_before is None else io_after[0] - io_before[0],
            "wchar": None if io_before is None else io_after[1] - io_before[1]}


def child_main(spec_json):
    spec = json.loads(spec_json)
    import mergeagg
    out = {"mergeagg": os.path.dirname(os.path.abspath(mergeagg.__file__)),
           "version": getattr(mergeagg, "__version__", "?")}
    out.update(child_backups(spec) if spec["mode"] == "backups" else child_memory(spec))
    print(json.dumps(out))
    return 0


# ---------------------------------------------------------------------------------------
# The parent: prepares inputs, runs children under each interpreter, prints pairs.

class Hang(Exception):
    pass


def run_child(python, spec, timeout):
    """Run one child measurement; returns its JSON dict. Raises :class:`Hang` past
    ``timeout`` (after killing the child's whole process group) and RuntimeError when the
    child fails."""
    cmd = [python, os.path.abspath(__file__), "--child", json.dumps(spec)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise Hang(f"no answer within {timeout:.0f}s: {' '.join(cmd[:2])} --child "
                   f"'{cmd[3]}'") from None
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"child failed (exit {proc.returncode}): {err.strip()[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])


def small_job(tmp):
    """The small job's files: /usr/share/common-licenses/*, else 17 generated files."""
    paths = sorted(p for p in glob.glob(SMALL_FILES) if os.path.isfile(p))
    if paths:
        return paths, SMALL_FILES
    with open(zipf_corpus(SMOKE_CORPUS_BYTES), "rb") as f:
        data = f.read(300_000)
    data = data[:data.rfind(b"\n") + 1]
    step = -(-len(data) // 17)
    paths = []
    pos = 0
    for i in range(17):
        end = data.find(b"\n", min(pos + step, len(data)) - 1) + 1 or len(data)
        path = os.path.join(tmp, f"small-{i:02d}.txt")
        with open(path, "wb") as f:
            f.write(data[pos:end])
        paths.append(path)
        pos = end
    return paths, f"17 generated files in {tmp}"


def _copy_range(src, dst, start, stop):
    src.seek(start)
    left = stop - start
    while left > 0:
        chunk = src.read(min(left, 1 << 22))
        if not chunk:
            break
        dst.write(chunk)
        left -= len(chunk)


def rotated_copies(path, copies, directory):
    """``copies`` files: ``path`` itself, then copies of it with its lines rotated to start
    near ``i / copies`` of the way in (whole lines, so every file has the same lines and the
    same word count, in another order). Existing copies in ``directory`` are reused."""
    size = os.path.getsize(path)
    base = os.path.splitext(os.path.basename(path))[0]
    out = [path]
    with open(path, "rb") as src:
        for i in range(1, copies):
            dst_path = os.path.join(directory, f"{base}-rot{i}of{copies}.txt")
            out.append(dst_path)
            if os.path.exists(dst_path) and os.path.getsize(dst_path) == size:
                continue
            src.seek(i * size // copies)
            src.readline()
            offset = src.tell()
            tmp = f"{dst_path}.{os.getpid()}.tmp"
            with open(tmp, "wb") as dst:
                _copy_range(src, dst, offset, size)
                _copy_range(src, dst, 0, offset)
            os.replace(tmp, dst_path)
    return out


def _mb(n):
    return "n/a" if n is None else f"{n / 1e6:.3f}"


def _mib(n):
    return "n/a" if n is None else f"{n / 2**20:.1f}"


def _med(xs):
    return statistics.median(xs) if xs else None


def _fmt_ratio(x):
    return "n/a" if x is None else f"{x:.3f}x"


def bench_backups(workloads, pythons, args):
    print("\n== 1. backups on vs off, clean run (fold word count, "
          f"{WORKERS} workers) ==")
    fingerprints = {}
    for name, paths, pairs in workloads:
        nbytes = sum(os.path.getsize(p) for p in paths)
        print(f"\n-- {name}: {len(paths)} file(s), {nbytes / 1e6:.1f} MB; {pairs} on/off "
              f"pair(s) per process; ratio = on / off of the run call's time --")
        print(f"{'rep':>3} {'mergeagg':<24} {'loadavg':<15} {'order':<7} "
              f"{'on: call':>8} {'wall':>6} {'phases':>6} {'bk':>4}  "
              f"{'off: call':>9} {'wall':>6} {'phases':>6} {'bk':>4}  "
              f"{'on/off':>7} {'wall':>7}")
        per = {label: {"ratio": [], "wall_ratio": [], "on": [], "off": [], "cold": []}
               for label, _ in pythons}
        adjacent = []  # (rep, {label: median on call})
        for rep in range(args.repeat):
            order = pythons if rep % 2 == 0 else pythons[::-1]
            on_calls = {}
            for label, python in order:
                spec = {"mode": "backups", "paths": paths, "warmup": workloads[0][1],
                        "pairs": pairs, "first_off": rep % 2}
                try:
                    res = run_child(python, spec, args.timeout)
                except (Hang, RuntimeError) as exc:
                    print(f"{rep + 1:>3} {label:<24} {_loadavg():<15} "
                          f"{'HANG' if isinstance(exc, Hang) else 'FAILED'}: {exc}")
                    continue
                cold = res["cold"]
                per[label]["cold"].append(cold["call"])
                calls = []
                for pair in res["pairs"]:
                    on, off = pair["on"], pair["off"]
                    ratio, wall_ratio = on["call"] / off["call"], on["wall"] / off["wall"]
                    per[label]["ratio"].append(ratio)
                    per[label]["wall_ratio"].append(wall_ratio)
                    per[label]["on"].append(on)
                    per[label]["off"].append(off)
                    calls.append(on["call"])
                    for run in (on, off):
                        fingerprints.setdefault((name, label), set()).add(run["fingerprint"])
                    print(f"{rep + 1:>3} {label:<24} {on['load']:<15} {pair['order']:<7} "
                          f"{on['call']:7.3f}s {on['wall']:5.3f}s {on['phases']:5.3f}s "
                          f"{on['launched']:>2}/{on['won']:<1}  "
                          f"{off['call']:8.3f}s {off['wall']:5.3f}s {off['phases']:5.3f}s "
                          f"{off['launched']:>2}/{off['won']:<1}  "
                          f"{ratio:6.3f}x {wall_ratio:6.3f}x")
                print(f"{'':>3} {'':<24} {cold['load']:<15} cold first run in the process "
                      f"(backups on): call {cold['call']:.3f}s, phases "
                      + ", ".join(f"{k} {v:.3f}s" for k, v in cold["phase_detail"].items()
                                  if v >= 0.0005))
                on_calls[label] = _med(calls)
            adjacent.append((rep, on_calls))
        print(f"   summary ({name}): median over pairs; bk = backups launched/won")
        for label, _ in pythons:
            p = per[label]
            if not p["ratio"]:
                continue
            ratio = _med(p["ratio"])
            verdict = "met" if abs(ratio - 1) <= BACKUPS_TARGET else "MISSED"
            print(f"     {label:<24} on/off {ratio:.3f}x (wall {_med(p['wall_ratio']):.3f}x) "
                  f"[within {BACKUPS_TARGET:.0%}: {verdict}]; on: call "
                  f"{_med([r['call'] for r in p['on']]):.3f}s, phases "
                  f"{_med([r['phases'] for r in p['on']]):.3f}s, backups launched "
                  f"{sum(r['launched'] for r in p['on'])}; off: call "
                  f"{_med([r['call'] for r in p['off']]):.3f}s, phases "
                  f"{_med([r['phases'] for r in p['off']]):.3f}s; cold first run "
                  f"{_med(p['cold']):.3f}s")
            launched = [r for r in p["on"] if r["launched"]]
            gaps = [r["wall"] - r["phases"] for r in p["on"] + p["off"]]
            print(f"     {'':<24} wall - sum of phases: median {_med(gaps):.3f}s, max "
                  f"{max(gaps):.3f}s; runs that launched a backup: {len(launched)} of "
                  f"{len(p['on'])}" + (f", their wall - phases max "
                                       f"{max(r['wall'] - r['phases'] for r in launched):.3f}s"
                                       if launched else ""))
        if len(pythons) == 2:
            (base, _), (cont, _) = pythons
            ratios = [c[cont] / c[base] for _, c in adjacent if base in c and cont in c]
            if ratios:
                print(f"     {cont} / {base}, backups on, call time of each adjacent pair: "
                      + ", ".join(f"{r:.3f}x" for r in ratios)
                      + f" (median {_med(ratios):.3f}x)")
    return fingerprints


def bench_memory(inputs, pythons, args):
    print(f"\n== 2. driver memory: fold word count, {WORKERS} workers, each job in a fresh "
          "process; peak = the driver process's peak RSS (VmHWM) ==")
    print(f"{'rep':>3} {'mergeagg':<24} {'loadavg':<15} {'input':<8} {'maps':>4} "
          f"{'call':>7} {'peak MiB':>8} {'before':>7} {'growth':>7} "
          f"{'sent MB':>8} {'recv MB':>8} {'rchar MB':>8} {'wchar MB':>8}")
    peaks = {label: {name: [] for name, _ in inputs} for label, _ in pythons}
    ratios = {label: [] for label, _ in pythons}
    fingerprints = {}
    for rep in range(args.repeat):
        order = pythons if rep % 2 == 0 else pythons[::-1]
        for label, python in order:
            got = {}
            for name, paths in inputs:
                try:
                    res = run_child(python, {"mode": "memory", "paths": paths}, args.timeout)
                except (Hang, RuntimeError) as exc:
                    print(f"{rep + 1:>3} {label:<24} {_loadavg():<15} {name:<8} "
                          f"{'HANG' if isinstance(exc, Hang) else 'FAILED'}: {exc}")
                    continue
                got[name] = res["peak"]
                peaks[label][name].append(res["peak"])
                fingerprints.setdefault((name, label), set()).add(res["fingerprint"])
                c = res["counters"]
                print(f"{rep + 1:>3} {label:<24} {res['load']:<15} {name:<8} {res['maps']:>4} "
                      f"{res['call']:6.2f}s {_mib(res['peak']):>8} "
                      f"{_mib(res['peak_before']):>7} "
                      f"{_mib(res['peak'] - res['peak_before']):>7} "
                      f"{_mb(c['master_bytes_sent']):>8} {_mb(c['master_bytes_received']):>8} "
                      f"{_mb(res['rchar']):>8} {_mb(res['wchar']):>8}")
            small, big = inputs[0][0], inputs[-1][0]
            if small in got and big in got:
                ratio = got[big] / got[small]
                ratios[label].append(ratio)
                print(f"{'':>3} {label:<24} peak {big} / peak {small}: {ratio:.3f}x "
                      f"(target <= {MEMORY_TARGET}x: "
                      f"{'met' if ratio <= MEMORY_TARGET else 'MISSED'})")
    print("   before = the driver's peak RSS once mergeagg is imported, before the job; "
          "growth = peak - before;\n   sent/recv = the report's master_bytes_sent/received "
          "(n/a: this runtime has no such counter);\n   rchar/wchar = bytes the driver "
          "process read/wrote by system call during the job (/proc/self/io: sockets, "
          "pipes, files)")
    for label, _ in pythons:
        if ratios[label]:
            print(f"   {label:<24} peak {inputs[-1][0]} / peak {inputs[0][0]}: median "
                  f"{_med(ratios[label]):.3f}x over {len(ratios[label])} repetition(s)")
    return fingerprints


def check_fingerprints(fingerprints):
    """Prints the fingerprints per workload; returns False when one interpreter gave two."""
    ok = True
    by_workload = {}
    for (name, label), fps in sorted(fingerprints.items()):
        if len(fps) > 1:
            ok = False
            print(f"ERROR: {label} gave {len(fps)} different fingerprints on {name}: "
                  f"{sorted(fps)}", file=sys.stderr)
        by_workload.setdefault(name, {})[label] = fps
    for name, per in by_workload.items():
        distinct = set().union(*per.values())
        if len(per) > 1 and len(distinct) > 1:
            print(f"note: {name}: the interpreters' fingerprints differ: "
                  + "; ".join(f"{label} {sorted(f)[0][:16]}" for label, f in per.items()))
    return ok


def _label(python):
    try:
        out = subprocess.run([python, "-c", "import mergeagg, os; print(os.path.dirname("
                              "os.path.dirname(os.path.abspath(mergeagg.__file__))))"],
                             capture_output=True, text=True, timeout=120,
                             stdin=subprocess.DEVNULL)
        where = out.stdout.strip() or python
    except (OSError, subprocess.SubprocessError):
        where = python
    return os.path.basename(where.rstrip("/")) or where


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="200M",
                    help="the big corpus (default 200M); the memory run uses 5 rotated copies")
    ap.add_argument("--medium", default="20M", help="the ~20 MB corpus (default 20M)")
    ap.add_argument("--copies", type=int, default=5, help="copies in the memory run (5)")
    ap.add_argument("--repeat", type=int, default=2, help="repetitions (default 2)")
    ap.add_argument("--pairs-small", type=int, default=5,
                    help="on/off pairs per process on the small job (default 5)")
    ap.add_argument("--pairs-medium", type=int, default=3,
                    help="on/off pairs per process on the ~20 MB corpus (default 3)")
    ap.add_argument("--pairs-big", type=int, default=1,
                    help="on/off pairs per process on the big corpus (default 1)")
    ap.add_argument("--only", choices=("backups", "memory"), help="run one measurement")
    ap.add_argument("--baseline-python", metavar="PATH",
                    help="also run every measurement under this interpreter, alternating")
    ap.add_argument("--keep-corpus", action="store_true",
                    help="keep the rotated copies in the benchmark cache for the next run")
    ap.add_argument("--timeout", type=float, default=900.0,
                    help="seconds before a child is killed and reported as HANG (900)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, 1 repetition, for CI")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        return child_main(args.child)
    if args.smoke:
        args.size, args.medium, args.repeat = SMOKE_CORPUS_BYTES, 1_000_000, 1
        args.pairs_small, args.pairs_medium, args.pairs_big = 1, 1, 1
        args.timeout = min(args.timeout, 240.0)
    big_size, medium_size = parse_size(args.size), parse_size(args.medium)

    pythons = [(_label(sys.executable), sys.executable)]
    if args.baseline_python:
        pythons.insert(0, (_label(args.baseline_python), args.baseline_python))
        if pythons[0][0] == pythons[1][0]:
            pythons = [(f"baseline:{pythons[0][0]}", pythons[0][1]),
                       (f"this:{pythons[1][0]}", pythons[1][1])]
    print("runtime benchmark: " + ", ".join(f"{label} = {python}" for label, python in pythons))
    print(f"loadavg at start: {_loadavg()}; seed: workloads.ZIPF_SEED; workers={WORKERS}")

    tmp = tempfile.mkdtemp(prefix="mergeagg-bench-runtime-")
    rotated_dir = None
    ok = True
    try:
        small, small_name = small_job(tmp)
        medium = zipf_corpus(medium_size)
        big = zipf_corpus(big_size)
        print(f"inputs: small = {small_name}; medium = {medium} "
              f"({os.path.getsize(medium) / 1e6:.1f} MB); big = {big} "
              f"({os.path.getsize(big) / 1e6:.1f} MB), cached in {cache_dir()}")
        fps = {}
        if args.only in (None, "backups"):
            workloads = [("small", small, args.pairs_small),
                         (f"{medium_size / 1e6:g}MB", [medium], args.pairs_medium),
                         (f"{big_size / 1e6:g}MB", [big], args.pairs_big)]
            fps.update(bench_backups(workloads, pythons, args))
        if args.only in (None, "memory"):
            if args.keep_corpus:
                rotated_dir = os.path.join(cache_dir(), f"rotated-{args.copies}x-{big_size}")
                os.makedirs(rotated_dir, exist_ok=True)
            else:
                rotated_dir = tempfile.mkdtemp(prefix="mergeagg-bench-rotated-",
                                               dir=cache_dir())
            start = time.perf_counter()
            copies = rotated_copies(big, args.copies, rotated_dir)
            total = sum(os.path.getsize(p) for p in copies)
            print(f"\nbig input: {args.copies} copies of {big}, lines rotated "
                  f"({total / 1e9:.2f} GB; copies 1-{args.copies - 1} in {rotated_dir}, "
                  f"ready in {time.perf_counter() - start:.1f}s)")
            inputs = [(f"{medium_size / 1e6:g}MB", [medium]),
                      (f"{total / 1e9:.2g}GB" if total >= 1e9 else f"{total / 1e6:.0f}MB",
                       copies)]
            fps.update(bench_memory(inputs, pythons, args))
        ok = check_fingerprints(fps)
        print(f"\nloadavg at the end: {_loadavg()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if rotated_dir is not None:
            if args.keep_corpus:
                kept = sum(os.path.getsize(os.path.join(rotated_dir, f))
                           for f in os.listdir(rotated_dir))
                print(f"kept the rotated copies in {rotated_dir} ({kept / 1e6:.0f} MB); "
                      "remove that directory when done")
            else:
                shutil.rmtree(rotated_dir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
