"""A model compiled once per machine for torch-free CPU use, cached beside the model store.

The first index run with a model (on the CPU, precision auto or int8) loads it in fp32 and
writes, into `CLIPSEARCH_CACHE/compiled/<model>/` (default: the platform's user cache folder):
- `text.safetensors`: the text tower for numpy queries (clip_core.text_tower), from fp32
  weights, which every library indexed with the model copies;
- `image.int8.onnx`: the image tower exported to ONNX and quantised to int8 (dynamic,
  onnxruntime), used by default only when it passes two checks made here, on this machine
  (`--precision int8` uses it regardless):
  1. agreement: on 16 photo-like probe images (clip_core.probe_images) every int8 vector is
     within cosine GUARD_MIN_COS of the fp32 torch model's (int8 is rejected for a model whose
     activations quantise badly); the fp32 export itself must match within 1e-5;
  2. speed: measured alone, it is at least half as fast as torch at the precision clipsearch
     would pick (whole runs favour it far more than such a micro-benchmark shows: see
     `_choose`).
- `compiled.json`: what was measured and chosen, and the key (model id, weights file stamp,
  library versions, format) that must match for the cache to be used.

Later runs find the cache and index without importing torch or open_clip at all: seconds
less start-up and ~1 GB less memory. A model whose export fails keeps using torch; the
failure is recorded so it is not retried every run.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from .model_files import (
    default_models_dir,
    ensure_local,
    locate_hub_bundle,
    locate_pretrained,
    pretrained_cfg,
)
from .model_ref import ModelRef
from .onnx_encoder import OnnxImageEncoder, onnxruntime_available
from .onnx_export import export_image_tower, quantise
from .preprocess import PreprocessSpec, preprocess_batch
from .probe_images import probe_images

log = logging.getLogger(__name__)

FORMAT = 3  # bump when compiled files change shape: caches then recompile
META_NAME = "compiled.json"
IMAGE_INT8 = "image.int8.onnx"
TEXT_TOWER = "text.safetensors"
GUARD_MIN_COS = 0.999  # the bar bf16 must meet too (docs/benchmarks.md)
TORCH_MUST_BE_FASTER = 0.5  # int8 kept unless its isolated speed is under half of torch's
EXPORT_MIN_COS = 0.99999  # fp32 ONNX vs fp32 torch: only summation order may differ
ONNX = "onnx-int8"
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

    @property
    def has_int8(self) -> bool:
        return (self.folder / IMAGE_INT8).is_file()

    def image_encoder(self, threads: int | None = None) -> OnnxImageEncoder:
        """The int8 tower (also when torch was recommended: `--precision int8` asks for it)."""
        return OnnxImageEncoder(self.folder / IMAGE_INT8, self.meta["model_id"], self.preprocess,
                                int(self.meta["embed_dim"]), threads)


def compiled_applies(device: str, precision: str) -> bool:
    """Whether the compiled path is used for this device/precision request (torch-free)."""
    if precision not in ("auto", "int8") or device not in ("auto", "cpu"):
        return False
    if device == "auto" and _gpu_present():
        from .device import choose_device  # imports torch: only where a GPU may be used

        if choose_device("auto") != "cpu":
            return False
    return compile_supported()


def load_compiled(ref: ModelRef, *, device: str = "auto", precision: str = "auto",
                  models_dir: Path | None = None, cache_dir: Path | None = None):
    """(CompiledModel, image encoder) for CPU use, compiling on first use; None when the
    request is for torch (a GPU, an explicit torch precision, or no onnxruntime).

    The encoder is the onnxruntime int8 tower when it passed its checks (or int8 was asked
    for), else torch's image tower at the precision clipsearch picks."""
    if not compiled_applies(device, precision):
        if precision == "int8":
            raise ValueError("precision int8 runs on the CPU with onnxruntime and onnx "
                             "installed (pip install onnxruntime onnx)")
        return None
    ensure_local(ref, models_dir)
    compiled = find_compiled(ref, models_dir, cache_dir)
    torch_encoder = None
    if compiled is None:
        try:
            compiled, torch_encoder = compile_model(ref, models_dir=models_dir,
                                                    cache_dir=cache_dir)
        except OSError as exc:  # no writable cache (read-only home, full disk): use torch
            if precision == "int8":
                raise
            log.warning("cannot compile %s into %s (%s); indexing with torch", ref.display,
                        folder_for(ref.model_id, cache_dir).parent, exc)
            return None
    if precision == "int8" or compiled.backend == ONNX:
        if not compiled.has_int8:
            raise ValueError(f"int8 is unavailable for {ref.display}: "
                             f"{compiled.meta['image']['reason']}")
        return compiled, compiled.image_encoder()
    if torch_encoder is None:
        from .encoder import ClipEncoder

        torch_encoder = ClipEncoder.load(ref, device="cpu", precision="auto",
                                         towers=frozenset({"image"}), models_dir=models_dir)
    return compiled, torch_encoder


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
    if compiled.backend == ONNX and not (folder / IMAGE_INT8).is_file():
        return None
    return compiled


def compile_model(ref: ModelRef, *, models_dir: Path | None = None,
                  cache_dir: Path | None = None):
    """Compile `ref` into the cache; returns (CompiledModel, torch encoder or None).

    The torch encoder (image tower only, at the precision clipsearch picks) is returned when
    torch won, so the caller does not load the model a second time."""
    from .encoder import ClipEncoder

    started = time.monotonic()
    key = cache_key(ref, models_dir)
    target = folder_for(ref.model_id, cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale(target.parent)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    work.chmod(0o755)
    try:
        meta, probes, reference, failure = _export(ref, models_dir, work)
        meta["key"] = key
        gc.collect()  # the fp32 model is gone: quantising and checking need the room
        agreement = None
        if failure is None:
            try:
                agreement = _quantise_and_check(work, probes, reference, meta)
            except Exception as exc:  # many exporter and quantiser failure types
                failure = str(exc)
        (work / "image.fp32.onnx").unlink(missing_ok=True)
        if failure is not None:
            log.warning("could not compile %s for onnxruntime: %s", ref.display, failure)
            meta["image"] = {"backend": TORCH, "reason": f"export failed: {failure}"[:500]}
        torch_encoder = ClipEncoder.load(ref, device="cpu", precision="auto",
                                         towers=frozenset({"image"}), models_dir=models_dir)
        if agreement is not None:
            meta["image"] = _choose(work, ref, torch_encoder, probes, agreement)
        meta["compile_seconds"] = round(time.monotonic() - started, 2)
        (work / META_NAME).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        _install(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    compiled = CompiledModel(target, meta)
    log.info("compiled %s: %s", ref.display, meta["image"])
    return compiled, (torch_encoder if compiled.backend == TORCH else None)


def _export(ref: ModelRef, models_dir: Path | None, work: Path):
    """Load the model in fp32, write its text tower and its fp32 image tower ONNX into
    `work`; returns (meta, probe pixels, reference vectors, image export failure or None).
    The model is freed on return: only files and the probes' vectors leave."""
    from .encoder import ClipEncoder
    from .loading import drop_unused_towers
    from .text_tower import UnsupportedTextTower, export_text_tower

    full = ClipEncoder.load(ref, device="cpu", precision="fp32", models_dir=models_dir)
    meta: dict = {"model_id": ref.model_id, "embed_dim": full.embed_dim,
                  "preprocess": full.preprocess.to_dict()}
    try:
        export_text_tower(full.loaded.model, work / TEXT_TOWER, tokenizer=full.loaded.tokenizer)
    except UnsupportedTextTower as exc:
        meta["text"] = f"stays on torch: {exc}"
    drop_unused_towers(full.loaded.model, frozenset({"image"}))
    probes = preprocess_batch(probe_images(), full.preprocess)
    reference = full.encode_pixels(probes)  # fp32 torch: what both exports must match
    try:
        export_image_tower(full.loaded.model.visual, full.preprocess.hw, work / "image.fp32.onnx")
    except Exception as exc:  # many exporter failure types; torch keeps working
        return meta, probes, reference, str(exc)
    return meta, probes, reference, None


def _quantise_and_check(work: Path, probes: np.ndarray, reference: np.ndarray,
                        meta: dict) -> dict:
    spec = PreprocessSpec.from_open_clip(meta["preprocess"])
    quantise(work / "image.fp32.onnx", work / IMAGE_INT8)
    exported = _cosines(work / "image.fp32.onnx", spec, probes, reference)
    if exported.min() < EXPORT_MIN_COS:  # a rewrite or exporter bug, not rounding
        raise RuntimeError(f"the exported fp32 graph differs from the model "
                           f"(cosine {exported.min():.6f})")
    cos = _cosines(work / IMAGE_INT8, spec, probes, reference)
    return {"min_cos": round(float(cos.min()), 6), "mean_cos": round(float(cos.mean()), 6),
            "probes": len(probes)}


def _choose(work: Path, ref: ModelRef, torch_encoder, probes: np.ndarray,
            agreement: dict) -> dict:
    int8 = OnnxImageEncoder(work / IMAGE_INT8, ref.model_id, torch_encoder.preprocess,
                            torch_encoder.embed_dim)
    try:
        speed = {ONNX: _images_per_second(int8.encode_pixels, probes),
                 f"torch-{torch_encoder.loaded.precision}":
                     _images_per_second(torch_encoder.encode_pixels, probes)}
    finally:
        int8.close()
    torch_speed = speed[f"torch-{torch_encoder.loaded.precision}"]
    choice = {"agreement_int8_vs_fp32": agreement,
              "images_per_second": {k: round(v, 1) for k, v in speed.items()}}
    if agreement["min_cos"] < GUARD_MIN_COS:
        return {"backend": TORCH, "reason": f"int8 min cosine {agreement['min_cos']:.5f} < "
                f"{GUARD_MIN_COS}", **choice}
    # Measured alone, torch can look faster and still lose the whole run: on 2 AMX cores
    # torch bf16 timed 89.9 img/s against int8's 64.4 here, then indexed caltech at 31 img/s
    # (start-up, thread-pool contention with the decoders) where int8 did 85 at a third of
    # the memory. So only a torch that is more than twice as fast wins (int8 kernels missing).
    if speed[ONNX] < TORCH_MUST_BE_FASTER * torch_speed:
        return {"backend": TORCH, "reason": "torch measured over twice as fast", **choice}
    return {"backend": ONNX, "reason": "passed agreement and speed checks", **choice}


def _cosines(onnx_path: Path, spec: PreprocessSpec, probes: np.ndarray,
             reference: np.ndarray) -> np.ndarray:
    """Cosine of each probe's vector from `onnx_path` (run as the encoder runs it: one image
    a call, a call per core) with the fp32 torch model's."""
    encoder = OnnxImageEncoder(onnx_path, "probe", spec, reference.shape[1])
    try:
        return (encoder.encode_pixels(probes) * reference).sum(axis=1)
    finally:
        encoder.close()


def _images_per_second(encode, probes: np.ndarray, rounds: int = 2) -> float:
    encode(probes[:2])  # warm-up: first calls allocate and pick kernels
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        encode(probes)
        best = min(best, time.perf_counter() - start)
    return len(probes) / best


def _install(work: Path, target: Path) -> None:
    """Replace `target` with `work` by renames: readers see the old or the new folder whole.
    When another process installed the same compilation first, its copy is kept."""
    if target.exists():
        old = target.with_name(f".{target.name}.old.{os.getpid()}")
        with contextlib.suppress(OSError):
            target.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    with contextlib.suppress(OSError):  # else a concurrent compile won: it wrote the same
        work.rename(target)


def _sweep_stale(parent: Path, age_s: float = 6 * 3600) -> None:
    """Remove work folders of compiles that were killed (hours old: not running any more)."""
    now = time.time()
    for entry in parent.glob(".*"):
        try:
            if entry.is_dir() and now - entry.stat().st_mtime > age_s:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass


def _weights_stamp(ref: ModelRef, models_dir: Path) -> list | None:
    """Path, size and mtime of the files behind `ref` (random weights have none)."""
    files: list[Path] = []
    if ref.kind == "openclip":
        weights = locate_pretrained(ref, pretrained_cfg(ref.name, str(ref.pretrained)),
                                    models_dir).weights
        files = [weights] if weights else []
    elif ref.kind == "hf-hub":
        bundle = locate_hub_bundle(ref, models_dir).bundle_dir
        files = sorted(bundle.iterdir()) if bundle else []
    elif ref.kind == "file":
        files = [Path(str(ref.pretrained))]
    elif ref.kind == "local-dir":
        files = sorted(Path(ref.name).iterdir()) if Path(ref.name).is_dir() else []
    stamp = []
    for file in files:
        try:
            st = file.stat()
        except OSError:
            continue
        if file.is_file():
            stamp.append([str(file), st.st_size, st.st_mtime_ns])
    return stamp or None


def _gpu_present() -> bool:
    """Whether device auto could pick a GPU, without importing torch to ask."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd"))


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
