"""An open_clip VisionTransformer's weights as numpy arrays, for clip_core.compiled.vit_graph.

Only the plain tower is accepted (the CLIP ViTs: class token, learnable positions, default
residual blocks over nn.MultiheadAttention, LayerNorm, GELU or QuickGELU, token or average
pooling, a projection); anything else raises UnsupportedTower and is exported by torch's
exporter instead (clip_core.compiled.onnx_export). The arrays share memory with the model's
parameters: no copy, so the model must outlive them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from clipsearch_errors import ModelError


class UnsupportedTower(ModelError, ValueError):
    """Not the plain ViT this builder reproduces; torch's exporter handles it."""


Norm = tuple[np.ndarray, np.ndarray, float]  # weight, bias, eps


@dataclass
class VitBlock:
    ln_1: Norm
    in_w: np.ndarray  # [3W, W], torch layout [out, in]
    in_b: np.ndarray
    out_w: np.ndarray
    out_b: np.ndarray
    ln_2: Norm
    fc_w: np.ndarray
    fc_b: np.ndarray
    proj_w: np.ndarray
    proj_b: np.ndarray
    ls_1: np.ndarray | None
    ls_2: np.ndarray | None


@dataclass
class VitWeights:
    hw: tuple[int, int]  # input pixels
    patch: tuple[int, int]
    heads: int
    act: str  # "gelu", "gelu_tanh", "quick_gelu"
    pool: str  # "tok" or "avg"
    ln_after_pool: bool
    patch_w: np.ndarray  # [W, 3 * kh * kw]
    class_embedding: np.ndarray  # [W]
    positional_embedding: np.ndarray  # [1 + grid, W]
    ln_pre: Norm | None
    blocks: list[VitBlock]
    ln_post: Norm
    proj: np.ndarray | None  # [W, E]

    @property
    def width(self) -> int:
        return int(self.class_embedding.shape[0])


def vit_weights(visual: Any, hw: tuple[int, int]) -> VitWeights:
    """Read an fp32 open_clip image tower (eval mode) for input size `hw`."""
    import torch
    from open_clip.transformer import (
        LayerNorm,
        QuickGELU,
        ResidualAttentionBlock,
        VisionTransformer,
    )
    from torch import nn

    if type(visual) is not VisionTransformer:
        raise UnsupportedTower(f"image tower {type(visual).__name__}")
    if visual.attn_pool is not None or visual.pool_type not in ("tok", "avg"):
        raise UnsupportedTower("attentional pooling")
    if visual.training or getattr(visual, "output_tokens", False):
        raise UnsupportedTower("tower in training mode or returning tokens")
    conv = visual.conv1
    kh, kw = conv.kernel_size
    if (conv.bias is not None or tuple(conv.stride) != (kh, kw) or conv.groups != 1
            or tuple(conv.padding) != (0, 0) or tuple(conv.dilation) != (1, 1)):
        raise UnsupportedTower("patch embedding is not a plain patch convolution")
    grid = (hw[0] // kh) * (hw[1] // kw)
    if tuple(visual.positional_embedding.shape) != (grid + 1, conv.out_channels):
        raise UnsupportedTower("positional embedding does not match the input size")

    def arr(t: torch.Tensor) -> np.ndarray:
        if t.dtype != torch.float32:
            raise UnsupportedTower(f"weights in {t.dtype}")
        return t.detach().numpy()

    def norm(module: Any) -> Norm:
        if type(module) not in (LayerNorm, nn.LayerNorm) or not module.elementwise_affine:
            raise UnsupportedTower(f"norm {type(module).__name__}")
        return arr(module.weight), arr(module.bias), float(module.eps)

    def scale(module: Any) -> np.ndarray | None:
        if isinstance(module, nn.Identity):
            return None
        if type(module).__name__ != "LayerScale":
            raise UnsupportedTower(f"layer scale {type(module).__name__}")
        return arr(module.gamma)

    blocks, acts = [], set()
    heads = None
    for blk in visual.transformer.resblocks:
        attn = blk.attn
        if (type(blk) is not ResidualAttentionBlock or hasattr(blk, "ln_1_kv")
                or type(attn) is not nn.MultiheadAttention or attn.in_proj_weight is None
                or attn.bias_k is not None or attn.in_proj_bias is None
                or attn.out_proj.bias is None or not attn.batch_first):
            raise UnsupportedTower("residual block is not open_clip's default")
        gelu = blk.mlp.gelu
        if type(gelu) is QuickGELU:
            acts.add("quick_gelu")
        elif type(gelu) is nn.GELU:
            acts.add("gelu" if gelu.approximate == "none" else "gelu_tanh")
        else:
            raise UnsupportedTower(f"activation {type(gelu).__name__}")
        heads = attn.num_heads
        blocks.append(VitBlock(
            ln_1=norm(blk.ln_1), in_w=arr(attn.in_proj_weight), in_b=arr(attn.in_proj_bias),
            out_w=arr(attn.out_proj.weight), out_b=arr(attn.out_proj.bias), ln_2=norm(blk.ln_2),
            fc_w=arr(blk.mlp.c_fc.weight), fc_b=arr(blk.mlp.c_fc.bias),
            proj_w=arr(blk.mlp.c_proj.weight), proj_b=arr(blk.mlp.c_proj.bias),
            ls_1=scale(blk.ls_1), ls_2=scale(blk.ls_2)))
    if not blocks or len(acts) != 1 or heads is None:
        raise UnsupportedTower("no blocks, or mixed activations")
    proj = visual.proj
    if proj is not None and not isinstance(proj, nn.Parameter):
        raise UnsupportedTower(f"projection {type(proj).__name__}")
    return VitWeights(
        hw=(int(hw[0]), int(hw[1])), patch=(kh, kw), heads=int(heads), act=acts.pop(),
        pool=visual.pool_type, ln_after_pool=bool(visual.final_ln_after_pool),
        patch_w=arr(conv.weight).reshape(conv.out_channels, -1),
        class_embedding=arr(visual.class_embedding),
        positional_embedding=arr(visual.positional_embedding),
        ln_pre=None if isinstance(visual.ln_pre, nn.Identity) else norm(visual.ln_pre),
        blocks=blocks, ln_post=norm(visual.ln_post),
        proj=None if proj is None else arr(proj))
