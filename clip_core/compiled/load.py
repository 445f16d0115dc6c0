"""Open a model's compiled form for CPU use, compiling it on first use."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from clip_core.compiled.cache import (
    TORCH,
    CompiledModel,
    _gpu_present,
    compile_supported,
    find_compiled,
    folder_for,
)
from clip_core.models.files import MissingModelError, ModelLoadError, ensure_local
from clip_core.models.ref import ModelRef
from clipsearch_errors import MissingExtraError, UsageError

log = logging.getLogger(__name__)


def int8_on_gpu(where: str) -> UsageError:
    return UsageError(f"--precision int8 runs on the CPU only (the compiled onnxruntime image "
                      f"tower), not on {where}: use --device cpu with int8, or --precision "
                      "fp16, bf16 or fp32 on the GPU")


def check_precision(device: str, precision: str) -> None:
    """UsageError for int8 asked of a device that is not the CPU: said before anything
    loads or is written, without torch. (--device auto picking a GPU is said by
    load_compiled, which asks torch.)"""
    if precision == "int8" and device not in ("auto", "cpu"):
        raise int8_on_gpu(f"--device {device}")


def compiled_applies(device: str, precision: str) -> bool:
    """Whether the compiled path is used for this device/precision request (torch-free)."""
    if precision not in ("auto", "int8") or device not in ("auto", "cpu"):
        return False
    if device == "auto" and _gpu_present():
        from clip_core.torch_backend.device import (
            choose_device,  # imports torch: only where a GPU may be used
        )

        if choose_device("auto") != "cpu":
            return False
    return compile_supported()


def runs_on_torch(ref: ModelRef, *, device: str = "auto", precision: str = "auto",
                  models_dir: Path | None = None, cache_dir: Path | None = None) -> bool:
    """Whether `ref`'s image tower will run on torch, as far as is known before it loads and
    without importing torch: a torch precision or device, no onnxruntime, or a compiled model
    that chose torch. False where it is not known yet: a first compile may still choose
    torch, and `--device auto` with a GPU present is torch's to decide."""
    if precision not in ("auto", "int8") or device not in ("auto", "cpu"):
        return True
    if device == "auto" and _gpu_present():
        return False
    if not compile_supported():
        return True
    compiled = find_compiled(ref, models_dir, cache_dir)
    return compiled is not None and compiled.backend == TORCH


def load_compiled(ref: ModelRef, *, device: str = "auto", precision: str = "auto",
                  models_dir: Path | None = None, cache_dir: Path | None = None,
                  on_found: Callable[[CompiledModel], None] | None = None):
    """(CompiledModel, image encoder) for CPU use, compiling on first use; None when the
    request is for torch (a GPU, an explicit torch precision, or no onnxruntime).
    `on_found(compiled)`: told of an already compiled model before its session is built
    (~0.15 s for ViT-B-32), so a caller can start its own work with the model's files
    meanwhile (a library's check of the text tower it links).

    The encoder is the onnxruntime int8 tower when it passed its checks (or int8 was asked
    for), else the onnxruntime fp32 tower, else (export failed, or torch measured over
    twice as fast) torch's image tower at the precision clipsearch picks."""
    if not compiled_applies(device, precision):
        if precision == "int8":
            check_precision(device, precision)
            if compile_supported():  # so device auto picked a GPU
                raise int8_on_gpu("the GPU that --device auto picks here")
            raise MissingExtraError("precision int8 runs on the CPU with onnxruntime and onnx "
                                    "installed (pip install onnxruntime onnx)")
        return None
    ensure_local(ref, models_dir)
    from clip_core.compiled.compiler import compile_model

    for force in (False, True):  # a damaged cache is compiled again, once
        try:
            compiled = None if force else find_compiled(ref, models_dir, cache_dir)
            if compiled is not None and on_found is not None:
                on_found(compiled)
                on_found = None  # once, even when the session fails and it is compiled again
            torch_encoder = None
            if compiled is None:
                compiled, made = compile_model(ref, models_dir=models_dir, cache_dir=cache_dir,
                                               force=force, keep_encoder=True)
                if compiled.backend != TORCH and made is not None:
                    return compiled, made  # the int8 tower it checked: its session is built
                torch_encoder = made
        except (MissingModelError, ModelLoadError):
            raise  # the model itself is unusable: torch would fail the same way
        except Exception as exc:  # no writable cache, full disk, no memory, a failed check
            if precision == "int8":  # (a failure that is the model's fate is recorded in
                raise  # compiled.json by compile_model, not raised)
            log.warning("cannot compile %s into %s (%s); indexing with torch this time",
                        ref.display, folder_for(ref.model_id, cache_dir).parent, exc)
            return None
        if precision != "int8" and compiled.backend == TORCH:
            break
        if not compiled.meta["image"].get("agreement_int8_vs_fp32"):
            raise UsageError(f"int8 is unavailable for {ref.display}: "
                             f"{compiled.meta['image']['reason']}")
        try:
            return compiled, compiled.image_encoder(int8=precision == "int8")
        except Exception as exc:  # damaged or half-replaced file: onnxruntime's own errors
            if force and precision == "int8":
                raise
            log.warning("compiled %s in %s is unusable (%s); %s", ref.display, compiled.folder,
                        exc, "indexing with torch" if force else "compiling it again")
            if force:
                break
    if torch_encoder is None:
        from clip_core.compiled.vit_torch import image_encoder

        torch_encoder = image_encoder(ref, device="cpu", precision="auto",
                                      models_dir=models_dir)
    return compiled, torch_encoder


