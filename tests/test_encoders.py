"""The image encoder contract (clip_core.encoders.ImageEncoder): the torch encoder and the
compiled onnxruntime encoder answer the same calls the same way, so the indexer, the Ray
workers and `Library` never ask which one they were handed."""

from __future__ import annotations

import numpy as np
import pytest

from clip_core.compiled.compiler import compile_model
from clip_core.cpu import CpuFeatures
from clip_core.encoders import ImageEncoder
from clip_core.models.ref import parse_model
from clip_core.pixels.preprocess import preprocess_batch, same_preprocess
from clip_core.pixels.probes import probe_images
from clip_core.torch_backend.encoder import ClipEncoder

# With int8 dot products the compile does not time torch: its choice is an onnxruntime tower
# (int8 or fp32) on every CPU, which is what this test needs, not what this CPU prefers.
VNNI = CpuFeatures("x86_64", frozenset({"sse4_2", "avx", "avx2", "fma", "avx512f",
                                        "avx512_vnni"}))


@pytest.fixture(scope="module")
def encoders(tmp_path_factory) -> dict[str, ImageEncoder]:
    ref = parse_model("shapes-tiny")
    compiled, _ = compile_model(ref, cache_dir=tmp_path_factory.mktemp("cache"), cpu=VNNI)
    found = {"torch": ClipEncoder.load(ref, precision="fp32", towers=frozenset({"image"})),
             "compiled": compiled.image_encoder()}
    yield found
    for enc in found.values():
        enc.close()


def test_both_encoders_are_image_encoders(encoders):
    assert type(encoders["compiled"]).__name__ == "OnnxImageEncoder"
    for enc in encoders.values():
        assert isinstance(enc, ImageEncoder), type(enc).__name__

    class NoClose:  # the check is real: one missing member and it is no ImageEncoder
        model_id, preprocess, embed_dim, micro_batch = "m", None, 8, 16

        def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
            return pixels

    assert not isinstance(NoClose(), ImageEncoder)


def test_the_same_calls_give_the_same_answers(encoders):
    """What every caller relies on, asked of both: the model's id, preprocessing and width;
    unit float32 vectors, one per image, independent of the images beside it in a call
    (a call longer than micro_batch, and its first images alone); the same vectors, up to
    the compiled tower's rounding."""
    torch_enc, compiled = encoders["torch"], encoders["compiled"]
    assert compiled.model_id == torch_enc.model_id == parse_model("shapes-tiny").model_id
    assert same_preprocess(compiled.preprocess, torch_enc.preprocess)
    assert compiled.embed_dim == torch_enc.embed_dim > 0
    vectors = {}
    for name, enc in encoders.items():
        assert isinstance(enc.micro_batch, int) and enc.micro_batch >= 1, name
        count = enc.micro_batch + 3  # one full micro-batch and a short one
        pixels = preprocess_batch(probe_images(count, seed=7), enc.preprocess)
        out = enc.encode_pixels(pixels)
        assert out.shape == (count, enc.embed_dim) and out.dtype == np.float32, name
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(enc.encode_pixels(pixels[:3]), out[:3], atol=1e-6)
        vectors[name] = out
    shared = min(len(v) for v in vectors.values())
    cosines = np.sum(vectors["torch"][:shared] * vectors["compiled"][:shared], axis=1)
    assert cosines.min() >= 0.99, cosines  # the compile kept it within 0.999 on its probes
