"""Keeping the torch fallback's resident memory small on the CPU (issue 12: at most 1 GB).

Importing torch reads pages of its shared libraries that a CPU index run never uses again:
its CUDA build loads the CUDA libraries whatever the device (~140 MB of their pages resident
after the import, libcublasLt alone ~60 MB), and the import's static set-up walks libtorch_cpu
(~70 MB resident). Once the tower is loaded those pages leave this process's resident set:
only read-only mappings with no written (copied) page are dropped, so whatever is needed
after all (the CPU kernels a batch runs) is read back from the page cache, unchanged. ViT-B-32
fp32: 145 MB of CUDA pages and ~55 MB of libtorch's dropped for good (docs/benchmarks.md).

Tried and left out: holding glibc's mmap threshold at 2 MB, so that each batch's activations
go back to the OS when freed (~40 MB less at the peak), cost 28% more CPU per ViT-B-32 fp32
batch (1.56 -> 2.0 CPU s for 16 images: page faults), far over the few percent allowed; a
single malloc arena (MALLOC_ARENA_MAX=1) saved ~8 MB.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import sys
from functools import lru_cache

# torch's libraries (torch/lib: libtorch_cpu, libtorch_cuda, ...) and NVIDIA's wheels.
TORCH_LIBRARIES = ("/torch/lib/", "/nvidia/", "/libcudnn", "/libnccl", "/libcusparseLt",
                   "/libnvrtc", "/libnvJitLink", "/libcublas")


def keep_cpu_tower_small() -> int:
    """Drop the pages above; returns the bytes dropped (0 where nothing could be: not Linux,
    no /proc)."""
    if not sys.platform.startswith("linux"):
        return 0
    return drop_library_pages(TORCH_LIBRARIES)


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
    found: list[list[int]] = []  # start, end, Rss, Anonymous
    current: list[int] | None = None
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
                        found.append(current)
                elif current is not None and first[0] == "Rss:":
                    current[2] = int(first[1]) * 1024
                elif current is not None and first[0] == "Anonymous:":
                    current[3] = int(first[1])
    except OSError:
        return []
    return [(lo, hi, rss) for lo, hi, rss, anon in found if rss and not anon]


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    return libc if hasattr(libc, "madvise") else None
