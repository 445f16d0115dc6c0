"""Synthetic captioned images: one coloured shape on a background.

Pure Pillow + ``random.Random`` (no torch, no numpy) so tests, the demo and the fixture-model
trainer can all draw the same kind of pictures cheaply and deterministically from a seed.
"""

from __future__ import annotations

import math
import os
import random
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "black", "white")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
# Backgrounds: any colour name (never the shape's own), a plain grey, or grey noise.
BACKGROUNDS: tuple[str, ...] = (*COLOURS, "grey", "noise")

RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "green": (35, 170, 60),
    "blue": (35, 75, 225),
    "yellow": (245, 215, 30),
    "black": (20, 20, 20),
    "white": (245, 245, 245),
}

_PLAIN_TEMPLATES = (
    "a {c} {s}",
    "a photo of a {c} {s}",
    "{c} {s}",
    "a picture of a {c} {s}",
    "an image of a {c} {s}",
    "a drawing of a {c} {s}",
    "a {c} {s} shape",
)
_BG_TEMPLATES = (
    "a {c} {s} on a {b} background",
    "a photo of a {c} {s} on a {b} background",
    "{c} {s} on {b}",
)
_BG_WORDS = {"grey": "grey", "noise": "noisy"}


def _jitter(rgb: tuple[int, int, int], rng: random.Random, amount: int) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, v + rng.randint(-amount, amount))) for v in rgb)
    return r, g, b


def _background(name: str, w: int, h: int, rng: random.Random) -> Image.Image:
    if name in RGB:
        return Image.new("RGB", (w, h), _jitter(RGB[name], rng, 12))
    # Greys stay mid-range so black and white shapes keep their contrast.
    level = rng.randint(95, 165)
    base = Image.new("RGB", (w, h), (level, level, level))
    if name == "grey":
        return base
    # randbytes keeps the noise reproducible from the seed (Image.effect_noise is not).
    noise = Image.frombytes("RGB", (w, h), rng.randbytes(w * h * 3))
    return Image.blend(base, noise, rng.uniform(0.2, 0.35))


def _polygon(shape: str, cx: float, cy: float, r: float, rng: random.Random) -> list[tuple]:
    """Vertices on a circle of radius r (so r bounds the shape whatever the rotation)."""
    if shape == "square":
        # Small tilt only: a 45-degree square reads as a diamond.
        start, pts = math.radians(45 + rng.uniform(-15, 15)), [1.0] * 4
    elif shape == "triangle":
        start, pts = math.radians(-90 + rng.uniform(-180, 180)), [1.0] * 3
    else:  # star: 5 outer points alternating with inner ones
        inner = rng.uniform(0.38, 0.5)
        start, pts = math.radians(-90 + rng.uniform(-36, 36)), [1.0, inner] * 5
    step = 2 * math.pi / len(pts)
    return [
        (cx + r * k * math.cos(start + i * step), cy + r * k * math.sin(start + i * step))
        for i, k in enumerate(pts)
    ]


def draw(
    colour: str,
    shape: str,
    *,
    background: str | None = None,
    size: int | tuple[int, int] = 96,
    rng: random.Random,
) -> Image.Image:
    """Draw one ``colour`` ``shape`` (RGB). ``size`` is side or (width, height).

    The shape stays inside the central square so a shortest-side centre crop keeps it whole.
    ``background=None`` picks a random one that differs from ``colour``.
    """
    if colour not in RGB or shape not in SHAPES:
        raise ValueError(f"unknown colour/shape: {colour!r} {shape!r}")
    if background is None:
        background = rng.choice([b for b in BACKGROUNDS if b != colour])
    elif background not in BACKGROUNDS or background == colour:
        raise ValueError(f"bad background {background!r} for a {colour} shape")
    w, h = (size, size) if isinstance(size, int) else size
    img = _background(background, w, h, rng)
    side = min(w, h)
    ox, oy = (w - side) / 2, (h - side) / 2
    r = side * rng.uniform(0.18, 0.4)
    margin = side * 0.04
    cx = ox + rng.uniform(r + margin, side - r - margin)
    cy = oy + rng.uniform(r + margin, side - r - margin)
    fill = _jitter(RGB[colour], rng, 15)
    pen = ImageDraw.Draw(img)
    if shape == "circle":
        pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        pen.polygon(_polygon(shape, cx, cy, r, rng), fill=fill)
    return img


def caption(
    colour: str, shape: str, background: str | None = None, rng: random.Random | None = None
) -> str:
    """Caption for a drawing. Without ``rng``: the plain "a red circle" (plus the background
    when one is given); with ``rng``: a random template that mentions the background 1 time in 3.
    """
    bg = _BG_WORDS.get(background, background) if background else None
    if rng is None:
        return f"a {colour} {shape}" + (f" on a {bg} background" if bg else "")
    if bg and rng.random() < 1 / 3:
        return rng.choice(_BG_TEMPLATES).format(c=colour, s=shape, b=bg)
    return rng.choice(_PLAIN_TEMPLATES).format(c=colour, s=shape)


def sample(
    rng: random.Random, size: int | tuple[int, int] = 96
) -> tuple[Image.Image, str, str, str]:
    """A random (image, caption, colour, shape)."""
    colour, shape = rng.choice(COLOURS), rng.choice(SHAPES)
    background = rng.choice([b for b in BACKGROUNDS if b != colour])
    img = draw(colour, shape, background=background, size=size, rng=rng)
    return img, caption(colour, shape, background, rng), colour, shape


def write_corpus(
    folder: Path,
    per_pair: int = 2,
    seed: int = 0,
    size: int | tuple[int, int] = 96,
    fmt: str = "png",
) -> list[tuple[Path, str, str]]:
    """Write ``per_pair`` images of every colour-shape pair as ``red-circle-0.png`` etc.

    Returns (path, colour, shape) in a fixed order; the same seed gives the same pixels.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    out: list[tuple[Path, str, str]] = []
    extra = {"quality": 92} if fmt.lower() in ("jpg", "jpeg") else {}
    # Drawn in order (the seed's pixels), encoded on every core: Pillow's encoders let go of
    # the GIL, and a 1024 px noise PNG takes ~0.2 s to encode against ~0.03 s to draw.
    # A few encodes in flight at most: the drawn images wait in memory (1024 px: 3 MB each).
    workers = min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers, thread_name_prefix="shapes-save") as pool:
        pending: list[Future] = []
        for colour in COLOURS:
            for shape in SHAPES:
                for i in range(per_pair):
                    path = folder / f"{colour}-{shape}-{i}.{fmt}"
                    img = draw(colour, shape, size=size, rng=rng)
                    pending.append(pool.submit(img.save, path, **extra))
                    if len(pending) > 2 * workers:
                        pending.pop(0).result()
                    out.append((path, colour, shape))
        for saved in pending:
            saved.result()
    return out
