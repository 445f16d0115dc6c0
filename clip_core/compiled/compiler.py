"""Compiling a model for the CPU (see clip_core.compiled.cache for what is made and why).

Steps, freeing memory as they go: load the model in fp32; write its text tower; build the
image tower's fp32 ONNX graph from its weights (clip_core.compiled.vit_graph; a tower it
does not know is exported by torch's exporter and checked against torch's forward instead)
and take its vectors of 16 probe images (GUARD_PROBES) as the reference; quantise to int8
with each variant in this CPU's order (clip_core.compiled.int8_variants) until one is within
GUARD_MIN_COS of the reference, else keep the fp32 graph; drop the model; time the choice
against torch unless int8 runs on dot-product instructions or AVX2; write compiled.json;
rename the folder into place. Each step is said on stderr.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from clip_core.compiled.built import Built, release_freed_memory
from clip_core.compiled.cache import (
    IMAGE_FP32,
    IMAGE_INT8,
    META_NAME,
    ONNX,
    ONNX_FP32,
    TEXT_TOWER,
    TORCH,
    CompiledModel,
    cache_key,
    find_compiled,
    folder_for,
)
from clip_core.compiled.int8_variants import Int8Variant, variant_order
from clip_core.compiled.onnx_encoder import OnnxImageEncoder
from clip_core.compiled.onnx_export import export_image_tower, quantise
from clip_core.cpu import CpuFeatures
from clip_core.encoders import GUARD_MIN_COS, notify_loading
from clip_core.models.files import ensure_local
from clip_core.models.ref import ModelRef
from clip_core.pixels.preprocess import PreprocessSpec, preprocess_batch
from clip_core.pixels.probes import probe_images
from clip_core.quiet import quiet_libraries
from clipsearch_errors import ModelError

log = logging.getLogger(__name__)

TORCH_MUST_BE_FASTER = 0.5  # int8 kept unless its isolated speed is under half of torch's
EXPORT_MIN_COS = 0.99999  # fp32 ONNX vs fp32 torch: only summation order may differ
FP32_DIR = "fp32"  # the fp32 export, with any external-data files (towers > 2 GB)
FP32_ONNX = IMAGE_FP32  # kept as the tower when no int8 variant passes
# Probe images the guard checks (the int8 text tower checks 8 probe texts). 16, though 8
# would save a first index run ~1.3 CPU s (the fp32 reference of each costs ViT-B-32 ~120
# CPU ms): the worst of the first 8 matched the worst of 16 on the two models measured
# (random ViT-B-32, shapes-tiny), but trained towers have outlier activations that a few more
# probes are more likely to hit, and the first run passes its 0.7x target without the saving
# (docs/benchmarks.md, "First index run against a later one").
GUARD_PROBES = 16


def compile_model(ref: ModelRef, *, models_dir: Path | None = None,
                  cache_dir: Path | None = None, force: bool = False,
                  guard: float | None = None, cpu: CpuFeatures | None = None,
                  keep_encoder: bool = False):
    """Compile `ref` into the cache; returns (CompiledModel, torch encoder or None).

    `guard` (default GUARD_MIN_COS) is the min cosine an int8 variant must reach; `cpu`
    (default: this machine's) orders the variants. Both are parameters so that tests can
    walk the whole fallback chain on any CPU.

    One compile per model at a time on this machine (a lock file beside the folder): a second
    process waits, then uses the first one's result unless `force`. The torch encoder (image
    tower only, at the precision clipsearch picks) is returned when it was timed and won, so
    the caller does not load the model a second time; with `keep_encoder`, so is the int8
    tower it checked when that tower was chosen (its onnxruntime session, already built:
    a first index run does not build it again). Only an ExportFailure (the model's fate
    with these library versions) is recorded in the cache; any other error propagates, so
    one that may pass (disk full, no memory, shutdown under Ctrl-C) is retried next time."""
    ensure_local(ref, models_dir)  # a missing model: its message, not "Preparing ..." first
    # An index run waiting for this model shows it (its progress bar): compiling here, or
    # waiting below for another process's compile of it.
    notify_loading("compiling", f"compiling {ref.name.rsplit('/', 1)[-1]} for this CPU (once)")
    target = folder_for(ref.model_id, cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = None if force else find_compiled(ref, models_dir, cache_dir)
        if found is not None:
            return found, None
        return _compile_locked(ref, models_dir, target,
                               GUARD_MIN_COS if guard is None else guard,
                               cpu or CpuFeatures.here(), keep_encoder)


def _compile_locked(ref: ModelRef, models_dir: Path | None, target: Path,
                    guard: float, cpu: CpuFeatures, keep_encoder: bool = False):
    started = time.monotonic()
    # Said where people see it (stderr), step by step: the first run otherwise looks stuck.
    _say(f"Preparing {ref.display} for this CPU, once per model and machine (ViT-B-32: "
         f"~10 s): an image tower checked against fp32, a text tower for torch-free queries")
    key = cache_key(ref, models_dir)
    _sweep_stale(target)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    work.chmod(0o755)
    encoder = None
    try:
        with quiet_libraries():
            meta, encoder = _compile_into(ref, models_dir, work, guard, cpu)
        meta["key"] = key
        meta["compile_seconds"] = round(time.monotonic() - started, 2)
        (work / META_NAME).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        _install(work, target, key)
    except BaseException:
        if encoder is not None:
            encoder.close()
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    compiled = CompiledModel(target, meta)
    log.info("compiled %s: %s", ref.display, meta["image"])
    if compiled.backend == ONNX and encoder is not None:  # the checked int8 tower
        if keep_encoder:
            encoder.path = target / IMAGE_INT8  # its file, now in place
        else:
            encoder.close()
            encoder = None
    return compiled, encoder


def _compile_into(ref: ModelRef, models_dir: Path | None, work: Path, guard: float,
                  cpu: CpuFeatures) -> tuple[dict, object | None]:
    """Write the compiled files into `work`; returns (meta less its key, the encoder of the
    choice when one was made: torch when it won and was loaded to be timed, the int8 tower
    that passed the check)."""
    from clip_core.torch_backend.encoder import ClipEncoder

    meta, probes, reference, failure, built = _export(ref, models_dir, work)
    gc.collect()  # torch's exporter is done with the model: quantising needs the room
    checked = None
    if failure is None:
        try:
            checked = _quantise_and_check(work, probes, reference, meta,
                                          variant_order(cpu), guard, built)
        except ExportFailure as exc:  # any other error propagates, unrecorded
            failure = str(exc)
    del built  # the fp32 model: timing torch loads its own (image tower, its precision)
    release_freed_memory()
    if failure is not None:
        meta["image"] = {"backend": TORCH, "reason": f"could not compile for onnxruntime, "
                         f"using torch (slower): {failure}"[:500]}
    encoder = None
    if checked is not None:
        meta["image"], encoder = _choose(
            work, probes, checked, meta, guard, cpu,
            lambda: ClipEncoder.load(ref, device="cpu", precision="auto",
                                     towers=frozenset({"image"}), models_dir=models_dir))
    if meta["image"]["backend"] != ONNX_FP32:
        shutil.rmtree(work / FP32_DIR, ignore_errors=True)
    _say(f"  image tower: {meta['image']['reason']}")
    return meta, encoder


def _export(ref: ModelRef, models_dir: Path | None, work: Path):
    """Load the model in fp32 and write its text tower into `work`; returns (meta, probe
    pixels, reference vectors, image export failure or None, Built or None).

    A plain ViT's graph is built from its weights (Built: the model stays alive with it,
    the reference is that fp32 graph's vectors, proven equal to torch's forward by
    tests/test_vit_graph.py). Any other tower is exported by torch's exporter into `work`
    (reference: torch's forward; the model is freed on return)."""
    from clip_core.compiled.vit_weights import UnsupportedTower, vit_weights
    from clip_core.compiled.weights_file import open_weights_file, write_text_tower

    source = open_weights_file(ref, models_dir)
    if source is not None:  # no torch at all: the weights file, mapped
        _say("  [1/4] reading the model's weights file; writing its text tower")
        write_text_tower(source, work / TEXT_TOWER)
        source.release_pages()  # the text weights are read: 250 MB of ViT-B-32's pages
        meta = {"model_id": ref.model_id, "embed_dim": source.embed_dim,
                "preprocess": source.preprocess.to_dict(),
                "loaded_from": "weights file, without torch"}
        probes = preprocess_batch(probe_images(GUARD_PROBES), source.preprocess)
        (work / FP32_DIR).mkdir()
        return _reference(meta, probes, Built(source, source.vision))

    from clip_core.text.tower import UnsupportedTextTower
    from clip_core.torch_backend.encoder import ClipEncoder
    from clip_core.torch_backend.loading import drop_unused_towers
    from clip_core.torch_backend.text_export import export_text_tower

    _say("  [1/4] loading the model in fp32; writing its text tower")
    full = ClipEncoder.load(ref, device="cpu", precision="fp32", models_dir=models_dir)
    meta: dict = {"model_id": ref.model_id, "embed_dim": full.embed_dim,
                  "preprocess": full.preprocess.to_dict()}
    try:
        export_text_tower(full.loaded.model, work / TEXT_TOWER, tokenizer=full.loaded.tokenizer)
    except UnsupportedTextTower as exc:
        meta["text"] = f"stays on torch: {exc}"
    drop_unused_towers(full.loaded.model, frozenset({"image"}))
    probes = preprocess_batch(probe_images(GUARD_PROBES), full.preprocess)
    (work / FP32_DIR).mkdir()
    try:
        weights = vit_weights(full.loaded.model.visual, full.preprocess.hw)
    except UnsupportedTower as exc:
        log.info("image tower exported by torch: %s", exc)
    else:
        return _reference(meta, probes, Built(full, weights))
    reference = full.encode_pixels(probes)  # fp32 torch: what both exports must match
    _say("  [2/4] exporting the image tower to ONNX")
    try:
        export_image_tower(full.loaded.model.visual, full.preprocess.hw, work / FP32_ONNX)
    except (OSError, MemoryError):
        raise  # may pass: not recorded as this model's fate
    except Exception as exc:  # many exporter failure types; torch keeps working
        return meta, probes, reference, f"export failed: {exc}", None
    return meta, probes, reference, None, None


def _reference(meta: dict, probes: np.ndarray, built: Built):
    _say(f"  [2/4] building the image tower's ONNX graph; fp32 vectors of {len(probes)} "
         f"probe images")
    try:
        with _recorded("the image tower's fp32 graph failed"):
            reference = built.fp32_vectors(probes)
    except ExportFailure as exc:  # recorded: torch runs this model (the builder's fault)
        return meta, probes, None, str(exc), None
    return meta, probes, reference, None, built


class ExportFailure(ModelError):
    """This model cannot be compiled with these library versions: recorded in compiled.json
    (torch is used) until the cache key changes. Anything else that goes wrong while
    compiling (no memory, a full disk, the interpreter shutting down under a Ctrl-C while
    the checks run) is not recorded, and the next run compiles again."""


def _quantise_and_check(work: Path, probes: np.ndarray, reference: np.ndarray, meta: dict,
                        variants: Sequence[Int8Variant], guard: float,
                        built: Built | None = None) -> dict:
    """Check the fp32 export (torch's exporter), then quantise with each variant in turn
    until one is within `guard` of fp32 on every probe. The best int8 tower tried becomes
    IMAGE_INT8 (for `--precision int8`); a built graph's fp32 file is written only when
    none passed. Returns {"tried": [figures per variant], "best": figures or None,
    "encoder": the passing variant's OnnxImageEncoder, still open, or None}."""
    spec = PreprocessSpec.from_open_clip(meta["preprocess"])
    if built is None:
        exported = _cosines(work / FP32_ONNX, spec, probes, reference)
        if exported.min() < EXPORT_MIN_COS:  # a rewrite or exporter bug, not rounding
            raise ExportFailure(f"the exported fp32 graph differs from the model "
                                f"(cosine {exported.min():.6f})")
    tried: list[dict] = []
    best: tuple[dict, Path] | None = None
    passed = None  # its session is the one a first index run encodes with
    for i, variant in enumerate(variants):
        _say(f"  [3/4] int8 ({variant.name}): quantising, checking {len(probes)} probe images")
        folder = work / f"int8-{i}"  # its own folder: external-data files keep their names
        folder.mkdir()
        figures: dict = {"variant": variant.name}
        started = time.monotonic()
        try:
            with _recorded(f"quantisation ({variant.name}) failed"):
                if built is None:
                    quantise(work / FP32_ONNX, folder / IMAGE_INT8, variant)
                else:
                    built.save(folder / IMAGE_INT8, variant)
            cos, encoder = _checked(folder / IMAGE_INT8, spec, probes, reference,
                                    meta["model_id"])
        except ExportFailure as exc:  # this variant's fate: the next may work
            tried.append({**figures, "error": str(exc)[:300]})
            shutil.rmtree(folder, ignore_errors=True)
            continue
        figures.update(min_cos=round(float(cos.min()), 6), mean_cos=round(float(cos.mean()), 6),
                       probes=len(probes), seconds=round(time.monotonic() - started, 2))
        tried.append(figures)
        if best is None or figures["min_cos"] > best[0]["min_cos"]:
            if best is not None:
                shutil.rmtree(best[1], ignore_errors=True)
            best = (figures, folder)
        else:
            shutil.rmtree(folder, ignore_errors=True)
        if figures["min_cos"] >= guard:  # the first to pass, so the best: the loop ends
            passed = encoder
            break
        encoder.close()
    if best is not None:
        for file in best[1].iterdir():
            file.rename(work / file.name)
        best[1].rmdir()
    if built is not None and (best is None or best[0]["min_cos"] < guard):
        with _recorded("writing the fp32 graph failed"):
            built.save(work / FP32_ONNX, None)
    return {"tried": tried, "best": best[0] if best else None, "encoder": passed}


def _choose(work: Path, probes: np.ndarray, checked: dict, meta: dict, guard: float,
            cpu: CpuFeatures, load_torch: Callable) -> tuple[dict, object | None]:
    """(compiled.json's "image" entry, the encoder to index with when one is open: torch
    when it was loaded and won, the checked int8 tower when it was not timed).

    The int8 tower that passed the guard, else the onnxruntime fp32 export (checked within
    EXPORT_MIN_COS), unless torch is measured over twice as fast."""
    spec = PreprocessSpec.from_open_clip(meta["preprocess"])
    best = checked["best"]
    choice: dict = {"variants": checked["tried"]}
    if best is not None:
        choice["agreement_int8_vs_fp32"] = {k: best[k] for k in ("min_cos", "mean_cos", "probes")}
    if best is not None and best["min_cos"] >= guard:
        backend, path = ONNX, work / IMAGE_INT8
        choice["variant"] = best["variant"]
        why = (f"int8 ({best['variant']}) kept: min cosine {best['min_cos']:.5f} >= {guard} "
               f"on {best['probes']} probe images")
    else:
        backend, path = ONNX_FP32, work / FP32_ONNX
        why = ("int8 rejected on this CPU " + (
            f"(best min cosine {best['min_cos']:.5f} < {guard})" if best else
            "(quantisation failed)") + ", using onnxruntime fp32")
    if backend == ONNX and cpu.int8_outruns_torch:
        # int8 products run on dot-product instructions or AVX2 here, which no torch
        # precision on such a CPU beats twice over: nothing is timed. Timing torch cost an
        # AVX2-only compile of ViT-B-32 its import and model (13.6 s, 1.5 GB against 3-5 s,
        # 0.8 GB), and timing int8 alone a first index run ~1 CPU s for a figure nobody read.
        return {"backend": ONNX, "reason": why + "; this CPU runs int8 products on "
                + ("AVX2" if cpu.x86 and not cpu.int8_dot_product else
                   "dot-product instructions"),
                **choice}, checked["encoder"]
    if checked["encoder"] is not None:  # closed before torch loads: the compile's peak
        checked["encoder"].close()
    _say("  [4/4] timing the chosen tower against torch")
    encoder = OnnxImageEncoder(path, meta["model_id"], spec, meta["embed_dim"],
                               precision="int8" if backend == ONNX else "fp32")
    try:
        speed = {backend: _images_per_second(encoder.encode_pixels, probes)}
    finally:
        encoder.close()
    torch_encoder = load_torch()
    torch_name = f"torch-{torch_encoder.loaded.precision}"
    speed[torch_name] = _images_per_second(torch_encoder.encode_pixels, probes)
    choice["images_per_second"] = _rounded(speed)
    # Measured alone, torch can look faster and still lose the whole run: on 2 AMX cores
    # torch bf16 timed 89.9 img/s against int8's 64.4 here, then indexed caltech at 31 img/s
    # (start-up, thread-pool contention with the decoders) where int8 did 85 at a third of
    # the memory. So only a torch that is more than twice as fast wins (int8 kernels missing).
    if speed[backend] < TORCH_MUST_BE_FASTER * speed[torch_name]:
        return {"backend": TORCH, "reason": f"{why}; but torch measured over twice as fast: "
                f"using {torch_name} (slower start, ~1 GB more memory)", **choice}, torch_encoder
    return {"backend": backend, "reason": f"{why}; passed the speed check", **choice}, None


def _say(message: str) -> None:
    """A step of the compile, on stderr where nothing configured logging (the CLI): Python's
    last-resort handler shows warnings; an app's own logging config decides otherwise."""
    log.warning(message)


def _rounded(speed: dict[str, float]) -> dict[str, float]:
    return {name: round(value, 1) for name, value in speed.items()}


def _cosines(onnx_path: Path, spec: PreprocessSpec, probes: np.ndarray,
             reference: np.ndarray) -> np.ndarray:
    cos, encoder = _checked(onnx_path, spec, probes, reference, "probe")
    encoder.close()
    return cos


def _checked(onnx_path: Path, spec: PreprocessSpec, probes: np.ndarray, reference: np.ndarray,
             model_id: str) -> tuple[np.ndarray, OnnxImageEncoder]:
    """Cosine of each probe's vector from `onnx_path` (run as the encoder runs it: one image
    a call, a call per core) with the fp32 reference's, and that encoder, open. A graph
    onnxruntime refuses is this model's fate; a failed run may not be (no memory, executors
    shut down at exit)."""
    with _recorded(f"onnxruntime cannot load {onnx_path.name}"):
        encoder = OnnxImageEncoder(onnx_path, model_id, spec, reference.shape[1])
    try:
        return (encoder.encode_pixels(probes) * reference).sum(axis=1), encoder
    except BaseException:
        encoder.close()
        raise


@contextlib.contextmanager
def _recorded(what: str):
    """Turn a failure of a deterministic step into an ExportFailure (recorded)."""
    try:
        yield
    except (OSError, MemoryError):
        raise  # may pass
    except Exception as exc:  # many library-specific types
        raise ExportFailure(f"{what}: {exc}") from exc


def _images_per_second(encode, probes: np.ndarray, rounds: int = 2) -> float:
    encode(probes[:2])  # warm-up: first calls allocate and pick kernels
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        encode(probes)
        best = min(best, time.perf_counter() - start)
    return len(probes) / best


def _install(work: Path, target: Path, key: dict) -> None:
    """Replace `target` with `work` by renames (under the compile lock): readers see the old
    folder, none for an instant (they then wait for the lock and look again), or the new
    one. Raises OSError when the new one is not in place afterwards."""
    if target.exists():
        old = target.with_name(f".{target.name}.old.{os.getpid()}")
        with contextlib.suppress(OSError):
            target.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    with contextlib.suppress(OSError):
        work.rename(target)
    try:
        installed = json.loads((target / META_NAME).read_text(encoding="utf-8")).get("key")
    except (OSError, ValueError):
        installed = None
    if installed != key:
        raise OSError(f"could not install the compiled model into {target}")


def _sweep_stale(target: Path, age_s: float = 6 * 3600) -> None:
    """Remove the work folders of killed compiles (a Ctrl-C'd first index run leaves ~450 MB
    for ViT-B-32): this model's at once, since the caller holds its lock; other models'
    when hours old (not running any more)."""
    own = re.compile(rf"\.{re.escape(target.name)}\.([a-z0-9_]{{8}}|old\.\d+)")
    now = time.time()
    for entry in target.parent.glob(".*"):
        try:
            if entry.is_dir() and (own.fullmatch(entry.name)
                                   or now - entry.stat().st_mtime > age_s):
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass
