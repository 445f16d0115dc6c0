"""Speed levers must not change results: bf16 vs fp32, the worker pipeline vs one-by-one."""

from __future__ import annotations

import numpy as np
import pytest

from clip_core.cpu import cpu_has_fast_bf16
from clip_core.models.ref import parse_model
from clip_core.pixels.decode import decode_image
from clip_core.pixels.preprocess import preprocess
from clip_core.torch_backend.encoder import ClipEncoder
from clipsearch import Library
from clipsearch.shapes import write_corpus
from tests.helpers import (
    PAIRS,
    assert_only_near_ties_swap,
    draw_photos,
    pair_of,
    ranking_changes,
    shape_rankings,
)


def _library_vectors(lib: Library) -> dict[str, np.ndarray]:
    ids, vecs = lib.catalog.vectors(lib.default_model.model_id)
    rows = lib.catalog.file_rows(ids.tolist())
    return {rows[i]["path"]: v for i, v in zip(ids.tolist(), vecs, strict=True)}


def test_pipeline_vectors_equal_one_by_one_encoding(tmp_path):
    """Threads, prefetch, micro-batches and draft decoding give each file the vector that
    decoding and encoding it alone gives."""
    photos = tmp_path / "p"
    draw_photos(photos, per_pair=2, seed=31, size=(200, 150))
    with Library(tmp_path / "lib", model="shapes-tiny") as lib:
        lib.index([photos])
        got = _library_vectors(lib)
        enc = lib.encoder(lib.default_model, frozenset({"image"}))
        size = enc.preprocess.min_side
        for path, vector in got.items():
            alone = enc.encode_pixels(preprocess(decode_image(path, min_side=size).image,
                                                 enc.preprocess)[None])[0]
            assert np.array_equal(vector, alone), path
    assert len(got) == 2 * len(PAIRS)


@pytest.mark.skipif(not cpu_has_fast_bf16(), reason="no bf16 on this CPU: fp32 is used")
def test_bf16_rankings_equal_fp32_with_the_tiny_model(tmp_path):
    photos = tmp_path / "p"
    draw_photos(photos, per_pair=2, seed=32)
    rankings = {}
    for precision in ("fp32", "bf16"):
        with Library(tmp_path / precision, model="shapes-tiny", precision=precision) as lib:
            lib.index([photos])
            rankings[precision] = shape_rankings(lib)
    # The same top ten, position by position, except where two pictures tie in fp32
    # within 0.006 (bf16 moves embeddings by cos ~2e-5, scores by up to ~0.005).
    assert_only_near_ties_swap(rankings["fp32"], rankings["bf16"])  # a few ties, no more


@pytest.mark.skipif(not cpu_has_fast_bf16(), reason="no bf16 on this CPU: fp32 is used")
def test_bf16_vit_b32_embeddings_stay_within_cosine_0999_of_fp32():
    ref = parse_model("ViT-B-32", "none")
    pixels = np.random.default_rng(3).normal(size=(8, 3, 224, 224)).astype(np.float32)
    fp32 = ClipEncoder.load(ref, precision="fp32", towers=frozenset({"image"}))
    bf16 = ClipEncoder.load(ref, precision="bf16", towers=frozenset({"image"}))
    cos = np.sum(fp32.encode_pixels(pixels) * bf16.encode_pixels(pixels), axis=1)
    assert cos.min() >= 0.999, cos


def test_draft_decoding_keeps_the_tiny_models_rankings(tmp_path):
    """JPEGs 8x larger than the model input decode at reduced size (DCT scaling): the
    rankings must be those of full-size decoding (up to near-ties, as for bf16)."""
    from indexer import IndexSettings

    photos = tmp_path / "p"
    write_corpus(photos, per_pair=2, seed=38, size=(640, 480), fmt="jpg")
    rankings, vectors = {}, {}
    for draft in (False, True):
        with Library(tmp_path / f"draft-{draft}", model="shapes-tiny") as lib:
            lib.index([photos], settings=IndexSettings(draft=draft))
            vectors[draft] = _library_vectors(lib)
            rankings[draft] = shape_rankings(lib)
    cos = [float(vectors[True][p] @ vectors[False][p]) for p in vectors[False]]
    print(f"\ndraft vs full decoding, tiny model: cosine min {min(cos):.5f}")
    assert min(cos) > 0.99
    for query, full in rankings[False].items():
        draft = rankings[True][query]
        # The two true matches lead in both (their order may flip: near-identical pictures).
        assert {r.path for r in draft[:2]} == {r.path for r in full[:2]}, query
        assert all(pair_of(r.path) == tuple(query.split()) for r in draft[:2])
    # Below them the wrong pictures crowd within a few hundredths: swaps only between
    # near-ties (draft moves vectors by cos ~3e-4, scores by up to ~0.02).
    swaps, worst = ranking_changes(rankings[False], rankings[True])
    print(f"swapped positions in the top 10: {swaps} of {10 * len(PAIRS)}; "
          f"largest score gap of a swap {worst:.4f}")
    assert worst < 0.03 and swaps <= 2 * len(PAIRS)
