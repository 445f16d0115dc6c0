"""Import open_clip without transformers when the model does not need it.

open_clip imports transformers (when installed) only for Hugging Face text towers, and that
import costs ~0.9 s of every index run and first query. Most models (every OpenAI/LAION ViT,
the bundled one) never use it, so it is hidden during open_clip's import; if a later model
in the same process does need it, open_clip.hf_model is re-run with transformers visible.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from clip_core.models.places import default_models_dir
from clip_core.models.ref import ModelRef
from clip_core.models.sources import source_for


def needs_transformers(ref: ModelRef) -> bool:
    text_cfg = source_for(ref, default_models_dir()).text_config()
    if text_cfg is None:
        return True  # unknown until open_clip reads the bundle's config
    return bool(text_cfg.get("hf_model_name"))


def import_open_clip(ref: ModelRef, cpu_only: bool = False) -> ModuleType:
    """cpu_only: the process runs torch on the CPU, so triton (GPU kernels only, imported by
    torch._dynamo, which torchvision.ops pulls in under open_clip) is hidden too: ~85 MB
    resident and ~0.5 CPU s less with torch's CUDA build (issue 12: the torch fallback's
    peak). torch remembers its absence, which only torch.compile on a GPU would notice."""
    needs = needs_transformers(ref)
    hidden = [m for m, hide in (("transformers", not needs), ("triton", cpu_only))
              if hide and m not in sys.modules]
    if "open_clip" not in sys.modules and hidden:
        for name in hidden:
            sys.modules[name] = None  # type: ignore[assignment]  # ImportError inside
        try:
            import open_clip
        finally:
            for name in hidden:
                del sys.modules[name]
    import open_clip

    if needs and getattr(open_clip.hf_model, "transformers", 1) is None:
        try:
            importlib.import_module("transformers")
        except ImportError:
            return open_clip  # open_clip reports the missing package itself
        importlib.reload(open_clip.hf_model)  # same namespace: existing classes see it too
    return open_clip
