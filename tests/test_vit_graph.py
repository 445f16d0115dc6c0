"""The image tower's ONNX graph built from its weights (clip_core.compiled.vit_graph), without
torch's exporter: equal to open_clip's torch forward, quantised as quantize_dynamic would,
and what the compile of a ViT uses."""

from __future__ import annotations

import numpy as np
import pytest

from clip_core.compiled import vit_graph
from clip_core.compiled.built import Built
from clip_core.compiled.cache import IMAGE_FP32, IMAGE_INT8, ONNX, ONNX_FP32
from clip_core.compiled.compiler import GUARD_MIN_COS, compile_model
from clip_core.compiled.int8_variants import DEFAULT, REDUCE_RANGE, VARIANTS, variant_order
from clip_core.compiled.vit_weights import UnsupportedTower, vit_weights
from clip_core.cpu import CpuFeatures
from clip_core.encoders import l2_normalise
from clip_core.models.ref import parse_model
from clip_core.pixels.preprocess import preprocess_batch
from clip_core.pixels.probes import probe_images
from clip_core.torch_backend.encoder import ClipEncoder
from tests.conftest import SHAPES_TINY
from tests.vit_bundles import VISION_KINDS, tiny_vit, write_bundle


def torch_vectors(visual, pixels: np.ndarray) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return l2_normalise(visual(torch.from_numpy(pixels)).numpy())


def graph_vectors(model, arrays, pixels: np.ndarray) -> np.ndarray:
    session = vit_graph.session(model, arrays)
    return l2_normalise(np.concatenate([session.run(None, {vit_graph.INPUT: p[None]})[0]
                                        for p in pixels]))


@pytest.mark.parametrize("kind", VISION_KINDS)
def test_fp32_graph_equals_open_clips_forward(kind):
    model = tiny_vit(quick_gelu=kind.startswith("quickgelu"), **VISION_KINDS[kind])
    hw = model.visual.image_size
    pixels = np.random.default_rng(1).standard_normal((3, 3, *hw)).astype(np.float32)
    graph, arrays = vit_graph.build(vit_weights(model.visual, hw))
    ours, theirs = graph_vectors(graph, arrays, pixels), torch_vectors(model.visual, pixels)
    assert np.abs(ours - theirs).max() < 1e-5
    # the compile's reference: images in batches, padded to whole batches a core
    batched = vit_graph.session(*vit_graph.build(vit_weights(model.visual, hw), batch=3))
    out = l2_normalise(batched.run(None, {vit_graph.INPUT: pixels})[0])
    assert out.shape == theirs.shape and np.abs(out - theirs).max() < 1e-5
    for count in (1, 2, 3):
        built = Built(model, vit_weights(model.visual, hw)).fp32_vectors(pixels[:count])
        assert np.abs(built - theirs[:count]).max() < 1e-5
    with pytest.raises(ValueError, match="fp32 only"):
        vit_graph.build(vit_weights(model.visual, hw), DEFAULT, batch=2)


@pytest.mark.slow
def test_vit_b32_fp32_graph_equals_open_clip_and_int8_is_quantize_dynamic(tmp_path):
    """Random ViT-B-32 (the benchmark's stand-in): the fp32 graph within 1e-5 of torch on
    probe images; each int8 variant within the guard (u8s8 not where its sums saturate:
    there the variant tried first), and the default variant's vectors those of
    onnxruntime's quantize_dynamic applied to the fp32 graph."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from clip_core.compiled.onnx_encoder import new_session

    ref = parse_model("ViT-B-32", "none")
    enc = ClipEncoder.load(ref, precision="fp32", towers=frozenset({"image"}))
    pixels = preprocess_batch(probe_images(4, seed=5), enc.preprocess)
    weights = vit_weights(enc.loaded.model.visual, enc.preprocess.hw)
    graph, arrays = vit_graph.build(weights)
    fp32 = graph_vectors(graph, arrays, pixels)
    assert np.abs(fp32 - torch_vectors(enc.loaded.model.visual, pixels)).max() < 1e-5
    vit_graph.save(graph, arrays, tmp_path / "fp32.onnx")
    quantize_dynamic(str(tmp_path / "fp32.onnx"), str(tmp_path / "qd.onnx"),
                     weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    session = new_session(tmp_path / "qd.onnx")
    theirs = l2_normalise(np.concatenate([session.run(None, {"pixels": p[None]})[0]
                                          for p in pixels]))
    cpu = CpuFeatures.here()
    for variant in VARIANTS:
        ours = graph_vectors(*vit_graph.build(weights, variant), pixels)
        # u8s8's pair sums saturate on x86 without int8 dot products (AVX2-only: ~0.95),
        # where the compile tries reduce_range first and its guard refuses u8s8
        if variant == variant_order(cpu)[0] or not cpu.saturating_int8:
            assert (ours * fp32).sum(axis=1).min() >= GUARD_MIN_COS, variant
        if variant == DEFAULT:  # the same kernels, saturating or not
            assert (ours * theirs).sum(axis=1).min() > 0.99999


def test_quantised_matrices_are_quantize_dynamics_symmetric_int8():
    w = np.random.default_rng(2).standard_normal((6, 5)).astype(np.float32)
    w[3] *= 10  # one row far larger: per-channel scales differ
    q, scale = vit_graph.quantise_matrix(w, DEFAULT)
    assert q.shape == (5, 6) and scale.shape == () and np.abs(q).max() == 127
    assert np.allclose(q.T * scale, w, atol=scale / 2 + 1e-7)
    q, scale = vit_graph.quantise_matrix(w, REDUCE_RANGE)
    assert scale.shape == (6,) and np.abs(q).max(axis=0).tolist() == [64] * 6
    assert np.allclose(q.T * scale[:, None], w, atol=scale.max() / 2 + 1e-7)


def test_towers_the_builder_does_not_know_are_refused():
    shapes = ClipEncoder.load(parse_model(f"local-dir:{SHAPES_TINY}"), precision="fp32",
                              towers=frozenset({"image"}))
    with pytest.raises(UnsupportedTower, match="ModifiedResNet"):
        vit_weights(shapes.loaded.model.visual, shapes.preprocess.hw)
    model = tiny_vit()
    with pytest.raises(UnsupportedTower, match="positional embedding"):
        vit_weights(model.visual, (64, 64))  # another input size than the positions'


def test_a_vit_compiles_from_the_built_graph_and_matches_torch(tmp_path):
    """The compile of a ViT: no torch exporter; int8 within the guard of torch's fp32; with
    a guard no int8 passes, the fp32 graph is written (weights beside it) and its vectors
    equal torch's within 1e-5."""
    bundle = write_bundle(tmp_path / "vit", seed=3)
    ref = parse_model(f"local-dir:{bundle}")
    torch_fp32 = ClipEncoder.load(ref, precision="fp32", towers=frozenset({"image"}))
    images = probe_images(6, seed=42)
    reference = torch_fp32.encode_images(images)
    compiled, _ = compile_model(ref, cache_dir=tmp_path / "int8", guard=-1.0)
    assert compiled.backend == ONNX
    assert not (compiled.folder / IMAGE_FP32).exists()  # written only when it is the tower
    int8 = compiled.image_encoder().encode_images(images)
    assert (int8 * reference).sum(axis=1).min() >= 0.99
    compiled, _ = compile_model(ref, cache_dir=tmp_path / "fp32", guard=1.01)
    # the best int8 tower is kept for --precision int8
    assert compiled.backend == ONNX_FP32 and (compiled.folder / IMAGE_INT8).is_file()
    assert (compiled.folder / (IMAGE_FP32 + ".data")).is_file()
    fp32 = compiled.image_encoder().encode_images(images)
    assert np.abs(fp32 - reference).max() < 1e-5


def test_a_built_graph_onnxruntime_refuses_is_recorded_and_torch_indexes(tmp_path, monkeypatch):
    """The builder's fault, not a passing one: recorded in compiled.json, torch used."""
    from clip_core.compiled import compiler
    from clip_core.compiled.cache import TORCH

    def refuse(self, probes):
        raise RuntimeError("[ONNXRuntimeError] : 10 : INVALID_GRAPH : a node it refuses")

    monkeypatch.setattr(compiler.Built, "fp32_vectors", refuse)
    ref = parse_model(f"local-dir:{write_bundle(tmp_path / 'vit', seed=4)}")
    compiled, _ = compile_model(ref, cache_dir=tmp_path / "cache")
    assert compiled.backend == TORCH and "INVALID_GRAPH" in compiled.meta["image"]["reason"]
    assert compiled.text_tower is not None  # queries are still torch-free
