"""The int8 choice on an AVX2-only CPU and on ARM CPUs, emulated by qemu-user
(bench.emulated_cpu): onnxruntime runs those CPUs' kernels whatever CPU runs the suite.
Skipped where qemu-x86_64 is absent (it is not a dependency: `apt-get install qemu-user`) or
the machine is not x86-64; the ARM tests also need an arm64 Python (`python -m
bench.arm64_root`, which fetches packages: no test builds it)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from bench.emulated_cpu import ARM64_ROOT, DEFAULT_CPU, qemu
from clip_core.compiled.int8_variants import DEFAULT, REDUCE_RANGE, VARIANTS
from clip_core.cpu import CpuFeatures, text_int8_kinds
from clip_core.encoders import GUARD_MIN_COS
from tests.reliability_support import REPO, subprocess_env
from tests.vit_bundles import write_bundle

x86 = pytest.mark.skipif(
    qemu("x86_64") is None or platform.machine().lower() not in ("x86_64", "amd64"),
    reason="needs qemu-user (qemu-x86_64) on an x86-64 machine")


@x86
@pytest.mark.slow  # ~20 s: the probes run under TCG
def test_an_emulated_avx2_only_cpu_passes_with_the_variant_its_flags_put_first(tmp_path):
    """Inside the emulator cpuid says AVX2 without AVX-512 or VNNI (whatever the host has),
    so the variant order is the AVX2-only one, and that first variant, run on onnxruntime's
    AVX2 int8 kernels, is within the guard of the fp32 graph on every probe image; so is the
    int8 text tower its flags try (MatMulNBits's blocks)."""
    bundle = write_bundle(tmp_path / "vit", seed=5)
    report, native = (_variants(tmp_path, bundle, where) for where in (DEFAULT_CPU, None))
    assert report["emulated_cpu"] == DEFAULT_CPU
    assert "avx2" in report["cpuid_flags"], report
    assert not {"avx512f", "avx512_vnni"} & set(report["cpuid_flags"]), report
    assert report["saturating_int8"] and report["variant_order"][0] == REDUCE_RANGE.name
    assert {v.name for v in VARIANTS} <= set(report["variants"])
    assert report["variants"][REDUCE_RANGE.name]["min_cos"] >= GUARD_MIN_COS, report
    assert report["selection"]["kept"] == REDUCE_RANGE.name, report  # the compiler's step
    assert [t["variant"] for t in report["selection"]["tried"]] == [REDUCE_RANGE.name]
    text = report["text_int8"]  # u8 x u8 and MatMulNBits on AVX2 pass; the flags skip "dynamic"
    assert text["blocks"]["min_cos"] >= GUARD_MIN_COS and text["blocks"]["passes"], report
    assert text["unsigned"]["passes"], report
    assert text["tried_here"] == ["unsigned", "blocks"] and text["kept"] == "unsigned", report
    # why: full-range int8 weights saturate the AVX2 kernels' 16-bit pair sums (0.937 here)
    assert not text["dynamic"]["passes"] and text["dynamic"]["min_cos"] < GUARD_MIN_COS, report
    # 7-bit weights cannot saturate: the AVX2 kernels agree with this CPU's own on them
    assert native["emulated_cpu"] is None
    for key in ("min_cos", "mean_cos"):
        assert report["variants"][REDUCE_RANGE.name][key] == pytest.approx(
            native["variants"][REDUCE_RANGE.name][key], abs=1e-4)


def _variants(tmp_path, bundle, cpu: str | None, arch: str = "x86_64") -> dict:
    where = ["--arch", arch, "--cpu", cpu] if cpu else ["--native"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.emulated_cpu", *where, "variants",
         "--model", f"local-dir:{bundle}"],
        capture_output=True, text=True, timeout=240, cwd=REPO, env=subprocess_env(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@x86
@pytest.mark.slow  # ~15 s: imports and a scan of 3000 vectors (drawn natively) under TCG
def test_the_int8_scan_on_emulated_avx2_kernels_stays_within_its_bound(tmp_path):
    """The warm query's int8 scan (store/int8_scan.py) on onnxruntime's AVX2 kernels: its
    guard's verdict agrees with what the kernel does. Kept, every score of the index's own
    rows is within its bound; refused, the guard rows were out of theirs."""
    report = _scan(tmp_path, DEFAULT_CPU, "x86_64", 3000)
    assert report["saturating_int8"] and "avx512_vnni" not in report["cpuid_flags"], report
    kept = report["build"].startswith("int8 scan kept")
    assert kept == report["saturation_free"] == (
        report["guard_rows_worst_error_over_bound"] <= 1.0), report
    if kept:
        assert report["index_rows_worst_error_over_bound"] <= 1.0, report


def _scan(tmp_path, cpu: str, arch: str, count: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "bench.emulated_cpu", "--arch", arch, "--cpu", cpu, "scan",
         "--count", str(count)],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=subprocess_env(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


arm = pytest.mark.skipif(
    qemu("aarch64") is None or not (ARM64_ROOT / "usr" / "bin" / "python3.11").is_file(),
    reason="needs qemu-aarch64 and an arm64 Python (python -m bench.arm64_root)")


@arm
@pytest.mark.slow  # ~30 s: two emulated ARM CPUs
def test_emulated_arm_cpus_with_and_without_dot_products_keep_u8s8(tmp_path):
    """ARM sums int8 products in 32 bits with dot-product instructions (Neoverse-N1) and
    without them (Cortex-A72, widening multiplies), so the default variant goes first there
    and passes the guard on both kernels with the same figures; the text tower tries "dynamic"
    only where dot products make it sure to be faster."""
    bundle = write_bundle(tmp_path / "vit", seed=5)
    reports = {cpu: _variants(tmp_path, bundle, cpu, arch="aarch64")
               for cpu in ("cortex-a72", "neoverse-n1")}
    for cpu, report in reports.items():
        assert report["emulated_cpu"] == cpu and report["arch"] == "aarch64", report
        assert ("asimddp" in report["cpuid_flags"]) == (cpu == "neoverse-n1"), report
        assert not report["saturating_int8"] and report["variant_order"][0] == DEFAULT.name
        assert all(report["variants"][v.name]["min_cos"] >= GUARD_MIN_COS for v in VARIANTS)
        assert report["selection"]["kept"] == DEFAULT.name, report
        assert [t["variant"] for t in report["selection"]["tried"]] == [DEFAULT.name]
        text = report["text_int8"]
        kinds = text_int8_kinds(CpuFeatures("aarch64", frozenset(report["cpuid_flags"])))
        assert text["tried_here"] == list(kinds), report
        assert text["kept"] == kinds[0] and text[kinds[0]]["passes"], report
    assert reports["neoverse-n1"]["text_int8"]["tried_here"] == ["dynamic", "blocks"]
    # Exact 32-bit sums either way: the two kernels' vectors agree to float rounding.
    a72, n1 = (reports[c]["variants"][DEFAULT.name] for c in ("cortex-a72", "neoverse-n1"))
    assert a72 == pytest.approx(n1, abs=1e-5)


@arm
@pytest.mark.slow  # ~16 s
def test_the_int8_scan_on_an_emulated_arm_cpu_without_dot_products_keeps_its_bound(tmp_path):
    report = _scan(tmp_path, "cortex-a72", "aarch64", 3000)
    assert "asimddp" not in report["cpuid_flags"] and report["saturation_free"], report
    assert report["build"].startswith("int8 scan kept"), report
    assert report["index_rows_worst_error_over_bound"] <= 1.0, report
