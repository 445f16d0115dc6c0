"""The fast tier (`make test-fast`): its lists name real tests, and it needs no Ray or browser."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import SLOW_FILES, SLOW_TESTS

TESTS = Path(__file__).resolve().parent


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_every_slow_name_is_a_test_that_exists():
    """A renamed or deleted test would otherwise drop out of the list unnoticed (and a
    renamed slow test would land in the fast tier)."""
    for file in SLOW_FILES:
        assert (TESTS / file).is_file(), file
    for name in SLOW_TESTS:
        file, test = name.split("::")
        assert (TESTS / file).is_file(), name
        assert test in _test_names(TESTS / file), name
        assert file not in SLOW_FILES, f"{name}: its whole file is slow already"


def test_the_fast_tier_needs_neither_ray_nor_a_browser():
    """`make test-fast` runs in a plain dev install: the cluster extra and chromium stay
    for `make test`."""
    for path in sorted(TESTS.glob("test_*.py")):
        if path.name == Path(__file__).name:
            continue  # names them only
        text = path.read_text(encoding="utf-8")
        if any(need in text for need in ('importorskip("ray"', "import ray", "selenium",
                                         "chromium")):
            assert path.name in SLOW_FILES, path.name
