"""A library that indexes itself: `clipsearch serve --watch` and `clipsearch watch` make new,
changed, moved and deleted photos searchable or gone within 5 s of the change."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

from clipsearch import Library
from clipsearch.shapes import draw
from tests.serve_support import REPO, indexed_library, start_server

WITHIN = 5.0  # seconds from a change to the library reflecting it (issue 13)


def picture(path: Path, colour: str, shape: str, seed: int) -> bytes:
    import random

    path.parent.mkdir(parents=True, exist_ok=True)
    draw(colour, shape, rng=random.Random(seed), size=96).save(path, "PNG")
    return path.read_bytes()


def api(base: str, path: str, **params) -> dict:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def until(check, what: str) -> float:
    """Seconds until `check()` is true; fails past WITHIN."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < WITHIN, f"{what}: not within {WITHIN} s"
        time.sleep(0.1)
    return time.monotonic() - start


def test_serve_watch_follows_add_change_move_delete(tmp_path):
    lib_dir = indexed_library(tmp_path)
    photos = lib_dir.parent / "photos"
    proc, base = start_server(lib_dir, "--watch")

    def paths() -> dict[str, int]:
        hits = api(base, "/api/search", q="a red circle", limit=100)["results"]
        return {h["path"]: h["file_id"] for h in hits}

    try:
        until(lambda: api(base, "/api/status")["index"].get("state") == "done", "first run")
        added = photos / "new" / "zz-added.png"
        picture(added, "red", "circle", 1)
        until(lambda: str(added) in paths(), "a new photo")

        data = picture(added, "blue", "star", 2)  # the same name, other content
        digest = hashlib.sha256(data).hexdigest()

        def changed() -> bool:
            file_id = paths().get(str(added))
            info = api(base, f"/api/file/{file_id}/info") if file_id else {}
            return info.get("content_hash") == digest
        until(changed, "a changed photo")

        moved = photos / "elsewhere" / "zz-moved.png"
        moved.parent.mkdir()
        os.rename(added, moved)
        until(lambda: str(moved) in paths() and str(added) not in paths(), "a moved photo")

        os.unlink(moved)
        until(lambda: str(moved) not in paths(), "a deleted photo")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    with Library(lib_dir) as lib:
        assert lib.catalog.problems() == [] and lib.status().indexed == 24


def test_clipsearch_watch_indexes_new_photos_until_ctrl_c(tmp_path):
    lib_dir = indexed_library(tmp_path)
    photos = lib_dir.parent / "photos"
    proc = subprocess.Popen(
        [sys.executable, "-m", "clipsearch.cli", "watch", "--library", str(lib_dir)],
        stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")))
    reader.start()
    try:
        added = photos / "zz-added.png"
        picture(added, "green", "star", 3)
        until(lambda: any("indexed 1," in line for line in lines), "a new photo")
        with Library(lib_dir) as lib:
            assert lib.catalog.file_id(str(added)) is not None
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        reader.join(timeout=10)
        assert lines[0].startswith("Watching ") and "Stopped watching" in lines[-1]
    finally:
        if proc.poll() is None:
            proc.kill()
