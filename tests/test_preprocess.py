"""clip_core.pixels.preprocess reproduces open_clip's eval transform without torch."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict

import numpy as np
import pytest
from PIL import Image

from clip_core.pixels.preprocess import (
    OPENAI_MEAN,
    OPENAI_STD,
    PreprocessSpec,
    preprocess,
    preprocess_batch,
)

open_clip_transform = pytest.importorskip("open_clip.transform")

SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
IMAGE_SIZES = [(640, 480), (480, 640), (224, 224), (225, 223), (301, 300), (100, 37),
               (37, 100), (1, 1), (2000, 50), (63, 64)]


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed + width * 7 + height)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def reference(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    cfg = open_clip_transform.PreprocessCfg(**spec.to_dict())
    return open_clip_transform.image_transform_v2(cfg, is_train=False)(image).numpy()


def assert_matches(image: Image.Image, spec: PreprocessSpec) -> None:
    try:
        want = reference(image, spec)
    except ValueError:  # open_clip itself fails (a 0-pixel side); ours must still work
        assert preprocess(image, spec).shape == (3, *spec.hw)
        return
    got = preprocess(image, spec)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", [224, 64])
@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_matches_open_clip_for_square_targets(size, resize_mode, interpolation):
    spec = PreprocessSpec(size, OPENAI_MEAN, OPENAI_STD, interpolation, resize_mode, 7)
    for width, height in IMAGE_SIZES:
        assert_matches(noise(width, height), spec)


@pytest.mark.parametrize("size", [(224, 320), (256, 192)])
@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
def test_matches_open_clip_for_rectangular_targets(size, resize_mode):
    # open_clip quirk reproduced: non-square 'shortest' resizes bicubic whatever is asked.
    spec = PreprocessSpec(size, SIGLIP_MEAN, SIGLIP_STD, "bilinear", resize_mode)
    for width, height in IMAGE_SIZES[:7]:
        assert_matches(noise(width, height), spec)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "1"])
def test_matches_open_clip_for_non_rgb_inputs(mode):
    # open_clip converts to RGB only after resizing and cropping; so do we.
    for resize_mode in ("shortest", "longest"):
        spec = PreprocessSpec(64, OPENAI_MEAN, OPENAI_STD, resize_mode=resize_mode)
        for width, height in [(100, 37), (40, 90), (64, 64)]:
            assert_matches(noise(width, height).convert(mode), spec)


def test_matches_a_photo_like_image_at_224():
    from tests.hostile_corpus import smooth_image

    spec = PreprocessSpec(224, OPENAI_MEAN, OPENAI_STD)
    assert_matches(smooth_image(1024, 768), spec)


def test_longest_pads_with_fill_colour():
    spec = PreprocessSpec(64, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), resize_mode="longest",
                          fill_color=255)
    out = preprocess(Image.new("RGB", (200, 50), (0, 0, 0)), spec)
    assert out.shape == (3, 64, 64)
    assert np.all(out[:, 0, :] == 1.0) and np.all(out[:, 32, :] == 0.0)  # pad rows white


def test_extreme_panorama_does_not_crash_where_open_clip_does():
    spec = PreprocessSpec(7, OPENAI_MEAN, OPENAI_STD, resize_mode="longest")
    assert preprocess(noise(2000, 50), spec).shape == (3, 7, 7)


def test_batch_equals_single_images():
    spec = PreprocessSpec((32, 48), OPENAI_MEAN, OPENAI_STD)
    images = [noise(90, 60, seed=i) for i in range(3)] + [noise(30, 70)]
    batch = preprocess_batch(images, spec)
    assert batch.shape == (4, 3, 32, 48) and batch.dtype == np.float32
    for row, image in zip(batch, images, strict=True):
        np.testing.assert_array_equal(row, preprocess(image, spec))
    assert preprocess_batch([], spec).shape == (0, 3, 32, 48)


def test_spec_from_open_clip_dict_and_object():
    cfg = asdict(open_clip_transform.PreprocessCfg(size=256, resize_mode="squash",
                                                   interpolation="bilinear"))
    spec = PreprocessSpec.from_open_clip(cfg)
    assert spec == PreprocessSpec(256, OPENAI_MEAN, OPENAI_STD, "bilinear", "squash")
    assert PreprocessSpec.from_open_clip(open_clip_transform.PreprocessCfg(size=256,
                                         resize_mode="squash", interpolation="bilinear")) == spec
    # open_clip_config.json style: lists, a (h, w) size, missing keys fall back like open_clip.
    loaded = json.loads('{"size": [384, 256], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}')
    spec = PreprocessSpec.from_open_clip(loaded)
    assert spec.size == (384, 256) and spec.hw == (384, 256) and spec.mean == (0.5, 0.5, 0.5)
    assert (spec.interpolation, spec.resize_mode, spec.fill_color) == ("bicubic", "shortest", 0)
    assert PreprocessSpec.from_open_clip({"size": 224, "mean": None, "std": None}).std == (
        OPENAI_STD)


def test_spec_round_trips_through_json():
    spec = PreprocessSpec((224, 320), SIGLIP_MEAN, SIGLIP_STD, "bilinear", "longest", 3)
    data = json.loads(json.dumps(spec.to_dict()))
    assert PreprocessSpec.from_open_clip(data) == spec
    assert data["size"] == [224, 320] and data["mode"] == "RGB"


def test_spec_normalises_and_validates():
    spec = PreprocessSpec([224], [0.5], 0.25)
    assert (spec.size, spec.mean, spec.std) == (224, (0.5,) * 3, (0.25,) * 3)
    assert hash(spec) == hash(PreprocessSpec(224, (0.5,) * 3, (0.25,) * 3))
    assert PreprocessSpec((224, 320), OPENAI_MEAN, OPENAI_STD).min_side == 320
    with pytest.raises(ValueError):
        PreprocessSpec(224, OPENAI_MEAN, OPENAI_STD, resize_mode="crop")
    with pytest.raises(ValueError):
        PreprocessSpec(224, OPENAI_MEAN, OPENAI_STD, interpolation="lanczos")
    with pytest.raises(ValueError):
        PreprocessSpec(224, OPENAI_MEAN, (0.1, 0.0, 0.1))
    with pytest.raises(ValueError):
        PreprocessSpec.from_open_clip({"mean": OPENAI_MEAN})
    with pytest.raises(ValueError):
        PreprocessSpec.from_open_clip({"size": 224, "mode": "L"})


def test_random_interpolation_means_bicubic_at_eval():
    spec = PreprocessSpec(64, OPENAI_MEAN, OPENAI_STD, interpolation="random")
    bicubic = PreprocessSpec(64, OPENAI_MEAN, OPENAI_STD)
    np.testing.assert_array_equal(preprocess(noise(90, 70), spec),
                                  preprocess(noise(90, 70), bicubic))
    assert_matches(noise(90, 70), spec)


def test_decoding_and_preprocessing_never_import_torch():
    code = ("import sys, clip_core.pixels.decode, clip_core.pixels.preprocess; "
            "bad = [m for m in ('torch', 'torchvision', 'open_clip') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
