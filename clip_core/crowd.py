"""Whether other work competes for the cores right now, so that one run should not spread
over all of them.

A lone query is fastest spread over every core (ViT-B-32's text tower on 2 threads: 9.3 vs
11 ms a warm query at 100k). Under concurrent load the cores are taken anyway: spreading
each run then only adds spinning and hand-offs (a server's 8 clients: 2.06 vs 1.56 ms of CPU
a search). Callers that serve concurrent requests count them here (`working`); compute
that can spread asks `crowded()`.

The count is per process, and processes that serve together (`clipsearch serve --workers
N`) share it through a small table in shared memory (`Crowd.host`, `Crowd.share`): one
int32 slot per process, written only by its owner, summed by the readers.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SLOT = 4  # bytes: one int32 per process


class Crowd:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._mine = 0  # units of work in progress in this process
        self._table: memoryview | None = None  # every sharing process's count
        self._slot = 0

    def host(self, slots: int) -> int:
        """Count in slot 0 of a new zeroed table for `slots` processes in anonymous shared
        memory (Linux: memfd); its file descriptor, for the others' `share`."""
        fd = os.memfd_create("clipsearch-crowd", os.MFD_CLOEXEC)
        os.ftruncate(fd, slots * SLOT)
        self.share(fd, 0)
        return fd

    def share(self, fd: int, slot: int) -> None:
        """Count in slot `slot` of the table in `fd` (from `host`), and read the others'."""
        table = memoryview(mmap.mmap(fd, 0)).cast("i")
        if not 0 <= slot < len(table):
            raise ValueError(f"slot {slot} is outside the table's {len(table)}")
        with self._lock:
            self._table, self._slot = table, slot
            table[slot] = self._mine

    def clear(self, slot: int) -> None:
        """Zero another process's slot (it ended while counting work)."""
        if self._table is not None and slot != self._slot:
            self._table[slot] = 0

    @contextmanager
    def working(self) -> Iterator[None]:
        """Count one unit of work (a request being answered) while the block runs."""
        self.enter()
        try:
            yield
        finally:
            self.leave()

    def enter(self) -> None:
        self._add(1)

    def leave(self) -> None:
        self._add(-1)

    def _add(self, step: int) -> None:
        with self._lock:
            self._mine += step
            if self._table is not None:
                self._table[self._slot] = self._mine

    def in_progress(self) -> int:
        """Units of work in progress here and in every process sharing the table."""
        table = self._table
        return self._mine if table is None else sum(table)

    def crowded(self) -> bool:
        """More than one unit in progress: the caller's own and at least one other."""
        return self.in_progress() > 1


CROWD = Crowd()  # this process's
