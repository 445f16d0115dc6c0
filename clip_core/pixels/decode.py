"""Decode untrusted image files into upright RGB PIL images (no torch here).

Photo libraries hold truncated downloads, HTML saved as .png, CMYK scans, 16-bit PNGs,
transparent logos and decompression bombs. `decode_image` turns each of them into either a
`DecodedImage` or a `DecodeError` with a short stable `reason` the index can store.
Safe to call from worker threads: Pillow releases the GIL while decoding, and the only
global state (plugin registration) is set up once under a lock.
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import struct
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from clipsearch_errors import BadInputError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif"}
)

# 12000 x 15000: bigger than any phone or DSLR photo; larger headers are refused unread.
DEFAULT_MAX_PIXELS = 180_000_000
# Long side / short side. Preprocessing scales the short side to the model's input (224 px),
# so the long side's allocation grows with the ratio: 1000000 x 1 would ask for 224,000,000 x
# 224 pixels. 400 keeps 20000 x 200 panoramas and long screenshots (1080 x 100000).
MAX_ASPECT_RATIO = 400
# Peak bytes per pixel while decoding + converting to upright RGB, by header mode (mode ->
# what `_to_rgb` and the EXIF transpose allocate). Budget: max_pixels x 7, so 8-bit RGB, L
# and P images keep the plain pixel limit and heavier modes get proportionally fewer pixels.
_BUDGET_BYTES_PER_PIXEL = 7
_PEAK_BYTES = {"1": 7, "L": 7, "P": 7, "RGB": 6, "YCbCr": 9, "LAB": 9, "HSV": 9, "CMYK": 10,
               "RGBX": 10}
_PEAK_ALPHA = 15  # decoded + RGBA copy + white background + mask + transposed RGB
_PEAK_16BIT = 15  # I;16: decoded + array + uint32 working copy + L + RGB + transposed
_PEAK_WIDE = 27  # I / F (32-bit): decoded + array + float32 copies + L + RGB + transposed

# Every reason DecodeError can carry (stored in the index, so keep them stable).
REASONS = frozenset({
    "empty-file", "not-an-image", "truncated", "corrupt", "decompression-bomb", "unreadable",
    "heif-extra-missing", "unsupported-mode", "not-a-file", "vanished",
    "extreme-aspect-ratio",
})

# Only photo formats: also keeps Pillow away from EPS (Ghostscript) and other exotic parsers.
_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "HEIF", "AVIF")
_HEIF_BRANDS = frozenset(
    {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"}
)
_JPEG_SOI = b"\xff\xd8\xff"
_MAGIC = (
    (_JPEG_SOI, "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF8", "GIF"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"),
)
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_EXIF_IFD, _DATETIME_ORIGINAL, _DATETIME, _ORIENTATION = 0x8769, 0x9003, 0x0132, 0x0112
_OFFSET_TIME, _OFFSET_TIME_ORIGINAL, _MAKE, _MODEL = 0x9010, 0x9011, 0x010F, 0x0110
_EXIF_OFFSET = re.compile(r"\s*([+-])(\d{2}):?(\d{2})\s*$")
_EXIF_DATE = re.compile(r"\s*(\d{4})[:\-/.](\d{2})[:\-/.](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")


class DecodeError(BadInputError):
    """An image that cannot be decoded; `reason` is one of REASONS, str() is for humans."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __reduce__(self):  # keep picklable across process pools
        return (type(self), (self.reason, self.message))


@dataclass
class DecodedImage:
    image: Image.Image  # RGB, upright; smaller than width x height when min_side allowed it
    width: int  # full size, after EXIF orientation
    height: int
    taken_at: str | None = None  # EXIF capture time, 'YYYY-MM-DDTHH:MM:SS'
    meta: PhotoMeta | None = None


@dataclass
class PhotoMeta:
    """What the catalog stores about a photo besides its size, read from the same open
    image as its pixels (never a second read of the file)."""

    taken_at: str | None = None  # EXIF capture time, local clock: 'YYYY-MM-DDTHH:MM:SS'
    taken_offset: str | None = None  # its EXIF UTC offset ('+02:00') when the camera wrote one
    camera_make: str | None = None
    camera_model: str | None = None
    orientation: int = 1  # the EXIF tag (1-8); 1 when absent
    format: str | None = None  # from the content (Pillow's format): JPEG, PNG, HEIF, WEBP...


def read_photo_meta(img: Image.Image) -> PhotoMeta:
    """EXIF date (with offset), camera and orientation, and the content's format; damaged
    or absent EXIF leaves those fields empty and costs nothing else."""
    meta = PhotoMeta(format=img.format, orientation=_orientation(img))
    try:
        exif = img.getexif()
        sub = exif.get_ifd(_EXIF_IFD)
    except Exception:  # damaged EXIF must not cost us the picture
        return meta
    for value, offset in ((sub.get(_DATETIME_ORIGINAL), sub.get(_OFFSET_TIME_ORIGINAL)),
                          (exif.get(_DATETIME), sub.get(_OFFSET_TIME))):
        meta.taken_at = _parse_exif_date(value)
        if meta.taken_at:
            meta.taken_offset = _parse_offset(offset)
            break
    meta.camera_make, meta.camera_model = _text(exif.get(_MAKE)), _text(exif.get(_MODEL))
    return meta


def _parse_offset(value: object) -> str | None:
    match = _EXIF_OFFSET.match(_text(value) or "")
    if not match or int(match.group(2)) > 14 or int(match.group(3)) > 59:
        return None
    return f"{match.group(1)}{match.group(2)}:{match.group(3)}"


def _text(value: object) -> str | None:
    """An EXIF ASCII field as clean text (cameras pad with NULs and spaces), or None."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", " ").strip()
    return value[:100] or None


def decode_image(
    source: Path | str | bytes | BinaryIO,
    *,
    min_side: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DecodedImage:
    """Decode the first frame of `source` into an upright RGB image.

    min_side: the caller will downscale to this shortest side anyway, so a large JPEG may be
    decoded at 1/2, 1/4 or 1/8 scale (DCT scaling, several times faster) as long as its
    shortest side stays >= min_side, and any large image is box-reduced while its shortest
    side stays >= 2 * min_side. max_pixels: headers claiming more are refused before
    any pixel is decoded. Raises DecodeError, never Pillow's own exceptions.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode_stream(io.BytesIO(source), min_side, max_pixels)
    if isinstance(source, (str, os.PathLike)):
        with _open_path(os.fspath(source)) as fp:
            return _decode_stream(fp, min_side, max_pixels)
    return _decode_stream(_seekable(source), min_side, max_pixels)


@dataclass
class ImageHeader:
    width: int  # full size, after EXIF orientation (as DecodedImage)
    height: int
    taken_at: str | None = None
    meta: PhotoMeta | None = None


def read_header(data: bytes) -> ImageHeader:
    """Size, orientation and capture time from the headers alone (no pixel is decoded): for
    files whose vector is already stored (moves, duplicates), ~30 ms less per phone photo.
    Raises DecodeError like decode_image."""
    fp = io.BytesIO(data)
    head = data[:32]
    if not head:
        raise DecodeError("empty-file", "file is empty (0 bytes)")
    try:
        im = _open(fp, head, _formats_for(head), DEFAULT_MAX_PIXELS)
        width, height = im.size
        if _orientation(im) in _TRANSPOSE and _orientation(im) >= 5:
            width, height = height, width
        meta = read_photo_meta(im)
        return ImageHeader(width, height, meta.taken_at, meta)
    except DecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError("decompression-bomb", f"refused by Pillow: {exc}") from exc
    except Exception as exc:  # Pillow's parsers raise many types on hostile data
        raise _damaged(exc) from exc


def _parse_exif_date(value: object) -> str | None:
    if isinstance(value, (tuple, list)) and value:
        value = value[0]
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not isinstance(value, str):
        return None
    match = _EXIF_DATE.match(value)
    if not match:
        return None  # includes the "0000:00:00 00:00:00" cameras write when unset
    try:
        when = datetime(*(int(part) for part in match.groups()))
    except ValueError:
        return None
    return when.isoformat() if when.year >= 1800 else None


# --- opening -------------------------------------------------------------------------------

class NotRegularFileError(BadInputError, OSError):
    """The path is a FIFO, socket, device or directory (found on the open handle)."""


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Open a file for reading only if it is a regular file, without ever blocking.

    O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever (a file
    swapped for a FIFO after it was listed). The handle is then checked with fstat, so the
    type seen is the type read: no window between a stat and the open."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise NotRegularFileError(errno.EISDIR, "is a directory, not an image file")
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(
                errno.EINVAL, "is not a regular file (FIFO, socket or device)")
        os.set_blocking(fd, True)  # no effect on regular files; plain reads from here on
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _open_path(path: str) -> BinaryIO:
    try:
        fp = open_regular(path)
        if os.fstat(fp.fileno()).st_size == 0:
            fp.close()
            raise DecodeError("empty-file", "file is empty (0 bytes)")
        return fp
    except NotRegularFileError as exc:
        raise DecodeError("not-a-file", exc.strerror) from exc
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise DecodeError("vanished", "file no longer exists") from exc
    except PermissionError as exc:
        raise DecodeError("unreadable", "permission denied") from exc
    except OSError as exc:
        raise DecodeError("unreadable", f"cannot read: {exc.strerror or exc}") from exc


def _seekable(stream: BinaryIO) -> BinaryIO:
    try:
        if stream.seekable():
            return stream
        return io.BytesIO(stream.read())
    except OSError as exc:
        raise DecodeError("unreadable", f"cannot read: {exc.strerror or exc}") from exc


_setup_lock = threading.Lock()
_heif_state: bool | None = None


def _heif_available() -> bool:
    """Register pillow-heif's opener once (lazily: importing it costs time); False if absent."""
    global _heif_state
    if _heif_state is None:
        with _setup_lock:
            if _heif_state is None:
                Image.init()  # all plugins now, so Image.OPEN is complete and never races
                try:
                    import pillow_heif
                except ImportError:
                    _heif_state = False
                else:
                    pillow_heif.register_heif_opener()
                    _heif_state = True
    return _heif_state


def _formats() -> list[str]:
    heif = _heif_available()
    return [f for f in _FORMATS if f in Image.OPEN and (heif or f != "HEIF")]


_JPEG_ONLY = ["JPEG"]


def _formats_for(head: bytes) -> list[str]:
    """The plugins to try on a file starting with `head`. A JPEG head is accepted by no other
    plugin, so Pillow's JPEG plugin alone (loaded with the few basic ones) decides: most
    photos never wait for every plugin and pillow-heif to load (~50-80 ms of one core, under
    the lock the other loader thread waits on, at the start of every index run)."""
    if head.startswith(_JPEG_SOI):
        return _JPEG_ONLY
    return _formats()


def _open(fp: BinaryIO, head: bytes, formats: list[str], max_pixels: int) -> Image.Image:
    try:
        im = Image.open(fp, formats=formats)
    except UnidentifiedImageError as exc:
        if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS and "HEIF" not in formats:
            raise DecodeError(
                "heif-extra-missing",
                "HEIC/HEIF image, but HEIF support is not installed: "
                "pip install 'clipsearch[heif]'",
            ) from exc
        kind = _sniff(head)
        if kind:
            raise DecodeError(
                "corrupt", f"starts like a {kind} file but its header is damaged or cut short"
            ) from exc
        raise DecodeError(
            "not-an-image", "content is not a JPEG, PNG, GIF, WebP, BMP, TIFF or HEIF image"
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own limit (~179 MP, process-global) fired; ours is per call and decides.
        im = _open_unchecked(fp, formats)
    width, height = im.size
    if width * height > max_pixels:
        raise DecodeError(
            "decompression-bomb",
            f"header claims {width} x {height} = {_mp(width * height)} MP, "
            f"over the {_mp(max_pixels)} MP limit (refused before decoding)",
        )
    if width <= 0 or height <= 0:
        raise DecodeError("corrupt", f"header claims an empty {width} x {height} image")
    check_aspect_ratio(width, height)
    return im


def check_aspect_ratio(width: int, height: int) -> None:
    """Refuse sides so unequal that scaling the short one to a model's input would allocate
    a huge long one (a 1000000 x 1 PNG); before any pixel is decoded or resized."""
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise DecodeError(
            "extreme-aspect-ratio",
            f"{width} x {height} is {max(width, height) // min(width, height)}:1, over the "
            f"{MAX_ASPECT_RATIO}:1 limit (refused before decoding)",
        )


def _check_memory(im: Image.Image, max_pixels: int) -> None:
    """Refuse modes whose decoding and conversion to RGB would take more memory than an
    8-bit image of max_pixels (16-bit, float, alpha), before any pixel is decoded."""
    mode = im.mode
    if mode in _ALPHA_MODES or "transparency" in im.info:
        peak = _PEAK_ALPHA
    elif mode.startswith("I;16"):
        peak = _PEAK_16BIT
    elif mode.startswith(("I", "F")):
        peak = _PEAK_WIDE
    else:
        peak = _PEAK_BYTES.get(mode, _PEAK_WIDE)
    pixels = im.size[0] * im.size[1]
    if pixels * peak > max_pixels * _BUDGET_BYTES_PER_PIXEL:
        limit = max_pixels * _BUDGET_BYTES_PER_PIXEL // peak
        raise DecodeError(
            "decompression-bomb",
            f"{mode} image of {im.size[0]} x {im.size[1]} = {_mp(pixels)} MP needs about "
            f"{pixels * peak / 1e9:.1f} GB to decode; {mode} images are limited to "
            f"{_mp(limit)} MP (refused before decoding)",
        )


def _open_unchecked(fp: BinaryIO, formats: list[str]) -> Image.Image:
    """Image.open without its global pixel check (which cannot be changed per call)."""
    fp.seek(0)
    prefix = fp.read(16)
    for name in formats:
        factory, accept = Image.OPEN[name]
        accepted = accept is None or accept(prefix)
        if accepted and not isinstance(accepted, str):
            fp.seek(0)
            try:
                return factory(fp, "")
            except (SyntaxError, IndexError, TypeError, struct.error):
                continue  # same "not this format" signals Image.open skips
    raise DecodeError("not-an-image", "content is not a supported image")


def _sniff(head: bytes) -> str | None:
    """Format named by the file's magic bytes, to tell damaged images from non-images."""
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return "HEIF"
    return None


def _mp(pixels: int) -> str:
    return f"{pixels / 1e6:.0f}" if pixels >= 10_000_000 else f"{pixels / 1e6:.2g}"


# --- decoding ------------------------------------------------------------------------------

def _decode_stream(fp: BinaryIO, min_side: int | None, max_pixels: int) -> DecodedImage:
    try:
        fp.seek(0)
        head = fp.read(32)
        fp.seek(0)
    except OSError as exc:
        raise DecodeError("unreadable", f"cannot read: {exc.strerror or exc}") from exc
    if not head:
        raise DecodeError("empty-file", "file is empty (0 bytes)")
    try:
        im = _open(fp, head, _formats_for(head), max_pixels)
        _check_memory(im, max_pixels)
        width, height = im.size
        if min_side and im.format in ("JPEG", "MPO"):  # MPO: JPEGs with extra pictures
            # Scale factor s keeps min(w, h) / s >= min_side; EXIF rotation only swaps
            # sides, so the stored (unrotated) orientation gives the same answer.
            im.draft("RGB", (min_side, min_side))
        im.load()
        orientation = _orientation(im)
        meta = read_photo_meta(im)
        rgb = _to_rgb(im)
        if min_side:
            rgb = _shrink(rgb, min_side)
        if orientation in _TRANSPOSE:
            rgb = rgb.transpose(_TRANSPOSE[orientation])
            if orientation >= 5:
                width, height = height, width
    except DecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError("decompression-bomb", f"refused by Pillow: {exc}") from exc
    except MemoryError:
        raise  # the machine's problem, not the file's
    except OSError as exc:
        if exc.errno is not None:  # a real I/O error; Pillow's own OSErrors carry no errno
            raise DecodeError("unreadable", f"cannot read: {exc.strerror or exc}") from exc
        raise _damaged(exc) from exc
    except Exception as exc:  # Pillow's parsers raise many types on hostile data
        raise _damaged(exc) from exc
    return DecodedImage(rgb, width, height, meta.taken_at, meta)


def _damaged(exc: Exception) -> DecodeError:
    detail = str(exc) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
    lowered = detail.lower()
    if isinstance(exc, EOFError) or "truncat" in lowered or "end of file" in lowered:
        return DecodeError("truncated", f"image data ends early ({detail})")
    return DecodeError("corrupt", f"damaged image data ({detail})")


def _shrink(rgb: Image.Image, min_side: int) -> Image.Image:
    """Box-reduce by an integer factor while the shortest side stays >= 2 * min_side (as
    Pillow's reducing_gap=2): the caller's bicubic resize then runs on far fewer pixels,
    for formats without DCT scaling (PNG, HEIC, WebP) or JPEGs beyond draft's 1/8."""
    factor = min(rgb.size) // (2 * min_side)
    return rgb.reduce(factor) if factor >= 2 else rgb


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_ORIENTATION, 1)  # also picks up XMP tiff:Orientation
    except Exception:  # damaged EXIF: keep the pixels as stored
        return 1
    return value if isinstance(value, int) else 1


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    try:
        if mode.startswith("I") or mode == "F":
            return _gray_to_8bit(im).convert("RGB")
        if mode in _ALPHA_MODES or "transparency" in im.info:  # incl. P/L/RGB colour keys
            if mode in ("La", "RGBa"):  # premultiplied: Pillow converts them only one way
                im = im.convert(mode.upper())
            return _on_white(im.convert("RGBA"))
        return im.convert("RGB")  # L, 1, P, CMYK (Adobe inversion handled on load), YCbCr...
    except ValueError as exc:
        raise DecodeError("unsupported-mode", f"cannot convert {mode} pixels to RGB") from exc


def _on_white(rgba: Image.Image) -> Image.Image:
    # Transparent pixels often hold black or junk colour; photos-of-logos look right on white.
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _gray_to_8bit(im: Image.Image) -> Image.Image:
    """16/32-bit and float grayscale -> L. Pillow's own convert clips them to white."""
    a = np.asarray(im)
    if a.dtype.kind == "u" and a.dtype.itemsize == 2:  # I;16, I;16B, ...: known 16-bit range
        wide = a.astype(np.uint32)  # in place from here: one working copy (_PEAK_16BIT)
        wide += 128
        wide //= 257
        return Image.fromarray(wide.astype(np.uint8))
    a = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if im.mode == "F" and lo >= 0 and hi <= 1:
        scaled = a * 255  # float images in [0, 1]
    elif lo >= 0 and hi <= 255:
        scaled = a
    elif lo >= 0 and hi <= 65535:
        scaled = a / 257  # 16-bit data stored in a 32-bit mode
    else:  # unknown range (signed or huge values): stretch to full contrast
        scaled = (a - lo) * (255 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))
