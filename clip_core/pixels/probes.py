"""Deterministic photo-like test images: smooth lighting, overlapping shapes, texture, noise.

Used to check a compiled image tower against the fp32 model (clip_core.compiled.cache) without
shipping photos: flat or pure-noise inputs would not exercise the activations real photos do.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def probe_images(count: int = 16, seed: int = 1234) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [_one(rng) for _ in range(count)]


def _one(rng: np.random.Generator) -> Image.Image:
    width, height = int(rng.integers(240, 480)), int(rng.integers(200, 400))
    # Low-frequency colour field: sky, walls, lighting gradients.
    coarse = rng.uniform(0, 255, (3, 4, 3)).astype(np.uint8)
    image = Image.fromarray(coarse, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        x1, y1 = x0 + rng.integers(20, width // 2), y0 + rng.integers(20, height // 2)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=colour)
        else:
            points = [(int(rng.integers(0, width)), int(rng.integers(0, height))) for _ in range(3)]
            draw.polygon(points, fill=colour)
    for _ in range(int(rng.integers(0, 30))):  # thin lines: edges and text-like strokes
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        draw.line((x0, y0, x0 + int(rng.integers(-60, 60)), y0 + int(rng.integers(-8, 8))),
                  fill=tuple(int(c) for c in rng.integers(0, 256, 3)), width=2)
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.5))))
    pixels = np.asarray(image, np.float32) + rng.normal(0, rng.uniform(2, 12), (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
