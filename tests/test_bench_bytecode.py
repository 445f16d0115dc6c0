"""The bench compiles what pyproject.toml installs, and only that, before it times anything."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from bench.bytecode import REPO, compile_project, project_modules

pytestmark = pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib: Python 3.11+")


def _tree(root: Path) -> None:
    (root / "pyproject.toml").write_text(
        '[tool.setuptools]\npy-modules = ["top_mod"]\n'
        '[tool.setuptools.packages.find]\ninclude = ["pkg*"]\n')
    for name in ("pkg/__init__.py", "pkg/sub/__init__.py", "pkg/sub/deep.py",
                 "pkg_extra/__init__.py", "tests/__init__.py", "tests/test_x.py"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("VALUE = 1\n")
    (root / "top_mod.py").write_text("VALUE = 2\n")
    (root / "pkg.egg-info").mkdir()  # matches the pattern, but is no package


def _bytecode(source: Path) -> Path:
    return Path(importlib.util.cache_from_source(str(source)))


def test_installed_packages_and_modules_compile_and_nothing_else(tmp_path):
    _tree(tmp_path)
    assert project_modules(tmp_path) == [tmp_path / "pkg", tmp_path / "pkg_extra",
                                         tmp_path / "top_mod.py"]
    assert compile_project(tmp_path)
    for name in ("pkg/__init__.py", "pkg/sub/deep.py", "pkg_extra/__init__.py", "top_mod.py"):
        assert _bytecode(tmp_path / name).is_file(), name
    assert not _bytecode(tmp_path / "tests/test_x.py").exists()


def test_a_changed_module_is_compiled_again_and_the_rest_left(tmp_path):
    _tree(tmp_path)
    compile_project(tmp_path)
    deep, top = tmp_path / "pkg/sub/deep.py", tmp_path / "top_mod.py"
    before = {path: _bytecode(path).stat().st_mtime_ns for path in (deep, top)}
    deep.write_text("VALUE = 3  # changed\n")
    os.utime(deep, ns=(before[deep] + 10**9, before[deep] + 10**9))
    assert compile_project(tmp_path)
    assert _bytecode(deep).stat().st_mtime_ns != before[deep]
    assert _bytecode(top).stat().st_mtime_ns == before[top]


def test_a_module_that_does_not_compile_is_reported(tmp_path):
    _tree(tmp_path)
    (tmp_path / "pkg/broken.py").write_text("def (:\n")
    assert not compile_project(tmp_path)


def test_the_repository_compiles_its_installed_packages():
    names = {path.name for path in project_modules(REPO)}
    assert {"clipsearch", "clip_core", "store", "indexer", "search",
            "clipsearch_errors.py", "clipsearch_entry.py"} <= names
    assert not names & {"tests", "bench", "data", "clipsearch.egg-info"}
