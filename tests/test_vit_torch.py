"""The ViT image tower on torch without open_clip (clip_core.compiled.vit_torch): open_clip's
vectors exactly, fp32 and bf16, for every ViT kind the graph builder reads; other models are
left to open_clip; an index process on it never imports open_clip or torchvision."""

from __future__ import annotations

import numpy as np
import pytest

from clip_core.compiled.vit_torch import image_encoder
from clip_core.models.ref import parse_model
from clip_core.torch_backend.encoder import ClipEncoder
from tests.conftest import SHAPES_TINY
from tests.vit_bundles import VISION_KINDS, write_bundle

IMAGE = frozenset({"image"})


def _pixels(encoder, n: int = 5) -> np.ndarray:
    h, w = encoder.preprocess.hw
    return np.random.default_rng(7).standard_normal((n, 3, h, w)).astype(np.float32)


def _pair(ref, precision: str) -> tuple[ClipEncoder, ClipEncoder]:
    ours = image_encoder(ref, device="cpu", precision=precision)
    theirs = ClipEncoder.load(ref, device="cpu", precision=precision, towers=IMAGE)
    return ours, theirs


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("kind", VISION_KINDS)
def test_tiny_vits_give_open_clips_vectors(tmp_path, kind, precision):
    bundle = write_bundle(tmp_path / kind, seed=8, quick_gelu=kind.startswith("quickgelu"),
                          **VISION_KINDS[kind])
    ours, theirs = _pair(parse_model(str(bundle)), precision)
    assert "open_clip" not in type(ours.loaded.model).__module__
    assert type(ours.loaded.model).__module__ == "clip_core.compiled.vit_torch"
    assert ours.preprocess == theirs.preprocess and ours.embed_dim == theirs.embed_dim
    pixels = _pixels(ours)
    np.testing.assert_array_equal(ours.encode_pixels(pixels), theirs.encode_pixels(pixels))


def test_other_models_are_left_to_open_clip():
    """shapes-tiny is a ResNet tower: open_clip's model, as before."""
    enc = image_encoder(parse_model(str(SHAPES_TINY)), device="cpu", precision="fp32")
    assert type(enc.loaded.model).__module__.startswith("open_clip")


@pytest.mark.slow
def test_random_vit_b_32_weights_file_gives_open_clips_vectors(tmp_path):
    """The benchmark's stand-in for a user's model file, fp32 and bf16."""
    from bench.weights_file import main as write_weights

    weights = tmp_path / "ViT-B-32.safetensors"
    write_weights(weights)
    ref = parse_model("ViT-B-32", str(weights))
    for precision in ("fp32", "bf16"):
        ours, theirs = _pair(ref, precision)
        assert type(ours.loaded.model).__module__ == "clip_core.compiled.vit_torch"
        # Batches of 3, not 16 padded: bf16 without native kernels (AVX2) took ~10 s a model.
        ours.micro_batch = theirs.micro_batch = 3
        pixels = _pixels(ours, 3)
        np.testing.assert_array_equal(ours.encode_pixels(pixels),
                                      theirs.encode_pixels(pixels))


@pytest.mark.slow
def test_an_index_run_on_torch_imports_neither_open_clip_nor_torchvision(tmp_path):
    """The point of it: `--precision fp32` indexes a plain ViT's file with torch alone."""
    import subprocess
    import sys

    from tests.helpers import draw_photos
    from tests.reliability_support import subprocess_env

    bundle = write_bundle(tmp_path / "vit", seed=9)
    draw_photos(tmp_path / "photos", per_pair=1)
    code = ("import sys; from clipsearch import Library\n"
            f"with Library({str(tmp_path / 'lib')!r}, model={str(bundle)!r}, "
            "precision='fp32', device='cpu') as lib:\n"
            f"    lib.add_root({str(tmp_path / 'photos')!r}); report = lib.index()\n"
            "    print(report.indexed, len(lib.query('a red circle', limit=3)))\n"
            "print(sorted(m for m in ('open_clip', 'torchvision', 'timm', 'torch._dynamo')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=subprocess_env(tmp_path)).stdout.splitlines()
    indexed, hits = out[0].split()
    assert int(indexed) > 0 and hits == "3" and out[1] == "[]"
