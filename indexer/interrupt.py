"""Ctrl-C as a request: the index loop polls it between files and encoder calls.

A KeyboardInterrupt raised at an arbitrary bytecode could land between a COMMIT and the
bookkeeping after it; a flag polled at safe points cannot, and lets the run report exactly
what it committed. A second Ctrl-C still raises KeyboardInterrupt at once. Signal handlers
can only be set from the main thread; elsewhere only the `cancel` event stops a run.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    def __init__(self, cancel: object | None = None):
        self._cancel = cancel  # a threading.Event (or anything with is_set)
        self._flag = False
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self._flag or bool(self._cancel is not None and self._cancel.is_set())

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._flag:
            raise KeyboardInterrupt  # asked twice: stop now
        self._flag = True

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
