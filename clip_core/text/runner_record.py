"""Which runner long-lived processes use for a text tower on this machine: timed once, then
remembered in the user's cache for every library holding the same tower file.

The int8 kinds (clip_core.text.tower_onnx) rank differently from one machine to the next:
on the AMX VM "dynamic" answered a warm query in 8.6 ms against "blocks" 10.8, while the same
cores masked to AVX2 gave "unsigned" 14.8-15.1 ms against "blocks" 13.2-13.3 (the tower
alone, its weights hot in cache, had ranked them the other way). So the runners that agree
with fp32 are timed in turns where they run, and the fastest is kept. Timed in each process,
a near tie would go either way from one start to the next, and the kinds' vectors differ in
their last digits: one query, two scores. The first process's choice is written down, and
every later process of any library with that tower (same SHA-256) on the same machine takes
it without timing.

`CACHE/text-runners/<tower sha256[:16]>-<machine>.json`: {"runner": "blocks", "tower": the
tower's SHA-256 (its file_check record), "model", "seconds": {runner: s}, "machine": what
`machine` returns}. Processes starting together choose one at a time (`choosing`): the second
reads the first one's record instead of timing on cores the first is busy timing on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from clip_core.atomic_json import write_json
from clip_core.cpu import CpuFeatures, available_cores, cpu_model_name

log = logging.getLogger(__name__)
FOLDER = "text-runners"  # in the cache root, beside compiled/


def machine(cpu: CpuFeatures) -> dict[str, object]:
    """What a timing holds for: the CPU (kind and flags), the cores this process may use
    (the sessions' threads), the onnxruntime build whose kernels ran."""
    from importlib import metadata

    try:
        runtime = metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        runtime = None
    flags = hashlib.sha256(" ".join(sorted(cpu.flags)).encode()).hexdigest()[:16]
    return {"arch": cpu.arch, "cpu": cpu_model_name(), "flags": flags,
            "cores": available_cores(), "onnxruntime": runtime}


def record_path(folder: Path, tower: str, here: dict[str, object]) -> Path:
    """`tower`: the tower file's SHA-256."""
    key = hashlib.sha256(json.dumps(here, sort_keys=True).encode()).hexdigest()[:12]
    return folder / f"{tower[:16]}-{key}.json"


def recorded(folder: Path, tower: str, here: dict[str, object]) -> str | None:
    """The runner chosen for this tower on this machine, if one was."""
    try:
        entry = json.loads(record_path(folder, tower, here).read_text(encoding="utf-8"))
        runner = str(entry["runner"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if entry.get("machine") != here or entry.get("tower") != tower:
        return None  # a shortened key's collision
    return runner


def remember(folder: Path, tower: str, here: dict[str, object], runner: str,
             seconds: dict[str, float], model: str = "") -> bool:
    """Record a timed choice (atomically). False where the cache cannot be written: each
    process then times anew."""
    path = record_path(folder, tower, here)
    entry = {"runner": runner, "tower": tower, "model": model,
             "seconds": {k: round(v, 6) for k, v in seconds.items()}, "machine": here}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(path, entry, indent=1)
        return True
    except OSError as exc:
        log.info("could not record the text tower's runner: %s", exc)
        return False


@contextlib.contextmanager
def choosing(folder: Path) -> Iterator[bool]:
    """One process of this machine at a time chooses a runner (an advisory lock on the
    records' folder, released when the block ends or the process dies). Yields whether the
    folder is there to record in."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): processes starting together may each time
        fcntl = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        yield False
        return
    try:
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX)
            except OSError as exc:  # a file system without locks (some network mounts)
                log.info("choosing the text tower's runner unlocked: %s", exc)
        yield True
    finally:
        os.close(handle)
