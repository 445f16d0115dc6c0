"""`--pretrained none`'s random weights made in numpy and kept as a safetensors file.

Why: random weights used to exist only inside torch (open_clip's model built after
`torch.manual_seed(0)`), so every use of them, the compile included, imported torch and built
the whole model (ViT-B-32: 1.5 GB peak, 12 CPU s for its compile). Written once as a file,
they are a weights file like a user's model: the compile reads it without torch
(clip_core.compiled.weights_file), the text tower is exported from it, and every torch path
loads the same file, so all paths give the same vectors.

The values follow open_clip's own initialisation for the architecture's config, tensor by
tensor (open_clip 3.x CLIP, VisionTransformer, TextTransformer and torch's module defaults):
- image tower (its init_parameters is empty): class and positional embeddings and the
  projection N(0, width^-0.5); the patch convolution and the Linear layers torch's default
  U(-1/sqrt(fan_in), +1/sqrt(fan_in)) for weights and biases; the attention's in_proj
  xavier-uniform, its biases 0;
- text tower (TextTransformer.init_parameters): token embedding N(0, 0.02), positions
  N(0, 0.01), in_proj N(0, width^-0.5), out_proj and c_proj N(0, width^-0.5 (2 layers)^-0.5),
  c_fc N(0, (2 width)^-0.5), the MLP biases torch's default uniform, attention biases 0,
  text_projection N(0, width^-0.5);
- every LayerNorm weight 1 and bias 0, LayerScale gammas ls_init_value, logit_scale
  log(1 / 0.07).
tests/test_random_weights.py holds each tensor's shape, dtype and statistics to open_clip's.
Only plain CLIP configs (clip_core.models.plain_clip) are made here; other architectures
(ResNets, timm or Hugging Face towers, CoCa, SigLIP, ...) keep torch's seeded model.

Each tensor draws from its own generator, seeded by (seed, crc32 of its name): the bytes
depend on the seed, the config and INIT_VERSION only, and the file is written tensor by
tensor in chunks (ViT-B-32: ~150 MB resident instead of the 605 MB a whole state dict holds).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clip_core.models.open_clip_tables import architecture_configs
from clip_core.models.plain_clip import BLOCK, is_plain, text_cfg, vision_cfg

INIT_VERSION = 1  # bump when the values change: the file's name (and compiled caches) change
SEED = 0  # `--pretrained none` is one model: the same weights in every process
_CHUNK = 1 << 22  # values drawn per call: bounds the writer's memory for big tensors


@dataclass(frozen=True)
class Tensor:
    """One tensor of the state dict: how open_clip initialises it."""

    name: str
    shape: tuple[int, ...]
    kind: str  # "normal" (value: std), "uniform" (value: bound), "const" (value)
    value: float


def layout(cfg: dict) -> list[Tensor] | None:
    """The state dict open_clip's CLIP builds for `cfg` (names, shapes, initialisers), or None
    where the config is not a plain CLIP."""
    if not is_plain(cfg):
        return None
    v, t, embed = vision_cfg(cfg), text_cfg(cfg), int(cfg["embed_dim"])
    w = int(v["width"])
    size = v["image_size"]
    hw = (size, size) if isinstance(size, int) else tuple(size)
    patch = v["patch_size"]
    ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
    grid = (hw[0] // ph) * (hw[1] // pw)
    scale = w ** -0.5
    out = [Tensor("visual.class_embedding", (w,), "normal", scale),
           Tensor("visual.positional_embedding", (grid + 1, w), "normal", scale),
           Tensor("visual.proj", (w, embed), "normal", scale),
           Tensor("visual.conv1.weight", (w, 3, ph, pw), "uniform", (3 * ph * pw) ** -0.5)]
    if not v["no_ln_pre"]:
        out += _norm("visual.ln_pre", w)
    mlp = int(w * v["mlp_ratio"])
    for i in range(int(v["layers"])):
        out += _block(f"visual.transformer.resblocks.{i}.", w, mlp, v["ls_init_value"], {
            "attn.in_proj_weight": ("uniform", math.sqrt(6 / (w + 3 * w))),  # xavier
            "attn.out_proj.weight": ("uniform", w ** -0.5),
            "mlp.c_fc.weight": ("uniform", w ** -0.5),
            "mlp.c_proj.weight": ("uniform", mlp ** -0.5)})
    out += _norm("visual.ln_post", w)
    tw, layers = int(t["width"]), int(t["layers"])
    tmlp = int(tw * t["mlp_ratio"])
    proj_std = tw ** -0.5 * (2 * layers) ** -0.5
    for i in range(layers):
        out += _block(f"transformer.resblocks.{i}.", tw, tmlp, t["ls_init_value"], {
            "attn.in_proj_weight": ("normal", tw ** -0.5),
            "attn.out_proj.weight": ("normal", proj_std),
            "mlp.c_fc.weight": ("normal", (2 * tw) ** -0.5),
            "mlp.c_proj.weight": ("normal", proj_std)})
    out += [Tensor("token_embedding.weight", (int(t["vocab_size"]), tw), "normal", 0.02),
            Tensor("positional_embedding", (int(t["context_length"]), tw), "normal", 0.01),
            *_norm("ln_final", tw),
            Tensor("text_projection", (tw, embed), "normal", tw ** -0.5),
            Tensor("logit_scale", (), "const", math.log(1 / 0.07))]
    return out


def _norm(prefix: str, width: int) -> list[Tensor]:
    return [Tensor(f"{prefix}.weight", (width,), "const", 1.0),
            Tensor(f"{prefix}.bias", (width,), "const", 0.0)]


def _block(prefix: str, w: int, mlp: int, ls: float | None,
           weights: dict[str, tuple[str, float]]) -> list[Tensor]:
    shapes = {"attn.in_proj_weight": (3 * w, w), "attn.in_proj_bias": (3 * w,),
              "attn.out_proj.weight": (w, w), "attn.out_proj.bias": (w,),
              "mlp.c_fc.weight": (mlp, w), "mlp.c_fc.bias": (mlp,),
              "mlp.c_proj.weight": (w, mlp), "mlp.c_proj.bias": (w,)}
    # Biases: attention's are zeroed by nn.MultiheadAttention; the MLP's keep nn.Linear's
    # default, uniform over +-1/sqrt(fan_in).
    inits = {**weights, "attn.in_proj_bias": ("const", 0.0), "attn.out_proj.bias": ("const", 0.0),
             "mlp.c_fc.bias": ("uniform", w ** -0.5), "mlp.c_proj.bias": ("uniform", mlp ** -0.5)}
    out = []
    for name in BLOCK:
        if name.startswith("ln_"):
            kind, value = ("const", 1.0 if name.endswith("weight") else 0.0)
            out.append(Tensor(prefix + name, (w,), kind, value))
        else:
            out.append(Tensor(prefix + name, shapes[name], *inits[name]))
    if ls is not None:
        out += [Tensor(prefix + "ls_1.gamma", (w,), "const", float(ls)),
                Tensor(prefix + "ls_2.gamma", (w,), "const", float(ls))]
    return out


def values(tensor: Tensor, seed: int) -> Iterator[np.ndarray]:
    """The tensor's float32 values in row-major order, in chunks of at most _CHUNK."""
    rng = np.random.Generator(np.random.PCG64(
        np.random.SeedSequence([seed, zlib.crc32(tensor.name.encode())])))
    count = math.prod(tensor.shape)
    for start in range(0, count, _CHUNK):
        n = min(_CHUNK, count - start)
        if tensor.kind == "const":
            yield np.full(n, tensor.value, np.float32)
        elif tensor.kind == "normal":
            chunk = rng.standard_normal(n, dtype=np.float32)
            chunk *= np.float32(tensor.value)
            yield chunk
        else:  # uniform over [-bound, bound)
            chunk = rng.random(n, dtype=np.float32)
            chunk *= np.float32(2 * tensor.value)
            chunk -= np.float32(tensor.value)
            yield chunk


def write_file(tensors: list[Tensor], seed: int, path: Path, note: str = "") -> None:
    """A safetensors file of `tensors` (F32, in order), streamed: the package's writer needs
    every array in memory at once. Written to a temp file renamed into place, so a
    concurrent reader never sees half of it; racing writers write the same bytes."""
    header: dict = {"__metadata__": {"format": "pt", "clipsearch": note}}
    offset = 0
    for t in tensors:
        size = 4 * math.prod(t.shape)
        header[t.name] = {"dtype": "F32", "shape": list(t.shape),
                          "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)  # tensors start 8-byte aligned
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(len(raw).to_bytes(8, "little"))
            f.write(raw)
            for t in tensors:
                for chunk in values(t, seed):
                    f.write(chunk.astype("<f4", copy=False).tobytes())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def file_name(name: str, seed: int = SEED) -> str | None:
    """The file's name for architecture `name`: keyed by the config and INIT_VERSION, so a
    changed config or init is a new file (and a new compiled model). None: not plain."""
    cfg = architecture_configs().get(name)
    if cfg is None or not is_plain(cfg):
        return None
    digest = hashlib.sha256(json.dumps([INIT_VERSION, seed, cfg], sort_keys=True).encode())
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    return f"{slug}.seed{seed}.{digest.hexdigest()[:12]}.safetensors"


def cache_dir() -> Path:
    env = os.environ.get("CLIPSEARCH_CACHE")
    if env:
        return Path(env).expanduser() / "random-weights"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("clipsearch", appauthor=False)) / "random-weights"


def random_weights_file(name: str, seed: int = SEED) -> Path | None:
    """The file of architecture `name`'s random weights, written the first time; None where
    torch's seeded model stays the source. Raises OSError when it cannot be written."""
    found = file_name(name, seed)
    if found is None:
        return None
    path = cache_dir() / found
    if not path.is_file():
        write_random(name, seed, path)
    return path


def write_random(name: str, seed: int, path: Path) -> None:
    """Architecture `name`'s random weights (a plain CLIP) into `path`."""
    tensors = layout(architecture_configs()[name])
    if tensors is None:
        raise ValueError(f"{name} is not a plain CLIP: torch makes its random weights")
    write_file(tensors, seed, path, f"random weights of {name}, seed {seed}, init {INIT_VERSION}")
