"""Symmetric int8 weights for onnxruntime's DynamicQuantizeMatMul, shared by the compiled image
tower (clip_core.compiled.vit_graph) and the "dynamic" text tower (clip_core.text.tower_onnx).
"""

from __future__ import annotations

import numpy as np


def symmetric_int8(weight: np.ndarray, qmax: int = 127,
                   per_channel: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """[out, in] float weights -> (int8 [in, out], float32 scales: one per output channel, or
    one for the matrix), zero point 0 and values in [-qmax, qmax], as quantize_dynamic makes
    QInt8 weights; an all-zero channel gets scale 1."""
    absmax = np.asarray(np.abs(weight).max(axis=1 if per_channel else None))
    scale = np.where(absmax > 0, absmax / qmax, 1.0).astype(np.float32)  # [out] or a scalar
    q = np.clip(np.rint(weight / scale.reshape(-1, 1) if per_channel else weight / scale),
                -qmax, qmax).astype(np.int8)
    return np.ascontiguousarray(q.T), scale
