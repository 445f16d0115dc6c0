"""The library is private to its user: paths and hashes of someone's photos are personal
data (issue 10, item 3)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.helpers import cli_json, draw_photos
from tests.reliability_support import MODEL


def _modes(library: Path) -> dict[str, int]:
    modes = {".": stat.S_IMODE(library.stat().st_mode)}
    for path in library.rglob("*"):
        modes[str(path.relative_to(library))] = stat.S_IMODE(path.lstat().st_mode)
    return modes


def test_the_library_is_private_and_old_libraries_become_private(tmp_path):
    photos, library = tmp_path / "photos", tmp_path / "lib"
    draw_photos(photos, per_pair=1)
    old_umask = os.umask(0o022)
    try:
        cli_json("index", str(photos), "--model", MODEL, "-q", library=library)
        cli_json("query", "a red circle", library=library)  # writes the text tower
        modes = _modes(library)
        assert {"catalog.db", "vectors", "text-towers", "index.lock"} <= set(modes)
        expected = {p: 0o700 if (library / p).is_dir() else 0o600 for p in modes}
        assert modes == expected
        # A library made by an older version (0755 / 0644): private after the next write.
        for path in [library, *library.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        cli_json("index", "-q", library=library)
        assert _modes(library) == expected
    finally:
        os.umask(old_umask)
