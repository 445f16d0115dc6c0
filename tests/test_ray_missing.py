"""`--ray` without the cluster extra: one clear message, exit 1, nothing indexed. Runs whether
or not Ray is installed (tests/test_ray.py needs it)."""

from __future__ import annotations

import sqlite3
import sys

from tests.helpers import cli, draw_photos
from tests.reliability_support import MODEL


def test_without_ray_the_option_says_how_to_install_it(monkeypatch, tmp_path):
    photos = tmp_path / "photos"
    draw_photos(photos, per_pair=1)
    monkeypatch.setitem(sys.modules, "ray", None)  # how Python marks a module not importable
    result = cli("index", str(photos), "--model", MODEL, "--ray", "auto",
                 library=tmp_path / "library", ok=False)
    assert result.exit_code == 1
    assert "pip install 'clipsearch[cluster]'" in result.stderr
    conn = sqlite3.connect(tmp_path / "library" / "catalog.db")
    try:  # a refused run indexes nothing
        assert conn.execute("SELECT count(*) FROM files").fetchone()[0] == 0
    finally:
        conn.close()
