"""A library is private to its user: the paths and content hashes of someone's photos are
personal data, so the folder is 0700 and every file in it 0600 (catalog.db and SQLite's
-wal/-shm, which SQLite creates with the catalog's mode, FAISS caches, text towers, the lock).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def make_private_dir(path: Path) -> None:
    """Create the library folder (and missing parents) private from the start."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir(mode=PRIVATE_DIR, exist_ok=True)


def tighten(library: Path) -> None:
    """Make an existing library private (called by every writer): folders 0700, files 0600.
    Only what this user owns; symlinks and failures (read-only disk) are left alone."""
    uid = os.geteuid()
    _chmod(str(library), PRIVATE_DIR, uid)
    for folder, dirs, files in os.walk(library):
        for name in dirs:
            _chmod(os.path.join(folder, name), PRIVATE_DIR, uid)
        for name in files:
            _chmod(os.path.join(folder, name), PRIVATE_FILE, uid)


def _chmod(path: str, mode: int, uid: int) -> None:
    try:
        st = os.lstat(path)
        if (st.st_uid == uid and not stat.S_ISLNK(st.st_mode)
                and stat.S_IMODE(st.st_mode) & ~mode):  # only ever removes permissions
            os.chmod(path, stat.S_IMODE(st.st_mode) & mode)
    except OSError:
        pass
