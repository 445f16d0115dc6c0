"""Shared set-up of the serve tests: a small indexed shapes library, a test client."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from clipsearch import Library
from clipsearch.server import ServeConfig, create_app
from tests.helpers import draw_photos

BASE = "http://127.0.0.1:8765"
REPO = Path(__file__).resolve().parent.parent


def indexed_library(folder: Path) -> Path:
    """photos/ (one picture per colour-shape pair) indexed into lib/ with shapes-tiny."""
    photos = folder / "photos"
    draw_photos(photos, per_pair=1, seed=91)
    with Library(folder / "lib", model="shapes-tiny") as lib:
        lib.index([photos])
    return folder / "lib"


def client(lib: Library, **config) -> TestClient:
    return TestClient(create_app(lib, ServeConfig(**config)), base_url=BASE)


def png_bytes(colour: str = "red", size: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, "PNG")
    return buf.getvalue()


def photo_path(lib_dir: Path, name_start: str) -> Path:
    photos = lib_dir.parent / "photos"
    for dirpath, _, names in os.walk(photos):
        for name in sorted(names):
            if name.startswith(name_start):
                return Path(dirpath) / name
    raise FileNotFoundError(name_start)


def start_server(lib_dir: Path, *args: str) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "clipsearch.cli", "serve", "--library", str(lib_dir),
         "--port", "0", *args], stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    line = proc.stderr.readline()  # "clipsearch serves LIB at http://127.0.0.1:PORT/"
    match = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
    if not match:
        proc.kill()
        pytest.fail(f"no URL from the server: {line!r} {proc.stderr.read()}")
    return proc, match.group(1)
