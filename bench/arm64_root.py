"""A 64-bit ARM Python for bench.emulated_cpu --arch aarch64: Debian's arm64 python3.11 and the
libraries it links, unpacked (not installed) into a folder, plus arm64 wheels of the packages
the numerics jobs import, at this environment's versions. qemu-aarch64 -L FOLDER then runs it.

    python -m bench.arm64_root [--root DIR]     # default: bench.emulated_cpu.ARM64_ROOT

Needs root, apt and pip's registries (a session's machine has them; tests never build it):
apt learns the arm64 architecture for the download and forgets it afterwards, so the machine's
own packages are untouched. ~300 MB; half a minute.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

# Debian 12's python3.11 and what it links (ldd of the arm64 binary and its stdlib modules).
DEBS = ("python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6",
        "libexpat1", "zlib1g", "libffi8", "libssl3", "libgcc-s1", "libstdc++6", "libbz2-1.0",
        "liblzma5", "libsqlite3-0", "libuuid1", "libncursesw6", "libtinfo6", "libcrypt1")
# What the numerics jobs import (bench.emulated_cpu: variants, text, scan), pinned to ours.
WHEELS = ("numpy", "onnxruntime", "onnx", "pillow", "safetensors", "ml_dtypes", "faiss-cpu",
          "sqlite-utils", "platformdirs", "typing_extensions", "protobuf")
PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_28_aarch64")
PYTHON = "usr/bin/python3.11"


def build(root: Path) -> Path:
    """Unpack the arm64 Python into `root` and its wheels into `root`/site; returns root."""
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as debs:
        _download_debs(Path(debs))
        for deb in sorted(Path(debs).glob("*.deb")):
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    pins = [f"{name}=={metadata.version(name)}" for name in WHEELS]
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target",
                    str(root / "site"), "--upgrade", *platforms, "--python-version", "3.11",
                    "--implementation", "cp", "--only-binary=:all:", *pins], check=True)
    # open_clip for its model configs and vocabulary only (found, never imported: no torch)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--target",
                    str(root / "site"), "--upgrade", "--no-deps",
                    f"open_clip_torch=={metadata.version('open_clip_torch')}"], check=True)
    return root


def _download_debs(folder: Path) -> None:
    foreign = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True,
                             text=True, check=True).stdout.split()
    added = "arm64" not in foreign
    if added:
        subprocess.run(["dpkg", "--add-architecture", "arm64"], check=True)
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "download", "-qq", *(f"{d}:arm64" for d in DEBS)],
                       cwd=folder, check=True)
    finally:
        if added:  # nothing of arm64 is installed: apt forgets it again
            subprocess.run(["dpkg", "--remove-architecture", "arm64"], check=True)
            subprocess.run(["apt-get", "update", "-qq"], check=False)


def main(argv: list[str] | None = None) -> None:
    from bench.emulated_cpu import ARM64_ROOT

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ARM64_ROOT)
    args = parser.parse_args(argv)
    root = build(args.root)
    print(f"arm64 Python in {root}: python -m bench.emulated_cpu --arch aarch64 flags")


if __name__ == "__main__":
    main()
