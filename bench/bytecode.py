"""The project's modules compiled to bytecode before anything is timed, as an install has them.

    python -m bench.bytecode

pip compiles a package's modules into __pycache__ as it installs them, and Python writes the
rest at first import. An editable checkout run with PYTHONDONTWRITEBYTECODE set (this
workplace's shells, some CI images) compiles every module from source in every process
instead: ~150 ms more per clipsearch command (a cold `clipsearch query` on the AMX VM:
0.72-1.0 s against 0.49-0.60 s with the bytecode in place). The bench times clipsearch as a
user runs it once installed, so it compiles the modules pyproject.toml installs first (only
those whose source changed since; __pycache__ is git-ignored). Python still checks each
file's source time and size against its bytecode, so a stale one is never run.
"""

from __future__ import annotations

import compileall
import fnmatch
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def project_modules(root: Path = REPO) -> list[Path]:
    """The top-level packages (folders) and modules (files) that pyproject.toml installs:
    its setuptools `packages.find` include patterns and `py-modules`. Empty on Python 3.10,
    which has no tomllib (the bench then times what it finds)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        return []
    with open(root / "pyproject.toml", "rb") as handle:
        setuptools = tomllib.load(handle).get("tool", {}).get("setuptools", {})
    patterns = setuptools.get("packages", {}).get("find", {}).get("include", [])
    packages = [path for path in sorted(root.iterdir())
                if (path / "__init__.py").is_file()
                and any(fnmatch.fnmatch(path.name, pattern) for pattern in patterns)]
    return packages + [root / f"{name}.py" for name in setuptools.get("py-modules", [])]


def compile_project(root: Path = REPO) -> bool:
    """Write the bytecode of every module project_modules names whose source is newer than
    it; False when one does not compile (its import will say why)."""
    ok = True
    for path in project_modules(root):
        if path.is_dir():
            ok = bool(compileall.compile_dir(path, quiet=1)) and ok
        elif path.is_file():
            ok = bool(compileall.compile_file(path, quiet=1)) and ok
    return ok


if __name__ == "__main__":
    sys.exit(0 if compile_project() else 1)
