"""The handles the server's searches run through: up to `size` `Library.reader()`s, one per
search in flight, so several clients' searches run at the same time (a single `Library`
answers one call at a time). Made on first need, reused, closed with the server."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from clipsearch import Library


def default_size() -> int:
    # Past the number of cores, more searches at once only wait for a core (and each
    # reader holds an approximate index of its own above ~200k vectors).
    return max(2, min(4, os.cpu_count() or 1))


class Readers:
    def __init__(self, lib: Library, size: int | None = None):
        self.lib = lib
        self.size = size or default_size()
        self._free: queue.LifoQueue[Library] = queue.LifoQueue()  # the warmest first
        self._made: list[Library] = []
        self._lock = threading.Lock()

    @contextmanager
    def one(self) -> Iterator[Library]:
        """A reader no other search holds; waits for one when `size` are busy."""
        try:
            reader = self._free.get_nowait()
        except queue.Empty:
            reader = self._make() or self._free.get()
        try:
            yield reader
        finally:
            self._free.put(reader)

    def _make(self) -> Library | None:
        with self._lock:
            if len(self._made) >= self.size:
                return None
            reader = self.lib.reader()
            self._made.append(reader)
            return reader

    def close(self) -> None:
        with self._lock:
            made, self._made = self._made, []
        for reader in made:
            reader.close()
