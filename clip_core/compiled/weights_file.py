"""A plain CLIP ViT read straight from its safetensors weights file: the compile without torch.

Why: importing torch and open_clip cost ~5 CPU-s and ~760 MB of resident memory here (torch's
CUDA build), and open_clip then builds the whole model (ViT-B-32: 605 MB) before a single
weight is read: the compile could not get under 10 s or 1.2 GB that way. A weights file is
mapped instead (pages are read as the graph builder and the text tower writer touch them),
and the config says what the weights mean.

Only models whose config and state dict are exactly what clip_core.compiled.vit_weights
accepts from a built model are read here: open_clip's CLIP class with a plain ViT image
tower, the standard causal text tower over the OpenAI CLIP BPE, every config key known and
every tensor name expected. Anything else (None from `open_weights_file`) is loaded by
torch as before. tests/test_weights_file.py holds the result equal to open_clip's model
(the image graph within 1e-5 of its forward, the text tower file tensor for tensor).
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clip_core.compiled.vit_weights import Norm, VitBlock, VitWeights
from clip_core.models.config import guess_preprocess
from clip_core.models.files import CONFIG_NAME, default_models_dir
from clip_core.models.open_clip_tables import architecture_configs
from clip_core.models.plain_clip import BLOCK, CLIP_BPE_VOCAB, is_plain, text_cfg, vision_cfg
from clip_core.models.ref import LOCAL_DIR_PREFIX, ModelRef
from clip_core.models.sources import LoadPlan, source_for
from clip_core.pixels.preprocess import PreprocessSpec

_EPS = 1e-5  # open_clip's LayerNorm (no norm_kwargs in an accepted config)


@dataclass
class FileModel:
    """What the compile needs of a model, read from its file; arrays view `mapping`."""

    vision: VitWeights
    text: dict[str, np.ndarray]  # the text tower file's tensors, in its names and order
    text_header: dict
    embed_dim: int
    preprocess: PreprocessSpec
    mapping: Any

    def release_pages(self) -> None:
        """The file's pages leave this process (they stay in the page cache and fault back
        in when read again): a copy made from them no longer counts twice."""
        if hasattr(self.mapping, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            self.mapping.madvise(mmap.MADV_DONTNEED)


def open_weights_file(ref: ModelRef, models_dir: Path | None = None) -> FileModel | None:
    """`ref` read from its safetensors file, or None where torch must load it."""
    found = _config_and_file(ref, models_dir or default_models_dir())
    if found is None:
        return None
    cfg, path = found
    preprocess = guess_preprocess(ref)
    try:
        if preprocess is None or not is_plain(cfg):
            return None
        tensors, mapping = read_safetensors(path)
        if hasattr(mapping, "madvise") and hasattr(mmap, "MADV_WILLNEED"):
            # A file not in the page cache (a model downloaded days ago) is then read ahead
            # at disk speed while the text tower is written, not a page fault at a time: a
            # first index run of ViT-B-32 was 0.5 s slower from a cold file without it.
            mapping.madvise(mmap.MADV_WILLNEED)
        return _model(cfg, tensors, mapping, preprocess)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # torch reads it, or says what is wrong with it


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], mmap.mmap]:
    """Every tensor of a safetensors file: views over a read-only mapping (F32), or fp32
    copies (F16, BF16). Raises ValueError on anything else."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        size = f.seek(0, 2)
        if n > size - 8:
            raise ValueError(f"{path}: header size {n}")
        f.seek(8)
        header = json.loads(f.read(n))
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    header.pop("__metadata__", None)
    out = {}
    for name, spec in header.items():
        start, end = (8 + n + o for o in spec["data_offsets"])
        shape = spec["shape"]
        if end > size or start > end:
            raise ValueError(f"{path}: tensor {name} lies outside the file")
        raw = np.frombuffer(buf, np.uint8, end - start, start)
        if spec["dtype"] == "F32":
            array = raw.view(np.float32)
        elif spec["dtype"] == "F16":
            array = raw.view(np.float16).astype(np.float32)
        elif spec["dtype"] == "BF16":
            array = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            raise ValueError(f"{path}: tensor {name} in {spec['dtype']}")
        out[name.removeprefix("module.")] = array.reshape(shape)
    return out, buf


def _config_and_file(ref: ModelRef, models_dir: Path) -> tuple[dict, Path] | None:
    """(open_clip's model config, the safetensors file open_clip would load) for `ref`, from
    the plan its ModelSource gives the torch loader (clip_core.models.sources)."""
    try:
        plan = source_for(ref, models_dir).load_plan()
        if not isinstance(plan, LoadPlan) or plan.seed is not None or plan.transformers_dir:
            return None  # missing, random weights (torch's generator) or transformers: torch
        if plan.name.startswith(LOCAL_DIR_PREFIX):  # an open_clip bundle folder
            folder = Path(plan.name.removeprefix(LOCAL_DIR_PREFIX))
            checkpoints = [p for p in folder.iterdir()
                           if p.suffix in (".safetensors", ".bin", ".pth")]
            cfg = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))["model_cfg"]
            if len(checkpoints) != 1 or checkpoints[0].suffix != ".safetensors":
                return None
            return cfg, checkpoints[0]
        path = Path(plan.pretrained) if plan.pretrained else None
        name = plan.name
        if plan.quick_gelu and f"{name}-quickgelu" in architecture_configs():
            name = f"{name}-quickgelu"  # as clip_core.torch_backend.loading picks it
        cfg = architecture_configs().get(name)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if cfg is None or path is None or path.suffix != ".safetensors":
        return None
    return cfg, path


def _model(cfg: dict, t: dict[str, np.ndarray], mapping: Any,
           preprocess: PreprocessSpec) -> FileModel | None:
    vision, text = vision_cfg(cfg), text_cfg(cfg)
    act = "quick_gelu" if cfg.get("quick_gelu") else "gelu"
    size = vision["image_size"]
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if preprocess.hw != hw:
        return None
    expected = {"logit_scale", "token_embedding.weight", "positional_embedding",
                "text_projection", "ln_final.weight", "ln_final.bias",
                "visual.class_embedding", "visual.positional_embedding", "visual.proj",
                "visual.conv1.weight", "visual.ln_post.weight", "visual.ln_post.bias"}
    if not vision["no_ln_pre"]:
        expected |= {"visual.ln_pre.weight", "visual.ln_pre.bias"}
    scaled = vision["ls_init_value"] is not None, text["ls_init_value"] is not None
    for prefix, layers, ls in (("visual.transformer", vision["layers"], scaled[0]),
                               ("transformer", text["layers"], scaled[1])):
        for i in range(layers):
            names = BLOCK + (("ls_1.gamma", "ls_2.gamma") if ls else ())
            expected |= {f"{prefix}.resblocks.{i}.{n}" for n in names}
    if set(t) != expected:
        return None

    def norm(name: str) -> Norm:
        return t[name + ".weight"], t[name + ".bias"], _EPS

    conv = t["visual.conv1.weight"]
    width, kh, kw = conv.shape[0], conv.shape[2], conv.shape[3]
    if (conv.shape[1] != 3 or tuple(vision["patch_size"] if isinstance(
            vision["patch_size"], list | tuple) else (vision["patch_size"],) * 2) != (kh, kw)
            or width != vision["width"] or width % vision["head_width"]
            or t["visual.positional_embedding"].shape != ((hw[0] // kh) * (hw[1] // kw) + 1,
                                                          width)):
        return None
    blocks = []
    for i in range(vision["layers"]):
        p = f"visual.transformer.resblocks.{i}."
        blocks.append(VitBlock(
            ln_1=norm(p + "ln_1"), in_w=t[p + "attn.in_proj_weight"],
            in_b=t[p + "attn.in_proj_bias"], out_w=t[p + "attn.out_proj.weight"],
            out_b=t[p + "attn.out_proj.bias"], ln_2=norm(p + "ln_2"),
            fc_w=t[p + "mlp.c_fc.weight"], fc_b=t[p + "mlp.c_fc.bias"],
            proj_w=t[p + "mlp.c_proj.weight"], proj_b=t[p + "mlp.c_proj.bias"],
            ls_1=t.get(p + "ls_1.gamma"), ls_2=t.get(p + "ls_2.gamma")))
    weights = VitWeights(
        hw=hw, patch=(kh, kw), heads=width // vision["head_width"], act=act,
        pool=vision["pool_type"], ln_after_pool=bool(vision["final_ln_after_pool"]),
        patch_w=conv.reshape(width, -1), class_embedding=t["visual.class_embedding"],
        positional_embedding=t["visual.positional_embedding"],
        ln_pre=None if vision["no_ln_pre"] else norm("visual.ln_pre"), blocks=blocks,
        ln_post=norm("visual.ln_post"), proj=t["visual.proj"])
    tw = t["token_embedding.weight"]
    ctx, text_width = int(text["context_length"]), int(tw.shape[1])
    if (tw.shape[0] != CLIP_BPE_VOCAB or t["positional_embedding"].shape != (ctx, text_width)
            or text_width != text["width"] or text_width % text["heads"]):
        return None
    tower = {"token_embedding": tw, "positional_embedding": t["positional_embedding"],
             "ln_final.weight": t["ln_final.weight"], "ln_final.bias": t["ln_final.bias"],
             "text_projection": t["text_projection"]}
    for i in range(text["layers"]):  # the order clip_core.torch_backend.text_export writes
        p = f"transformer.resblocks.{i}."
        tower.update({f"resblocks.{i}.{n}": t[p + n] for n in BLOCK})
        if scaled[1]:
            tower.update({f"resblocks.{i}.{n}": t[p + n] for n in ("ls_1.gamma", "ls_2.gamma")})
    from clip_core.text.tower import FORMAT_VERSION

    header = {"format_version": FORMAT_VERSION, "context_length": ctx,
              "vocab_size": CLIP_BPE_VOCAB, "width": text_width, "heads": int(text["heads"]),
              "layers": int(text["layers"]),
              "embed_dim": int(t["text_projection"].shape[1]), "act": act, "ln_eps": _EPS,
              "pool_type": "argmax", "dtype": "float32", "tokenizer": "openai-clip-bpe",
              "logit_scale": float(np.exp(t["logit_scale"].reshape(())))}
    return FileModel(weights, tower, header, int(t["visual.proj"].shape[1]), preprocess,
                     mapping)


def write_text_tower(model: FileModel, path: Path) -> None:
    """The text tower file clip_core.torch_backend.text_export writes for the same model."""
    from clip_core.text.tower import HEADER_KEY, write_tower_file

    write_tower_file(path, model.text, {HEADER_KEY: json.dumps(model.text_header)})
