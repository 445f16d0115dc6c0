"""A thumbnail drawn from the draft (reduced-scale) decode, rotated after the resize, shows
what the full-resolution photo shows upright: the same pixels within JPEG's error."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from clipsearch.server.thumbnails import make_thumbnail
from tests.hostile_corpus import exif_bytes


def scene(width: int, height: int) -> Image.Image:
    """Smooth shading with a bright block near the stored top-left corner: a turn the
    wrong way moves it to another corner."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.stack([255 * x / width, 255 * y / height, np.full_like(x, 96)], axis=-1)
    pixels[: height // 4, : width // 4] = (255, 255, 255)
    return Image.fromarray(pixels.astype(np.uint8))


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
@pytest.mark.parametrize("size", [128, 256])
def test_a_thumbnail_is_the_upright_photo_made_small(tmp_path, orientation, size):
    path = tmp_path / "photo.jpg"
    scene(2400, 1800).save(path, "JPEG", quality=92, exif=exif_bytes(orientation=orientation))
    with Image.open(path) as full:  # the reference: decoded in full, turned, then resized
        upright = ImageOps.exif_transpose(full)
        upright.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=None)
    thumb = Image.open(io.BytesIO(make_thumbnail(str(path), size)))
    assert thumb.size == upright.size and max(thumb.size) == size
    diff = np.abs(np.asarray(thumb, np.int16) - np.asarray(upright.convert("RGB"), np.int16))
    assert diff.mean() < 4, diff.mean()  # a wrong turn or scale differs by ~100


def test_transparency_is_flattened_on_white(tmp_path):
    path = tmp_path / "logo.png"
    Image.new("RGBA", (300, 200), (255, 0, 0, 0)).save(path)
    thumb = Image.open(io.BytesIO(make_thumbnail(str(path), 64)))
    assert thumb.mode == "RGB" and thumb.size == (64, 43)
    assert min(thumb.getpixel((32, 20))) > 245
