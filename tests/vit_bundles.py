"""Tiny open_clip ViTs (random weights) and their local-dir bundles, for the tests of the
compile's graph builder (tests/test_vit_graph.py) and its torch-free path
(tests/test_weights_file.py)."""

from __future__ import annotations

import json
from pathlib import Path

TINY_TEXT = {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}
PREPROCESS = {"size": 48, "mode": "RGB", "mean": [0.48145466, 0.4578275, 0.40821073],
              "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic",
              "resize_mode": "shortest"}
# open_clip's ViT options the builder reproduces; each changes the graph.
VISION_KINDS = {
    "gelu-tok": {},
    "quickgelu-avg-layerscale": {"pool_type": "avg", "ls_init_value": 0.3, "no_ln_pre": True},
    "ln-after-pool-ragged-edge": {"final_ln_after_pool": True, "image_size": 52},
}


def tiny_vit(seed: int = 0, quick_gelu: bool = False, **vision: object):
    import open_clip
    import torch

    torch.manual_seed(seed)
    cfg = {"image_size": 48, "patch_size": 16, "width": 64, "layers": 2, "head_width": 32,
           "mlp_ratio": 4.0, **vision}
    model = open_clip.model.CLIP(32, cfg, TINY_TEXT, quick_gelu=quick_gelu).eval()
    with torch.no_grad():  # random class token, positions and biases: nothing left at zero
        for param in model.visual.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model


def write_bundle(folder: Path, seed: int = 0, quick_gelu: bool = False,
                 **vision: object) -> Path:
    """A local-dir open_clip bundle of tiny_vit(seed, quick_gelu, **vision), as a user's
    model folder holds it."""
    from safetensors.torch import save_file

    model = tiny_vit(seed, quick_gelu, **vision)
    folder.mkdir(parents=True)
    cfg = {"embed_dim": 32, "quick_gelu": quick_gelu, "vision_cfg": {
        "image_size": 48, "patch_size": 16, "width": 64, "layers": 2, "head_width": 32,
        "mlp_ratio": 4.0, **vision}, "text_cfg": TINY_TEXT}
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": cfg, "preprocess_cfg": PREPROCESS}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    return folder
