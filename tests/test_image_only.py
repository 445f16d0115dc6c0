"""torch's image tower built alone (clip_core.torch_backend.image_only): the same vectors as
the whole model, without the text tower's memory; anything it does not cover is built whole."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clip_core.models.ref import parse_model
from clip_core.torch_backend.encoder import ClipEncoder
from clip_core.torch_backend.image_only import build_image_only
from tests.conftest import SHAPES_TINY
from tests.vit_bundles import tiny_vit, write_bundle

IMAGE = frozenset({"image"})


def _pixels(encoder: ClipEncoder, n: int = 5) -> np.ndarray:
    h, w = encoder.preprocess.hw
    return np.random.default_rng(3).standard_normal((n, 3, h, w)).astype(np.float32)


def _alone_and_whole(ref, precision: str = "fp32") -> tuple[ClipEncoder, ClipEncoder]:
    alone = ClipEncoder.load(ref, device="cpu", precision=precision, towers=IMAGE)
    whole = ClipEncoder.load(ref, device="cpu", precision=precision)
    return alone, whole


def _text_free(model) -> bool:
    """Nothing of the text side is left: every parameter belongs to the image tower."""
    return sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in model.visual.parameters())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_shapes_tiny_image_tower_alone_gives_the_whole_models_vectors(precision):
    alone, whole = _alone_and_whole(parse_model(str(SHAPES_TINY)), precision)
    assert _text_free(alone.loaded.model) and not _text_free(whole.loaded.model)
    assert alone.preprocess == whole.preprocess and alone.embed_dim == whole.embed_dim
    pixels = _pixels(alone)
    np.testing.assert_array_equal(alone.encode_pixels(pixels), whole.encode_pixels(pixels))


def test_random_vit_b_32_image_tower_alone_draws_the_same_weights():
    """`--pretrained none`: the tower alone read from the numpy-made weights file
    (clip_core.models.random_weights) gives the whole model's vectors."""
    alone, whole = _alone_and_whole(parse_model("ViT-B-32", "none"))
    assert _text_free(alone.loaded.model)
    pixels = _pixels(alone, 3)
    np.testing.assert_array_equal(alone.encode_pixels(pixels), whole.encode_pixels(pixels))


def test_a_torch_checkpoint_is_read_for_its_image_tower_too(tmp_path):
    """open_clip_pytorch_model.bin (torch's zip format, mapped) as well as safetensors."""
    folder = tmp_path / "bin-bundle"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(
        (write_bundle(tmp_path / "st", seed=4) / "open_clip_config.json").read_text())
    torch.save({"state_dict": tiny_vit(seed=4).state_dict()},
               folder / "open_clip_pytorch_model.bin")
    alone, whole = _alone_and_whole(parse_model(str(folder)))
    assert _text_free(alone.loaded.model)
    pixels = _pixels(alone)
    np.testing.assert_array_equal(alone.encode_pixels(pixels), whole.encode_pixels(pixels))
    st = ClipEncoder.load(parse_model(str(tmp_path / "st")), device="cpu", precision="fp32",
                          towers=IMAGE)
    np.testing.assert_array_equal(st.encode_pixels(pixels), alone.encode_pixels(pixels))


def test_a_file_whose_image_tower_differs_is_left_to_the_whole_model(tmp_path):
    """A missing tensor (or another shape) is not guessed at: None, and load_model then
    builds the whole model, which says what is wrong as before."""
    import open_clip
    from safetensors.torch import load_file, save_file

    folder = write_bundle(tmp_path / "b", seed=5)
    weights = folder / "open_clip_model.safetensors"
    state = load_file(str(weights))
    state.pop("visual.ln_post.weight")
    save_file(state, str(weights))
    assert build_image_only(open_clip, f"local-dir:{folder}", None, None, "fp32",
                            "cpu") is None
    with pytest.raises(Exception, match=r"Error\(s\) in loading state_dict"):
        ClipEncoder.load(parse_model(str(folder)), device="cpu", precision="fp32",
                         towers=IMAGE)


def test_an_index_on_torch_caches_the_text_tower_from_the_file_and_queries_work(tmp_path):
    """The torch index path writes the text tower from the weights file (no whole model
    built) and loads only the image tower; queries then rank with that cached tower."""
    from clipsearch import Library
    from tests.helpers import draw_photos

    draw_photos(tmp_path / "photos", per_pair=1)
    with Library(tmp_path / "lib", model=str(SHAPES_TINY), precision="fp32",
                 device="cpu") as lib:
        lib.add_root(tmp_path / "photos")
        lib.index()
        kept = [towers for (_, towers) in lib._encoders]
        assert kept == [IMAGE]  # the whole model was never built
        hits = lib.query("a red circle", limit=3)
    assert len(hits) == 3
    from safetensors.numpy import load_file

    from clip_core.torch_backend.text_export import export_text_tower
    from search.text_embedder import tower_path

    whole = ClipEncoder.load(parse_model(str(SHAPES_TINY)), device="cpu", precision="fp32")
    export_text_tower(whole.loaded.model, tmp_path / "torch.text.safetensors",
                      tokenizer=whole.loaded.tokenizer)
    mine = load_file(str(tower_path(tmp_path / "lib" / "text-towers", whole.model_id)))
    theirs = load_file(str(tmp_path / "torch.text.safetensors"))
    assert mine.keys() == theirs.keys()
    for name, array in theirs.items():  # the same tower the whole model would have cached
        np.testing.assert_array_equal(mine[name], array)


def test_loading_on_the_cpu_leaves_triton_out_of_the_process(tmp_path):
    """triton serves GPU kernels only; torch._dynamo (under open_clip's torchvision) maps it
    (85 MB) unless it is hidden while open_clip loads. Hidden only then: importable after."""
    import subprocess
    import sys

    from tests.reliability_support import subprocess_env

    code = ("import sys; from clip_core.models.ref import parse_model; "
            "from clip_core.torch_backend.encoder import ClipEncoder; "
            f"ClipEncoder.load(parse_model({str(SHAPES_TINY)!r}), device='cpu', "
            "precision='fp32', towers=frozenset({'image'})); "
            "print('triton' in sys.modules, sys.modules.get('triton', 0) is None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=subprocess_env(tmp_path)).stdout.split()
    assert out == ["False", "False"]


def test_bf16_vit_with_layer_scale_encodes_within_the_guard_of_fp32(tmp_path):
    """open_clip's bf16 cast leaves LayerScale's gamma fp32 (QuickGELU, average pooling, no
    pre-norm besides): the next Linear raised a dtype error. Now bf16 runs, alone or whole,
    with the same vectors, within the guard of fp32."""
    from clip_core.encoders import GUARD_MIN_COS
    from tests.vit_bundles import VISION_KINDS

    bundle = write_bundle(tmp_path / "ls", seed=6, quick_gelu=True,
                          **VISION_KINDS["quickgelu-avg-layerscale"])
    ref = parse_model(str(bundle))
    alone, whole = _alone_and_whole(ref, "bf16")
    fp32 = ClipEncoder.load(ref, device="cpu", precision="fp32", towers=IMAGE)
    pixels = _pixels(alone)
    bf16 = alone.encode_pixels(pixels)
    np.testing.assert_array_equal(bf16, whole.encode_pixels(pixels))
    assert (bf16 * fp32.encode_pixels(pixels)).sum(axis=1).min() >= GUARD_MIN_COS
