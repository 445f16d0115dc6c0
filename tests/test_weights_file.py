"""The compile of a plain ViT read from its safetensors file, without torch
(clip_core.compiled.weights_file): the same image tower and text tower as open_clip's model
built from that file; anything it does not know is left to torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from clip_core.compiled import vit_graph
from clip_core.compiled.cache import ONNX_FP32
from clip_core.compiled.compiler import compile_model
from clip_core.compiled.weights_file import open_weights_file, write_text_tower
from clip_core.encoders import l2_normalise
from clip_core.models.ref import parse_model
from clip_core.pixels.preprocess import preprocess_batch
from clip_core.pixels.probes import probe_images
from clip_core.text.tower import NumpyTextTower
from clip_core.torch_backend.encoder import ClipEncoder
from clip_core.torch_backend.text_export import export_text_tower
from tests.conftest import SHAPES_TINY
from tests.reliability_support import subprocess_env
from tests.vit_bundles import VISION_KINDS, write_bundle


@pytest.mark.parametrize("kind", VISION_KINDS)
def test_the_model_read_from_its_file_equals_open_clips(tmp_path, kind):
    """The image graph built from the file within 1e-5 of torch's fp32 forward of the model
    open_clip builds from the same file; the text tower file the same tensors and header
    torch's export writes."""
    bundle = write_bundle(tmp_path / "vit", seed=7, quick_gelu=kind.startswith("quickgelu"),
                          **VISION_KINDS[kind])
    ref = parse_model(f"local-dir:{bundle}")
    source = open_weights_file(ref)
    torch_fp32 = ClipEncoder.load(ref, precision="fp32")
    assert source.preprocess == torch_fp32.preprocess
    assert source.embed_dim == torch_fp32.embed_dim
    pixels = preprocess_batch(probe_images(5, seed=11), source.preprocess)
    session = vit_graph.session(*vit_graph.build(source.vision))
    ours = l2_normalise(np.concatenate([session.run(None, {vit_graph.INPUT: p[None]})[0]
                                        for p in pixels]))
    assert np.abs(ours - torch_fp32.encode_pixels(pixels)).max() < 1e-5
    write_text_tower(source, tmp_path / "file.text.safetensors")
    export_text_tower(torch_fp32.loaded.model, tmp_path / "torch.text.safetensors",
                      tokenizer=torch_fp32.loaded.tokenizer)
    theirs = NumpyTextTower.load(tmp_path / "torch.text.safetensors", release_pages=False)
    mine = NumpyTextTower.load(tmp_path / "file.text.safetensors", release_pages=False)
    assert mine.header == dict(theirs.header,
                               logit_scale=pytest.approx(theirs.header["logit_scale"]))
    tokens = np.zeros((2, 16), np.int64)
    tokens[:, 0], tokens[0, 3], tokens[1, 7] = 49406, 49407, 49407
    tokens[0, 1:3], tokens[1, 1:7] = [320, 1125], [320, 1125, 539, 320, 2368, 530]
    assert np.array_equal(mine.encode_tokens(tokens), theirs.encode_tokens(tokens))


def test_a_compile_from_the_weights_file_keeps_fp32_equal_to_torch(tmp_path):
    """No int8 passes (a guard none can): the fp32 graph written from the file is the tower,
    within 1e-5 of torch's fp32 on images the compile did not see."""
    ref = parse_model(f"local-dir:{write_bundle(tmp_path / 'vit', seed=6)}")
    compiled, _ = compile_model(ref, cache_dir=tmp_path / "cache", guard=1.01)
    assert compiled.meta["loaded_from"] == "weights file, without torch"
    assert compiled.backend == ONNX_FP32 and compiled.text_tower is not None
    images = probe_images(5, seed=12)
    reference = ClipEncoder.load(ref, precision="fp32").encode_images(images)
    assert np.abs(compiled.image_encoder().encode_images(images) - reference).max() < 1e-5


def test_the_compile_from_a_weights_file_imports_no_torch(tmp_path):
    bundle = write_bundle(tmp_path / "vit", seed=8)
    script = ("import sys, json; from pathlib import Path; "
              "from clip_core.compiled.compiler import compile_model; "
              "from clip_core.models.ref import parse_model; "
              f"c, _ = compile_model(parse_model('local-dir:{bundle}'), "
              f"cache_dir=Path('{tmp_path / 'cache'}')); "
              "print(json.dumps([c.backend, 'torch' in sys.modules, "
              "'open_clip' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", script], env=subprocess_env(tmp_path),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    backend, torch_imported, open_clip_imported = json.loads(out.stdout.splitlines()[-1])
    assert backend.startswith("onnx-") and not torch_imported and not open_clip_imported


def test_models_the_reader_does_not_know_are_left_to_torch(tmp_path):
    assert open_weights_file(parse_model(f"local-dir:{SHAPES_TINY}")) is None  # a ResNet
    assert open_weights_file(parse_model("RN50", "none")) is None  # torch's seeded ResNet
    bundle = write_bundle(tmp_path / "vit", seed=9)
    assert open_weights_file(parse_model(f"local-dir:{bundle}")) is not None
    for name, change in (("unknown-key", lambda c: c["vision_cfg"].update(norm_kwargs={})),
                         ("hf-tokenizer", lambda c: c["text_cfg"].update(
                             hf_tokenizer_name="bert-base-uncased")),
                         ("attn-pool", lambda c: c["vision_cfg"].update(
                             attentional_pool=True))):
        other = shutil.copytree(bundle, tmp_path / name)
        config = json.loads((other / "open_clip_config.json").read_text())
        change(config["model_cfg"])
        (other / "open_clip_config.json").write_text(json.dumps(config))
        assert open_weights_file(parse_model(f"local-dir:{other}")) is None, name
    pickled = shutil.copytree(bundle, tmp_path / "pickled")  # .bin: torch.load reads it
    (pickled / "open_clip_model.safetensors").rename(pickled / "open_clip_pytorch_model.bin")
    assert open_weights_file(parse_model(f"local-dir:{pickled}")) is None
    cut = shutil.copytree(bundle, tmp_path / "cut")  # a tensor missing: torch says why
    weights = cut / "open_clip_model.safetensors"
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(weights))
    del tensors["visual.ln_post.bias"]
    save_file(tensors, str(weights))
    assert open_weights_file(parse_model(f"local-dir:{cut}")) is None
