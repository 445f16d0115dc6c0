"""Packaging metadata: `make demo` / `pip install` must not print setuptools warnings, and
the typed package must say so (PEP 561)."""

from __future__ import annotations

import warnings
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


def test_the_error_family_module_ships():
    """clipsearch_errors.py sits beside the packages (every one of them imports it)."""
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert "clipsearch_errors" in (dist.py_modules or [])
    assert (ROOT / "clipsearch_errors.py").is_file()
