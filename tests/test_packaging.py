"""Packaging metadata: `make demo` / `pip install` must not print setuptools warnings, and
the typed package must say so (PEP 561)."""

from __future__ import annotations

import ast
import re
import sys
import warnings
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_is_read_without_setuptools_warnings():
    """A TOML-table license printed a deprecation warning three times per `make demo`."""
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert not [str(w.message) for w in caught]
    assert dist.metadata.license_expression == "MIT"


def test_every_package_ships_py_typed():
    """An app type-checking its use of clipsearch saw only Any: no PEP 561 marker."""
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert "py.typed" in dist.package_data.get("", [])  # "*" in pyproject: every package
    for package in ("clipsearch", "clip_core", "store", "indexer", "search"):
        assert (ROOT / package / "py.typed").is_file(), package


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _imported_modules() -> set[str]:
    """Top-level names of every absolute import in the package and its tests."""
    local = {"clipsearch", "clip_core", "store", "indexer", "search", "tests", "bench", "data",
             "clipsearch_errors", "clipsearch_entry"}
    found = set()
    for package in ("clipsearch", "clip_core", "store", "indexer", "search", "tests"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    found.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    found.add(node.module.split(".")[0])
    return found - local - set(sys.stdlib_module_names)


def test_every_imported_package_is_declared():
    """A module imported only because another package happens to require it (ftfy and
    regex through open_clip, starlette through fastapi) breaks when that package changes
    its own requirements: each distribution imported is named in pyproject (a dependency
    or an extra)."""
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    requirements = [*dist.install_requires, *(r for extra in dist.extras_require.values()
                                             for r in extra)]
    declared = {_norm(re.match(r"[A-Za-z0-9._-]+", str(r)).group()) for r in requirements}
    providers = metadata.packages_distributions()
    missing = {}
    for module in sorted(_imported_modules()):
        names = {_norm(d) for d in providers.get(module, [module])}
        if not names & declared:
            missing[module] = sorted(names)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_the_error_family_module_ships():
    """clipsearch_errors.py sits beside the packages (every one of them imports it)."""
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert {"clipsearch_errors", "clipsearch_entry"} <= set(dist.py_modules or [])
    assert (ROOT / "clipsearch_errors.py").is_file()
