"""Every ``notebooks/*.ipynb`` runs top to bottom on this interpreter, at its small size.

Each notebook runs in a fresh ``python3`` kernel whose kernelspec points at the interpreter
running the tests (so the kernel sees the installed mergeagg), with ``notebooks/`` as its
working directory and ``MERGEAGG_SMALL=1``.
"""

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT = 300


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    # A kernelspec of our own, first on JUPYTER_PATH: a user-level "python3" kernel that
    # points at another interpreter cannot take the run over.
    spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (tests)", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("MERGEAGG_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "agg")


def test_the_quickstart_is_there():
    assert "01_quickstart.ipynb" in {p.name for p in NOTEBOOKS}


def test_notebooks_are_committed_without_outputs():
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        dirty = [i for i, c in enumerate(nb.cells)
                 if c.cell_type == "code" and (c.outputs or c.execution_count)]
        assert not dirty, f"{path.name}: cells {dirty} carry outputs; clear them"


_RUNNER = """
import sys
import nbclient
import nbformat

path, cwd, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3])
nb = nbformat.read(path, as_version=4)
client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                 resources={"metadata": {"path": cwd}})
client.execute()  # raises CellExecutionError naming the cell and its traceback
errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
          if o.output_type == "error"]
if errors:
    sys.exit("error outputs: " + repr(errors))
"""


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, kernel_env):
    # In a subprocess: the kernel client's sockets and event loop never outlive it, so
    # nothing is reported late by the garbage collector of the test process.
    import os
    import subprocess

    proc = subprocess.run([sys.executable, "-c", _RUNNER, str(path), str(NOTEBOOK_DIR),
                           str(CELL_TIMEOUT)], capture_output=True, text=True,
                          env=dict(os.environ), timeout=CELL_TIMEOUT * 4)
    assert proc.returncode == 0, f"{path.name} failed:\n{proc.stderr[-4000:]}"
