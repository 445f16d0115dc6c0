"""What every image encoder offers its callers, and the constants they share.

Torch-free and at the bottom of clip_core: the torch encoder (clip_core.torch_backend), the
compiled onnxruntime encoder (clip_core.compiled) and the text towers all import from here.
"""

from __future__ import annotations

import numpy as np

# Images per encoder call: big enough for efficient matrix kernels, small enough that Ctrl-C
# is noticed between calls within about a second (docs/benchmarks.md).
MICRO_BATCH = 16

GUARD_MIN_COS = 0.999  # every reduced-precision tower (int8, bf16) vs fp32, on probe inputs


def l2_normalise(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return (features / np.maximum(norms, 1e-12)).astype(np.float32)
