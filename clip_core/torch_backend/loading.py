"""Build a torch CLIP model from a ModelRef, using local files only.

Every path checks that the files exist before open_clip is asked for anything, because
open_clip with a missing file asks the Hugging Face hub, retrying ~53 s offline before failing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clip_core.models.files import (
    MissingModelError,
    ModelLoadError,
    default_models_dir,
    ensure_local,
    require,
)
from clip_core.models.ref import ModelRef
from clip_core.models.sources import source_for
from clip_core.pixels.preprocess import PreprocessSpec
from clip_core.quiet import quiet_libraries
from clip_core.torch_backend.image_only import build_image_only
from clip_core.torch_backend.open_clip_import import import_open_clip

log = logging.getLogger(__name__)

TOWERS = frozenset({"image", "text"})


@dataclass
class LoadedModel:
    ref: ModelRef
    model: Any  # open_clip CLIP / CustomTextCLIP, eval mode, possibly with one tower removed
    tokenizer: Callable[[list[str]], Any] | None
    preprocess: PreprocessSpec
    device: str
    precision: str
    embed_dim: int

    @property
    def model_id(self) -> str:
        return self.ref.model_id


def load_model(
    ref: ModelRef,
    *,
    device: str = "cpu",
    precision: str = "fp32",
    towers: frozenset[str] = TOWERS,
    models_dir: Path | None = None,
) -> LoadedModel:
    """Load weights from disk only; raise MissingModelError at once when they are absent."""
    # No implicit downloads anywhere below (tokenizers of some models consult the hub too).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    models_dir = models_dir or default_models_dir()
    # Torch-free checks (files present, name and tag known): open_clip's import takes seconds.
    ensure_local(ref, models_dir)
    import torch

    open_clip = import_open_clip(ref, cpu_only=device == "cpu")

    plan = require(ref, source_for(ref, models_dir).load_plan())
    if plan.transformers_dir is not None:
        return _load_hf_folder(ref, plan.transformers_dir, device, precision, towers)
    name, pretrained = plan.name, plan.pretrained
    if plan.quick_gelu and not name.endswith("-quickgelu"):
        # OpenAI-style weights were trained with QuickGELU; without it embeddings drift.
        name = f"{name}-quickgelu" if name + "-quickgelu" in open_clip.list_models() else name
    # The tokenizer first: a missing one is reported before seconds of model building.
    tokenizer = _tokenizer(open_clip, name, ref, models_dir) if "text" in towers else None
    try:
        with quiet_libraries():  # "No pretrained weights loaded" (--pretrained none)
            # An index run's image tower alone: ~0.6 GB less at peak for ViT-B-32.
            model = build_image_only(open_clip, name, pretrained, plan.seed, precision,
                                     device) if towers == {"image"} else None
            if model is None:
                if plan.seed is not None:
                    torch.manual_seed(plan.seed)
                model = open_clip.create_model(
                    name, pretrained=pretrained, precision=precision, device=device,
                    weights_only=True)
    except MissingModelError:
        raise
    except Exception as exc:  # open_clip raises many types; give one clear message
        if "weights only load failed" in str(exc).lower() or isinstance(
                exc, __import__("pickle").UnpicklingError):
            raise ModelLoadError(
                f"Refused to load {ref.display}: its weights file is a pickle holding code or "
                "objects other than tensors. clipsearch loads weights only through safe paths "
                "(safetensors, or torch.load with weights_only=True); convert the checkpoint "
                "to safetensors from a trusted source.") from exc
        raise ModelLoadError(f"Could not load {ref.display}: {_short(exc)}") from exc
    model.eval()
    _layer_scales_to(model, precision)
    spec = PreprocessSpec.from_open_clip(dict(model.visual.preprocess_cfg))
    drop_unused_towers(model, towers)
    return LoadedModel(ref, model, tokenizer, spec, device, precision, _embed_dim(model))


def _layer_scales_to(model: Any, precision: str) -> None:
    """open_clip's bf16/fp16 cast (convert_weights_to_lp) leaves LayerScale's gamma in
    fp32, so `x * gamma` turns a block's output fp32 and the next bf16 Linear raises a dtype
    error: cast the gammas too, as the rest of the block is."""
    import torch

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        return
    for module in model.modules():
        gamma = getattr(module, "gamma", None)
        if type(module).__name__ == "LayerScale" and isinstance(gamma, torch.Tensor):
            gamma.data = gamma.data.to(dtype)


def _load_hf_folder(ref: ModelRef, folder: Path, device: str, precision: str,
                    towers: frozenset[str]) -> LoadedModel:
    import torch

    from clip_core.torch_backend import hf_clip

    try:
        converted = hf_clip.load_hf_clip(folder)
        model = hf_clip.build_model(converted)
    except Exception as exc:
        raise ModelLoadError(f"Could not convert transformers CLIP folder {folder}: "
                             f"{_short(exc)}") from exc
    try:  # a missing or foreign tokenizer is one message too, never a traceback
        tokenizer = hf_clip.make_tokenizer(converted) if "text" in towers else None
    except ValueError as exc:
        raise ModelLoadError(f"Cannot use the tokenizer of {folder}: {_short(exc)}") from exc
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    model = model.to(device=device, dtype=dtype).eval()
    spec = PreprocessSpec.from_open_clip(converted.preprocess_cfg)
    drop_unused_towers(model, towers)
    return LoadedModel(ref, model, tokenizer, spec, device, precision, _embed_dim(model))


def _tokenizer(open_clip: Any, name: str, ref: ModelRef, models_dir: Path) -> Any:
    """open_clip's tokenizer, from local files only. Models with a Hugging Face tokenizer
    (SigLIP, multilingual towers) use the copy `clipsearch models download` stored beside the
    weights; open_clip alone would ask the hub for it."""
    config = open_clip.get_model_config(name) or {}
    text_cfg = config.get("text_cfg", {})
    hf_name = text_cfg.get("hf_tokenizer_name")
    local = require(ref, source_for(ref, models_dir).tokenizer_dir(hf_name)) if hf_name else None
    if local is None:
        return open_clip.get_tokenizer(name)  # bundled BPE, or the bundle's own files
    from open_clip.tokenizer import HFTokenizer

    return HFTokenizer(str(local), context_length=text_cfg.get("context_length", 77),
                       **text_cfg.get("tokenizer_kwargs", {}))


def drop_unused_towers(model: Any, towers: frozenset[str]) -> None:
    """Free the tower a job does not need: indexing needs only the image tower."""
    if "text" not in towers:
        if hasattr(model, "text"):
            model.text = None
        for attr in ("transformer", "token_embedding", "ln_final"):
            if hasattr(model, attr):
                setattr(model, attr, None)
    if "image" not in towers and hasattr(model, "visual"):
        model.visual.transformer = None


def _embed_dim(model: Any) -> int:
    """Output size of the image tower, from its weights where they say it, else measured."""
    import torch

    visual = model.visual
    proj = getattr(visual, "proj", None)
    if isinstance(proj, torch.Tensor):
        return int(proj.shape[-1])
    if getattr(visual, "output_dim", None):
        return int(visual.output_dim)
    size = visual.preprocess_cfg["size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    param = next(visual.parameters())
    with torch.inference_mode():
        probe = torch.zeros(1, 3, *size, dtype=param.dtype, device=param.device)
        return int(model.encode_image(probe).shape[-1])


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:400] if text else type(exc).__name__
