"""A model's preprocessing read from its config files, without importing torch.

The indexer starts decoding while the model is still loading (importing torch + open_clip and
building ViT-B-32 take seconds); for that it needs the model's preprocessing up front. This
mirrors open_clip's factory (defaults, then the bundle's or the pretrained tag's values, then
`size` from vision_cfg.image_size). The loaded model's own spec is still checked against it.
"""

from __future__ import annotations

from clip_core.models.places import default_models_dir
from clip_core.models.ref import ModelRef
from clip_core.models.sources import source_for
from clip_core.pixels.preprocess import PreprocessSpec

_KEYS = ("mean", "std", "interpolation", "resize_mode", "fill_color")


def guess_preprocess(ref: ModelRef) -> PreprocessSpec | None:
    """The spec open_clip will report for `ref`, or None where only building tells."""
    try:
        found = source_for(ref, default_models_dir()).preprocess_config()
        if found is None:
            return None
        vision, overrides = found
        if "image_size" not in vision:
            return None
        spec = {k: v for k, v in overrides.items() if k in _KEYS}
        size = vision["image_size"]
        size = (size, size) if isinstance(size, int) else tuple(size)  # open_clip's to_2tuple
        return PreprocessSpec.from_open_clip({**spec, "size": size})
    except (OSError, ValueError, KeyError, TypeError):
        return None
