"""Handing freed heap memory back to the system (glibc's malloc_trim; elsewhere nothing).

glibc keeps freed blocks for reuse. After a one-time burst of allocations (onnxruntime
copying and prepacking a model's weights, a cast of a weights file) they stay in the
process's resident memory for its whole life unless handed back.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc


def give_back(collect: bool = True) -> None:
    """Hand freed heap memory back; `collect`: first free what only reference cycles hold."""
    if collect:
        gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to hand back
        ctypes.CDLL("libc.so.6").malloc_trim(0)
