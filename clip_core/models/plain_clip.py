"""The plain CLIP that clipsearch reproduces without torch: open_clip's CLIP class with a plain
ViT image tower and the standard causal text tower over the OpenAI CLIP BPE.

One rule for two readers: clip_core.compiled.weights_file reads such a model from its
safetensors file, and clip_core.models.random_weights writes `--pretrained none`'s weights
for it. A config with any key not listed here (norm or activation kwargs, attentional
pooling, a Hugging Face or timm tower, ...) is not plain: torch builds that model.
"""

from __future__ import annotations

MODEL_KEYS = {"embed_dim", "quick_gelu", "vision_cfg", "text_cfg"}
VISION_DEFAULTS = {"head_width": 64, "mlp_ratio": 4.0, "ls_init_value": None,
                   "pool_type": "tok", "final_ln_after_pool": False, "no_ln_pre": False,
                   "patch_dropout": 0.0, "attentional_pool": False,
                   "pos_embed_type": "learnable", "output_tokens": False}
TEXT_DEFAULTS = {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8,
                 "layers": 12, "mlp_ratio": 4.0, "ls_init_value": None,
                 "pool_type": "argmax", "proj_bias": False, "no_causal_mask": False,
                 "embed_cls": False, "output_tokens": False}
# A residual block's tensors, in open_clip's names and order (ls_1/ls_2 beside them when the
# config sets ls_init_value).
BLOCK = ("ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias",
         "attn.out_proj.weight", "attn.out_proj.bias", "ln_2.weight", "ln_2.bias",
         "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias")
CLIP_BPE_VOCAB = 49408


def vision_cfg(cfg: dict) -> dict:
    return {**VISION_DEFAULTS, **cfg["vision_cfg"]}


def text_cfg(cfg: dict) -> dict:
    return {**TEXT_DEFAULTS, **cfg["text_cfg"]}


def is_plain(cfg: dict) -> bool:
    """Every key of `cfg` known and every option one the torch-free readers reproduce."""
    v, t = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    return (set(cfg) <= MODEL_KEYS and set(v) <= {*VISION_DEFAULTS, "image_size", "layers",
                                                    "width", "patch_size"}
            and isinstance(v.get("layers"), int) and set(t) <= set(TEXT_DEFAULTS)
            and vision_cfg(cfg)["pool_type"] in ("tok", "avg")
            and not vision_cfg(cfg)["attentional_pool"] and not vision_cfg(cfg)["output_tokens"]
            and vision_cfg(cfg)["pos_embed_type"] == "learnable"
            and {k: text_cfg(cfg)[k] for k in ("vocab_size", "pool_type", "proj_bias",
                                            "no_causal_mask", "embed_cls", "output_tokens")}
            == {"vocab_size": CLIP_BPE_VOCAB, "pool_type": "argmax", "proj_bias": False,
                "no_causal_mask": False, "embed_cls": False, "output_tokens": False})
