"""Allocations an image's header controls are refused before they happen (issue 10, item 1).

A 1000000 x 1 PNG is a few hundred bytes, but scaling its short side to 224 px would ask for
224,000,000 x 224 pixels; a 16-bit or transparent image needs several times the memory of an
8-bit one of the same size. Each becomes an error row with a reason, and the run completes.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from clip_core.pixels.decode import (
    DEFAULT_MAX_PIXELS,
    MAX_ASPECT_RATIO,
    DecodeError,
    decode_image,
    read_header,
)
from clip_core.pixels.preprocess import OPENAI_MEAN, OPENAI_STD, PreprocessSpec, preprocess
from clipsearch import Library
from clipsearch.cli_errors import EXIT_PROBLEM
from tests.helpers import cli, cli_json, draw_photos
from tests.hostile_corpus import png_header_only
from tests.reliability_support import MODEL, catalog_rows

SPEC = PreprocessSpec(224, OPENAI_MEAN, OPENAI_STD)


def _png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def _png16_header(width: int, height: int) -> bytes:
    """A 16-bit grayscale PNG header (mode I;16) with no real pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _reason(data: bytes, **kwargs) -> str | None:
    try:
        decode_image(data, **kwargs)
    except DecodeError as exc:
        return exc.reason
    return None


@pytest.mark.parametrize("size", [(1_000_000, 1), (1, 1_000_000), (40_100, 100)])
def test_extreme_aspect_ratios_are_refused_from_the_header(size):
    data = _png(size)
    for min_side in (None, 224):
        with pytest.raises(DecodeError) as info:
            decode_image(data, min_side=min_side)
        assert info.value.reason == "extreme-aspect-ratio"
        assert f"{size[0]} x {size[1]}" in str(info.value)
    with pytest.raises(DecodeError) as info:
        read_header(data)
    assert info.value.reason == "extreme-aspect-ratio"


def test_the_aspect_ratio_limit_keeps_panoramas():
    decoded = decode_image(_png((MAX_ASPECT_RATIO * 10, 10)), min_side=224)
    assert preprocess(decoded.image, SPEC).shape == (3, 224, 224)
    assert _reason(_png((MAX_ASPECT_RATIO * 10 + 1, 10))) == "extreme-aspect-ratio"


def test_preprocess_refuses_a_resize_that_would_allocate_gigabytes():
    # A PIL image handed in directly (not through decode_image): a clear error, no MemoryError.
    with pytest.raises(DecodeError) as info:
        preprocess(Image.new("RGB", (1_000_000, 1)), SPEC)
    assert info.value.reason == "extreme-aspect-ratio"
    # 'longest' and 'squash' never make more than the output size: those still work.
    for mode in ("longest", "squash"):
        spec = PreprocessSpec(16, OPENAI_MEAN, OPENAI_STD, resize_mode=mode)
        assert preprocess(Image.new("RGB", (100_000, 1)), spec).shape == (3, 16, 16)


def test_heavy_modes_get_fewer_pixels_than_8bit_ones():
    # 100 MP: under the 180 MP pixel limit, so 8-bit grayscale passes the size checks (then
    # its missing pixel data is noticed); RGBA (15 bytes a pixel to decode and flatten on
    # white) and 16-bit (a uint32 working copy) would take ~1.5 GB and are refused unread.
    assert _reason(png_header_only(10_000, 10_000, color_type=0)) == "truncated"
    for data in (png_header_only(10_000, 10_000, color_type=6), _png16_header(10_000, 10_000)):
        with pytest.raises(DecodeError) as info:
            decode_image(data)
        assert info.value.reason == "decompression-bomb"
        assert "GB to decode" in str(info.value)
    # The limit scales with max_pixels; small 16-bit and RGBA images still decode.
    assert _reason(_png16_header(10_000, 10_000), max_pixels=DEFAULT_MAX_PIXELS * 3) == (
        "truncated")
    rgba = io.BytesIO()
    Image.new("RGBA", (30, 20), (0, 0, 255, 128)).save(rgba, "PNG")
    assert decode_image(rgba.getvalue()).image.size == (30, 20)


def test_an_index_run_with_a_one_pixel_high_png_completes(tmp_path):
    photos, library = tmp_path / "photos", tmp_path / "lib"
    good = draw_photos(photos, per_pair=1)
    (photos / "wide.png").write_bytes(_png((1_000_000, 1)))
    (photos / "tall.png").write_bytes(_png((1, 1_000_000)))
    report = cli_json("index", str(photos), "--model", MODEL, "-q", library=library)
    assert not report["interrupted"] and report["indexed"] == len(good)
    assert {Path(s["path"]).name: s["reason"] for s in report["skipped"]} == {
        "wide.png": "extreme-aspect-ratio", "tall.png": "extreme-aspect-ratio"}
    rows = catalog_rows(library)
    assert rows[str(photos / "wide.png").encode()]["error_reason"] == "extreme-aspect-ratio"

    # The query side says the same, clearly, instead of dying in a resize.
    result = cli("query", "--image", str(photos / "wide.png"), library=library, ok=False)
    assert result.exit_code == EXIT_PROBLEM, result.output
    assert "wide.png" in result.stderr and f"over the {MAX_ASPECT_RATIO}:1 limit" in result.stderr
    with Library(library) as lib, pytest.raises(DecodeError) as info:
        lib.classify(photos / "tall.png", ["a red circle", "a blue star"])
    assert info.value.reason == "extreme-aspect-ratio" and "tall.png" in str(info.value)


def test_a_sparse_terabyte_file_is_refused_unread(tmp_path):
    # `truncate -s 1T`: costs no disk, but reading it would stop every run (MemoryError).
    photos, library = tmp_path / "photos", tmp_path / "lib"
    good = draw_photos(photos, per_pair=1)
    with open(photos / "huge.png", "wb") as f:
        f.truncate(1 << 40)
    report = cli_json("index", str(photos), "--model", MODEL, "-q", library=library)
    assert not report["interrupted"] and report["indexed"] == len(good)
    [skip] = report["skipped"]
    assert Path(skip["path"]).name == "huge.png" and skip["reason"] == "too-large"
    assert "1099.5 GB, over the 2.1 GB limit" in skip["message"]
