"""Fuzz decode_image with mutated real files: an RGB image or a DecodeError, nothing else.

CLIPSEARCH_FUZZ_EXAMPLES sets the number of examples (default 300, a few seconds); the
Makefile's long fuzz target raises it. A watchdog kills the run with a traceback if one
decode hangs, since Hypothesis' deadline only judges examples that finish.
"""

from __future__ import annotations

import faulthandler
import io
import os
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from clip_core.pixels.decode import REASONS, DecodeError, decode_image
from tests.hostile_corpus import encode, exif_bytes, heic_bytes, smooth_image

EXAMPLES = int(os.environ.get("CLIPSEARCH_FUZZ_EXAMPLES", "300"))
MAX_PIXELS = 2_000_000  # mutated headers claim huge sizes; keep every example cheap
HANG_S = 30  # one decode taking this long is a hang: dump stacks and exit


def _seeds() -> dict[str, bytes]:
    photo = smooth_image(40, 24, seed=5)
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    frames = [photo, smooth_image(40, 24, seed=6)]
    exif = exif_bytes(orientation=6, date="2020:02:02 20:20:20")
    seeds = {
        "jpeg": encode(photo, "JPEG", quality=85, exif=exif),
        "jpeg-progressive": encode(photo, "JPEG", quality=70, progressive=True),
        "jpeg-cmyk": encode(photo.convert("CMYK"), "JPEG"),
        "png-rgba": encode(rgba, "PNG", exif=exif),
        "png-palette": encode(photo.quantize(16), "PNG", transparency=0),
        "png-16bit": encode(Image.new("I;16", (24, 16), 40000), "PNG"),
        "gif-animated": encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "webp": encode(photo, "WEBP", quality=80, exif=exif),
        "webp-animated": encode(frames[0], "WEBP", save_all=True, append_images=frames[1:],
                                lossless=True),
        "tiff-pages": encode(frames[0], "TIFF", save_all=True, append_images=frames[1:],
                             compression="tiff_lzw"),
        "bmp": encode(photo, "BMP"),
    }
    heic = heic_bytes(photo)
    if heic is not None:
        seeds["heic"] = heic
    return seeds


SEEDS = _seeds()
NAMES = sorted(SEEDS)


@st.composite
def mutated_files(draw) -> tuple[str, bytes]:
    name = draw(st.sampled_from(NAMES))
    data = bytearray(SEEDS[name])
    for _ in range(draw(st.integers(1, 5))):
        if not data:
            break
        kind = draw(st.sampled_from(
            ["flip", "header", "truncate", "splice", "insert", "delete"]))
        pos = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "header":  # sizes, offsets and counts live near the start
            pos = draw(st.integers(0, min(len(data), 160) - 1))
            data[pos:pos + 4] = draw(st.sampled_from(
                [b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff", b"\x80\x00\x00\x01"]))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "splice":  # a chunk of another valid file
            other = SEEDS[draw(st.sampled_from(NAMES))]
            start = draw(st.integers(0, len(other) - 1))
            data[pos:pos + draw(st.integers(1, 200))] = other[start:start + 200]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        else:
            del data[pos:pos + draw(st.integers(1, 64))]
    return name, bytes(data)


def test_seeds_are_valid():
    for name, data in SEEDS.items():
        assert decode_image(data).image.mode == "RGB", name


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about corrupt metadata
@settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=mutated_files(), min_side=st.sampled_from([None, 8, 224]),
       as_stream=st.booleans())
def test_mutated_files_decode_or_raise_decode_error(case, min_side, as_stream):
    _name, data = case
    source = io.BytesIO(data) if as_stream else data
    faulthandler.dump_traceback_later(HANG_S, exit=True)
    try:
        result = decode_image(source, min_side=min_side, max_pixels=MAX_PIXELS)
    except DecodeError as exc:
        assert exc.reason in REASONS
        assert str(exc)
    else:
        assert result.image.mode == "RGB"
        assert result.image.width > 0 and result.image.height > 0
        assert result.width > 0 and result.height > 0
        assert result.width * result.height <= MAX_PIXELS
    finally:
        faulthandler.cancel_dump_traceback_later()
