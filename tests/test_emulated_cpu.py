"""The int8 choice on an AVX2-only CPU, emulated by qemu-user (bench.emulated_cpu): onnxruntime
runs its AVX2 kernels there whatever CPU runs the suite. Skipped where qemu-x86_64 is absent
(it is not a dependency: `apt-get install qemu-user`) or the machine is not x86-64."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys

import pytest

from bench.emulated_cpu import DEFAULT_CPU
from clip_core.compiled.int8_variants import REDUCE_RANGE, VARIANTS
from clip_core.encoders import GUARD_MIN_COS
from tests.reliability_support import REPO, subprocess_env
from tests.vit_bundles import write_bundle

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-x86_64") is None or platform.machine().lower() not in ("x86_64", "amd64"),
    reason="needs qemu-user (qemu-x86_64) on an x86-64 machine")


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
    text = report["text_int8"]  # MatMulNBits on AVX2 passes; the flags skip "dynamic"
    assert text["blocks"]["min_cos"] >= GUARD_MIN_COS and text["blocks"]["passes"], report
    assert text["tried_here"] == ["blocks"] and text["kept"] == "blocks", report
    # why: full-range int8 weights saturate the AVX2 kernels' 16-bit pair sums (0.937 here)
    assert not text["dynamic"]["passes"] and text["dynamic"]["min_cos"] < GUARD_MIN_COS, report
    # 7-bit weights cannot saturate: the AVX2 kernels agree with this CPU's own on them
    assert native["emulated_cpu"] is None
    for key in ("min_cos", "mean_cos"):
        assert report["variants"][REDUCE_RANGE.name][key] == pytest.approx(
            native["variants"][REDUCE_RANGE.name][key], abs=1e-4)


def _variants(tmp_path, bundle, cpu: str | None) -> dict:
    where = ["--cpu", cpu] if cpu else ["--native"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.emulated_cpu", *where, "variants",
         "--model", f"local-dir:{bundle}"],
        capture_output=True, text=True, timeout=240, cwd=REPO, env=subprocess_env(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.mark.slow  # ~45 s: imports and a scan of 3000 vectors under TCG
def test_the_int8_scan_on_emulated_avx2_kernels_stays_within_its_bound(tmp_path):
    """The warm query's int8 scan (store/int8_scan.py) on onnxruntime's AVX2 kernels: its
    guard's verdict agrees with what the kernel does. Kept, every score of the index's own
    rows is within its bound; refused, the guard rows were out of theirs."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.emulated_cpu", "--cpu", DEFAULT_CPU, "scan",
         "--count", "3000"],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=subprocess_env(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["saturating_int8"] and "avx512_vnni" not in report["cpuid_flags"], report
    kept = report["build"].startswith("int8 scan kept")
    assert kept == report["saturation_free"] == (
        report["guard_rows_worst_error_over_bound"] <= 1.0), report
    if kept:
        assert report["index_rows_worst_error_over_bound"] <= 1.0, report
