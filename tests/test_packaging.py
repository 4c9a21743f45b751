"""A real (not editable) ``pip install .`` gives ``mergeagg.algorithms`` and ``mergeagg.runtime``.

The wheel is built offline: a fresh venv with ``--system-site-packages``, plus a ``.pth``
line that lets it see this interpreter's site-packages for the dependencies (numpy, mmh3,
cloudpickle) and the build backend (setuptools, wheel), so ``pip install --no-index
--no-build-isolation`` needs no download. The source is copied first, so the build leaves
nothing behind in the working tree.
"""

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["pyproject.toml", "README.md", "mergeagg", "algorithms", "runtime"]


def _run(cmd, **kwargs):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180,
                         stdin=subprocess.DEVNULL, **kwargs)
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.mark.slow
def test_pip_install_builds_a_working_wheel(tmp_path):
    if not (ROOT / "pyproject.toml").exists():
        pytest.skip("no source tree beside the tests")
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)])
    py = venv / "bin" / "python"
    purelib = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"
                         ]).strip())
    ours = [p for p in [*site.getsitepackages(), sysconfig.get_path("purelib")]
            if os.path.isdir(p)]
    (purelib / "_parent_site.pth").write_text("\n".join(dict.fromkeys(ours)) + "\n")

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    _run([str(py), "-m", "pip", "install", "--no-index", "--no-build-isolation", "--quiet",
          str(src)], env=env, cwd=tmp_path)

    # Outside the source tree, so nothing but the installed copy can be imported.
    probe = ("import mergeagg, mergeagg.algorithms, mergeagg.runtime, mergeagg.runtime.tree; "
             "print(mergeagg.__file__); print(mergeagg.algorithms.__file__); "
             "print(mergeagg.runtime.__file__); "
             "print(sorted(mergeagg.algorithms.registry.entries())[:1] and 'ok')")
    lines = _run([str(py), "-c", probe], env=env, cwd=tmp_path).split()
    assert all(Path(p).is_relative_to(purelib) for p in lines[:3]), lines
    assert lines[3] == "ok"

    catalog = _run([str(venv / "bin" / "mergeagg"), "catalog"], env=env, cwd=tmp_path)
    assert any(line.startswith("wordcount ") for line in catalog.splitlines())
    text = tmp_path / "t.txt"
    text.write_text("b a b\n")
    out = _run([str(venv / "bin" / "mergeagg"), "run", "wordcount", str(text), "--workers", "0"],
               env=env, cwd=tmp_path)
    assert out.splitlines()[0] == "3 words, 2 distinct"

    top_level = {p.name for p in purelib.iterdir()}
    assert "mergeagg" in top_level
    assert not top_level & {"algorithms", "runtime", "algorithms.py", "runtime.py"}, top_level
    assert (purelib / "mergeagg" / "algorithms" / "wordcount.py").exists()
    assert (purelib / "mergeagg" / "runtime" / "tree.py").exists()
