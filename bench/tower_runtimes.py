"""The image tower alone, on every CPU runtime at hand: is any faster than clipsearch's?

    python -m bench.tower_runtimes [--model ViT-B-32] [--rounds 6]
    (optional runtimes: pip install openvino nncf)

Exports the tower as clipsearch's compiler does (fp32 ONNX with batch 1, then dynamic int8
in every variant clip_core.compiled.int8_variants knows, marking the one this CPU tries first) and
times one image per single-threaded call, which is how the indexer runs it (a call per core),
in the calling thread's CPU time. Rounds are interleaved and the best kept, so a noisy
machine hurts every candidate alike.
Accuracy is the minimum cosine to fp32 torch on probe images; static int8 is calibrated on
the other half of them, so it is not graded on its own calibration images. Random weights
cost the same compute as real ones but say little about static int8's accuracy on real CLIP
weights, whose activations have large outlier channels.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench import steal
from bench.jpeg_decoders import core_clock

Encode = Callable[[np.ndarray], np.ndarray]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    speed, accuracy, _ = measure(args.model, args.rounds)
    print(f"{'runtime':62s} {'ms/image':>9s} {'min cos':>9s}")
    for name in sorted(speed, key=speed.get):
        print(f"{name:62s} {speed[name]:9.1f} {accuracy[name]:9.5f}")


def measure(model: str, rounds: int, sustain: Sustain | None = None
            ) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """({runtime: best ms per image on one core}, {runtime: min cosine to fp32 torch},
    {runtime: sustained core-ms per image with every core running it}). The last holds the
    fastest onnxruntime session that reaches `sustain.guard` (sessions are callable from many
    threads, as the index run's encoder threads call clipsearch's), when `sustain` is given."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        probes, reference = _export(model, work)
        calibration, check = probes[:8], probes[8:]
        candidates = dict(_onnxruntime(work))
        candidates.update(_openvino(work, calibration))
        accuracy = {name: _min_cos(run, check, reference[8:])
                    for name, run in candidates.items()}
        speed = _best_ms(candidates, check, rounds)
        sustained: dict[str, float] = {}
        if sustain is not None:
            shared = [n for n in sorted(speed, key=speed.__getitem__)
                      if n.startswith("onnxruntime") and accuracy[n] >= sustain.guard]
            if shared:
                sustained[shared[0]] = together_ms(candidates[shared[0]], check,
                                                   sustain.threads, sustain.seconds)
    return speed, accuracy, sustained


def _export(model: str, work: Path) -> tuple[np.ndarray, np.ndarray]:
    from clip_core.compiled.int8_variants import VARIANTS
    from clip_core.compiled.onnx_export import export_image_tower, quantise
    from clip_core.models.ref import parse_model
    from clip_core.pixels.preprocess import preprocess_batch
    from clip_core.pixels.probes import probe_images
    from clip_core.torch_backend.encoder import ClipEncoder

    full = ClipEncoder.load(parse_model(model, "none"), device="cpu", precision="fp32",
                            towers=frozenset({"image"}))
    probes = preprocess_batch(probe_images(), full.preprocess)
    reference = full.encode_pixels(probes)
    export_image_tower(full.loaded.model.visual, full.preprocess.hw, work / "fp32.onnx")
    for variant in VARIANTS:
        quantise(work / "fp32.onnx", work / f"int8-{variant.name}.onnx", variant)
    _quantise_attention_too(work / "fp32.onnx", work / "int8-attention.onnx")
    return probes, reference


def _quantise_attention_too(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul", "Gemm"],
                     extra_options={"MatMulConstBOnly": False})


CLIPSEARCH_FIRST = " (clipsearch tries first here)"  # marks clipsearch's variant's name


def _onnxruntime(work: Path):
    from clip_core.compiled.int8_variants import VARIANTS, variant_order
    from clip_core.compiled.onnx_encoder import new_session
    from clip_core.cpu import CpuFeatures

    first = variant_order(CpuFeatures.here())[0]
    variants = [(f"int8-{v.name}", f"int8 dynamic {v.name}"
                 + (CLIPSEARCH_FIRST if v == first else "")) for v in VARIANTS]
    for name, label in (("fp32", "fp32"), *variants,
                        ("int8-attention", "int8 dynamic, attention products too")):
        session = new_session(work / f"{name}.onnx", threads=1)
        yield f"onnxruntime {label}", _runner(lambda x, s=session: s.run(None, {"pixels": x})[0])


def _openvino(work: Path, calibration: np.ndarray):
    try:
        import openvino as ov
    except ImportError:
        print("openvino not installed: its rows are skipped")
        return
    core = ov.Core()
    fp32 = core.read_model(str(work / "fp32.onnx"))
    models = {"fp32": (fp32, {}), "bf16 hint": (fp32, {"INFERENCE_PRECISION_HINT": "bf16"}),
              "the int8 ONNX": (core.read_model(str(work / "int8-u8s8.onnx")), {})}
    try:
        import nncf
    except ImportError:
        print("nncf not installed: OpenVINO's int8 rows are skipped")
    else:
        weights8 = nncf.compress_weights(fp32.clone(), mode=nncf.CompressWeightsMode.INT8_SYM)
        static = nncf.quantize(fp32.clone(), nncf.Dataset([p[None] for p in calibration]),
                               subset_size=len(calibration),
                               model_type=nncf.ModelType.TRANSFORMER)
        models["int8 weights, dynamic activations (group 64)"] = (
            weights8, {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 64})
        models["int8 static (NNCF)"] = (static, {})
        models["int8 static (NNCF), bf16 hint"] = (static, {"INFERENCE_PRECISION_HINT": "bf16"})
    for label, (model, extra) in models.items():
        config = {"INFERENCE_NUM_THREADS": 1, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_PRECISION_HINT": "f32", **extra}
        request = core.compile_model(model, "CPU", config).create_infer_request()
        yield f"openvino {label}", _runner(lambda x, r=request: r.infer({0: x})[0].copy())


def _runner(call: Callable[[np.ndarray], np.ndarray]) -> Encode:
    def encode(pixels: np.ndarray) -> np.ndarray:
        out = np.concatenate([call(np.ascontiguousarray(p[None])) for p in pixels])
        return out / np.linalg.norm(out, axis=1, keepdims=True)
    return encode


def _min_cos(encode: Encode, pixels: np.ndarray, reference: np.ndarray) -> float:
    return float((encode(pixels) * reference).sum(axis=1).min())


def _best_ms(candidates: dict[str, Encode], pixels: np.ndarray, rounds: int) -> dict:
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(rounds):
        for name, encode in candidates.items():
            start = core_clock()
            encode(pixels)
            best[name] = min(best[name], (core_clock() - start) / len(pixels) * 1000)
    return best


@dataclass
class Sustain:
    threads: int  # the cores
    seconds: float  # each thread keeps encoding for at least this long
    guard: float  # the min cosine a runtime needs to be measured


def together_ms(encode: Encode, pixels: np.ndarray, threads: int, seconds: float) -> float:
    """Core-ms per image with `threads` threads each encoding `pixels` over and over for at
    least `seconds`, all at once (as the index run keeps one encoder call per core busy for
    as long as it runs): the cores' wall time, less what the VM's host took (bench.steal),
    over the images done. Sustained, not best of short passes, since a machine may not hold
    its speed over a whole run with every core busy (a power or thermal budget, a shared
    cache)."""
    done = [0] * threads

    def work(slot: int) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            encode(pixels)
            done[slot] += len(pixels)

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    steal_before = steal.stolen_seconds()
    start = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    wall = time.perf_counter() - start
    given = steal.given_share(wall, threads, steal.stolen_since(steal_before))
    return wall * threads * given * 1000 / sum(done)


if __name__ == "__main__":
    main()
