"""`--pretrained none` made in numpy (clip_core.models.random_weights): open_clip's own init,
tensor by tensor, written once as a weights file that every path (the torch-free compile,
torch's image tower and whole model) loads, so all give the same vectors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from clip_core.models import random_weights
from clip_core.models.open_clip_tables import architecture_configs
from clip_core.models.plain_clip import is_plain
from clip_core.models.ref import parse_model
from clip_core.models.sources import LoadPlan, source_for
from tests.reliability_support import subprocess_env
from tests.vit_bundles import TINY_TEXT, VISION_KINDS


def _tiny_cfg(kind: str) -> dict:
    return {"embed_dim": 32, "quick_gelu": kind.startswith("quickgelu"), "vision_cfg": {
        "image_size": 48, "patch_size": 16, "width": 64, "layers": 2, "head_width": 32,
        "mlp_ratio": 4.0, **VISION_KINDS[kind]}, "text_cfg": TINY_TEXT}


def _ours(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    return {t.name: np.concatenate(list(random_weights.values(t, seed))
                                   or [np.zeros(0, np.float32)]).reshape(t.shape)
            for t in random_weights.layout(cfg)}


def _assert_like_open_clip(ours: dict[str, np.ndarray], theirs: dict) -> None:
    """Same names, shapes and dtype; constants equal; random tensors the same mean, std and
    shape of distribution (kurtosis: uniform 1.8, normal 3.0) within sampling error."""
    assert set(ours) == set(theirs)
    def kurtosis(x: np.ndarray) -> float:
        x = x.reshape(-1)[:1 << 20].astype(np.float64)  # a million values tell it apart
        squares = np.square(x - x.mean())  # squared twice: `** 4` is a slow pow() call
        return float(np.square(squares).mean() / x.var() ** 2)

    for name, mine in ours.items():
        ref = theirs[name].detach().float().numpy()
        assert mine.shape == ref.shape and mine.dtype == np.float32, name
        sd = float(ref.std(dtype=np.float64))
        if ref.size < 2 or sd == 0:
            np.testing.assert_array_equal(mine, ref, err_msg=name)
            continue
        n, mean = mine.size, float(mine.mean(dtype=np.float64))
        assert abs(mean - float(ref.mean(dtype=np.float64))) < 6 * sd * (2 / n) ** 0.5, name
        assert abs(float(mine.std(dtype=np.float64)) / sd - 1) < 6 / n ** 0.5, name
        if n >= 4096:
            assert abs(kurtosis(mine) - kurtosis(ref)) < 0.4, name


@pytest.mark.parametrize("kind", VISION_KINDS)
def test_numpy_init_follows_open_clips_init_on_the_tiny_configs(kind):
    import open_clip
    import torch

    cfg = _tiny_cfg(kind)
    torch.manual_seed(0)
    model = open_clip.model.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"],
                                 quick_gelu=cfg["quick_gelu"])
    _assert_like_open_clip(_ours(cfg), model.state_dict())


def test_numpy_init_follows_open_clips_init_on_vit_b_32():
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    _assert_like_open_clip(_ours(architecture_configs()["ViT-B-32"]), model.state_dict())


def test_every_plain_architecture_has_open_clips_names_and_shapes():
    """Every architecture made in numpy, against open_clip's model built on the meta device
    (no memory): the torch loader's strict load_state_dict needs exactly these."""
    import open_clip
    import torch

    configs = architecture_configs()
    plain = [name for name, cfg in configs.items() if is_plain(cfg)]
    assert "ViT-B-32" in plain and "RN50" not in plain
    for name in plain:
        with torch.device("meta"):
            model = open_clip.create_model(name, pretrained=None, device="meta")
        theirs = {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items()}
        ours = {t.name: (t.shape, torch.float32) for t in random_weights.layout(configs[name])}
        assert ours == theirs, name


def test_same_seed_same_bytes_and_another_seed_other_values(tmp_path, monkeypatch):
    monkeypatch.setattr(random_weights, "_CHUNK", 1000)  # many chunks per tensor
    tensors = random_weights.layout(_tiny_cfg("gelu-tok"))
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        random_weights.write_file(tensors, seed, tmp_path / f"{name}.safetensors")
    a, b, c = ((tmp_path / f"{n}.safetensors").read_bytes() for n in "abc")
    assert a == b and a != c and len(a) == len(c)
    from safetensors.numpy import load_file  # the package reads our writer's file

    loaded = load_file(str(tmp_path / "a.safetensors"))
    ours = _ours(_tiny_cfg("gelu-tok"))
    assert loaded.keys() == ours.keys()
    for name, array in ours.items():
        np.testing.assert_array_equal(loaded[name], array, err_msg=name)


def test_plain_architectures_load_a_file_the_rest_torch_s_seeded_model(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(random_weights, "write_file",
                        lambda tensors, seed, path, note="": path.parent.mkdir(parents=True)
                        or path.write_bytes(b"stand-in"))  # the writer is tested above
    models = tmp_path / "models"
    plan = source_for(parse_model("ViT-B-32", "none"), models).load_plan()
    assert isinstance(plan, LoadPlan) and plan.seed is None
    assert plan.pretrained == str(random_weights.cache_dir() / random_weights.file_name("ViT-B-32"))
    for name in ("RN50", "ViT-B-16-SigLIP", "coca_ViT-B-32"):  # torch's seeded model
        source = source_for(parse_model(name, "none"), models)
        assert source.load_plan() == LoadPlan(name, seed=0) and source.made_weights() is None
    # The compiled model's stamp: the recipe's name, not the file's stat.
    assert source_for(parse_model("ViT-B-32", "none"), models).made_weights() == \
        random_weights.file_name("ViT-B-32")
    assert random_weights.file_name("ViT-B-32") != random_weights.file_name("ViT-B-32", 1)


@pytest.mark.slow
def test_none_compiles_without_torch_and_every_path_gives_the_same_vectors(tmp_path,
                                                                          monkeypatch):
    """The compile of random ViT-B-32 reads the numpy-made file in a child that never imports
    torch; torch's fp32 model loaded from the same file agrees with the compiled towers:
    image vectors within the guard (int8) or 1e-5 (fp32 graph), text vectors within 1e-5 of
    torch's."""
    from clip_core.compiled.cache import find_compiled
    from clip_core.encoders import GUARD_MIN_COS
    from clip_core.pixels.probes import probe_images
    from clip_core.text.tokenizer import ClipTokenizer
    from clip_core.text.tower import NumpyTextTower
    from clip_core.torch_backend.encoder import ClipEncoder

    cache = tmp_path / "cache"
    env = {**subprocess_env(tmp_path), "CLIPSEARCH_CACHE": str(cache)}
    script = ("import sys, json; from clip_core.compiled.compiler import compile_model; "
              "from clip_core.models.ref import parse_model; "
              "c, _ = compile_model(parse_model('ViT-B-32', 'none')); "
              "print(json.dumps([c.backend, c.meta['loaded_from'], "
              "'torch' in sys.modules, 'open_clip' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    backend, loaded_from, torch_imported, open_clip_imported = json.loads(
        out.stdout.splitlines()[-1])
    assert loaded_from == "weights file, without torch"
    assert not torch_imported and not open_clip_imported

    monkeypatch.setenv("CLIPSEARCH_CACHE", str(cache))  # this process finds the child's file
    from bench.weights_file import main as bench_weights_file

    bench_weights_file(tmp_path / "bench.safetensors")  # the bench's file: the same bytes
    assert (tmp_path / "bench.safetensors").read_bytes() == (
        random_weights.cache_dir() / random_weights.file_name("ViT-B-32")).read_bytes()
    (tmp_path / "bench.safetensors").unlink()
    ref = parse_model("ViT-B-32", "none")
    compiled = find_compiled(ref, cache_dir=cache / "compiled")
    assert compiled is not None and compiled.backend == backend
    images = probe_images(6, seed=77)
    # the whole model (its image tower loaded alone gives the same vectors: test_image_only)
    whole = ClipEncoder.load(ref, precision="fp32")
    reference = whole.encode_images(images)
    for int8 in (True, False):
        cos = (compiled.image_encoder(int8=int8).encode_images(images) * reference).sum(1)
        assert cos.min() >= GUARD_MIN_COS, (int8, cos)
    texts = ["a photo of a dog", "a red car on a bridge", "x"]
    tower = NumpyTextTower.load(compiled.text_tower, release_pages=False)
    ours = tower.encode_tokens(ClipTokenizer()(texts))
    assert np.abs(ours - whole.encode_texts(texts)).max() < 1e-5


def test_an_unwritable_cache_is_one_clear_message(tmp_path, monkeypatch):
    """No silent switch to torch's other random weights: the vectors would not match."""
    from clip_core.models.files import ModelLoadError
    from clip_core.torch_backend.loading import load_model

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("CLIPSEARCH_CACHE", str(blocker))
    with pytest.raises(ModelLoadError, match="Could not write the random weights of ViT-B-32"):
        load_model(parse_model("ViT-B-32", "none"), models_dir=tmp_path / "models")
