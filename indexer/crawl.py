"""Stage 1: walk the roots and list candidate image files with their stat.

Never follows a directory symlink into a loop, never dies on a folder it cannot read, and
reports what it had to skip (broken links, link loops, FIFOs, unreadable folders) instead of
hiding it. A folder it could not list is marked `folder=True`: the pipeline keeps the catalog
rows under it, since "cannot read now" must not mean "deleted". Hidden entries (a name starting
with a dot: .thumbnails, .Trash-1000, editors' backups) and NAS thumbnail folders (@eaDir) are
not photos the user filed, unless asked for.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

NAS_DIRS = frozenset({"@eaDir"})  # Synology's per-folder thumbnail caches


@dataclass(frozen=True)
class Candidate:
    path: str
    root_id: int
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class CrawlSkip:
    path: str
    reason: str
    message: str
    size: int = 0  # lstat of the entry when there is one, so unchanged skips stay quiet
    mtime_ns: int = 0
    folder: bool = False  # a root or folder that could not be listed


def crawl(
    root: str,
    root_id: int,
    extensions: frozenset[str],
    skip_dirs: frozenset[str] = frozenset(),
    include_hidden: bool = False,
) -> Iterator[Candidate | CrawlSkip]:
    """Depth-first walk of `root`, sorted for a stable order. `skip_dirs` are other roots
    nested inside this one: they are crawled as their own roots."""
    seen_dirs: set[tuple[int, int]] = set()
    try:
        st = os.stat(root)
    except OSError as exc:
        reason = "missing" if exc.errno == errno.ENOENT else "unreadable"
        yield CrawlSkip(root, reason, f"cannot open root folder: {exc.strerror} (its files "
                        "stay in the library until it can be read again)", folder=True)
        return
    seen_dirs.add((st.st_dev, st.st_ino))
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            yield CrawlSkip(folder, "unreadable", f"cannot list folder: {exc.strerror}",
                            *_lstat(folder), folder=True)
            continue
        subdirs = []
        for entry in entries:
            if not include_hidden and (entry.name.startswith(".") or entry.name in NAS_DIRS):
                continue
            ext = os.path.splitext(entry.name)[1].lower()
            try:
                st = entry.stat(follow_symlinks=True)
            except OSError as exc:
                if ext in extensions:
                    if exc.errno == errno.ELOOP:
                        reason = "symlink-loop"
                    else:
                        reason = "broken-symlink" if entry.is_symlink() else "unreadable"
                    yield CrawlSkip(entry.path, reason, f"cannot stat: {exc.strerror}",
                                    *_lstat(entry.path))
                continue
            if stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in seen_dirs or entry.path in skip_dirs:
                    continue  # symlink loop, a folder reached twice, or a nested root
                seen_dirs.add(key)
                subdirs.append(entry.path)
            elif ext in extensions:
                if stat.S_ISREG(st.st_mode):
                    yield Candidate(entry.path, root_id, st.st_size, st.st_mtime_ns)
                else:
                    yield CrawlSkip(entry.path, "not-a-file",
                                    "not a regular file (FIFO, socket or device)",
                                    st.st_size, st.st_mtime_ns)
        stack.extend(reversed(subdirs))


def _lstat(path: str) -> tuple[int, int]:
    try:
        st = os.lstat(path)
    except OSError:
        return 0, 0
    return st.st_size, st.st_mtime_ns
