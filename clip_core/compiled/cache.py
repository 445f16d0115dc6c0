"""A model compiled once per machine for torch-free CPU use, kept in the user cache folder.

The first index run with a model (on the CPU, precision auto or int8) reads it in fp32 (a
plain ViT's safetensors file without torch: clip_core.compiled.weights_file) and writes, into
`CLIPSEARCH_CACHE/compiled/<model>/` (default: the platform's user cache folder):
- `text.safetensors`: the text tower for numpy queries (clip_core.text.tower), from fp32
  weights, which every library indexed with the model copies;
- `image.int8.onnx`: the image tower as ONNX (a ViT's graph built from its weights,
  clip_core.compiled.vit_graph, its weights in `image.int8.onnx.data`; other towers exported
  by torch) quantised to int8 (dynamic), used by default only when it passes two checks
  made here, on this machine
  (`--precision int8` uses it regardless):
  1. agreement: on 8 photo-like probe images (clip_core.pixels.probes) every int8 vector is
     within cosine GUARD_MIN_COS (0.999) of the fp32 model's. The int8 variants
     (clip_core.compiled.int8_variants: 7-bit weights on x86 without VNNI, whose kernels saturate
     otherwise) are tried in an order chosen for this CPU until one passes; the best is kept;
  2. speed: measured alone, it is at least half as fast as torch at the precision clipsearch
     would pick (whole runs favour it far more than such a micro-benchmark shows: see
     clip_core.compiled.compiler._choose).
- `fp32/image.onnx`: kept only when no int8 variant passes: the fp32 graph (a built one is
  the probes' reference itself; an exported one is checked within cosine 0.99999 of
  torch), run by onnxruntime the same way; still torch-free.
- `compiled.json`: what was measured (every variant's figures) and chosen, and the key
  (model id, weights file stamp, library versions, format) that must match for the cache
  to be used.

Later runs find the cache and index without importing torch or open_clip at all: seconds
less start-up and ~1 GB less memory. A model whose export fails keeps using torch; the
failure is recorded so it is not retried every run.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import platform
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from clip_core.compiled.onnx_encoder import OnnxImageEncoder, onnxruntime_available
from clip_core.models.files import default_models_dir
from clip_core.models.ref import ModelRef
from clip_core.models.sources import source_for
from clip_core.pixels.preprocess import PreprocessSpec

log = logging.getLogger(__name__)

FORMAT = 5  # bump when compiled files change shape: caches then recompile
META_NAME = "compiled.json"
IMAGE_INT8 = "image.int8.onnx"
IMAGE_FP32 = "fp32/image.onnx"  # with any external-data files (towers > 2 GB) beside it
TEXT_TOWER = "text.safetensors"
ONNX = "onnx-int8"
ONNX_FP32 = "onnx-fp32"  # no int8 variant passed the guard: still torch-free
TORCH = "torch"


def default_cache_dir() -> Path:
    env = os.environ.get("CLIPSEARCH_CACHE")
    if env:
        return Path(env).expanduser() / "compiled"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("clipsearch", appauthor=False)) / "compiled"


def compile_supported() -> bool:
    """onnxruntime runs the compiled tower; onnx is needed to export and quantise it."""
    return onnxruntime_available() and importlib.util.find_spec("onnx") is not None


def folder_for(model_id: str, cache_dir: Path | None = None) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("_")
    return (cache_dir or default_cache_dir()) / slug


def cache_key(ref: ModelRef, models_dir: Path | None = None) -> dict:
    """What the compiled files depend on; any change recompiles. Torch-free."""
    return {
        "format": FORMAT,
        "model_id": ref.model_id,
        "weights": _weights_stamp(ref, models_dir or default_models_dir()),
        "open_clip": _version("open_clip_torch"),
        "onnxruntime": _version("onnxruntime"),
        # The checks were made on this kind of CPU (int8 kernels differ with VNNI/AMX); a
        # cache on a shared home is redone on another kind.
        "cpu": _cpu_identity(),
    }


@dataclass
class CompiledModel:
    folder: Path
    meta: dict

    @property
    def backend(self) -> str:
        return self.meta["image"]["backend"]

    @property
    def text_tower(self) -> Path | None:
        path = self.folder / TEXT_TOWER
        return path if path.is_file() else None

    @property
    def preprocess(self) -> PreprocessSpec:
        return PreprocessSpec.from_open_clip(self.meta["preprocess"])

    def image_encoder(self, threads: int | None = None, *,
                      int8: bool = False) -> OnnxImageEncoder:
        """The chosen onnxruntime tower; the int8 one when `int8` (`--precision int8` asks
        for it even where it failed its checks)."""
        fp32 = self.backend == ONNX_FP32 and not int8
        return OnnxImageEncoder(self.folder / (IMAGE_FP32 if fp32 else IMAGE_INT8),
                                self.meta["model_id"], self.preprocess,
                                int(self.meta["embed_dim"]), threads,
                                precision="fp32" if fp32 else "int8")


def find_compiled(ref: ModelRef, models_dir: Path | None = None,
                  cache_dir: Path | None = None) -> CompiledModel | None:
    """The cached compilation of `ref` when it is complete and current, else None."""
    folder = folder_for(ref.model_id, cache_dir)
    try:
        meta = json.loads((folder / META_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if meta.get("key") != cache_key(ref, models_dir):
        return None
    compiled = CompiledModel(folder, meta)
    needed = {ONNX: IMAGE_INT8, ONNX_FP32: IMAGE_FP32}.get(compiled.backend)
    if needed and not (folder / needed).is_file():
        return None
    return compiled


def _weights_stamp(ref: ModelRef, models_dir: Path) -> list | None:
    """Path, size and mtime of the files behind `ref`; for weights made here (random), the
    name of their recipe."""
    source = source_for(ref, models_dir)
    made = source.made_weights()
    if made is not None:
        return [made]
    files = source.weight_files()
    stamp = []
    for file in files:
        try:
            st = file.stat()
        except OSError:
            continue
        if file.is_file():
            stamp.append([str(file), st.st_size, st.st_mtime_ns])
    return stamp or None


def _cpu_identity() -> list[str]:
    from clip_core.cpu import cpu_flags

    wanted = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "asimddp")
    return [platform.machine(), *sorted(f for f in cpu_flags() if f in wanted)]


def _gpu_present() -> bool:
    """Whether device auto could pick a GPU, without importing torch to ask (/dev/dxg:
    CUDA under WSL2)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd",
                                           "/dev/dxg"))


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
