"""An AVX2-only CPU at native speed (bench.masked_cpu): cpuid and /proc/cpuinfo masked for a
process tree. Where the mask cannot run (no CPUID faulting: AMD hosts, most containers; not
root; no gcc), only the cpuinfo filter is tested."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.masked_cpu import masked_cpuinfo, unavailable
from clip_core.compiled.int8_variants import DEFAULT, REDUCE_RANGE
from clip_core.encoders import GUARD_MIN_COS
from tests.reliability_support import REPO, subprocess_env
from tests.vit_bundles import write_bundle

WHY = unavailable()
needs_mask = pytest.mark.skipif(WHY is not None, reason=f"bench.masked_cpu: {WHY}")

XEON_FLAGS = ("fpu sse2 avx f16c fma avx2 avx512f avx512dq avx512cd avx512bw avx512vl "
              "avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8 avx_vnni gfni "
              "vaes vpclmulqdq sha_ni bmi2 cpuid_fault")


def test_the_masked_cpuinfo_keeps_avx2_and_drops_what_an_epyc_rome_lacks():
    text = f"processor\t: 0\nflags\t\t: {XEON_FLAGS}\nbugs\t\t: spectre_v1\n\n"
    out = masked_cpuinfo(text)
    flags = next(line for line in out.splitlines() if line.startswith("flags")).split(":")[1]
    assert flags.split() == ["fpu", "sse2", "avx", "f16c", "fma", "avx2", "sha_ni", "bmi2",
                             "cpuid_fault"]
    assert "bugs\t\t: spectre_v1\n" in out and out.startswith("processor\t: 0\n")


def _inside(tmp_path, *argv: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "bench.masked_cpu", *argv],
                          capture_output=True, text=True, timeout=240, cwd=REPO,
                          env=subprocess_env(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@needs_mask
def test_inside_the_mask_every_library_sees_an_avx2_only_cpu(tmp_path):
    """numpy's cpuid table, torch's kernel dispatch and clipsearch's /proc/cpuinfo reading
    all see AVX2 without AVX-512, VNNI or AMX, so the int8 order is the AVX2-only one."""
    report = _inside(tmp_path, "flags")
    assert report["masked"] == "avx2"
    assert "avx2" in report["cpuid_flags"] and "fma" in report["cpuid_flags"], report
    hidden = {"avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile"}
    assert not hidden & set(report["cpuid_flags"]), report
    assert not hidden & set(report["proc_cpuinfo_flags"]), report
    assert report["torch_cpu_capability"] == "AVX2", report
    assert report["saturating_int8"] and report["variant_order"][0] == REDUCE_RANGE.name


@needs_mask
@pytest.mark.slow  # ~15 s: two variants runs of a 2-layer ViT at native speed
def test_masked_avx2_kernels_saturate_full_range_int8_and_pass_with_7_bits(tmp_path):
    """onnxruntime's AVX2 int8 kernels, run natively: the full-range text tower saturates
    their 16-bit pair sums (as under qemu and on issue 12's EPYC), the 7-bit variant the
    AVX2 order puts first passes and is kept, with this CPU's own kernels' figures."""
    bundle = write_bundle(tmp_path / "vit", seed=5)
    args = ("-m", "bench.emulated_cpu", "--native", "variants", "--model", f"local-dir:{bundle}")
    report = _inside(tmp_path, "run", "--", sys.executable, *args)
    native = json.loads(subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=240, cwd=REPO,
        env=subprocess_env(tmp_path), check=True).stdout)
    assert report["saturating_int8"], report
    assert report["selection"]["kept"] == REDUCE_RANGE.name, report
    assert [t["variant"] for t in report["selection"]["tried"]] == [REDUCE_RANGE.name]
    text = report["text_int8"]
    assert text["tried_here"] == ["unsigned", "blocks"] and text["kept"] == "unsigned", report
    assert not text["dynamic"]["passes"] and text["dynamic"]["min_cos"] < GUARD_MIN_COS, report
    if not native["saturating_int8"]:  # unmasked, a CPU with int8 dot products
        assert native["selection"]["kept"] == DEFAULT.name, native
        assert native["text_int8"]["dynamic"]["passes"], native
        # u8 x u8 widened to 16 bits sums what the dot products sum for u8 x s8
        assert text["unsigned"]["min_cos"] == pytest.approx(
            native["text_int8"]["dynamic"]["min_cos"], abs=1e-4)
    for key in ("min_cos", "mean_cos"):
        assert report["variants"][REDUCE_RANGE.name][key] == pytest.approx(
            native["variants"][REDUCE_RANGE.name][key], abs=1e-4)
