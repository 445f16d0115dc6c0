"""Keeping the torch fallback's resident memory small on the CPU (issue 12: at most 1 GB).

Two process-wide measures, taken when a torch image tower is loaded for the CPU:

- glibc's malloc hands tensors of 2 MB and more back to the OS when freed. By default its
  mmap threshold rises to the largest block freed so far (up to 32 MB), after which each
  batch's activations come from the heap and stay there: ViT-B-32 fp32, 16 images a call,
  grew the heap by ~90 MB; with the threshold held at 2 MB, ~40 MB less at the peak and no
  slower (docs/benchmarks.md).
- torch's CUDA build loads its CUDA libraries whatever the device, and loading them reads
  ~140 MB of their pages (libcublasLt alone ~60 MB) that a CPU run never touches again.
  Those pages leave this process's resident set: only read-only, never-written mappings of
  those libraries are dropped, so a page needed after all is read back from the file.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import sys
from functools import lru_cache

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 2 << 20
# Libraries only a CUDA device uses: NVIDIA's wheels (nvidia/...) and torch's own CUDA part.
CUDA_LIBRARIES = ("/nvidia/", "/libtorch_cuda", "/libc10_cuda", "/libcudnn", "/libnccl",
                  "/libcusparseLt", "/libnvrtc", "/libnvJitLink", "/libcublas")


def keep_cpu_tower_small() -> None:
    """Both measures above; each does nothing where it does not apply (not Linux, not
    glibc, torch's CPU-only build)."""
    if not sys.platform.startswith("linux"):
        return
    libc = _libc()
    if libc is None:
        return
    if hasattr(libc, "mallopt"):
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    drop_library_pages(CUDA_LIBRARIES, libc)


def drop_library_pages(markers: tuple[str, ...], libc: ctypes.CDLL | None = None) -> int:
    """Unmap the resident pages of read-only file mappings whose path contains one of
    `markers` and that hold no private (written) page; returns the bytes dropped."""
    libc = libc or _libc()
    if libc is None or not hasattr(mmap, "MADV_DONTNEED"):
        return 0
    dropped = 0
    for start, end, rss in _clean_readonly_mappings(markers):
        if libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start),
                        mmap.MADV_DONTNEED) == 0:
            dropped += rss
    return dropped


def _clean_readonly_mappings(markers: tuple[str, ...]) -> list[tuple[int, int, int]]:
    """(start, end, resident bytes) of each mapping of /proc/self/smaps that matches: not
    writable, a file path with a marker, no anonymous (copied-on-write) page, some resident."""
    found: list[tuple[int, int, int]] = []
    current: list | None = None
    try:
        with open("/proc/self/smaps", encoding="utf-8", errors="replace") as f:
            for line in f:
                first = line.split(maxsplit=5)
                if "-" in first[0] and len(first) >= 5 and ":" in first[3]:
                    current = None
                    path = first[5].strip() if len(first) == 6 else ""
                    if "w" not in first[1] and any(m in path for m in markers):
                        lo, hi = (int(x, 16) for x in first[0].split("-"))
                        current = [lo, hi, 0, 0]
                        found.append(current)  # type: ignore[arg-type]
                elif current is not None and first[0] == "Rss:":
                    current[2] = int(first[1]) * 1024
                elif current is not None and first[0] == "Anonymous:":
                    current[3] = int(first[1])
    except OSError:
        return []
    return [(lo, hi, rss) for lo, hi, rss, anon in found if rss and not anon]


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6", use_errno=True)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version"):
        return None  # mallopt's parameter numbers are glibc's
    return libc
