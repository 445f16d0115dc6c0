"""Write a torch CLIP model's text tower as the file clip_core.text.tower runs without torch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from clip_core.text.tower import (
    _BLOCK_TENSORS,
    _CLIP_BPE_VOCAB,
    FORMAT_VERSION,
    HEADER_KEY,
    UnsupportedTextTower,
    write_tower_file,
)


def logit_scale(model: Any) -> float:
    scale = getattr(model, "logit_scale", None)
    return float(scale.exp().item()) if scale is not None else 100.0


def export_text_tower(model: Any, path: Path, tokenizer: Any | None = None) -> None:
    """Write the text side of an open_clip CLIP / CustomTextCLIP model to ``path``.

    Only the standard causal ``TextTransformer`` with argmax pooling, default residual
    blocks, LayerNorm and (quick_)gelu is accepted; anything else raises
    ``UnsupportedTextTower`` so the caller can fall back to torch. Weights are written in
    float32, so numpy reproduces the torch tower exactly.
    Pass the model's own ``tokenizer`` to also check that ``ClipTokenizer`` reproduces it
    (raises ``UnsupportedTextTower`` if not, e.g. for SigLIP / HF tokenizers).
    """
    import torch
    from torch import nn

    t = _text_parts(model)
    blocks = list(t["transformer"].resblocks)
    width = t["token_embedding"].weight.shape[1]
    ctx = int(t["context_length"])
    if t["positional_embedding"].shape != (ctx, width):
        raise UnsupportedTextTower("positional embedding does not match context length")
    mask = t["attn_mask"]
    causal = torch.full((ctx, ctx), float("-inf")).triu_(1)
    if mask is None or mask.shape != (ctx, ctx) or not torch.equal(mask.float().cpu(), causal):
        raise UnsupportedTextTower("text attention is not the standard causal mask")
    if t["token_embedding"].weight.shape[0] != _CLIP_BPE_VOCAB:
        raise UnsupportedTextTower("text vocabulary is not the OpenAI CLIP BPE (49408 ids)")
    if t["pool_type"] != "argmax":
        raise UnsupportedTextTower(f"text pool type {t['pool_type']!r} (only argmax)")

    proj = t["text_projection"]
    if proj is not None and not isinstance(proj, nn.Parameter):
        raise UnsupportedTextTower(f"text projection {type(proj).__name__} (bias) unsupported")

    tensors: dict[str, Any] = {
        "token_embedding": t["token_embedding"].weight,
        "positional_embedding": t["positional_embedding"],
        "ln_final.weight": t["ln_final"].weight,
        "ln_final.bias": t["ln_final"].bias,
    }
    if proj is not None:
        tensors["text_projection"] = proj
    norms = [t["ln_final"]]
    acts, heads = set(), set()
    for i, blk in enumerate(blocks):
        info = _check_block(blk, width)
        acts.add(info["act"])
        heads.add(info["heads"])
        norms += [blk.ln_1, blk.ln_2]
        for name in _BLOCK_TENSORS:
            tensors[f"resblocks.{i}.{name}"] = blk.get_parameter(name)
        for ls in ("ls_1", "ls_2"):
            if info[ls] is not None:
                tensors[f"resblocks.{i}.{ls}.gamma"] = info[ls]
    for ln in norms:
        _check_norm(ln, width)
    eps = {float(ln.eps) for ln in norms}
    if len(acts) != 1 or len(heads) != 1 or len(eps) != 1 or not blocks:
        raise UnsupportedTextTower("text blocks differ in activation, heads or layer-norm eps")

    header = {
        "format_version": FORMAT_VERSION,
        "context_length": ctx,
        "vocab_size": _CLIP_BPE_VOCAB,
        "width": int(width),
        "heads": heads.pop(),
        "layers": len(blocks),
        "embed_dim": int(proj.shape[1]) if proj is not None else int(width),
        "act": acts.pop(),
        "ln_eps": eps.pop(),
        "pool_type": "argmax",
        "dtype": "float32",
        # Token ids must come from the OpenAI CLIP BPE (clip_core.text.tokenizer); argmax pooling
        # relies on its end token being the largest id.
        "tokenizer": "openai-clip-bpe",
        # Zero-shot classification's temperature, as ClipEncoder.logit_scale reports it:
        # with it, `classify` on a library needs no torch either.
        "logit_scale": logit_scale(model),
    }
    if tokenizer is not None:
        _check_tokenizer(tokenizer, ctx)
    with torch.no_grad():
        arrays = {k: v.detach().to("cpu", torch.float32).numpy() for k, v in tensors.items()}
    write_tower_file(Path(path), arrays, {HEADER_KEY: json.dumps(header)})


# Cheap probes that separate the OpenAI CLIP BPE (+ its cleaning) from other tokenizers.
_TOKENIZER_PROBES = (
    "a photo of a cat",
    "A Dog's  DINNER &amp; café, naïve 日本語 🐱 x2!!",
    "cafÃ© <end_of_text> tiger-lily",
    " ".join(["word"] * 100),
)


def _check_tokenizer(tokenizer: Any, context_length: int) -> None:
    from clip_core.text.tokenizer import ClipTokenizer

    ours = ClipTokenizer(context_length=context_length)(list(_TOKENIZER_PROBES))
    try:
        theirs = np.asarray(tokenizer(list(_TOKENIZER_PROBES)))
    except Exception as exc:  # any failure means we cannot vouch for equivalence
        raise UnsupportedTextTower(f"model tokenizer failed on probe texts: {exc}") from exc
    if theirs.shape != ours.shape or not np.array_equal(theirs, ours):
        raise UnsupportedTextTower("model tokenizer is not open_clip's OpenAI CLIP BPE")


def _text_parts(model: Any) -> dict[str, Any]:
    """Text-tower pieces of CLIP (attributes on the model) or CustomTextCLIP (model.text)."""
    from open_clip.transformer import TextTransformer

    text = getattr(model, "text", None)
    if text is not None:  # CustomTextCLIP
        if not isinstance(text, TextTransformer):
            raise UnsupportedTextTower(f"text tower {type(text).__name__} is not TextTransformer")
        if text.cls_emb is not None or text.use_pad_mask:
            raise UnsupportedTextTower("text tower uses a class token or padding mask")
        src = text
        pool_type = text.pool_type
    elif hasattr(model, "token_embedding") and hasattr(model, "transformer"):  # CLIP
        src = model
        pool_type = getattr(model, "text_pool_type", "argmax")
    else:
        raise UnsupportedTextTower(f"no open_clip text tower found on {type(model).__name__}")
    return {
        "transformer": src.transformer,
        "token_embedding": src.token_embedding,
        "positional_embedding": src.positional_embedding,
        "ln_final": src.ln_final,
        "text_projection": src.text_projection,
        "attn_mask": src.attn_mask,
        "context_length": src.context_length,
        "pool_type": pool_type,
    }


def _check_block(blk: Any, width: int) -> dict[str, Any]:
    from open_clip.transformer import LayerScale, QuickGELU, ResidualAttentionBlock
    from torch import nn

    if type(blk) is not ResidualAttentionBlock or hasattr(blk, "ln_1_kv"):
        raise UnsupportedTextTower(f"text block {type(blk).__name__} unsupported")
    attn = blk.attn
    if (
        not isinstance(attn, nn.MultiheadAttention)
        or not attn._qkv_same_embed_dim
        or attn.in_proj_bias is None
        or attn.out_proj.bias is None
        or attn.bias_k is not None
        or attn.add_zero_attn
        or attn.embed_dim != width
    ):
        raise UnsupportedTextTower("text attention is not plain biased multi-head attention")
    if list(blk.mlp._modules) != ["c_fc", "gelu", "c_proj"] or blk.mlp.c_fc.bias is None:
        raise UnsupportedTextTower("text MLP is not c_fc -> act -> c_proj with biases")
    act = blk.mlp.gelu
    if type(act) is QuickGELU:
        act_name = "quick_gelu"
    elif type(act) is nn.GELU and act.approximate in ("none", "tanh"):
        act_name = "gelu" if act.approximate == "none" else "gelu_tanh"
    else:
        raise UnsupportedTextTower(f"text activation {act!r} unsupported")
    info: dict[str, Any] = {"act": act_name, "heads": int(attn.num_heads)}
    for name in ("ls_1", "ls_2"):
        ls = getattr(blk, name)
        if isinstance(ls, LayerScale):
            info[name] = ls.gamma
        elif isinstance(ls, nn.Identity):
            info[name] = None
        else:
            raise UnsupportedTextTower(f"text {name} {type(ls).__name__} unsupported")
    if (info["ls_1"] is None) != (info["ls_2"] is None):
        raise UnsupportedTextTower("text layer scale on only one branch")
    return info


def _check_norm(ln: Any, width: int) -> None:
    from torch import nn

    if (
        not isinstance(ln, nn.LayerNorm)
        or tuple(ln.normalized_shape) != (width,)
        or ln.weight is None
        or ln.bias is None
    ):
        raise UnsupportedTextTower(f"text norm {ln!r} is not an affine LayerNorm")


