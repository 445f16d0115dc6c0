"""What the figures were measured on: CPU, cores, flags, package versions, load, commit."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "amx_int8")
PACKAGES = ("torch", "open_clip_torch", "faiss-cpu", "Pillow", "numpy", "pillow-heif")


def _cpuinfo() -> tuple[str, set[str]]:
    """'model name (family F model M)': virtual machines often hide the generation in the
    name ("AMD EPYC"); family 25 model 17 is Zen 4, for instance."""
    fields: dict[str, str] = {}
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "flags":
                    flags = set(value.split())
                    break
                fields.setdefault(key, value.strip())
    except OSError:
        pass
    model = fields.get("model name") or platform.processor() or "unknown"
    if "cpu family" in fields:
        model += f" (family {fields['cpu family']} model {fields.get('model', '?')})"
    return model, flags


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        # --no-optional-locks: a read-only look that never writes .git/index.
        out = subprocess.run(["git", "--no-optional-locks", *args], cwd=REPO,
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict:
    model, flags = _cpuinfo()
    try:
        with open("/proc/meminfo") as handle:
            mem_kb = int(handle.readline().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kb = 0
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb * 1024 / 1e9, 1),
        "flags": {f: f in flags for f in FLAGS},
        "python": platform.python_version(),
        "os": platform.platform(),
        "packages": {p: _version(p) for p in PACKAGES},
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(status) if status is not None else None,
        "load_average_at_start": load_average(),
    }


if __name__ == "__main__":  # `python -m bench.machine`: what a bench table's CPU kind is
    import json

    print(json.dumps(machine_info(), indent=2))
