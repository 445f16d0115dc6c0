"""The int8 numerics of another CPU kind, emulated: qemu-user runs this Python with a named
CPU model, so onnxruntime (MLAS) dispatches that model's kernels by cpuid (x86) or the
kernel's hardware capabilities (ARM).

    python -m bench.emulated_cpu flags [--cpu EPYC-Rome-v1]
    python -m bench.emulated_cpu variants --weights FILE.safetensors [--cpu ...] [--compile]
    python -m bench.emulated_cpu variants --model local-dir:DIR    # an open_clip ViT bundle
    python -m bench.emulated_cpu text --weights FILE               # the int8 text tower only
    python -m bench.emulated_cpu scan [--count 20000]              # the warm query's int8 scan
    python -m bench.emulated_cpu variants --weights FILE --native    # the same, not emulated
    python -m bench.emulated_cpu run [--cpu ...] -- python -m clipsearch.cli ...
    python -m bench.emulated_cpu --arch aarch64 --cpu cortex-a72 variants --model ...
    (needs qemu-user: apt-get install qemu-user; Debian 12's QEMU 7.2 emulates AVX2, FMA,
    F16C but no AVX-512, AVX-VNNI or AMX, so every x86 CPU model it runs is an "AVX2-only"
    one)

--arch aarch64 runs a 64-bit ARM Python (`python -m bench.arm64_root` unpacks one, with arm64
wheels of numpy, onnxruntime, onnx, Pillow) under qemu-aarch64 with this repository on its
path: cortex-a72 has no dot-product instructions (a Raspberry Pi 4), neoverse-n1 and
cortex-a76 have them (Graviton 2), max adds SVE, i8mm and SME. Its /proc/cpuinfo is written
from the emulated model's hardware capabilities before each run: the host's x86 file crashed
onnxruntime's CPU detection, and one naming other features made it run dot-product kernels
on a CPU without them.

`variants` builds the image tower's graph from a weights file as the compile does
(clip_core.compiled.vit_graph; ViT-B-32's random weights: `python -m bench.weights_file OUT`),
takes its fp32 vectors of the 16 probe images as the reference, then every int8 variant's
min and mean cosine to it, then the compiler's selection step (compiler._quantise_and_check:
the variants in the order clip_core.compiled.int8_variants gives for the flags the emulated
CPU reports, until one passes the guard), and the int8 text tower's agreement with fp32 (as a
long-lived process checks it before keeping it; `text` does only that). `--compile` adds a
whole compile_model with those flags into a temporary cache (slow under emulation: where
int8 lacks dot products it imports torch and times it, ~30 min for ViT-B-32 on TCG).

The CPU's flags come from cpuid (numpy's dispatch table), not /proc/cpuinfo: under qemu-user
that file is the host's (AVX-512 VNNI on a Zen 4), so clip_core.cpu.CpuFeatures.here()
describes the host, not the emulated CPU. Both are printed.

What it cannot show: speed. TCG translates each AVX2 instruction into many host ones, so
emulated timings say nothing about the CPU kind (the compile's torch-vs-onnxruntime timing
under emulation is meaningless too; only the variant and its cosines are figures). Child
processes run natively (no binfmt handler for the host's own architecture): keep `run` to
one process. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_CPU = "EPYC-Rome-v1"  # AMD Zen 2: AVX2, FMA, no AVX-512 (issue 12's kind of EPYC)
DEFAULT_ARM_CPU = "neoverse-n1"  # Arm v8.2 with dot products (AWS Graviton 2)
INSIDE = "CLIPSEARCH_EMULATED_CPU"  # set for the emulated child: its CPU model's name
ARM64_ROOT = Path(os.environ.get("CLIPSEARCH_ARM64_ROOT",
                                 Path.home() / ".cache" / "clipsearch" / "arm64-root"))
REPO = Path(__file__).resolve().parent.parent
# numpy's cpuid-based feature names -> /proc/cpuinfo's (what clip_core.cpu reads)
CPUID_TO_PROC = {"AVX": "avx", "AVX2": "avx2", "FMA3": "fma", "F16C": "f16c",
                 "AVX512F": "avx512f", "AVX512BW": "avx512bw", "AVX512VL": "avx512vl",
                 "AVX512VNNI": "avx512_vnni", "AVX512BF16": "avx512_bf16",
                 "AVX512FP16": "avx512_fp16"}
NUMPY_TO_ARM = {"ASIMD": "asimd", "ASIMDHP": "asimdhp", "ASIMDDP": "asimddp",
                "ASIMDFHM": "asimdfhm", "SVE": "sve"}
# Linux's names of the arm64 hardware capability bits (arch/arm64/kernel/cpuinfo.c), in bit
# order: AT_HWCAP, then AT_HWCAP2 (as far as sme_f32f32).
HWCAP_NAMES = ("fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "atomics",
               "fphp", "asimdhp", "cpuid", "asimdrdm", "jscvt", "fcma", "lrcpc", "dcpop",
               "sha3", "sm3", "sm4", "asimddp", "sha512", "sve", "asimdfhm", "dit", "uscat",
               "ilrcpc", "flagm", "ssbs", "sb", "paca", "pacg")
HWCAP2_NAMES = ("dcpodp", "sve2", "sveaes", "svepmull", "svebitperm", "svesha3", "svesm4",
                "flagm2", "frint", "svei8mm", "svef32mm", "svef64mm", "svebf16", "i8mm", "bf16",
                "dgh", "rng", "bti", "mte", "ecv", "afp", "rpres", "mte3", "sme", "smei16i64",
                "smef64f64", "smei8i32", "smef16f32", "smeb16f32", "smef32f32")
ARM_HWCAP2_SHOWN = ("sve2", "i8mm", "sme")
ARM_PARTS = {"cortex-a35": 0xD04, "cortex-a53": 0xD03, "cortex-a57": 0xD07,
             "cortex-a72": 0xD08, "cortex-a76": 0xD0B, "neoverse-n1": 0xD0C}  # MIDR part


def qemu(arch: str = "x86_64") -> str | None:
    """qemu-user for `arch`: CLIPSEARCH_QEMU_<ARCH> (another QEMU's binary) or the PATH's."""
    return os.environ.get(f"CLIPSEARCH_QEMU_{arch.upper()}") or shutil.which(f"qemu-{arch}")


def emulated(cpu: str, argv: list[str], timeout: float | None = None,
             env: dict[str, str] | None = None, arch: str = "x86_64"
             ) -> subprocess.CompletedProcess:
    """Run `argv` (an ELF program first, such as sys.executable) under qemu-user as `cpu`;
    for aarch64, sys.executable becomes ARM64_ROOT's Python. qemu's warnings about CPUID
    bits TCG lacks (rdseed, sha-ni, ...) are dropped."""
    binary = qemu(arch)
    if binary is None:
        raise SystemExit(f"qemu-{arch} not found: apt-get install qemu-user")
    env = {**(env or os.environ), INSIDE: cpu}
    prefix = [binary, "-cpu", cpu]
    if arch == "aarch64":
        python = arm64_python()
        argv = [python if a == sys.executable else a for a in argv]
        prefix += ["-L", str(ARM64_ROOT)]
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(ARM64_ROOT / "site")])
        env["PYTHONNOUSERSITE"] = "1"
        for name in ("PYTHONHOME", "VIRTUAL_ENV"):
            env.pop(name, None)
        write_arm_cpuinfo(cpu, python)
    done = subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=timeout,
                          env=env)
    done.stderr = "".join(line for line in done.stderr.splitlines(keepends=True)
                          if "TCG doesn't support requested feature" not in line)
    return done


def arm64_python() -> str:
    python = ARM64_ROOT / "usr" / "bin" / "python3.11"
    if not python.is_file():
        raise SystemExit(f"no arm64 Python in {ARM64_ROOT}: python -m bench.arm64_root")
    return str(python)


def write_arm_cpuinfo(cpu: str, python: str) -> None:
    """ARM64_ROOT/proc/cpuinfo (qemu -L serves it as /proc/cpuinfo) naming the features the
    emulated `cpu` has, read from its hardware capabilities in a first short run. One file
    per root: ARM runs of different CPU models must not overlap."""
    probe = "from bench.emulated_cpu import _getauxval as f; print(f(16), f(26))"  # HWCAP, 2
    done = subprocess.run([qemu("aarch64"), "-cpu", cpu, "-L", str(ARM64_ROOT), python, "-S",
                           "-c", probe], capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": str(REPO), "PATH": os.environ.get("PATH", "")})
    hwcap, hwcap2 = (int(v) for v in done.stdout.split())
    features = [n for i, n in enumerate(HWCAP_NAMES) if hwcap >> i & 1]
    features += [n for i, n in enumerate(HWCAP2_NAMES) if hwcap2 >> i & 1]
    implementer, part = (0x46, 0x001) if cpu == "a64fx" else (0x41, ARM_PARTS.get(cpu, 0xD0C))
    entry = ("processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: " + " ".join(features)
             + f"\nCPU implementer\t: {implementer:#x}\nCPU architecture: 8\n"
             f"CPU variant\t: 0x0\nCPU part\t: {part:#05x}\nCPU revision\t: 0\n\n")
    target = ARM64_ROOT / "proc" / "cpuinfo"
    target.parent.mkdir(exist_ok=True)
    target.write_text("".join(entry.format(i=i) for i in range(os.cpu_count() or 1)))


def cpuid_flags() -> frozenset[str]:
    """The flags this process's CPU reports by cpuid (x86) or hardware capabilities (ARM,
    through numpy's dispatch table), in /proc/cpuinfo's names."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # numpy 1.x
        from numpy.core._multiarray_umath import __cpu_features__ as features
    from clip_core.cpu import CpuFeatures

    if CpuFeatures(platform.machine().lower()).x86:
        return frozenset(proc for key, proc in CPUID_TO_PROC.items() if features.get(key))
    flags = {proc for key, proc in NUMPY_TO_ARM.items() if features.get(key)}
    hwcap2 = _getauxval(26)  # AT_HWCAP2: what numpy's table leaves out
    return frozenset(flags | {n for n in ARM_HWCAP2_SHOWN if hwcap2 >> HWCAP2_NAMES.index(n) & 1})


def _getauxval(kind: int) -> int:
    import ctypes

    getauxval = ctypes.CDLL(None).getauxval
    getauxval.restype = ctypes.c_ulong
    return int(getauxval(kind))


def emulated_features():
    """clip_core.cpu.CpuFeatures of the CPU this process runs on, emulated or not."""
    from clip_core.cpu import CpuFeatures

    return CpuFeatures(platform.machine().lower(), cpuid_flags())


def flags_report() -> dict:
    from clip_core.compiled.int8_variants import variant_order
    from clip_core.cpu import CpuFeatures

    cpu = emulated_features()
    proc = CpuFeatures.here().flags & {*CPUID_TO_PROC.values(), *NUMPY_TO_ARM.values(),
                                       *ARM_HWCAP2_SHOWN}
    return {"emulated_cpu": os.environ.get(INSIDE), "arch": cpu.arch,
            "cpuid_flags": sorted(cpu.flags),
            "proc_cpuinfo_flags": sorted(proc), "saturating_int8": cpu.saturating_int8,
            "variant_order": [v.name for v in variant_order(cpu)]}


def variants_report(model: str, weights: Path | None, compile_too: bool) -> dict:
    """Every int8 variant's cosines to the fp32 graph on this (maybe emulated) CPU."""
    from clip_core.compiled import compiler
    from clip_core.compiled.built import Built
    from clip_core.compiled.int8_variants import VARIANTS, Int8Variant, variant_order
    from clip_core.compiled.weights_file import open_weights_file
    from clip_core.models.ref import parse_model
    from clip_core.pixels.preprocess import preprocess_batch
    from clip_core.pixels.probes import probe_images

    report = flags_report()
    ref = parse_model(model, str(weights) if weights else None)
    source = open_weights_file(ref)
    if source is None:
        raise SystemExit(f"{ref.display}: not a weights file the compile reads without torch")
    probes = preprocess_batch(probe_images(), source.preprocess)
    built = Built(source, source.vision)
    reference = built.fp32_vectors(probes)
    extra = (Int8Variant("reduce_range", reduce_range=True),
             Int8Variant("per_channel", per_channel=True))
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in (*VARIANTS, *extra):
            path = Path(tmp) / variant.name / "image.int8.onnx"
            path.parent.mkdir()
            built.save(path, variant)
            cos = compiler._cosines(path, source.preprocess, probes, reference)
            figures[variant.name] = {"min_cos": round(float(cos.min()), 6),
                                     "mean_cos": round(float(cos.mean()), 6)}
            shutil.rmtree(path.parent)
        report["variants"] = figures
        report["guard"] = compiler.GUARD_MIN_COS
        report["text_int8"] = text_report(model, weights, Path(tmp))["text_int8"]
        cpu = emulated_features()
        work = Path(tmp) / "selection"
        (work / compiler.FP32_DIR).mkdir(parents=True)  # as the compile's work folder
        # The compiler's own selection step: its variant order for these flags, each tried
        # until one passes the guard against the same fp32 reference.
        checked = compiler._quantise_and_check(
            work, probes, reference, {"preprocess": source.preprocess.to_dict(),
                                      "model_id": ref.model_id},
            variant_order(cpu), compiler.GUARD_MIN_COS, built)
        if checked["encoder"] is not None:  # the session a first index run would encode with
            checked["encoder"].close()
        passed = checked["best"] and checked["best"]["min_cos"] >= compiler.GUARD_MIN_COS
        report["selection"] = {"tried": checked["tried"],
                               "kept": checked["best"]["variant"] if passed else None}
        if compile_too:
            report["compile"] = _compile(ref, Path(tmp) / "cache")
    return report


def text_report(model: str, weights: Path | None, tmp: Path | None = None) -> dict:
    """Each int8 text tower kind (clip_core.text.tower_onnx) against the fp32 one on the probe
    texts, as a long-lived process checks it (NumpyTextTower.use_onnxruntime; untimed here),
    and the kinds this CPU's flags would try (clip_core.cpu.text_int8_kinds; x86 only, as the
    rest of this module)."""
    from clip_core.compiled.weights_file import open_weights_file, write_text_tower
    from clip_core.cpu import text_int8_kinds
    from clip_core.models.ref import parse_model
    from clip_core.text.tower import INT8_MIN_COS, NumpyTextTower
    from clip_core.text.tower_onnx import INT8_KINDS

    source = open_weights_file(parse_model(model, str(weights) if weights else None))
    if source is None:
        raise SystemExit(f"{model}: not a weights file the compile reads without torch")
    with tempfile.TemporaryDirectory(dir=tmp) as folder:
        path = Path(folder) / "text.safetensors"
        write_text_tower(source, path)
        tower = NumpyTextTower.load(path, release_pages=False, check=False)
        agreements = tower.int8_agreements(INT8_KINDS)
        # cpuid's flags: under qemu-user /proc/cpuinfo still shows the host's
        tried = text_int8_kinds(emulated_features())
        figures: dict = {kind: {"min_cos": round(cos, 6), "passes": cos >= INT8_MIN_COS}
                         for kind, cos in agreements.items()}
        figures["tried_here"] = list(tried)
        figures["kept"] = next((k for k in tried if agreements[k] >= INT8_MIN_COS), "fp32")
    return {**flags_report(), "text_int8": figures}


def scan_vectors(count: int, path: Path) -> None:
    """`count` CLIP-like vectors (fp16) and 8 queries into `path` (.npz), drawn natively:
    the world's draw alone took 45 of the emulated scan's 60 s under TCG."""
    import numpy as np

    from bench.clip_like import World

    world = World()
    np.savez(path, rows=world.vectors(0, count).astype(np.float16),
             queries=world.queries(8).astype(np.float32))


def scan_report(count: int, vectors: Path | None = None) -> dict:
    """The warm query's int8 scan (store/int8_scan.py) on this (maybe emulated) CPU: its
    guard's verdict, and over CLIP-like vectors (drawn here, or read from `vectors`:
    scan_vectors) every row's bounds against exact scores."""
    import numpy as np

    from store import int8_scan

    if vectors is None:
        with tempfile.TemporaryDirectory() as tmp:
            scan_vectors(count, Path(tmp) / "vectors.npz")
            return scan_report(count, Path(tmp) / "vectors.npz")
    with np.load(vectors) as drawn:
        rows, queries = drawn["rows"], list(drawn["queries"])
    count = len(rows)
    rows32 = rows.astype(np.float32)
    report = {**flags_report(), "count": count,
              "saturation_free": int8_scan.saturation_free(rows.shape[1], 2)}
    scan, why = int8_scan.build(rows, threads=2)
    report["build"] = why
    # The guard aside: how far out of their bounds the kernel's scores land here.
    codes = scan.codes if scan is not None else int8_scan.Codes.of(rows)
    kernel = scan or int8_scan.Int8Scan(codes, 2)
    guard_rows, guard_queries = int8_scan.guard_case(rows.shape[1])
    guard_codes = int8_scan.Codes.of(guard_rows)
    report["guard_rows_worst_error_over_bound"] = round(int8_scan.worst_error(
        int8_scan.Int8Scan(guard_codes, 2).bounds, guard_codes, guard_rows, guard_queries,
        np.arange(len(guard_rows))), 4)
    report["index_rows_worst_error_over_bound"] = round(int8_scan.worst_error(
        kernel.bounds, codes, rows32, queries, np.arange(count)), 4)
    candidates = [len(kernel.candidates(q, 36)) for q in queries]
    report["candidates_for_36"] = {"median": int(np.median(candidates)),
                                   "max": max(candidates)}
    return report


def _compile(ref, cache: Path) -> dict:
    """compile_model's choice with the flags cpuid reports (not /proc/cpuinfo's)."""
    from clip_core.compiled.compiler import compile_model

    compiled, _ = compile_model(ref, cache_dir=cache, force=True,
                                cpu=emulated_features())
    image = compiled.meta["image"]
    return {k: image[k] for k in ("backend", "variant", "variants", "reason") if k in image}


def run_command(words: list[str]) -> list[str]:
    """`run`'s command: without the "--" before it, and "python" as this venv's Python (qemu
    runs ELF programs, not PATH names or scripts; the bench's own commands use it)."""
    command = words[1:] if words[:1] == ["--"] else list(words)
    if command and command[0] in ("python", "python3"):
        command[0] = sys.executable
    return command


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=("x86_64", "aarch64"), default="x86_64")
    parser.add_argument("--cpu", help=f"a qemu -cpu model (default {DEFAULT_CPU}; "
                        f"aarch64: {DEFAULT_ARM_CPU})")
    parser.add_argument("--native", action="store_true", help="this CPU, not emulated")
    parser.add_argument("--timeout", type=float, default=None, help="seconds, emulated run")
    sub = parser.add_subparsers(dest="job", required=True)
    sub.add_parser("flags")
    variants = sub.add_parser("variants")
    variants.add_argument("--model", default="ViT-B-32")
    variants.add_argument("--weights", type=Path, help="a safetensors file (--pretrained)")
    variants.add_argument("--compile", action="store_true")
    text = sub.add_parser("text")
    text.add_argument("--model", default="ViT-B-32")
    text.add_argument("--weights", type=Path, help="a safetensors file (--pretrained)")
    scan = sub.add_parser("scan")
    scan.add_argument("--count", type=int, default=20_000)
    scan.add_argument("--vectors", type=Path, help=argparse.SUPPRESS)  # scan_vectors' file
    run = sub.add_parser("run")
    run.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    args.cpu = args.cpu or (DEFAULT_ARM_CPU if args.arch == "aarch64" else DEFAULT_CPU)
    if args.job == "run":
        done = emulated(args.cpu, run_command(args.command), args.timeout, arch=args.arch)
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)
        raise SystemExit(done.returncode)
    if args.native or os.environ.get(INSIDE):
        weights = getattr(args, "weights", None)
        weights = weights and weights.resolve()
        report = (flags_report() if args.job == "flags"
                  else text_report(args.model, weights) if args.job == "text"
                  else scan_report(args.count, args.vectors) if args.job == "scan"
                  else variants_report(args.model, weights, args.compile))
        print(json.dumps(report, indent=2))
        return
    forwarded = list(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        if args.job == "scan" and args.vectors is None:
            scan_vectors(args.count, Path(tmp) / "vectors.npz")
            forwarded += ["--vectors", str(Path(tmp) / "vectors.npz")]
        done = emulated(args.cpu, [sys.executable, "-m", "bench.emulated_cpu", *forwarded],
                        args.timeout, arch=args.arch)
    sys.stderr.write(done.stderr)
    if done.returncode != 0:
        raise SystemExit(done.returncode)
    sys.stdout.write(done.stdout)


if __name__ == "__main__":
    main()
