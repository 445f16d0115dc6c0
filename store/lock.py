"""One writer per library: an advisory lock file held for the whole index run.

flock is released by the kernel when the process dies, even by SIGKILL, so a crash never
leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from clipsearch_errors import LibraryBusyError

from .catalog import StorageError

__all__ = ["LibraryBusyError", "WriterLock"]  # the busy error is the family's (clipsearch_errors)


class WriterLock:
    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = None

    def acquire(self, wait: float = 0.0) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot write to the library {self.path.parent} "
                               f"({exc.strerror}); indexing needs a writable folder") from exc
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                    os.close(fd)
                    raise LibraryBusyError(
                        f"another clipsearch process ({holder or 'unknown pid'}) is indexing "
                        f"this library ({self.path.parent}); wait for it to finish, or let "
                        "this wait for it (--wait SECONDS; wait= in the Python API)"
                    ) from None
                time.sleep(0.2)
        self._fd = fd
        try:  # who holds it, for the "busy" message only: a full disk must not stop us here
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        except OSError:
            pass

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
