"""The import arrows of docs/architecture.md, checked by parsing every module's imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("clip_core", "store", "indexer", "search", "clipsearch")
# The error family: one module at the bottom that every package may import (clip_core and
# store share it without knowing of each other); it imports nothing of the project.
ERRORS = "clipsearch_errors"
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


# clip_core's rooms, lowest first: a module imports only from its own room and those below.
# The bottom ("base": clip_core/*.py) and the next four are torch-free.
ROOMS = ("base", "pixels", "text", "models", "weights", "torch_backend", "compiled")
TORCH_FREE = {"base", "pixels", "text", "models", "weights"}
# Places a torch-free room may reach torch: none since open_clip's pretrained table is read in
# a subprocess (clip_core/models/open_clip_tables.py).
TORCH_FALLBACKS: dict[str, set[str]] = {}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def product_modules() -> dict[str, Path]:
    found = {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    return {**found, ERRORS: REPO / f"{ERRORS}.py"}


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Every project module `path` imports (at any depth of the file, lazily or not), except
    under `if TYPE_CHECKING:` (never run): `from a.b import c` counts as a.b.c when c is a
    module, else as a.b."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
            and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
            for n in ast.walk(node)}
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in known else base)
    return {name for name in found if name in known and name != own}


def test_the_error_family_imports_only_the_standard_library():
    imported = imported_packages(REPO / f"{ERRORS}.py")
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


def test_every_exception_class_is_in_the_family():
    """Every exception class the product defines derives from ClipsearchError (directly or
    through a category), so an app catches them all by one name and the CLI maps exit codes
    by category. Read from the source by class names: nothing is imported. (The HTTP
    layer's ApiError is a response, not an error of the library.)"""
    import builtins

    import clipsearch_errors

    family = {n for n, v in vars(clipsearch_errors).items() if isinstance(v, type)}
    errors = {n for n, v in vars(builtins).items()
              if isinstance(v, type) and issubclass(v, BaseException)}
    bases: dict[str, set[str]] = {}
    for name, path in product_modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and name != ERRORS:
                bases[f"{name}.{node.name}"] = {getattr(b, "id", getattr(b, "attr", ""))
                                                for b in node.bases}
    short = {full: full.rpartition(".")[2] for full in bases}
    changed = True
    while changed:  # close over subclasses of subclasses, by class name
        before = len(errors), len(family)
        for full, names in bases.items():
            if names & (errors | family):
                errors.add(short[full])
            if names & family:
                family.add(short[full])
        changed = (len(errors), len(family)) != before
    outside = sorted(full for full in bases if short[full] in errors - family
                     and short[full] != "ApiError")
    assert not outside, outside


def test_no_import_circles():
    """Tarjan's strongly connected components over the project's module graph: a circle
    means two modules cannot be read (or moved) apart."""
    modules = product_modules()
    graph = {name: imported_modules(path, set(modules)) for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for name in sorted(graph):
        if name not in index:
            visit(name)
    assert not circles, circles


def room_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ROOMS) else "base"


def test_clip_core_rooms_import_downward():
    modules = product_modules()
    problems = []
    for name, path in modules.items():
        if not name.startswith("clip_core."):
            continue
        mine = ROOMS.index(room_of(name))
        for target in imported_modules(path, set(modules)):
            if target.startswith("clip_core.") and ROOMS.index(room_of(target)) > mine:
                problems.append(f"{name} ({room_of(name)}) imports {target}")
    assert not problems, problems


def test_torch_free_rooms_never_import_torch():
    problems = []
    for path in (REPO / "clip_core").rglob("*.py"):
        if room_of(module_name(path)) not in TORCH_FREE:
            continue
        allowed = TORCH_FALLBACKS.get(str(path.relative_to(REPO)), set())
        bad = imported_packages(path) & ({"torch", "torchvision", "open_clip"} - allowed)
        if bad:
            problems.append(f"{path.relative_to(REPO)} imports {sorted(bad)}")
    assert not problems, problems


def test_cli_uses_only_the_public_api():
    """The CLI (its commands, error mapping, output and progress helpers) is an app of
    `clipsearch` like any other: besides click, tqdm and the standard library it imports
    only clipsearch itself, never the engine's packages (nor clipsearch_errors: the family
    comes re-exported)."""
    allowed = {"clipsearch", "click", "tqdm"} | set(sys.stdlib_module_names) | {"__future__"}
    folder = REPO / "clipsearch"
    modules = [*folder.glob("cli*.py"), folder / "output.py", folder / "progress.py"]
    assert len(modules) >= 7, modules
    for module in modules:
        imported = imported_packages(module)
        assert imported <= allowed, (module.name, imported - allowed)


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
    code = ("import sys, store, search, clip_core.models.ref, clip_core.pixels.decode, "
            "clip_core.pixels.preprocess; assert 'torch' not in sys.modules, 'torch imported'")
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
