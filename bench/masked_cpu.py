"""An AVX2-only x86 CPU at this machine's real speed: cpuid masked for one process tree.

    python -m bench.masked_cpu flags                 # what numpy, torch, clipsearch see inside
    python -m bench.masked_cpu run -- python -m bench --jobs index ...
    python -m bench.masked_cpu run -- python -m bench.emulated_cpu --native variants ...

bench.emulated_cpu shows an AVX2-only CPU's int8 numerics under qemu, whose timings mean
nothing. Here the program runs natively and only what the CPU *says* changes: where the
kernel offers CPUID faulting (the `cpuid_fault` flag; Intel CPUs and KVM guests have it),
bench/cpuid_mask.c, LD_PRELOAD'ed into every process of the tree, answers each cpuid
instruction with AVX-512, VNNI (of any width), AMX, GFNI, VAES and VPCLMULQDQ cleared, and
/proc/cpuinfo is bind-mounted, in a private mount namespace, with the same flags left out.
So onnxruntime's MLAS, torch (cpuinfo, oneDNN), numpy, FAISS and libjpeg-turbo dispatch the
kernels an AMD EPYC Rome or Milan would run, clipsearch's compile orders its int8 variants
for such a CPU (and keeps its compiled models apart: the cache's identity is the flags), and
the timings are real: AVX2 kernels on this core.

What it is not: an AVX2-only machine. The cores, caches and memory stay this machine's (an
AMX Xeon runs AVX2 code with its own ports and its own memory), and glibc chose its string
functions before the mask (their AVX-512 variants stay). So its figures say what clipsearch's
AVX2 paths cost on this core, beside the unmasked run of the same session; a real AVX2-only
machine's row stays the proof. Needs root (the mount namespace), gcc and `cpuid_fault`.
Child processes inherit the mask (LD_PRELOAD and the namespace); Python's faulthandler must
stay off inside (it would take SIGSEGV, the mask's signal), so PYTHONFAULTHANDLER is dropped;
pytest turns it on by itself: `run -- python -m pytest -p no:faulthandler ...` (without it,
numpy's import dies at its first cpuid). The whole suite so (2026-12-02): everything passes but
what the mask itself breaks: Ray's GCS server and Chromium do not start inside it, qemu
(test_emulated_cpu) and gcc (test_powerloss's shim) fail under it, and tests that give a
subprocess a fresh environment drop CLIPSEARCH_CPUID_MASK while LD_PRELOAD stays.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.emulated_cpu import run_command

SOURCE = Path(__file__).with_name("cpuid_mask.c")
MASK = "avx2"
# /proc/cpuinfo flags the mask clears (cpuid_mask.c's bits, in the kernel's names).
HIDDEN_PREFIXES = ("avx512", "amx", "avx_vnni", "avx10")
HIDDEN = frozenset({"gfni", "vaes", "vpclmulqdq", "avx_ifma", "avx_ne_convert"})


def unavailable() -> str | None:
    """Why the mask cannot run here, or None."""
    from clip_core.cpu import CpuFeatures

    cpu = CpuFeatures.here()
    if not cpu.x86:
        return "not an x86 machine"
    if "avx2" not in cpu.flags:
        return "this CPU has no AVX2 to leave unmasked"
    if "cpuid_fault" not in cpu.flags:
        return "this CPU (or its hypervisor) offers no CPUID faulting (no cpuid_fault flag)"
    if shutil.which("gcc") is None:
        return "no gcc to build bench/cpuid_mask.c"
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return "needs root and unshare(1) for a private /proc/cpuinfo"
    return None


def shim() -> Path:
    """bench/cpuid_mask.c built once per source into the user cache folder."""
    source = SOURCE.read_bytes()
    folder = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clipsearch" / \
        "cpuid-mask"
    target = folder / f"cpuid_mask-{hashlib.sha256(source).hexdigest()[:12]}.so"
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.partial")  # builds may race
        subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(partial), str(SOURCE)],
                       check=True)
        partial.replace(target)
    return target


def masked_cpuinfo(text: str) -> str:
    """/proc/cpuinfo's text with the masked features left out of every flags line."""
    lines = []
    for line in text.splitlines(keepends=True):
        if line.startswith("flags"):
            key, flags = line.split(":", 1)
            kept = [f for f in flags.split() if f not in HIDDEN
                    and not f.startswith(HIDDEN_PREFIXES)]
            line = f"{key}: {' '.join(kept)}\n"
        lines.append(line)
    return "".join(lines)


def masked(argv: list[str], env: dict[str, str] | None = None, timeout: float | None = None,
           capture: bool = True) -> subprocess.CompletedProcess:
    """Run `argv` with the CPU masked to AVX2-only (cpuid and /proc/cpuinfo)."""
    why = unavailable()
    if why:
        raise SystemExit(f"bench.masked_cpu: {why}")
    library = shim()
    with tempfile.TemporaryDirectory() as tmp:
        cpuinfo = Path(tmp) / "cpuinfo"
        cpuinfo.write_text(masked_cpuinfo(Path("/proc/cpuinfo").read_text()))
        env = {**(env or os.environ), "CLIPSEARCH_CPUID_MASK": MASK}
        env["LD_PRELOAD"] = " ".join(filter(None, [str(library), env.get("LD_PRELOAD")]))
        env.pop("PYTHONFAULTHANDLER", None)
        # A private mount namespace: the bind mount is this tree's alone and ends with it.
        script = 'mount --bind "$0" /proc/cpuinfo && exec "$@"'
        return subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
             str(cpuinfo), *argv],
            capture_output=capture, text=True, timeout=timeout, env=env)


def flags_inside() -> dict:
    """What the libraries see in this process (run inside the mask by `flags`)."""
    from bench.emulated_cpu import flags_report

    report = flags_report()
    report["masked"] = os.environ.get("CLIPSEARCH_CPUID_MASK")
    try:
        import torch

        report["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except ImportError:
        report["torch_cpu_capability"] = None
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="job", required=True)
    sub.add_parser("flags")
    sub.add_parser("inside", help=argparse.SUPPRESS)  # flags' child
    run = sub.add_parser("run")
    run.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.job == "inside":
        print(json.dumps(flags_inside(), indent=2))
        return
    if args.job == "flags":
        done = masked([sys.executable, "-m", "bench.masked_cpu", "inside"])
        sys.stderr.write(done.stderr)
        sys.stdout.write(done.stdout)
        raise SystemExit(done.returncode)
    raise SystemExit(masked(run_command(args.command), capture=False).returncode)


if __name__ == "__main__":
    main()
