"""Build only the image tower of an open_clip model, for torch indexing (issue 12, item 3).

Why: open_clip.create_model builds the whole model (ViT-B-32: 605 MB in fp32) and, for a
weights file, reads the whole state dict beside it before the text tower can be dropped,
though an index run needs only the image tower (350 MB). Here the model's skeleton is built
on torch's meta device (no memory, open_clip's own config and preprocessing logic), the text
side is removed, and only the image tower is made real:
- from a weights file: the tower's tensors alone are read and assigned (safetensors read
  tensor by tensor; a torch checkpoint memory-mapped where its format allows);
- random weights (`--pretrained none`): the tower is built right after seeding, as
  open_clip's CLIP and CustomTextCLIP build it first, so it draws the same random numbers.
Vectors equal the whole model's (tests/test_image_only.py). Anything this does not cover
(CoCa, timm towers seeded at random, third-party checkpoints that open_clip converts on
load, a tower with buffers the file does not hold) returns None and the caller builds the
whole model as before.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from clip_core.heap import give_back

log = logging.getLogger(__name__)


def build_image_only(open_clip: Any, name: str, pretrained: str | None, seed: int | None,
                     precision: str, device: str) -> Any | None:
    """The model with a real image tower and no text tower, or None where not covered."""
    import torch
    from open_clip.model import CLIP, CustomTextCLIP

    weights = None if seed is not None else _checkpoint(name, pretrained)
    if seed is None and weights is None:
        return None
    try:
        with torch.device("meta"):
            # pretrained_text=False: with load_weights=False open_clip would otherwise fetch
            # a Hugging Face text tower's base weights for the skeleton.
            model = open_clip.create_model(name, pretrained=pretrained, load_weights=False,
                                           pretrained_text=False, precision=precision,
                                           device="meta")
    except Exception as exc:  # a model whose construction needs real tensors: build whole
        log.info("image tower of %s not built alone: %s", name, exc)
        return None
    if type(model) not in (CLIP, CustomTextCLIP):
        return None  # CoCa and others: the whole model, as before
    _drop_all_but_visual(model)
    if seed is not None:
        visual = _seeded_visual(open_clip, name, seed, precision, device)
        if visual is None:
            return None
        _copy_preprocess(model.visual, visual)
        model.visual = visual
    elif not _load_visual(model, weights, device):
        return None
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        return None  # a buffer that neither the file nor the seed makes
    # The file's tensors that were cast (bf16, fp16) are freed in blocks glibc keeps for
    # reuse: hand them back, or the index run carries them to its end.
    give_back()
    return model.eval()


def _checkpoint(name: str, pretrained: str | None) -> Path | None:
    """The weights file open_clip.create_model would read for (name, pretrained)."""
    if name.startswith("local-dir:"):
        from open_clip.factory import _find_checkpoint_in_dir

        found = _find_checkpoint_in_dir(Path(name[len("local-dir:"):]))
        return Path(found) if found else None
    if pretrained and Path(pretrained).is_file():
        return Path(pretrained)
    return None


def _drop_all_but_visual(model: Any) -> None:
    """The text tower, its leftovers on the model (positional embedding, projection, causal
    mask) and the logit scale are all text-side: an image-only model holds none of them."""
    for attr in [n for n in model._modules if n != "visual"]:
        setattr(model, attr, None)
    for attr in [*model._parameters, *model._buffers]:
        setattr(model, attr, None)


def _seeded_visual(open_clip: Any, name: str, seed: int, precision: str, device: str) -> Any:
    import torch
    from open_clip.factory import _set_model_device_and_precision
    from open_clip.model import _build_vision_tower, get_cast_dtype

    cfg = open_clip.get_model_config(name)
    if cfg is None or cfg.get("vision_cfg", {}).get("timm_model_name"):
        return None
    torch.manual_seed(seed)  # what CLIP.__init__ draws first
    visual = _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"],
                                 cfg.get("quick_gelu", False), get_cast_dtype(precision))
    _set_model_device_and_precision(visual, torch.device(device), precision, False)
    return visual


def _copy_preprocess(source: Any, target: Any) -> None:
    from open_clip.model import set_model_preprocess_cfg

    set_model_preprocess_cfg(target, source.preprocess_cfg)


def _load_visual(model: Any, weights: Path, device: str) -> bool:
    """Assign the image tower's tensors from `weights`, each cast to the dtype open_clip
    gave that parameter; False (nothing changed) when the file's names or shapes differ."""
    wanted = model.visual.state_dict()  # meta tensors: names, shapes, dtypes
    found = _read(weights, {f"visual.{k}" for k in wanted})
    if found is None:
        return False
    state = {}
    for key, meta in wanted.items():
        tensor = found.pop(f"visual.{key}", None)  # each file copy is freed once cast
        if tensor is None or tuple(tensor.shape) != tuple(meta.shape):
            log.info("image-only load of %s: %s differs; building the whole model",
                     weights.name, key)
            return False
        state[key] = tensor.to(device=device, dtype=meta.dtype)
    model.visual.load_state_dict(state, strict=True, assign=True)
    return True


def _read(weights: Path, keys: set[str]) -> dict[str, Any] | None:
    if weights.suffix == ".safetensors":
        return _read_safetensors(weights, keys)
    if weights.suffix in (".npz", ".npy"):
        return None  # big_vision weights: open_clip converts them
    import torch

    try:  # a zip checkpoint is mapped: only the image tower's pages are read
        checkpoint = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # the legacy format cannot be mapped
        checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        return None
    prefix = "module." if next(iter(checkpoint), "").startswith("module") else ""
    return {k: checkpoint[prefix + k] for k in keys if prefix + k in checkpoint}


_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16",
                       "F64": "float64", "I64": "int64", "I32": "int32"}


def _read_safetensors(path: Path, keys: set[str]) -> dict[str, Any] | None:
    """The named tensors, each read into a buffer of its own (not mapped: a mapping's pages
    stay resident while any tensor views it, so a bf16 model cast from fp32 would carry the
    whole fp32 file besides: 1.24 GB after loading ViT-B-32's tower instead of ~0.75)."""
    import json

    import torch

    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        out = {}
        for key in keys & header.keys():
            entry = header[key]
            dtype = _SAFETENSORS_DTYPES.get(entry["dtype"])
            if dtype is None:
                return None
            start, end = entry["data_offsets"]
            f.seek(8 + size + start)
            data = bytearray(end - start)
            if f.readinto(data) != len(data):
                return None
            tensor = torch.frombuffer(data, dtype=getattr(torch, dtype)) if data else \
                torch.empty(0, dtype=getattr(torch, dtype))
            out[key] = tensor.reshape(entry["shape"])
    return out
