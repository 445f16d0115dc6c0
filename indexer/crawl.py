"""Stage 1: walk the roots and list candidate image files with their stat.

Never follows a directory symlink into a loop, never dies on a folder it cannot read, and
reports what it had to skip (broken links, link loops, FIFOs, unreadable folders) instead of
hiding it. A folder it could not list is marked `folder=True`: the pipeline keeps the catalog
rows under it, since "cannot read now" must not mean "deleted". Hidden entries (a name starting
with a dot: .thumbnails, .Trash-1000, editors' backups) and NAS thumbnail folders (@eaDir) are
not photos the user filed, unless asked for.

Symlinks stay inside the root: a link whose target resolves outside it (`proc_dir -> /proc`,
`shadow.png -> /etc/shadow`) is reported as `outside-root` and not followed, unless
`follow_links`. Pseudo filesystems (/proc, /sys, /dev, or any folder on proc, sysfs,
devtmpfs...) are never walked, whatever the settings: they hold no photos and lead back into
the whole machine.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

NAS_DIRS = frozenset({"@eaDir"})  # Synology's per-folder thumbnail caches
PSEUDO_FS_TYPES = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs",
    "securityfs", "configfs", "fusectl", "bpf", "pstore", "mqueue", "hugetlbfs",
    "binfmt_misc", "efivarfs", "selinuxfs", "rpc_pipefs", "nsfs", "autofs",
})
# Also refused by path: in containers /dev is often a plain tmpfs.
PSEUDO_PATHS = ("/proc", "/sys", "/dev")


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
    follow_links: bool = False,
) -> Iterator[Candidate | CrawlSkip]:
    """Depth-first walk of `root`, sorted for a stable order. `skip_dirs` are other roots
    nested inside this one: they are crawled as their own roots. `follow_links`: also
    follow symlinks whose target is outside the root (never into pseudo filesystems)."""
    seen_dirs: set[tuple[int, int]] = set()
    try:
        st = os.stat(root)
    except OSError as exc:
        reason = "missing" if exc.errno == errno.ENOENT else "unreadable"
        yield CrawlSkip(root, reason, f"cannot open root folder: {exc.strerror} (its files "
                        "stay in the library until it can be read again)", folder=True)
        return
    pseudo_devs = _pseudo_devices()
    real_root = os.path.realpath(root)
    if _is_pseudo(real_root, st, pseudo_devs):
        yield CrawlSkip(root, "pseudo-filesystem", _PSEUDO_MESSAGE, folder=True)
        return
    inside = os.path.join(real_root, "")  # a target under this prefix stays in the root
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
            is_dir, link = stat.S_ISDIR(st.st_mode), entry.is_symlink()
            if is_dir or (link and ext in extensions):
                target = os.path.realpath(entry.path)
                reason, message = None, _PSEUDO_MESSAGE
                if link and not follow_links and not (target + os.sep).startswith(inside):
                    reason = "outside-root"
                    message = (f"symlink to {target}, outside the root: not followed "
                               "(--follow-links follows it)")
                elif _is_pseudo(target, st, pseudo_devs):
                    reason = "pseudo-filesystem"
                if reason:
                    yield CrawlSkip(entry.path, reason, message, *_lstat(entry.path))
                    continue
            if is_dir:
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


_PSEUDO_MESSAGE = "on a pseudo filesystem (/proc, /sys, /dev...): never walked"


def _pseudo_devices() -> frozenset[int]:
    """st_dev of every mounted pseudo filesystem (Linux mountinfo; empty elsewhere)."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return frozenset()
    devs = set()
    for line in lines:
        fields, _, rest = line.partition(" - ")
        parts = fields.split()
        if len(parts) > 2 and rest.split()[:1] and rest.split()[0] in PSEUDO_FS_TYPES:
            major, _, minor = parts[2].partition(":")
            if major.isdigit() and minor.isdigit():
                devs.add(os.makedev(int(major), int(minor)))
    return frozenset(devs)


def _is_pseudo(real_path: str, st: os.stat_result, pseudo_devs: frozenset[int]) -> bool:
    return st.st_dev in pseudo_devs or any(
        real_path == p or real_path.startswith(p + os.sep) for p in PSEUDO_PATHS)


def _lstat(path: str) -> tuple[int, int]:
    try:
        st = os.lstat(path)
    except OSError:
        return 0, 0
    return st.st_size, st.st_mtime_ns
