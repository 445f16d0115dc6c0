"""Which int8 quantisation to try first on a CPU, and the one bar every faster tower must meet.

onnxruntime's dynamic int8 (U8S8) multiplies uint8 activations by int8 weights. On x86 CPUs
without VNNI its kernels add pairs of those products in 16 bits (vpmaddubsw), which saturate:
ViT-B-32's int8 vectors fell to cosine 0.95 of fp32 on an AVX2-only EPYC. With
`reduce_range` (7-bit weights) a pair cannot overflow: 0.99957 there, 0.99975 with
per-channel weights too, at ~0.55x fp32's time. VNNI and AMX add in 32 bits, and ARM's
dot-product instructions too, so the default (fastest, most precise there) goes first on them.
Every variant is still checked on the machine at hand (clip_core.compiled.compiler): this order only
saves compile time. Torch-free (reads /proc/cpuinfo); flags are data so tests can pass any.
"""

from __future__ import annotations

from dataclasses import dataclass

from clip_core.cpu import CpuFeatures


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
