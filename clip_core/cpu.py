"""What this CPU offers: its flags (as data, so tests can pass any), usable cores, fast bf16.

Torch-free: read from /proc/cpuinfo and the process's affinity.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any


def _cpuinfo(*keys: str) -> str | None:
    """The value of the first /proc/cpuinfo line starting with one of `keys`."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith(keys):
                    return line.split(":", 1)[1]
    except OSError:
        pass
    return None


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    return frozenset((_cpuinfo("flags", "Features") or "").split())  # x86, ARM


@lru_cache(maxsize=1)
def cpu_model_name() -> str:
    """The CPU's name as /proc/cpuinfo gives it (x86 "model name", ARM "CPU part"), else
    platform.processor(): which chip, where flags alone do not say how fast it is."""
    name = _cpuinfo("model name", "CPU part")
    return name.strip() if name is not None else platform.processor()


def cpu_has_fast_bf16() -> bool:
    if os.environ.get("CLIPSEARCH_NO_BF16"):
        return False
    return bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})


def available_cores() -> int:
    """Cores this process may run on (taskset, cgroup cpusets), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@lru_cache(maxsize=1)
def _blas_threads() -> Any:
    """threadpoolctl's view of the BLAS libraries loaded (numpy's OpenBLAS, or MKL): found by
    what is loaded, not by file names (~20 ms once, then ~0.03 ms per use)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().select(user_api="blas")


@contextmanager
def single_thread_blas() -> Iterator[None]:
    """numpy's BLAS on one thread while inside: for products too small to share (a query's
    few rows), or where the caller runs one product per core itself (duplicates' tiles).
    The limit is the process's, not the thread's."""
    with _blas_threads().limit(limits=1):
        yield


INT8_DOT_PRODUCT = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU as far as int8 kernels care: its architecture and /proc/cpuinfo flags."""

    arch: str  # platform.machine(): x86_64, aarch64, arm64, ...
    flags: frozenset[str] = frozenset()

    @classmethod
    @lru_cache(maxsize=1)
    def here(cls) -> CpuFeatures:
        return cls(platform.machine().lower(), cpu_flags())

    @property
    def x86(self) -> bool:
        return self.arch in ("x86_64", "amd64", "i386", "i686", "x86")

    @property
    def int8_dot_product(self) -> bool:
        """VNNI (AVX-512 or AVX) or AMX: int8 products summed in 32 bits (x86 only)."""
        return bool(self.flags & INT8_DOT_PRODUCT)

    @property
    def int8_outruns_torch(self) -> bool:
        """onnxruntime's int8 image tower is surely faster here than any torch precision, so
        the compile need not load torch to time it: int8 dot products (x86 VNNI/AMX; ARM's
        asimddp, trusted as for the text tower: text_int8_timed), or x86 AVX2, whose 16-bit
        pair sums (vpmaddubsw) ran ViT-B-32's 7-bit tower at 1.2x torch fp32's speed on 2
        cores masked to AVX2 (bench.masked_cpu) and at ~1.8x onnxruntime fp32's on issue
        12's EPYC; torch has no fast bf16 on such CPUs. Elsewhere (x86 without AVX2, ARM
        without dot products) both are timed."""
        if self.x86:
            return self.int8_dot_product or "avx2" in self.flags
        return "asimddp" in self.flags

    @property
    def saturating_int8(self) -> bool:
        """x86 without VNNI/AMX: U8S8 pairs summed in 16 bits may saturate."""
        return self.x86 and not self.int8_dot_product


def text_int8_kinds(cpu: CpuFeatures) -> tuple[str, ...]:
    """The int8 text towers to try on `cpu` (clip_core.text.tower_onnx), likeliest fastest
    first: the per-run "dynamic" scale where int8 products are summed in 32 bits; on x86
    without them its "unsigned" twin, whose U8U8 kernels widen to 16 bits instead of
    saturating; "blocks" everywhere. Each must still agree with fp32 on the machine at hand;
    those that do are then timed once per machine (clip_core.text.runner_record)."""
    if cpu.saturating_int8:
        return ("unsigned", "blocks")
    if cpu.x86 or "asimddp" in cpu.flags:
        return ("dynamic", "blocks")
    return ("blocks",)


def text_int8_timed(cpu: CpuFeatures) -> bool:
    """Whether int8 must also be measured faster than fp32 to be kept where no timed choice
    is recorded (a text tower with no writable cache, each process for itself; the int8 vector
    scan): where int8 is not surely faster (`int8_outruns_torch`: x86 without AVX2, ARM
    without dot products). Elsewhere the flags' first kind that agrees is kept untimed, so
    that every process answers a query with the same scores (a near tie, as the tiny
    model's, went either way from one Library to the next)."""
    return not cpu.int8_outruns_torch
