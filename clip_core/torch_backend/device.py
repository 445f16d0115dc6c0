"""Choosing where and in which precision the model runs.

CUDA runs fp16. On CPUs with native bf16 (AMX or AVX512-BF16) the whole model is cast to bf16
when a quick matmul probe shows it faster: ViT-B-32 ran 2x fp32 on a Zen 4 (AVX512-BF16, no
AMX; docs/benchmarks.md) and is reported ~6x on AMX parts; autocast gave nothing.
"""

from __future__ import annotations

from functools import lru_cache

from clip_core.cpu import cpu_has_fast_bf16

PRECISIONS = ("fp32", "bf16", "fp16")


def choose_device(requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def choose_precision(device: str, requested: str = "auto") -> str:
    if requested != "auto":
        if requested not in PRECISIONS:
            raise ValueError(f"precision must be one of auto, {', '.join(PRECISIONS)}")
        return requested
    if device.startswith("cuda"):
        return "fp16"
    return "bf16" if cpu_has_fast_bf16() and bf16_measured_faster() else "fp32"


@lru_cache(maxsize=1)
def bf16_measured_faster(min_speedup: float = 1.3) -> bool:
    """Time a ViT-B MLP-sized matmul both ways (~30 ms): a flag alone does not prove the
    kernels are fast (oneDNN may lack them for this CPU or this torch build)."""
    import time

    import torch

    def best(dtype: torch.dtype) -> float:
        a = torch.randn(400, 768, dtype=dtype)
        b = torch.randn(768, 3072, dtype=dtype)
        times = []
        for _ in range(4):
            start = time.perf_counter()
            torch.matmul(a, b)
            times.append(time.perf_counter() - start)
        return min(times[1:])

    return best(torch.float32) / best(torch.bfloat16) >= min_speedup
