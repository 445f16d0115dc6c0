"""clip_core.pixels.decode: decoding hostile files, orientation, modes, draft decoding."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_core.pixels import decode as images
from clip_core.pixels.decode import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    REASONS,
    DecodedImage,
    DecodeError,
    decode_image,
    read_header,
    read_photo_meta,
)
from clip_core.pixels.preprocess import OPENAI_MEAN, OPENAI_STD, PreprocessSpec, preprocess
from tests.conftest import REPO
from tests.hostile_corpus import (
    BLUE,
    EXIF_DATE_ISO,
    GREEN,
    NEAR_LIMIT_SIZE,
    ODD_NAMES,
    QUADRANTS,
    RED,
    UPRIGHT_SIZE,
    WHITE,
    encode,
    exif_bytes,
    fake_heif_bytes,
    heic_bytes,
    make_hostile_corpus,
    png_header_only,
    smooth_image,
    stored_for_orientation,
)

# ../shared/datasets/caltech101-1200 relative to the repository root
pytestmark = pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # exif-damaged.jpg, on purpose

CALTECH = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "caltech101-1200"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, str | None]]:
    folder = tmp_path_factory.mktemp("hostile")
    return folder, make_hostile_corpus(folder)


def decode(corpus, name: str, **kwargs) -> DecodedImage:
    return decode_image(corpus[0] / name, **kwargs)


def reason_of(source, **kwargs) -> str | None:
    try:
        decode_image(source, **kwargs)
    except DecodeError as exc:
        return exc.reason
    return None


def close_to(pixel, colour, tol: int = 12) -> bool:
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, colour, strict=True))


# --- the whole corpus ---------------------------------------------------------------------

def test_every_corpus_file_decodes_or_fails_with_its_reason(corpus):
    folder, expected = corpus
    wrong = []
    for name, want in expected.items():
        try:
            result = decode_image(folder / name)
        except DecodeError as exc:
            assert exc.reason in REASONS
            assert str(exc) and exc.reason not in ("", None)
            got = exc.reason
        else:
            assert result.image.mode == "RGB"
            assert result.image.width > 0 and result.image.height > 0
            assert (result.width, result.height) == result.image.size  # no min_side given
            got = None
        if got != want:
            wrong.append((name, want, got))
    assert not wrong, wrong


def test_header_reading_agrees_with_decoding(corpus):
    """Moved and duplicate files get their size and date from headers alone: the same values
    a full decode gives, for every corpus file both can read (rotations, EXIF dates, every
    format)."""
    folder, expected = corpus
    compared = 0
    for name, want in expected.items():
        path = folder / name
        if want is not None or not path.is_file():
            continue
        decoded = decode_image(path)
        try:
            header = read_header(path.read_bytes())
        except DecodeError:
            continue  # damaged beyond its header: the decode path handles those
        assert (header.width, header.height) == (decoded.width, decoded.height), name
        if not name.endswith(".png"):  # PNG may keep eXIf after the pixels
            assert header.taken_at == decoded.taken_at, name
        compared += 1
    assert compared >= 20


def test_corpus_decodes_the_same_from_bytes_and_streams(corpus):
    folder, expected = corpus
    for name, want in expected.items():
        path = folder / name
        if want in ("not-a-file", "unreadable", "vanished") or not os.access(path, os.R_OK):
            continue
        data = path.read_bytes()
        assert reason_of(data) == want, name
        assert reason_of(io.BytesIO(data)) == want, name


def test_no_file_handles_leak(corpus):
    folder, expected = corpus
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.exists():
        pytest.skip("needs /proc")
    before = len(list(fd_dir.iterdir()))
    for _ in range(3):
        for name in expected:
            reason_of(folder / name)
    assert len(list(fd_dir.iterdir())) <= before


def test_parallel_decoding_in_threads_gives_the_same_results(corpus):
    folder, expected = corpus
    names = [n for n in expected if "limit" not in n] * 3

    def outcome(name: str):
        try:
            decoded = decode_image(str(folder / name), min_side=16)  # str paths work too
        except DecodeError as exc:
            return exc.reason
        return decoded.image.size, decoded.image.tobytes()[:64]

    sequential = [outcome(n) for n in names]
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(outcome, names)) == sequential


# --- failures -----------------------------------------------------------------------------

def test_bomb_is_refused_from_the_header_with_a_clear_message(corpus):
    with pytest.raises(DecodeError) as info:
        decode(corpus, "bomb-60000x60000.png")
    assert info.value.reason == "decompression-bomb"
    assert "claims 60000 x 60000 = 3600 MP, over the 180 MP limit" in str(info.value)


def test_default_limit_is_180_megapixels_inclusive():
    assert DEFAULT_MAX_PIXELS == 12000 * 15000
    # At the limit the size check passes (then the missing pixel data is noticed) ...
    assert reason_of(png_header_only(12000, 15000)) == "truncated"
    # ... one row more is refused, although Pillow's own limit (~179 MP) is lower still.
    assert reason_of(png_header_only(15000, 12001)) == "decompression-bomb"


def test_a_larger_max_pixels_overrides_pillows_global_limit():
    assert reason_of(png_header_only(20000, 20000), max_pixels=400_000_000) == "truncated"
    assert reason_of(png_header_only(20000, 20000)) == "decompression-bomb"


def test_pillow_bomb_warning_as_error_does_not_leak():
    # 100 MP is under our limit but over Pillow's warning threshold (~89 MP).
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        assert reason_of(png_header_only(10000, 10000)) == "truncated"


def test_image_just_under_a_custom_limit_decodes(corpus):
    w, h = NEAR_LIMIT_SIZE
    decoded = decode(corpus, "near-limit.png", max_pixels=w * h)
    assert decoded.image.size == (w, h)
    with pytest.raises(DecodeError) as info:
        decode(corpus, "near-limit.png", max_pixels=w * h - 1)
    assert info.value.reason == "decompression-bomb"
    assert f"{w} x {h}" in str(info.value)


def test_truncated_and_damaged_files():
    full = encode(smooth_image(300, 200), "JPEG", quality=90)
    assert reason_of(full[: len(full) // 2]) == "truncated"
    assert reason_of(full[:300]) in ("truncated", "corrupt")
    png = encode(smooth_image(300, 200), "PNG")
    assert reason_of(png[: len(png) // 2]) == "truncated"
    assert reason_of(b"\xff\xd8\xff" + b"\x00" * 50) == "corrupt"  # JPEG magic, no header


def test_empty_and_non_image_content(corpus):
    assert reason_of(b"") == "empty-file"
    assert reason_of(io.BytesIO(b"")) == "empty-file"
    assert reason_of(b"%PDF-1.7\n" + b"x" * 100) == "not-an-image"
    with pytest.raises(DecodeError, match="not a JPEG, PNG"):
        decode(corpus, "page.png")


def test_eps_and_other_exotic_formats_are_not_parsed():
    # Pillow could open EPS (via Ghostscript), PSD, TGA...: photo formats only here.
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
    assert reason_of(eps) == "not-an-image"
    assert reason_of(encode(Image.new("RGB", (4, 4)), "TGA")) == "not-an-image"


def test_file_system_problems(tmp_path, monkeypatch):
    assert reason_of(tmp_path / "missing.jpg") == "vanished"
    plain = tmp_path / "plain.jpg"
    plain.write_bytes(encode(Image.new("RGB", (4, 4)), "JPEG"))
    assert reason_of(plain / "child.jpg") == "vanished"  # a parent that is a file
    folder = tmp_path / "dir.png"
    folder.mkdir()
    assert reason_of(folder) == "not-a-file"

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(images, "open_regular", denied)  # what chmod 000 does to a user
    with pytest.raises(DecodeError) as info:
        decode_image(plain)
    assert info.value.reason == "unreadable"
    assert "permission denied" in str(info.value)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root can read a chmod 000 file; the simulated case covers it")
def test_chmod_000_file_is_unreadable(corpus):
    assert reason_of(corpus[0] / "unreadable.jpg") == "unreadable"


def test_stream_that_cannot_seek_is_buffered():
    data = encode(smooth_image(40, 30), "PNG")

    class Pipe(io.RawIOBase):
        def __init__(self):
            self.inner = io.BytesIO(data)

        def readable(self):
            return True

        def seekable(self):
            return False

        def readinto(self, buffer):
            chunk = self.inner.read(len(buffer))
            buffer[: len(chunk)] = chunk
            return len(chunk)

    assert decode_image(io.BufferedReader(Pipe())).image.size == (40, 30)


def test_decode_error_is_picklable_and_keeps_reason():
    err = pickle.loads(pickle.dumps(DecodeError("truncated", "image data ends early")))
    assert (err.reason, str(err)) == ("truncated", "image data ends early")


def test_unconvertible_mode_is_reported():
    weird = Image.new("LAB", (2, 2))

    def no_conversion(*args, **kwargs):
        raise ValueError("conversion from LAB to RGB not supported")

    weird.convert = no_conversion  # stands in for a mode this Pillow cannot turn into RGB
    with pytest.raises(DecodeError) as info:
        images._to_rgb(weird)
    assert info.value.reason == "unsupported-mode"


# --- HEIC ---------------------------------------------------------------------------------

def test_heic_decodes_when_pillow_heif_is_installed(corpus):
    pytest.importorskip("pillow_heif")
    decoded = decode(corpus, "photo.heic")
    assert decoded.image.size == (64, 48)
    # pillow-heif stores EXIF orientation as a HEIF transform that libheif applies on decode
    # (resetting EXIF to 1), so it must come out upright, not rotated twice.
    assert images._heif_available()
    data = encode(stored_for_orientation(6), "HEIF", quality=95, exif=exif_bytes(orientation=6))
    rotated = decode_image(data)
    assert rotated.image.size == UPRIGHT_SIZE
    assert close_to(rotated.image.getpixel((2, 2)), QUADRANTS["top-left"], tol=40)


def test_heic_without_the_extra_names_the_install_command(monkeypatch):
    data = heic_bytes(smooth_image(16, 16))
    if data is None:
        data = fake_heif_bytes()
    monkeypatch.setattr(images, "_heif_available", lambda: False)
    with pytest.raises(DecodeError) as info:
        decode_image(data)
    assert info.value.reason == "heif-extra-missing"
    assert "pip install 'clipsearch[heif]'" in str(info.value)


def test_a_jpeg_is_decoded_without_loading_every_plugin_or_pillow_heif(tmp_path):
    """A JPEG head needs only the JPEG plugin: an index run's first photos must not wait for
    Image.init() and pillow-heif (~50-80 ms of one core, under a lock). Any other head still
    gets every photo format, HEIF included."""
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (32, 24), RED).save(photo, "JPEG")
    code = (
        "import sys\n"
        "from clip_core.pixels.decode import decode_image, read_header\n"
        f"read_header(open({str(photo)!r}, 'rb').read())\n"
        f"assert decode_image({str(photo)!r}).image.size == (32, 24)\n"
        "loaded = sorted(m for m in sys.modules if m.endswith('ImagePlugin'))\n"
        "assert 'pillow_heif' not in sys.modules, 'pillow_heif'\n"
        "assert 'PIL.JpegImagePlugin' in loaded and 'PIL.WebPImagePlugin' not in loaded, loaded\n"
        "import io\n"
        "from PIL import Image\n"
        "png = io.BytesIO()\n"
        "Image.new('RGB', (8, 8)).save(png, 'PNG')\n"
        "assert decode_image(png.getvalue()).image.size == (8, 8)\n"
        "assert 'PIL.WebPImagePlugin' in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_multi_picture_jpeg_decodes_its_first_picture():
    first, second = Image.new("RGB", (40, 30), RED), Image.new("RGB", (40, 30), BLUE)
    out = io.BytesIO()
    first.save(out, "MPO", save_all=True, append_images=[second])
    data = out.getvalue()
    assert data.startswith(b"\xff\xd8\xff")
    assert close_to(decode_image(data).image.getpixel((20, 15)), RED, tol=20)
    assert close_to(decode_image(data, min_side=8).image.getpixel((5, 4)), RED, tol=20)
    assert read_header(data).width == 40


# --- modes and frames ---------------------------------------------------------------------

def test_cmyk_jpeg_colours(corpus):
    image = decode(corpus, "cmyk.jpg").image
    assert close_to(image.getpixel((4, 8)), RED, tol=20)  # C=0 M=255 Y=255 K=0
    assert close_to(image.getpixel((28, 8)), BLUE, tol=20)


@pytest.mark.parametrize("name", ["gray16.png", "gray16b.tif", "int32.tif", "float.tif"])
def test_high_bit_depth_gray_is_scaled_not_clipped(corpus, name):
    image = decode(corpus, name).image
    assert close_to(image.getpixel((4, 8)), (128, 128, 128), tol=1)
    assert image.getpixel((28, 8)) == WHITE


def test_transparency_is_composited_on_white(corpus):
    palette = decode(corpus, "palette-transparent.png").image
    assert palette.getpixel((4, 8)) == WHITE
    assert palette.getpixel((28, 8)) == RED
    la = decode(corpus, "la.png").image
    assert la.getpixel((4, 8)) == WHITE
    assert la.getpixel((28, 8)) == (90, 90, 90)
    rgba = decode(corpus, "rgba.png").image
    assert rgba.getpixel((4, 8)) == WHITE  # stored colour was black, alpha 0
    assert rgba.getpixel((28, 8)) == GREEN


def test_rgb_colour_key_transparency_becomes_white(corpus):
    image = decode(corpus, "colour-key.png").image
    assert image.getpixel((4, 8)) == WHITE and image.getpixel((28, 8)) == WHITE


def test_float_and_signed_gray_ranges():
    def gray(values) -> tuple[int, ...]:
        image = Image.fromarray(np.asarray(values, np.float32).reshape(1, -1))  # mode F
        decoded = decode_image(encode(image, "TIFF")).image
        return tuple(decoded.getpixel((x, 0))[0] for x in range(len(values)))

    assert gray([0.0, 0.5, 1.0]) == (0, 128, 255)  # [0, 1] floats
    assert gray([-1.0, 0.0, 1.0]) == (0, 128, 255)  # other ranges are stretched
    assert gray([-5.0, -5.0]) == (0, 0)  # flat, no division by zero
    assert gray([float("nan"), 1.0]) == (0, 255)
    i32 = Image.fromarray(np.asarray([[0, 100000, 200000]], np.int32))
    assert decode_image(encode(i32, "TIFF")).image.getpixel((1, 0)) == (128, 128, 128)


def test_half_transparent_pixels_blend_with_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 128))
    pixel = decode_image(encode(image, "PNG")).image.getpixel((1, 1))
    assert close_to(pixel, (255, 127, 127), tol=2)


@pytest.mark.parametrize("name", ["animated.gif", "animated.webp", "multipage.tif"])
def test_first_frame_of_animations_and_multipage_files(corpus, name):
    image = decode(corpus, name).image
    assert image.size == (32, 16)
    assert close_to(image.getpixel((16, 8)), RED, tol=8)


def test_tiny_bilevel_and_panorama_images(corpus):
    assert decode(corpus, "one-pixel.png").image.getpixel((0, 0)) == RED
    assert decode(corpus, "one-pixel.jpg").image.size == (1, 1)
    assert decode(corpus, "bilevel.png").image.getpixel((0, 0)) == WHITE
    mpo = decode(corpus, "mpo.jpg", min_side=4)  # multi-picture JPEG: draft applies too
    assert (mpo.width, mpo.height) == (64, 48) and mpo.image.size == (8, 6)
    panorama = decode(corpus, "panorama-20000x200.jpg", min_side=224)
    assert (panorama.width, panorama.height) == (20000, 200)
    assert panorama.image.size == (20000, 200)  # shortest side already below min_side


# --- EXIF ---------------------------------------------------------------------------------

@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_displayed_upright(corpus, orientation):
    decoded = decode(corpus, f"orientation-{orientation}.jpg")
    assert decoded.image.size == UPRIGHT_SIZE
    assert (decoded.width, decoded.height) == UPRIGHT_SIZE
    stored = Image.open(corpus[0] / f"orientation-{orientation}.jpg").size
    assert stored == (UPRIGHT_SIZE[::-1] if orientation >= 5 else UPRIGHT_SIZE)
    w, h = UPRIGHT_SIZE
    probes = {"top-left": (w // 4, h // 4), "top-right": (3 * w // 4, h // 4),
              "bottom-left": (w // 4, 3 * h // 4), "bottom-right": (3 * w // 4, 3 * h // 4)}
    for corner, xy in probes.items():
        assert close_to(decoded.image.getpixel(xy), QUADRANTS[corner], tol=40), corner


def test_orientation_in_png_exif(corpus):
    decoded = decode(corpus, "orientation-6.png")
    assert decoded.image.size == UPRIGHT_SIZE
    assert decoded.image.getpixel((2, 2)) == QUADRANTS["top-left"]


def test_exif_dates(corpus):
    assert decode(corpus, "exif-date.jpg").taken_at == EXIF_DATE_ISO
    assert decode(corpus, "exif-date-garbage.jpg").taken_at is None
    assert decode(corpus, "exif-damaged.jpg").taken_at is None
    assert decode(corpus, "ok.jpg").taken_at is None


def test_datetime_falls_back_from_original_to_ifd0():
    exif = Image.Exif()
    exif[0x0132] = "2019:01:02 03:04:05"
    image = Image.open(io.BytesIO(encode(Image.new("RGB", (4, 4)), "JPEG", exif=exif.tobytes())))
    assert read_photo_meta(image).taken_at == "2019-01-02T03:04:05"


@pytest.mark.parametrize(("raw", "iso"), [
    ("2021:07:04 12:34:56", "2021-07-04T12:34:56"),
    ("2021:07:04 12:34:56\x00", "2021-07-04T12:34:56"),
    (b"2021:07:04 12:34:56", "2021-07-04T12:34:56"),
    ("2021-07-04 12:34:56", "2021-07-04T12:34:56"),
    ("2021-07-04T12:34:56+02:00", "2021-07-04T12:34:56"),
    ("0000:00:00 00:00:00", None),
    ("    :  :     :  :  ", None),
    ("2021:13:45 99:00:00", None),
    ("", None),
    (None, None),
    (12345, None),
])
def test_exif_date_parsing(raw, iso):
    assert images._parse_exif_date(raw) == iso


def test_odd_file_names(corpus):
    for name in ODD_NAMES:
        assert decode(corpus, name).image.size == (64, 48)


def test_extensions():
    assert {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic",
            ".heif"} == IMAGE_EXTENSIONS


# --- draft decoding -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def phone_jpegs() -> list[bytes]:
    """Two 4000 x 3000 q90 JPEGs stored landscape with EXIF orientation 6 and 1."""
    out = []
    for seed, orientation in ((1, 6), (2, 1)):
        base = np.asarray(smooth_image(4000, 3000, seed=seed)).astype(np.int16)
        grain = np.random.default_rng(seed).normal(0, 6, base.shape).astype(np.int16)
        photo = Image.fromarray(np.clip(base + grain, 0, 255).astype(np.uint8))
        out.append(encode(photo, "JPEG", quality=90, exif=exif_bytes(orientation=orientation)))
    return out


SPEC = PreprocessSpec(224, OPENAI_MEAN, OPENAI_STD)


def test_draft_decoding_is_close_to_full_decoding(phone_jpegs):
    std = np.asarray(OPENAI_STD, np.float32)[:, None, None]
    for data, upright in zip(phone_jpegs, [(3000, 4000), (4000, 3000)], strict=True):
        full = decode_image(data)
        draft = decode_image(data, min_side=SPEC.min_side)
        assert full.image.size == upright == (draft.width, draft.height)
        assert draft.image.size[0] < upright[0] and min(draft.image.size) >= SPEC.min_side
        # Still upright: portrait stays portrait.
        assert (draft.image.width < draft.image.height) == (upright[0] < upright[1])
        diff = np.abs((preprocess(full.image, SPEC) - preprocess(draft.image, SPEC)) * std)
        print(f"\n{upright}: draft {draft.image.size}, mean |diff| {diff.mean():.4f}, "
              f"max {diff.max():.4f} (0-1 pixel units)")
        assert diff.mean() < 0.02


def test_draft_decoding_is_faster(phone_jpegs):
    data = phone_jpegs[0]

    def best_of(runs: int, **kwargs) -> tuple[float, float]:
        decode_s, total_s = [], []
        for _ in range(runs):
            start = time.perf_counter()
            image = decode_image(data, **kwargs).image
            decoded = time.perf_counter()
            preprocess(image, SPEC)
            decode_s.append(decoded - start)
            total_s.append(time.perf_counter() - start)
        return min(decode_s), min(total_s)

    full, draft = best_of(3), best_of(3, min_side=SPEC.min_side)
    print(f"\n12 MP JPEG decode: full {full[0] * 1e3:.0f} ms, draft {draft[0] * 1e3:.0f} ms; "
          f"decode+preprocess: full {full[1] * 1e3:.0f} ms, draft {draft[1] * 1e3:.0f} ms "
          f"({full[1] / draft[1]:.1f}x)")
    assert draft[1] < full[1] / 2


def test_min_side_is_always_kept():
    landscape = smooth_image(1200, 600)
    png = encode(landscape, "PNG", compress_level=1)
    for orientation in (1, 6):
        jpeg = encode(landscape, "JPEG", exif=exif_bytes(orientation=orientation))
        upright = (600, 1200) if orientation == 6 else (1200, 600)
        for min_side in (1, 50, 74, 75, 76, 149, 150, 151, 299, 300, 301, 600, 1000):
            decoded = decode_image(jpeg, min_side=min_side)
            assert min(decoded.image.size) >= min(min_side, 600), (orientation, min_side)
            assert (decoded.width, decoded.height) == upright
            assert (decoded.image.width < decoded.image.height) == (upright[0] < upright[1])
            reduced = decode_image(png, min_side=min_side)  # box reduce keeps 2 x min_side
            assert min(reduced.image.size) >= min(2 * min_side, 600), min_side
    # JPEG: DCT scaling by a power of two (1/4 here); PNG: box reduce keeping 2 x min_side.
    assert decode_image(jpeg, min_side=100).image.size == (150, 300)
    assert decode_image(png, min_side=100).image.size == (400, 200)


# --- a real photo set, when present -------------------------------------------------------

@pytest.mark.skipif(not CALTECH.is_dir(), reason="shared caltech101-1200 data set not present")
def test_every_caltech_image_decodes():
    paths = sorted(p for p in (CALTECH / "images").rglob("*")
                   if p.suffix.lower() in IMAGE_EXTENSIONS)
    assert len(paths) >= 1000
    failures = []
    for path in paths:
        try:
            decoded = decode_image(path, min_side=224)
        except DecodeError as exc:
            failures.append((path.name, exc.reason, str(exc)))
            continue
        assert decoded.image.mode == "RGB"
        assert min(decoded.image.size) >= min(224, decoded.width, decoded.height)
    assert not failures, failures[:10]
