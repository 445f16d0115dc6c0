"""The index pipeline's overlap of model loading and decoding, and encoder determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from clip_core.models.config import guess_preprocess
from clip_core.models.ref import parse_model
from clip_core.pixels.preprocess import same_preprocess
from clip_core.torch_backend.encoder import ClipEncoder
from clipsearch import Library
from indexer import run_index
from tests.helpers import draw_photos


@pytest.mark.parametrize("model,pretrained", [("shapes-tiny", None), ("ViT-B-32", "none")])
def test_preprocess_read_from_config_equals_the_loaded_models(model, pretrained):
    ref = parse_model(model, pretrained)
    loaded = ClipEncoder.load(ref, towers=frozenset({"image"}))
    assert same_preprocess(guess_preprocess(ref), loaded.preprocess)


def _vectors(lib: Library) -> dict[str, np.ndarray]:
    ids, vecs = lib.catalog.vectors(lib.default_model.model_id)
    rows = lib.catalog.file_rows(ids.tolist())
    return {rows[i]["path"]: v for i, v in zip(ids.tolist(), vecs, strict=True)}


def test_a_wrong_preprocess_hint_is_corrected(tmp_path):
    """Decoding starts with the hint; if the loaded model disagrees, work is redone."""
    draw_photos(tmp_path / "p", per_pair=1, seed=21)
    results = []
    for name, wrong in (("right", False), ("wrong", True)):
        with Library(tmp_path / name, model="shapes-tiny") as lib:
            root = lib.catalog.add_root(str(tmp_path / "p"))
            ref = lib.default_model
            hint = guess_preprocess(ref)
            if wrong:
                hint = dataclasses.replace(hint, size=(32, 32), interpolation="bilinear")
            report = run_index(lib.catalog, [root], ref.model_id,
                               lambda ref=ref, lib=lib: lib.encoder(ref, frozenset({"image"})),
                               preprocess_hint=hint)
            assert report.indexed == 24 and not report.skipped
            results.append(_vectors(lib))
    right, corrected = results
    assert right.keys() == corrected.keys()
    assert all(np.array_equal(right[p], corrected[p]) for p in right)


def test_vectors_do_not_depend_on_batch_composition():
    enc = ClipEncoder.load(parse_model("shapes-tiny"), towers=frozenset({"image"}))
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(21, 3, 64, 64)).astype(np.float32)
    whole = enc.encode_pixels(pixels)
    pieces = np.concatenate([enc.encode_pixels(pixels[i : i + 5]) for i in range(0, 21, 5)])
    alone = enc.encode_pixels(pixels[7:8])
    assert np.array_equal(whole, pieces) and np.array_equal(whole[7], alone[0])


class _Counting:
    """The real encoder with its calls counted and its own micro_batch: an ImageEncoder."""

    micro_batch = 4

    def __init__(self, real, calls: list[int]):
        self.real, self.calls = real, calls
        self.model_id, self.preprocess = real.model_id, real.preprocess
        self.embed_dim = real.embed_dim

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        self.calls.append(len(pixels))
        return self.real.encode_pixels(pixels)

    def close(self) -> None:
        self.real.close()


def test_without_a_hint_the_model_comes_first_and_sizes_the_encoder_calls(tmp_path):
    """No preprocessing hint: decoding waits for the model, and the model's micro_batch sizes
    the encoder calls as in a run with a hint (it used to be ignored on this path); the
    vectors are a hinted run's."""
    draw_photos(tmp_path / "p", per_pair=1, seed=22)
    results = []
    for name, hinted in (("hinted", True), ("no-hint", False)):
        with Library(tmp_path / name, model="shapes-tiny") as lib:
            root = lib.catalog.add_root(str(tmp_path / "p"))
            ref = lib.default_model
            encoder = _Counting(lib.encoder(ref, frozenset({"image"})), [])
            report = run_index(lib.catalog, [root], ref.model_id, lambda e=encoder: e,
                               preprocess_hint=guess_preprocess(ref) if hinted else None)
            assert report.indexed == 24 and not report.skipped, name
            assert encoder.calls == [4] * 6, (name, encoder.calls)
            results.append(_vectors(lib))
    hinted_vectors, plain = results
    assert hinted_vectors.keys() == plain.keys()
    assert all(np.array_equal(hinted_vectors[p], plain[p]) for p in plain)
