"""Thumbnails: made once per (content hash, size), kept in LIBRARY/thumbnails.

JPEGs are decoded at reduced size (draft mode: a 12 MP photo decodes at 1/8 scale for a
256 px thumbnail), turned upright by their EXIF orientation, and saved as JPEG. Keyed by the
content hash, a moved or renamed photo keeps its thumbnail, and a changed one gets a new one.

Where a first thumbnail's time goes (12 MP phone JPEG, one core, docs/benchmarks.md): the
draft decode ~30 ms (Huffman decoding of every coefficient: the 1/8 scale saves only the
IDCT, so a noisier file costs more, up to ~65 ms for 8 MB of noise), the resize from the
draft 2.4 ms (Lanczos: 3.5 ms), EXIF rotation of the small image and the save < 0.5 ms.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

from PIL import Image, ImageOps

from clipsearch import BadInputError

SIZES = (64, 128, 256, 512, 1024)
QUALITY = 82


class ThumbnailError(BadInputError, ValueError):
    """The file could not be made into a thumbnail (not an image any more, a bomb)."""


def thumbnail_path(library: Path, content_hash: str, size: int) -> Path:
    return library / "thumbnails" / str(size) / content_hash[:2] / f"{content_hash}.jpg"


def make_thumbnail(source: str, size: int) -> bytes:
    try:
        with Image.open(source) as im:
            im.draft("RGB", (size, size))  # JPEG only: decode at 1/2..1/8 scale
            # From the draft (< 2x the size) bicubic is as sharp as Lanczos here, 1 ms less;
            # larger sources are first reduced by whole factors (reducing_gap).
            im.thumbnail((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
            im = ImageOps.exif_transpose(im)  # the small image: a square box, same size
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                flat = Image.new("RGB", im.size, (255, 255, 255))
                flat.paste(im, mask=im.getchannel("A"))
                im = flat
            elif im.mode != "RGB":
                im = im.convert("RGB")
            out = io.BytesIO()
            im.save(out, "JPEG", quality=QUALITY, optimize=True)
            return out.getvalue()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ThumbnailError(f"cannot make a thumbnail: {exc}") from exc


def cached_thumbnail(library: Path, source: str, content_hash: str | None, size: int,
                     writable: bool) -> bytes:
    """The thumbnail from the cache, or made and (when `writable`) stored atomically."""
    if not content_hash:
        return make_thumbnail(source, size)
    path = thumbnail_path(library, content_hash, size)
    try:
        return path.read_bytes()
    except OSError:
        pass
    data = make_thumbnail(source, size)
    if writable:
        with contextlib.suppress(OSError):  # a full or read-only disk: serve it uncached
            _write_atomic(path, data)
    return data


def _write_atomic(path: Path, data: bytes) -> None:
    for folder in reversed(path.parents[:3]):  # thumbnails/, SIZE/, xx/: private like the rest
        folder.mkdir(mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")  # 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
