"""Generated near-duplicate sets for tests/test_query_duplicates.py: one picture and its
copies (re-encoded, resized, cropped by 5%, straightened by a small rotation), and other
pictures of the same colour, shape and background whose shape sits elsewhere."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image

from clipsearch.shapes import RGB, draw

SIZE = (240, 180)
VARIANTS = ("q60", "q85", "half", "crop", "rot")


def _centre(img: Image.Image, colour: str) -> np.ndarray:
    """Where the shape is: the centroid of the pixels near its colour."""
    px = np.asarray(img, np.int32)
    mask = np.abs(px - np.array(RGB[colour])).max(axis=2) < 40
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean() / img.width, ys.mean() / img.height])


def _variant(img: Image.Image, kind: str, folder: Path, stem: str) -> None:
    w, h = img.size
    if kind == "q60":
        img.save(folder / f"{stem}-q60.jpg", quality=60)
    elif kind == "q85":
        img.save(folder / f"{stem}-q85.jpg", quality=85)
    elif kind == "half":
        img.resize((w // 2, h // 2), Image.LANCZOS).save(folder / f"{stem}-half.png")
    elif kind == "crop":  # 5% off two sides
        img.crop((int(w * 0.05), int(h * 0.05), w, h)).save(folder / f"{stem}-crop.png")
    else:  # straightened: a 2-degree turn, cropped so no corner is empty
        turned = img.rotate(2, resample=Image.BICUBIC)
        mx, my = int(w * 0.04), int(h * 0.04)
        turned.crop((mx, my, w - mx, h - my)).save(folder / f"{stem}-rot.jpg", quality=90)


def write_sets(folder: Path, groups: int = 12, seed: int = 1414) -> None:
    """`g{i}-orig.png` and its variants `g{i}-{kind}.*`; `o{i}.png`: the same colour, shape
    and background, the shape's centre moved by at least a quarter of the picture."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    colours, shapes = ("red", "green", "blue", "yellow"), ("circle", "square", "triangle", "star")
    for g in range(groups):
        colour, shape = colours[g % 4], shapes[(g // 4) % 4]
        background = ("grey", "noise", "white")[g % 3]
        img = draw(colour, shape, background=background, size=SIZE, rng=rng)
        img.save(folder / f"g{g}-orig.png")
        for kind in VARIANTS:
            _variant(img, kind, folder, f"g{g}")
        while True:
            other = draw(colour, shape, background=background, size=SIZE, rng=rng)
            if np.abs(_centre(other, colour) - _centre(img, colour)).max() >= 0.25:
                break
        other.save(folder / f"o{g}.png")


def group_of(path: str) -> str:
    """g3-crop.png -> g3; o3.png -> o3 (each other picture is its own group)."""
    return Path(path).name.split("-")[0].split(".")[0]
