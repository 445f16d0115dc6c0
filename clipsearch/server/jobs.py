"""Index runs started over HTTP. A run goes through a second `Library` on the same folder:
`Library.index` holds its instance for the whole run, and the warm one must keep answering
queries (SQLite WAL: its readers see each committed batch)."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from clipsearch import IndexSettings, Library, Progress


class IndexJobs:
    """At most one run at a time; its state is a dict that SSE subscribers poll."""

    def __init__(self, path: Path, library_options: dict,
                 on_finish: Callable[[str], None] | None = None):
        self.path = path
        self.library_options = library_options
        self.on_finish = on_finish
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        self.version = 0  # bumped on every change: subscribers send when it moved
        self.state: dict = {"state": "idle"}

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, roots: Sequence[str] | None = None) -> dict:
        """Start a run of every root (or of these); raises RuntimeError when one is going."""
        with self._lock:
            if self.running:
                raise RuntimeError("an index run is already going")
            self._cancel.clear()
            roots = list(roots) if roots else None
            self._set({"state": "running", "roots": roots, "done": 0, "total": None, "errors": 0,
                       "rate": 0.0, "path": None, "started": time.time()})
            self._thread = threading.Thread(target=self._run, args=(roots,),
                                            name="clipsearch-index", daemon=True)
            self._thread.start()
            return dict(self.state)

    def wait(self, timeout: float | None = None) -> None:
        """Until the run in progress (if any) ends."""
        if self._thread is not None:
            self._thread.join(timeout)

    def stop(self, timeout: float = 60.0) -> None:
        """Ask the run to stop (it commits what is encoded) and wait for it."""
        self._cancel.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _set(self, state: dict) -> None:
        self.state = state
        self.version += 1

    def _progress(self, p: Progress) -> None:
        started = self.state.get("started") or time.time()
        rate = p.done / max(time.time() - started, 1e-6)
        self._set({**self.state, "done": p.done, "total": p.total, "path": p.path,
                   "errors": p.errors, "rate": round(rate, 2)})

    def _run(self, roots: list[str] | None) -> None:
        yield_to_searches()
        settings = IndexSettings(cancel=self._cancel)
        try:
            with Library(self.path, **self.library_options) as lib:
                report = lib.index(roots, settings=settings,
                                   progress=self._progress)
                model_id = lib.default_model.model_id
        except Exception as exc:  # shown on the page and in the events, never lost
            self._set({**self.state, "state": "failed", "error": str(exc),
                       "error_type": type(exc).__name__, "finished": time.time()})
            return
        if self.on_finish is not None:  # before "done": a query that follows sees it
            with contextlib.suppress(Exception):  # the run's own outcome is what counts
                self.on_finish(model_id)
        final = "stopped" if report.interrupted else "done"
        self._set({**self.state, "state": final, "report": report.to_dict(),
                   "errors": len(report.skipped), "finished": time.time()})


BACKGROUND_NICE = 10  # added to the server's own niceness for its index runs


def yield_to_searches() -> None:
    """Run this thread, and the threads and processes it starts (decoders, the encoder's
    pool), at a lower CPU priority: on a busy machine a search answered meanwhile takes the
    cores it needs, and the run takes the rest. Linux keeps a niceness per thread; elsewhere
    a thread id is no process id, so nothing is changed there."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError):
        me = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, me,
                       min(19, os.getpriority(os.PRIO_PROCESS, me) + BACKGROUND_NICE))
