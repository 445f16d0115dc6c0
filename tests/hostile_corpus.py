"""A generated folder of hostile and unusual image files, for decoder and indexer tests.

Self-contained (Pillow + numpy + stdlib; pillow-heif used only when importable) so any test
can call `make_hostile_corpus(tmp_path)`. Building it takes about a second (most of it the
4.8 MP near-limit PNG and the 20000 x 200 panorama); header-only "bombs" allocate nothing.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

RED, GREEN, BLUE, YELLOW, WHITE = (255, 0, 0), (0, 160, 0), (0, 0, 255), (255, 255, 0), (
    255, 255, 255)
# Upright picture used for every orientation file: quadrant colours, 48 wide x 32 tall.
QUADRANTS = {"top-left": RED, "top-right": GREEN, "bottom-left": BLUE, "bottom-right": YELLOW}
UPRIGHT_SIZE = (48, 32)
EXIF_DATE = "2021:07:04 12:34:56"
EXIF_DATE_ISO = "2021-07-04T12:34:56"
NEAR_LIMIT_SIZE = (2400, 2000)  # decode with max_pixels=4_800_000 (ok) and one less (refused)
ODD_NAMES = ("with space.jpg", "it's \"quoted\".jpg", "new\nline.jpg", "emoji \U0001f4f7.jpg")


def make_hostile_corpus(folder: Path) -> dict[str, str | None]:
    """Write the corpus into `folder`; return file name -> expected DecodeError reason
    (None: must decode). Expectations hold for decode_image's default max_pixels."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str | None] = {}

    def put(name: str, data: bytes, reason: str | None) -> None:
        (folder / name).write_bytes(data)
        expected[name] = reason

    photo = smooth_image(64, 48)
    put("ok.jpg", encode(photo, "JPEG", quality=90), None)
    put("png-named.jpg", encode(photo, "PNG"), None)
    full = encode(Image.fromarray(_noise(256, 256)), "JPEG", quality=90)
    put("truncated.jpg", full[: len(full) * 6 // 10], "truncated")
    put("zero-bytes.jpg", b"", "empty-file")
    put("random-bytes.jpg", np.random.default_rng(7).bytes(4096), "not-an-image")
    put("page.png", b"<!DOCTYPE html><html><head><title>404</title></head>"
        b"<body>Not found</body></html>\n", "not-an-image")
    put("corrupt-header.png", b"\x89PNG\r\n\x1a\n" + b"\x13\x37" * 40, "corrupt")
    put("bomb-60000x60000.png", png_header_only(60000, 60000, color_type=2),
        "decompression-bomb")
    # Exactly the default limit (180 MP) passes the size check, then fails on missing data.
    put("at-limit-12000x15000.png", png_header_only(12000, 15000), "truncated")
    put("over-limit-12000x15001.png", png_header_only(12000, 15001), "decompression-bomb")
    put("near-limit.png", encode(smooth_image(*NEAR_LIMIT_SIZE), "PNG", compress_level=1), None)

    put("cmyk.jpg", encode(_halves("CMYK", (0, 255, 255, 0), (255, 255, 0, 0)), "JPEG"), None)
    put("gray16.png", encode(_gray16("I;16"), "PNG"), None)
    put("gray16b.tif", encode(_gray16("I;16B"), "TIFF"), None)
    put("int32.tif", encode(_gray16("I;16").convert("I"), "TIFF"), None)
    floats = np.zeros((16, 32), np.float32)
    floats[:, 16:] = 1.0
    floats[:, :16] = 0.5
    put("float.tif", encode(Image.fromarray(floats), "TIFF"), None)
    put("bilevel.png", encode(Image.new("1", (16, 8), 1), "PNG"), None)
    put("gray.png", encode(Image.new("L", (16, 8), 128), "PNG"), None)
    put("bitmap.bmp", encode(photo, "BMP"), None)
    put("colour-key.png", encode(_halves("RGB", WHITE, BLUE), "PNG", transparency=BLUE), None)
    put("mpo.jpg", encode(photo, "MPO", save_all=True, append_images=[smooth_image(32, 24)]),
        None)
    put("still.webp", encode(photo, "WEBP", quality=90), None)

    palette = _halves("RGB", WHITE, RED).quantize(colors=4)
    left_index = palette.getpixel((0, 0))
    put("palette-transparent.png", encode(palette, "PNG", transparency=left_index), None)
    la = Image.new("LA", (32, 16), (0, 0))  # transparent black on the left
    la.paste((90, 255), (16, 0, 32, 16))
    put("la.png", encode(la, "PNG"), None)
    rgba = Image.new("RGBA", (32, 16), (0, 0, 0, 0))
    rgba.paste((*GREEN, 255), (16, 0, 32, 16))
    put("rgba.png", encode(rgba, "PNG"), None)

    frames = [Image.new("RGB", (32, 16), RED), Image.new("RGB", (32, 16), BLUE)]
    put("animated.gif", encode(frames[0], "GIF", save_all=True, append_images=frames[1:],
                               duration=100, loop=0), None)
    put("animated.webp", encode(frames[0], "WEBP", save_all=True, append_images=frames[1:],
                                duration=100, loop=0, lossless=True), None)
    put("multipage.tif", encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
        None)
    put("one-pixel.png", encode(Image.new("RGB", (1, 1), RED), "PNG"), None)
    put("one-pixel.jpg", encode(Image.new("RGB", (1, 1), RED), "JPEG"), None)
    put("panorama-20000x200.jpg", encode(smooth_image(20000, 200), "JPEG", quality=80), None)

    for orientation in range(1, 9):
        put(f"orientation-{orientation}.jpg",
            encode(stored_for_orientation(orientation), "JPEG", quality=95,
                   exif=exif_bytes(orientation=orientation)), None)
    put("orientation-6.png", encode(stored_for_orientation(6), "PNG",
                                    exif=exif_bytes(orientation=6)), None)
    put("exif-date.jpg", encode(photo, "JPEG", exif=exif_bytes(date=EXIF_DATE)), None)
    put("exif-date-garbage.jpg",
        encode(photo, "JPEG", exif=exif_bytes(date="0000:00:00 00:00:00")), None)
    put("exif-damaged.jpg", _with_app1(encode(photo, "JPEG"), b"Exif\x00\x00MM\x00*\xff\xff"
                                       + bytes(range(256)) * 2), None)

    heic = heic_bytes(photo)
    if heic is not None:
        put("photo.heic", heic, None)
    else:  # a HEIF header is enough to be recognised as HEIF without the extra
        put("photo.heic", fake_heif_bytes(), "heif-extra-missing")

    for name in ODD_NAMES:
        put(name, encode(photo, "JPEG"), None)

    (folder / "folder.jpg").mkdir(exist_ok=True)
    expected["folder.jpg"] = "not-a-file"
    if hasattr(os, "mkfifo"):
        os.mkfifo(folder / "fifo.jpg")
        expected["fifo.jpg"] = "not-a-file"
    locked = folder / "unreadable.jpg"
    put(locked.name, encode(photo, "JPEG"), None)
    locked.chmod(0)
    # root reads it anyway; then it simply decodes.
    expected[locked.name] = None if os.access(locked, os.R_OK) else "unreadable"
    return expected


# --- building blocks (also used directly by tests) ----------------------------------------

def smooth_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth, photo-like colour field: gradients plus low-frequency waves."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    channels = []
    for c in range(3):
        fx, fy, phase = rng.uniform(1, 6), rng.uniform(1, 6), rng.uniform(0, 6.3)
        wave = np.sin(2 * np.pi * (fx * x + phase)) * np.cos(2 * np.pi * fy * y)
        channels.append(0.5 + 0.3 * wave + 0.2 * (x - y) * (1 if c % 2 else -1))
    rgb = np.clip(np.stack(channels, axis=-1) * 255, 0, 255).astype(np.uint8)
    return Image.fromarray(rgb)


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def png_header_only(width: int, height: int, color_type: int = 0) -> bytes:
    """A PNG whose IHDR claims width x height (8-bit) with a tiny IDAT: no big allocation."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def exif_bytes(orientation: int | None = None, date: str | None = None) -> bytes:
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    if date is not None:
        exif[0x0132] = date  # DateTime (IFD0)
        exif.get_ifd(0x8769)[0x9003] = date  # DateTimeOriginal (Exif IFD)
    return exif.tobytes()


def upright_image() -> Image.Image:
    w, h = UPRIGHT_SIZE
    image = Image.new("RGB", UPRIGHT_SIZE)
    image.paste(QUADRANTS["top-left"], (0, 0, w // 2, h // 2))
    image.paste(QUADRANTS["top-right"], (w // 2, 0, w, h // 2))
    image.paste(QUADRANTS["bottom-left"], (0, h // 2, w // 2, h))
    image.paste(QUADRANTS["bottom-right"], (w // 2, h // 2, w, h))
    return image


def stored_for_orientation(orientation: int) -> Image.Image:
    """Pixels as a camera would store them so that EXIF `orientation` displays upright.
    Written from the EXIF spec's row/column meaning with numpy, independent of Pillow's
    transpose table, so a wrong table in the decoder cannot cancel out."""
    d = np.asarray(upright_image())
    stored = {
        1: d,
        2: d[:, ::-1],  # row 0 top, column 0 right
        3: d[::-1, ::-1],  # row 0 bottom, column 0 right
        4: d[::-1],  # row 0 bottom, column 0 left
        5: d.transpose(1, 0, 2),  # row 0 left, column 0 top
        6: np.rot90(d, 1),  # row 0 right, column 0 top
        7: d[::-1, ::-1].transpose(1, 0, 2),  # row 0 right, column 0 bottom
        8: np.rot90(d, -1),  # row 0 left, column 0 bottom
    }[orientation]
    return Image.fromarray(np.ascontiguousarray(stored))


def heic_bytes(image: Image.Image) -> bytes | None:
    try:
        import pillow_heif
    except ImportError:
        return None
    buf = io.BytesIO()
    pillow_heif.from_pillow(image).save(buf, quality=90)
    return buf.getvalue()


def fake_heif_bytes() -> bytes:
    """Just a HEIC ftyp box: recognisable as HEIF, not decodable."""
    ftyp = b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heic"
    return struct.pack(">I", 8 + len(ftyp)) + ftyp + b"\x00" * 64


def _noise(width: int, height: int) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _halves(mode: str, left: tuple, right: tuple) -> Image.Image:
    image = Image.new(mode, (32, 16), left)
    image.paste(right, (16, 0, 32, 16))
    return image


def _gray16(mode: str) -> Image.Image:
    """Left half 32768 (mid grey -> 128 in 8 bit), right half 65535 (white)."""
    a = np.full((16, 32), 32768, np.uint16)
    a[:, 16:] = 65535
    if mode == "I;16B":  # Pillow's convert() to I;16B clips, so build it from raw bytes
        return Image.frombytes(mode, (32, 16), a.astype(">u2").tobytes())
    return Image.fromarray(a)  # I;16


def _with_app1(jpeg: bytes, payload: bytes) -> bytes:
    """Insert an APP1 segment right after SOI."""
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]
