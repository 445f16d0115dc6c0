"""Write a small JSON file so that readers see the old content or the new, never a part.

The cache's records (checksums, the text tower's runner, the weights' manifest, open_clip's
tables) are read by other processes at any moment and may be written by several at once: each
writer fills its own temporary file beside the target (named by its pid) and renames it over
the target, which POSIX makes atomic. The last writer wins; they all write the same facts.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path


def write_json(path: Path, value: object, **dumps: object) -> None:
    """`json.dumps(value, **dumps)` into `path` atomically. Raises OSError (a read-only or
    full disk) and leaves no temporary file behind."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temp.write_text(json.dumps(value, **dumps), encoding="utf-8")
        os.replace(temp, path)
    finally:  # after a rename there is nothing to remove; after a failure, its temp file
        with contextlib.suppress(OSError):  # the first error is the one to report
            temp.unlink(missing_ok=True)
