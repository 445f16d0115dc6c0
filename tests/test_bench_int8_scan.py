"""bench.int8_scan's error bound, checked against int8 block arithmetic done exactly in numpy
(what MatMulNBits computes where it does not saturate), so it holds on any CPU."""

from __future__ import annotations

import numpy as np
import pytest

from bench.int8_scan import (
    BLOCK,
    code_rounding_bound,
    decoded_l1,
    quantise,
    query_rounding_bound,
    score_bounds,
)


def int8_scores(codes: np.ndarray, scales: np.ndarray, query: np.ndarray) -> np.ndarray:
    q_blocks = query.reshape(-1, BLOCK)
    q_scales = np.abs(q_blocks).max(axis=1) / 127.0
    q_codes = np.round(q_blocks / q_scales[:, None]).astype(np.int64)
    dots = np.einsum("nbk,bk->nb", codes.astype(np.int64) - 128, q_codes)  # exact integers
    return (dots * scales * q_scales).sum(axis=1)


def vectors_and_query(outliers: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((2000, 512))
    query = rng.standard_normal(512) + 0.5 * vectors[7]
    if outliers:  # CLIP's few large dimensions
        vectors[:, [5, 300]] *= 25
        query[[5, 300]] *= 25
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, query / np.linalg.norm(query)


@pytest.mark.parametrize("outliers", [False, True])
def test_every_int8_score_is_within_its_bound(outliers):
    vectors, query = vectors_and_query(outliers)
    codes, scales = quantise(vectors.astype(np.float32))
    errors = np.abs(int8_scores(codes, scales, query) - vectors @ query)
    bounds = score_bounds(scales, decoded_l1(codes, scales), query)
    assert (errors <= bounds).all()
    assert errors.max() > bounds.max() / 50  # the bound is not vacuous for this data


@pytest.mark.parametrize("outliers", [False, True])
def test_each_rounding_has_its_own_bound(outliers):
    vectors, query = vectors_and_query(outliers)
    codes, scales = quantise(vectors.astype(np.float32))
    decoded = ((codes.astype(np.float64) - 128) * scales[..., None]).reshape(vectors.shape)
    code_error = np.abs(decoded @ query - vectors @ query)
    assert (code_error <= code_rounding_bound(scales, query) + 1e-9).all()
    query_error = np.abs(int8_scores(codes, scales, query) - decoded @ query)
    assert (query_error <= query_rounding_bound(decoded_l1(codes, scales), query) + 1e-9).all()


def test_zero_blocks_quantise_to_zero():
    vectors = np.zeros((3, 64), np.float32)
    vectors[0, :32] = 1.0
    codes, scales = quantise(vectors)
    assert (codes[1:] == 128).all() and (scales[1:] == 0).all()
    assert (codes[0, 0] == 255).all() and scales[0, 0] == pytest.approx(1 / 127)


def near_half_step_blocks(blocks: int) -> np.ndarray:
    """Blocks whose largest value is 1.0 and every other value lies 0.49 of a step above a
    code: rounding errs by almost half a step everywhere, all in one direction."""
    block = (np.arange(BLOCK, dtype=np.float64) + 10.49) / 127.0
    block[0] = 1.0
    return np.tile(block, blocks)


def test_the_bounds_are_nearly_reached_by_worst_case_rounding():
    # Codes: a vector of worst-case blocks against an all-positive query.
    vector, ones = near_half_step_blocks(16)[None], np.ones(16 * BLOCK)
    codes, scales = quantise(vector.astype(np.float32))
    decoded = ((codes.astype(np.float64) - 128) * scales[..., None]).reshape(vector.shape)
    error = abs(float(decoded[0] @ ones - vector[0] @ ones))
    bound = code_rounding_bound(scales, ones)[0]
    assert 0.9 * bound <= error <= bound
    # The query: worst-case blocks against a vector that quantises exactly.
    codes, scales = quantise(ones[None].astype(np.float32))
    query = near_half_step_blocks(16)
    error = abs(float(int8_scores(codes, scales, query)[0] - ones @ query))
    bound = query_rounding_bound(decoded_l1(codes, scales), query)[0]
    assert 0.9 * bound <= error <= bound
