"""Execute notebooks in place at their full size, for committing them with their outputs.

    .venv/bin/python notebooks/execute.py notebooks/02_failures.ipynb [more.ipynb ...]

Each runs top to bottom in a fresh ``python3`` kernel of this interpreter, from
``notebooks/``, without ``MERGEAGG_SMALL`` (so at full size), with the inline plot backend and
without per-cell timing metadata (which would change on every run), in a temporary directory
of its own: what the notebook leaves there is printed, then removed. The load of the machine
is printed beside each run's time: timings in a notebook run on a busy machine say so.
"""

import os
import sys
import tempfile
import time

import nbclient
import nbformat

# The kernel's own multiprocessing folder; see tests/test_notebooks.py.
KERNEL_OWNED_PREFIX = "pymp-"


def _load():
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            return "load " + " ".join(f.read().split()[:3])
    except OSError:
        return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def execute(path):
    nb = nbformat.read(path, as_version=4)
    env = {k: os.environ.pop(k) for k in ("MERGEAGG_SMALL", "MPLBACKEND") if k in os.environ}
    start, before = time.perf_counter(), _load()
    try:
        with tempfile.TemporaryDirectory(prefix="notebook-") as tmp:
            saved, os.environ["TMPDIR"] = os.environ.get("TMPDIR"), tmp
            try:
                nbclient.NotebookClient(
                    nb, timeout=3600, kernel_name="python3", record_timing=False,
                    resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}},
                ).execute()
            finally:
                os.environ.pop("TMPDIR")
                if saved is not None:
                    os.environ["TMPDIR"] = saved
            left = [n for n in os.listdir(tmp) if not n.startswith(KERNEL_OWNED_PREFIX)]
    finally:
        os.environ.update(env)
    nbformat.write(nb, path)
    print(f"{path}: {time.perf_counter() - start:.0f} s ({before} before, {_load()} after)"
          + (f"; LEFT BEHIND {left}" if left else ""))
    return not left


if __name__ == "__main__":
    sys.exit(0 if all([execute(p) for p in sys.argv[1:]]) else 1)
