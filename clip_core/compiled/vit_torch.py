"""A plain ViT image tower on torch without open_clip: torch.nn modules over the weights file.

Why (issue 12, item 3: the torch fallback at most 1 GB peak): importing open_clip brings
torchvision, whose ops import torch._dynamo and sympy (~160 MB and ~3 CPU s), and open_clip
builds its model before reading a weight. The towers the ONNX graph builder reads from a
weights file (clip_core.compiled.weights_file) are rebuilt here with the same torch.nn
modules open_clip uses, in its order of operations and with its bf16/fp16 casts (matrices
low, norms and embeddings fp32 and cast where used), so the vectors are open_clip's exactly
(tests/test_vit_torch.py). fp32 weights stay views of the file's mapping (no copy); a
lower precision casts the matrices and hands the file's pages back. Anything else returns
None and open_clip builds the model as before.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from clip_core.compiled.vit_weights import Norm, VitBlock, VitWeights
from clip_core.models.ref import ModelRef

IMAGE = frozenset({"image"})


def image_encoder(ref: ModelRef, *, device: str, precision: str,
                  models_dir: Path | None = None) -> Any:
    """The torch image encoder (a ClipEncoder) for `ref`: this module's tower where the
    weights file is one it reads and the device is the CPU, else open_clip's."""
    from clip_core.torch_backend.device import choose_device, choose_precision
    from clip_core.torch_backend.encoder import ClipEncoder
    from clip_core.torch_backend.memory import keep_cpu_tower_small

    enc = None
    dev = choose_device(device)
    if dev == "cpu":
        enc = _file_encoder(ref, choose_precision(dev, precision), models_dir)
    enc = enc or ClipEncoder.load(ref, device=device, precision=precision, towers=IMAGE,
                                  models_dir=models_dir)
    if dev == "cpu":  # after loading: the pages of torch's libraries it read go too
        keep_cpu_tower_small()
    return enc


def _file_encoder(ref: ModelRef, precision: str, models_dir: Path | None) -> Any:
    from clip_core.compiled.weights_file import open_weights_file
    from clip_core.torch_backend.encoder import ClipEncoder
    from clip_core.torch_backend.loading import LoadedModel

    source = open_weights_file(ref, models_dir)
    if source is None:
        return None
    # Below fp32 the matrices are copies: the file's pages go back block by block, or the
    # whole fp32 tower would sit beside its bf16 copy at the peak (the few fp32 views left,
    # norms and embeddings, fault back in when used).
    tower = vit_tower(source.vision, precision,
                      None if precision == "fp32" else source.release_pages)
    loaded = LoadedModel(ref, tower, None, source.preprocess, "cpu", precision,
                         source.embed_dim)
    return ClipEncoder(loaded)


@functools.cache
def _nn() -> SimpleNamespace:
    """torch and the module classes below, defined on first use (torch imported only then)
    and once per process. The classes hold nothing of a model: what a tower needs goes to
    its constructors, so freeing a tower unmaps its file at once. (Classes made per tower,
    closing over its weights, kept the file's 335 MB resident until a full garbage
    collection: past the end of an index run, where the CLI's exit faulted ~130 MB of
    torch's CUDA libraries back in on top: 1,080 MB peak for ViT-B-32 fp32, 995 MB
    without the exit.)"""
    import torch
    from torch import nn
    from torch.nn import functional

    class LayerNorm(nn.LayerNorm):
        """open_clip's LayerNorm, or with low-precision weights its LayerNormFp32 (the
        input computed in fp32); cast back to the input's dtype either way."""

        fp32 = False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            dtype = x.dtype
            return functional.layer_norm(x.float() if self.fp32 else x, self.normalized_shape,
                                         self.weight, self.bias, self.eps).to(dtype)

    class QuickGELU(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.sigmoid(1.702 * x)

    class Scale(nn.Module):
        def __init__(self, gamma: torch.Tensor | None):
            super().__init__()
            self.gamma = gamma

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if self.gamma is None else x * self.gamma

    class Block(nn.Module):
        def __init__(self, parts: dict[str, Any]):
            super().__init__()
            for name, module in parts.items():  # ln_1, attn, ls_1, ln_2, fc, act, proj, ls_2
                setattr(self, name, module)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.ln_1(x)
            x = x + self.ls_1(self.attn(y, y, y, need_weights=False)[0])
            return x + self.ls_2(self.proj(self.act(self.fc(self.ln_2(x)))))

    class Tower(nn.Module):
        def __init__(self, parts: dict[str, Any], pool: str, ln_after_pool: bool):
            super().__init__()
            for name, module in parts.items():  # conv1, class_embedding, ..., blocks, proj
                setattr(self, name, module)
            self.pool, self.ln_after_pool = pool, ln_after_pool

        def encode_image(self, x: torch.Tensor) -> torch.Tensor:
            """open_clip's VisionTransformer.forward for this tower, op for op."""
            x = self.conv1(x)
            x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
            cls = self.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1)
            x = torch.cat([cls.to(x.dtype), x], dim=1)
            x = x + self.positional_embedding.to(x.dtype)
            if self.ln_pre is not None:
                x = self.ln_pre(x)
            for block in self.blocks:
                x = block(x)
            if self.ln_after_pool:
                x = self.ln_post(_pool(x, self.pool))
            else:
                x = _pool(self.ln_post(x), self.pool)
            return x if self.proj is None else x @ self.proj

        forward = encode_image

    return SimpleNamespace(torch=torch, nn=nn, LayerNorm=LayerNorm, QuickGELU=QuickGELU,
                           Scale=Scale, Block=Block, Tower=Tower)


def vit_tower(w: VitWeights, precision: str,
              release_pages: Callable[[], None] | None = None) -> Any:
    """The tower as an nn.Module in eval mode; release_pages is called after each block is
    made. The module keeps its tensors and nothing else of `w`."""
    m = _nn()
    torch, nn = m.torch, m.nn
    low = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]

    def tensor(array: np.ndarray, dtype: Any = torch.float32) -> Any:
        if array.ctypes.data % array.itemsize:  # safetensors aligns; a file that did not
            array = array.copy()
        with warnings.catch_warnings():  # a read-only mapping: never written in inference
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(array)
        return nn.Parameter(t if dtype == torch.float32 else t.to(dtype), requires_grad=False)

    def norm(n: Norm) -> Any:
        with torch.device("meta"):
            module = m.LayerNorm(n[0].shape[0], eps=n[2])
        module.weight, module.bias = tensor(n[0]), tensor(n[1])
        module.fp32 = low != torch.float32
        return module

    def linear(weight: np.ndarray, bias: np.ndarray) -> Any:
        with torch.device("meta"):
            module = nn.Linear(weight.shape[1], weight.shape[0])
        module.weight, module.bias = tensor(weight, low), tensor(bias, low)
        return module

    def block(b: VitBlock) -> Any:
        with torch.device("meta"):
            attn = nn.MultiheadAttention(w.width, w.heads, batch_first=True)
        attn.in_proj_weight = tensor(b.in_w, low)
        attn.in_proj_bias = tensor(b.in_b, low)
        attn.out_proj.weight = tensor(b.out_w, low)
        attn.out_proj.bias = tensor(b.out_b, low)
        act = m.QuickGELU() if w.act == "quick_gelu" else nn.GELU(
            approximate="tanh" if w.act == "gelu_tanh" else "none")
        ls_1, ls_2 = (m.Scale(None if g is None else tensor(g, low)) for g in (b.ls_1, b.ls_2))
        return m.Block({"ln_1": norm(b.ln_1), "attn": attn, "ls_1": ls_1,
                        "ln_2": norm(b.ln_2), "fc": linear(b.fc_w, b.fc_b), "act": act,
                        "proj": linear(b.proj_w, b.proj_b), "ls_2": ls_2})

    kh, kw = w.patch
    with torch.device("meta"):
        conv1 = nn.Conv2d(3, w.width, (kh, kw), stride=(kh, kw), bias=False)
    conv1.weight = tensor(w.patch_w.reshape(w.width, 3, kh, kw), low)
    blocks = nn.ModuleList()
    for b in w.blocks:
        blocks.append(block(b))
        if release_pages is not None:
            release_pages()
    parts = {"conv1": conv1, "class_embedding": tensor(w.class_embedding),
             "positional_embedding": tensor(w.positional_embedding),
             "ln_pre": None if w.ln_pre is None else norm(w.ln_pre), "blocks": blocks,
             "ln_post": norm(w.ln_post), "proj": None if w.proj is None else tensor(w.proj, low)}
    return m.Tower(parts, w.pool, w.ln_after_pool).eval()


def _pool(x: Any, pool: str) -> Any:
    return x[:, 1:].mean(dim=1) if pool == "avg" else x[:, 0]
