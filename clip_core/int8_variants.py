"""Which int8 quantisation to try first on a CPU, and the one bar every faster tower must meet.

onnxruntime's dynamic int8 (U8S8) multiplies uint8 activations by int8 weights. On x86 CPUs
without VNNI its kernels add pairs of those products in 16 bits (vpmaddubsw), which saturate:
ViT-B-32's int8 vectors fell to cosine 0.95 of fp32 on an AVX2-only EPYC. With
`reduce_range` (7-bit weights) a pair cannot overflow: 0.99957 there, 0.99975 with
per-channel weights too, at ~0.55x fp32's time. VNNI and AMX add in 32 bits, and ARM's
dot-product instructions too, so the default (fastest, most precise there) goes first on them.
Every variant is still checked on the machine at hand (clip_core.compiler): this order only
saves compile time. Torch-free (reads /proc/cpuinfo); flags are data so tests can pass any.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import lru_cache

GUARD_MIN_COS = 0.999  # every reduced-precision tower (int8, bf16) vs fp32, on probe inputs

INT8_DOT_PRODUCT = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU as far as int8 kernels care: its architecture and /proc/cpuinfo flags."""

    arch: str  # platform.machine(): x86_64, aarch64, arm64, ...
    flags: frozenset[str] = frozenset()

    @classmethod
    @lru_cache(maxsize=1)
    def here(cls) -> CpuFeatures:
        from .device import cpu_flags

        return cls(platform.machine().lower(), cpu_flags())

    @property
    def x86(self) -> bool:
        return self.arch in ("x86_64", "amd64", "i386", "i686", "x86")

    @property
    def int8_dot_product(self) -> bool:
        """VNNI (AVX-512 or AVX) or AMX: int8 products summed in 32 bits (x86 only)."""
        return bool(self.flags & INT8_DOT_PRODUCT)

    @property
    def saturating_int8(self) -> bool:
        """x86 without VNNI/AMX: U8S8 pairs summed in 16 bits may saturate."""
        return self.x86 and not self.int8_dot_product


@dataclass(frozen=True)
class Int8Variant:
    """One way of running onnxruntime's quantize_dynamic on the image tower."""

    name: str
    reduce_range: bool = False
    per_channel: bool = False


DEFAULT = Int8Variant("u8s8")
REDUCE_RANGE = Int8Variant("reduce_range+per_channel", reduce_range=True, per_channel=True)
VARIANTS = (DEFAULT, REDUCE_RANGE)


def variant_order(cpu: CpuFeatures) -> tuple[Int8Variant, ...]:
    """The variants to try, most likely to pass and fastest first, for `cpu`."""
    if cpu.saturating_int8:
        return (REDUCE_RANGE, DEFAULT)
    return (DEFAULT, REDUCE_RANGE)


def variant_named(name: str) -> Int8Variant:
    for variant in VARIANTS:
        if variant.name == name:
            return variant
    raise KeyError(name)


def text_int8_timed(cpu: CpuFeatures) -> bool:
    """Whether the int8 text tower (onnxruntime MatMulNBits with int8 activations:
    clip_core.text_tower_onnx) must also be measured faster than fp32 to be kept. Its
    agreement with fp32 is checked on every CPU; its speed is only sure where int8 products
    run on dot-product instructions (x86 VNNI/AMX, ARM's dot-product extension)."""
    return not (cpu.int8_dot_product or (not cpu.x86 and "asimddp" in cpu.flags))
