"""The doctests of every module of the installed package, and of README.md.

Modules are found by walking the installed ``mergeagg``, ``mergeagg.algorithms`` and
``mergeagg.runtime`` packages and imported by their package names, so no module is imported
twice under two names. docs/*.md are collected by pytest itself (``--doctest-glob=*.md``).
"""

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

FLAGS = doctest.ELLIPSIS
ROOT = Path(__file__).resolve().parent.parent


def _module_names():
    # The three parts are walked one by one: in an editable install the subpackages are
    # mapped from algorithms/ and runtime/, not found inside mergeagg/'s own folder.
    import mergeagg.algorithms
    import mergeagg.runtime

    names = set()
    for pkg in (mergeagg, mergeagg.algorithms, mergeagg.runtime):
        names.add(pkg.__name__)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=pkg.__name__ + "."):
            names.add(info.name)
    return sorted(names)


MODULES = _module_names()


def test_the_walk_reaches_all_three_parts():
    assert {"mergeagg.aggregator", "mergeagg.algorithms.wordcount",
            "mergeagg.runtime.tree"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_module_doctests(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    report = []
    for test in finder.find(module, name):
        runner.run(test, out=report.append)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, "".join(report)


def test_readme_examples():
    readme = ROOT / "README.md"
    if not readme.exists():  # an installed copy of the tests without the source tree
        pytest.skip("README.md is not beside the tests")
    results = doctest.testfile(str(readme), module_relative=False, optionflags=FLAGS,
                               report=True, verbose=False)
    assert results.attempted >= 4
    assert results.failed == 0
