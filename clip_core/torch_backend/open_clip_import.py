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


def import_open_clip(ref: ModelRef) -> ModuleType:
    if "open_clip" not in sys.modules and not needs_transformers(ref) and \
            "transformers" not in sys.modules:
        sys.modules["transformers"] = None  # type: ignore[assignment]  # ImportError inside
        try:
            import open_clip
        finally:
            del sys.modules["transformers"]
        return open_clip
    import open_clip

    if needs_transformers(ref) and getattr(open_clip.hf_model, "transformers", 1) is None:
        try:
            importlib.import_module("transformers")
        except ImportError:
            return open_clip  # open_clip reports the missing package itself
        importlib.reload(open_clip.hf_model)  # same namespace: existing classes see it too
    return open_clip
