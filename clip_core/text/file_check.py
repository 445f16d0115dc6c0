"""Checksums of derived model files (text towers), so a damaged one is found and rebuilt.

Beside `X` lies `X.sha256`, a small JSON file: the SHA-256 and size of `X` as written, and the
(inode, size, mtime_ns, ctime_ns) of `X` when its hash last matched, with its link count then.
Hashing a ViT-B-32 text tower (~250 MB) takes ~0.16 s at SHA-NI speed (more on a busy
machine): paid when the file is written or changed, while later opens (every cold query) only
stat it. Any write to the file, through any hard link, changes its ctime, so such damage is
caught; silent bit rot on the medium (same ctime) is not: `clipsearch doctor` re-hashes
everything. Adding or removing a hard link moves the ctime too (each library links the
compiled model's tower; deleting a library unlinks it): a moved ctime with the same inode,
size and mtime and another link count is taken for that, not hashed again. What it lets
through: a write that also sets the mtime back, between two checks that see different link
counts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from clip_core.atomic_json import write_json
from clipsearch_errors import BadInputError

SUFFIX = ".sha256"
_CHUNK = 1 << 22


class DamagedFile(BadInputError, ValueError):
    """The file does not match the checksum recorded when it was written (or has none)."""


class NoChecksum(DamagedFile):
    """No (readable) checksum record: written before checksums existed, or by a run killed
    between the file and its record. Not known to be damaged, but not vouched for either."""


def sidecar(path: Path) -> Path:
    return path.with_name(path.name + SUFFIX)


def record(path: Path, digest: str, size: int) -> None:
    """Write `path`'s sidecar (atomically); `path` is already in place."""
    st = os.stat(path)
    if st.st_size != size:
        raise DamagedFile(f"{path} changed while it was being recorded")
    _write_sidecar(path, _stamped({"sha256": digest, "size": size}, st))


def digest(path: Path) -> str | None:
    """The SHA-256 recorded for `path` when it was written (None: no readable record)."""
    try:
        return str(json.loads(sidecar(path).read_text(encoding="utf-8"))["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, *, full: bool = False, remember: bool = True) -> None:
    """Raise DamagedFile unless `path` matches its recorded checksum. Only stats the file when
    it is unchanged since it last matched (unless `full`); `remember`: record a new match."""
    try:
        info = json.loads(sidecar(path).read_text(encoding="utf-8"))
        digest, size = str(info["sha256"]), int(info["size"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NoChecksum(f"{path} has no valid checksum record ({exc})") from None
    st = os.stat(path)
    if st.st_size != size:
        raise DamagedFile(f"{path} is {st.st_size} bytes, {size} were written")
    if not full and (info.get("verified") == _stamp(st) or _relinked(info, st)):
        if remember and info.get("verified") != _stamp(st):
            with contextlib.suppress(OSError):
                _write_sidecar(path, _stamped(info, st))
        return
    if hash_file(path) != digest:
        raise DamagedFile(f"{path} does not match the checksum recorded when it was written")
    if remember:
        # A read-only library cannot record it: verified again next time, still correct.
        with contextlib.suppress(OSError):
            _write_sidecar(path, _stamped(info, st))


def copy_record(source: Path, target: Path) -> None:
    """Give `target` (a verified copy or hard link of `source`) its own sidecar."""
    info = json.loads(sidecar(source).read_text(encoding="utf-8"))
    _write_sidecar(target, _stamped(info, os.stat(target)))


def linked(path: Path) -> None:
    """`path` was verified, then hard-linked: the link changed only the shared inode's ctime,
    so its record takes the new stamp and the next check only stats it again. Without this,
    every new library's first index run re-hashed the model cache's text tower (~0.15 CPU s
    for ViT-B-32) because the previous library's link had moved its ctime."""
    with contextlib.suppress(OSError, ValueError):  # a read-only cache: hashed next time
        copy_record(path, path)  # its own record, stamped as the file is now


def remove(path: Path) -> None:
    for p in (path, sidecar(path)):
        p.unlink(missing_ok=True)


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _stamped(info: dict, st: os.stat_result) -> dict:
    """`info` vouching for the file as `st` shows it now: its stamp and link count."""
    return {**info, "verified": _stamp(st), "links": st.st_nlink}


def _relinked(info: dict, st: os.stat_result) -> bool:
    """Only the ctime moved since the last match, and the link count with it: a hard link
    added or removed (a library made or deleted), not a write through one."""
    verified, links = info.get("verified"), info.get("links")
    return (isinstance(verified, list) and len(verified) == 4 and links is not None
            and verified[:3] == _stamp(st)[:3] and links != st.st_nlink)


def _write_sidecar(path: Path, info: dict) -> None:
    write_json(sidecar(path), info)
