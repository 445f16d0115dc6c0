"""Shared set-up of the serve tests: a small indexed shapes library, a test client."""

from __future__ import annotations

import io
import os
from pathlib import Path

from fastapi.testclient import TestClient
from PIL import Image

from clipsearch import Library
from clipsearch.server import ServeConfig, create_app
from tests.helpers import draw_photos

BASE = "http://127.0.0.1:8765"


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
