"""The layering rules of DESIGN.md, checked on the source: a module never imports another
module's underscore names, and the pure layers never import the runtime."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE_DIRS = {"mergeagg": "mergeagg", "runtime": "mergeagg.runtime",
                "algorithms": "mergeagg.algorithms"}
PURE = ("mergeagg.aggregator", "mergeagg.fingerprint", "mergeagg.inputs", "mergeagg.laws",
        "mergeagg.keyed", "mergeagg.errors", "mergeagg.algorithms")


def modules():
    for folder, package in PACKAGE_DIRS.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            yield name, path
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        yield f"benchmarks.{path.stem}", path


def imports(path):
    """(module imported, names imported from it) for every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, [a.name for a in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, [], node.lineno


def test_the_checker_sees_imports(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from mergeagg.runtime.api import _secret\nimport mergeagg.runtime\n")
    assert list(imports(bad)) == [("mergeagg.runtime.api", ["_secret"], 1),
                                  ("mergeagg.runtime", [], 2)]


@pytest.mark.parametrize("name,path", list(modules()), ids=lambda x: str(x))
def test_no_module_imports_another_modules_underscore_names(name, path):
    offences = [f"line {line}: from {module} import {n}"
                for module, names, line in imports(path) if module.startswith("mergeagg")
                for n in names if n.startswith("_") and not n.startswith("__")
                and n != "_version"]
    assert not offences, (f"{name} reaches into private names (make them public in a "
                          f"module both can import): {offences}")


@pytest.mark.parametrize("name,path", [(n, p) for n, p in modules() if n.startswith(PURE)],
                         ids=lambda x: str(x))
def test_the_pure_layers_never_import_the_runtime(name, path):
    offences = [f"line {line}: {module}" for module, _names, line in imports(path)
                if module.startswith("mergeagg.runtime")]
    assert not offences, f"{name} imports the runtime: {offences}"
