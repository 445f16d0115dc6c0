"""The import arrows of docs/architecture.md, checked by parsing every module's imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("clip_core", "store", "indexer", "search", "clipsearch")
FORBIDDEN = {
    "clip_core": {"store", "indexer", "search", "clipsearch"},
    "store": {"clip_core", "indexer", "search", "clipsearch", "torch", "open_clip"},
    "indexer": {"search", "clipsearch"},
    "search": {"indexer", "clipsearch"},
}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_import_arrows_point_one_way():
    problems = []
    for package, forbidden in FORBIDDEN.items():
        for module in (REPO / package).rglob("*.py"):
            bad = imported_packages(module) & forbidden
            if bad:
                problems.append(f"{module.relative_to(REPO)} imports {sorted(bad)}")
    assert not problems, problems


def test_cli_uses_only_the_public_api():
    allowed = {"clipsearch", "click", "clip_core", "indexer", "store", "tqdm"}
    for name in ("cli.py", "cli_models.py"):
        imported = imported_packages(REPO / "clipsearch" / name)
        third_party = imported - allowed - set(sys.stdlib_module_names) - {"__future__"}
        assert not third_party, (name, third_party)
        assert "search" not in imported, "the CLI goes through clipsearch.api, not search/"


def test_server_uses_only_the_public_api():
    """clipsearch/server/ is a client of `clipsearch` like any app: the package's public
    names, never its modules' insides or the engine's packages."""
    engine = {"clip_core", "indexer", "search", "store"}
    for module in (REPO / "clipsearch" / "server").rglob("*.py"):
        tree = ast.parse(module.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert node.module.split(".")[0] not in engine, (module.name, node.module)
                if node.module.startswith("clipsearch"):  # the package, and how a server is
                    assert node.module in ("clipsearch", "clipsearch.remote"), node.module
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 1, (module.name, "reaches outside the server package")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] not in engine | {"clipsearch"}, alias.name


def test_store_and_search_import_without_torch():
    code = ("import sys, store, search, clip_core.model_ref, clip_core.images, "
            "clip_core.preprocess; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_importing_clipsearch_does_not_import_pandas():
    """sqlite_utils imports pandas when it is installed (Ray's extra brings it), ~250 ms and
    ~100 MB a cold query does not need: store.catalog keeps it out (an app that imported
    pandas first keeps sqlite_utils' pandas support)."""
    import importlib.util

    if importlib.util.find_spec("pandas") is None:
        pytest.skip("pandas is not installed here: nothing to keep out")
    code = ("import sys, clipsearch, store.catalog; assert 'pandas' not in sys.modules; "
            "import pandas, sqlite_utils.db as d; assert d.pd is None and pandas.DataFrame")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
