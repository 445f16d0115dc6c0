"""open_clip's eval image transform rebuilt on Pillow + numpy (no torch, no torchvision).

Decoder threads can then produce ready pixel arrays without importing torch. On a PIL input
torchvision resizes and crops with Pillow itself, so the steps below reproduce
`open_clip.transform.image_transform(..., is_train=False)` exactly (tests check 1e-5),
including its quirks: Resize(int) truncates the long side, ResizeKeepRatio rounds, a
non-square 'shortest' target always uses bicubic, CenterCrop offsets use round().
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from clip_core.pixels.decode import MAX_ASPECT_RATIO, DecodeError

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_RESIZE_MODES = ("shortest", "longest", "squash")
_INTERPOLATIONS = ("bicubic", "bilinear", "random")  # 'random' means bicubic at eval time


@dataclass(frozen=True)
class PreprocessSpec:
    size: int | tuple[int, int]  # int = square; tuple = (height, width) as in open_clip
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0  # padding colour for 'longest'

    def __post_init__(self) -> None:
        size = self.size
        if isinstance(size, Sequence):
            size = int(size[0]) if len(size) == 1 else (int(size[0]), int(size[1]))
        else:
            size = int(size)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "mean", _triple(self.mean))
        object.__setattr__(self, "std", _triple(self.std))
        if self.resize_mode not in _RESIZE_MODES:
            raise ValueError(
                f"resize_mode must be one of {_RESIZE_MODES}, not {self.resize_mode!r}")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {_INTERPOLATIONS}, not {self.interpolation!r}")
        if min(self.hw) <= 0 or 0 in self.std:
            raise ValueError(f"bad preprocess spec: size={self.size}, std={self.std}")

    @property
    def hw(self) -> tuple[int, int]:
        """Output (height, width)."""
        return (self.size, self.size) if isinstance(self.size, int) else self.size

    @property
    def min_side(self) -> int:
        """Shortest decoded side that keeps every resize mode a pure downscale: pass it as
        `decode_image(min_side=...)` to allow JPEG draft decoding without losing detail."""
        return max(self.hw)

    @classmethod
    def from_open_clip(cls, cfg: Mapping | object) -> PreprocessSpec:
        """From open_clip's preprocess cfg: `model.visual.preprocess_cfg` (a dict), a
        `PreprocessCfg`, or the `preprocess_cfg` of an open_clip_config.json."""
        get = cfg.get if isinstance(cfg, Mapping) else lambda k, d=None: getattr(cfg, k, d)
        size = get("size")
        if size is None:
            raise ValueError("preprocess cfg has no 'size'")
        mode = get("mode") or "RGB"
        if mode != "RGB":
            raise ValueError(f"only RGB preprocessing is supported, cfg says mode={mode!r}")
        return cls(
            size=size,
            mean=get("mean") or OPENAI_MEAN,  # open_clip falls back the same way
            std=get("std") or OPENAI_STD,
            interpolation=get("interpolation") or "bicubic",
            resize_mode=get("resize_mode") or "shortest",
            fill_color=int(get("fill_color") or 0),
        )

    def to_dict(self) -> dict:
        """JSON-ready, in open_clip's preprocess_cfg layout (tuples as lists)."""
        return {
            "size": self.size if isinstance(self.size, int) else list(self.size),
            "mode": "RGB",
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "resize_mode": self.resize_mode,
            "fill_color": self.fill_color,
        }


def preprocess(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """PIL image -> normalised float32 [3, H, W], as open_clip's eval transform."""
    out = np.empty((3, *spec.hw), dtype=np.float32)
    _preprocess_into(image, spec, out)
    return out


def preprocess_batch(images: Sequence[Image.Image], spec: PreprocessSpec) -> np.ndarray:
    """PIL images -> float32 [N, 3, H, W]."""
    out = np.empty((len(images), 3, *spec.hw), dtype=np.float32)
    for i, image in enumerate(images):
        _preprocess_into(image, spec, out[i])
    return out


def _preprocess_into(image: Image.Image, spec: PreprocessSpec, out: np.ndarray) -> None:
    height, width = spec.hw
    resample = Image.Resampling.BILINEAR if spec.interpolation == "bilinear" else (
        Image.Resampling.BICUBIC)
    if spec.resize_mode == "squash":
        image = _resize(image, (height, width), resample)
    elif spec.resize_mode == "longest":
        image = _resize(image, _keep_ratio(image, height, width, longest=1.0), resample)
        image = _center_crop_or_pad(image, height, width, spec.fill_color)
    else:
        if height == width:
            target = _shortest_edge(image, height)
        else:  # open_clip: ResizeKeepRatio(image_size) with its default, bicubic
            target = _keep_ratio(image, height, width, longest=0.0)
            resample = Image.Resampling.BICUBIC
        image = _center_crop_or_pad(_resize(image, target, resample), height, width, 0)
    if image.mode != "RGB":  # open_clip converts after resizing and cropping
        image = image.convert("RGB")
    # Same float32 operation order as ToTensor + Normalize, so results agree bit for bit.
    np.divide(np.asarray(image).transpose(2, 0, 1), np.float32(255), out=out, dtype=np.float32)
    out -= np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    out /= np.asarray(spec.std, dtype=np.float32)[:, None, None]


def _shortest_edge(image: Image.Image, size: int) -> tuple[int, int]:
    """torchvision Resize(int): short side -> size, long side truncated (not rounded)."""
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    return new_h, new_w


def _keep_ratio(image: Image.Image, height: int, width: int, longest: float) -> tuple[int, int]:
    """open_clip ResizeKeepRatio.get_params without the random parts (same float order).
    Sides are kept >= 1 px where open_clip would crash on extreme panoramas."""
    w, h = image.size
    ratio_h, ratio_w = h / height, w / width
    ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
    return max(1, round(h * 1.0 / ratio)), max(1, round(w * 1.0 / ratio))


def _resize(image: Image.Image, hw: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    if (image.height, image.width) == hw:
        return image  # torchvision skips the resize, so no resampling blur
    if max(hw) > MAX_ASPECT_RATIO * min(hw):  # PIL images given directly: decode_image
        raise DecodeError(  # refuses these from the header; the resize would allocate GBs
            "extreme-aspect-ratio",
            f"{image.width} x {image.height} is too elongated to preprocess (resizing it "
            f"would make {hw[1]} x {hw[0]} pixels; limit {MAX_ASPECT_RATIO}:1)")
    return image.resize((hw[1], hw[0]), resample)


def _center_crop_or_pad(image: Image.Image, height: int, width: int, fill: int) -> Image.Image:
    """torchvision center_crop / open_clip center_crop_or_pad on a PIL image."""
    w, h = image.size
    if width > w or height > h:
        left, top = max(width - w, 0) // 2, max(height - h, 0) // 2
        right, bottom = (max(width - w, 0) + 1) // 2, (max(height - h, 0) + 1) // 2
        image = _pad(image, (left, top, right, bottom), fill)
        w, h = image.size
        if (w, h) == (width, height):
            return image
    top = int(round((h - height) / 2.0))
    left = int(round((w - width) / 2.0))
    return image.crop((left, top, left + width, top + height))


def _pad(image: Image.Image, border: tuple[int, int, int, int], fill: int) -> Image.Image:
    # torchvision's PIL pad: an int fill repeated per band, palette kept for P images.
    bands = len(image.getbands())
    colour: float | int | tuple[int, ...] = fill if image.mode == "F" else int(fill)
    if bands > 1:
        colour = tuple([int(fill)] * bands)
    padded = ImageOps.expand(image, border=border, fill=colour)
    if image.mode == "P":
        padded.putpalette(image.getpalette())
    return padded


def _triple(values: float | Sequence[float]) -> tuple[float, float, float]:
    if isinstance(values, (int, float)):
        return (float(values),) * 3
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        return values * 3
    if len(values) != 3:
        raise ValueError(f"expected 3 channel values, got {values}")
    return values


def same_preprocess(a: PreprocessSpec, b: PreprocessSpec) -> bool:
    """Equal transforms: open_clip reports `size` as 224 or (224, 224) depending on model."""
    return a.hw == b.hw and dataclasses.replace(a, size=b.size) == b
