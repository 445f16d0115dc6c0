"""Libraries' warnings kept off a user's terminal (issue 19.9).

open_clip says "No pretrained weights loaded ..." through `logging.warning()`, which, where
nothing configured logging (the CLI), installs a "WARNING:root:" handler for the rest of the
run; torch and onnx raise Python warnings meant for developers. Inside quiet_libraries()
both are logged at DEBUG (`logging.basicConfig(level=logging.DEBUG)` shows them).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

log = logging.getLogger(__name__)

OURS = ("clip_core", "clipsearch", "indexer", "search", "store")


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Only where nothing configured logging: an app's own handlers are left alone."""
    root = logging.getLogger()
    if root.handlers:
        yield
        return
    handler = _Quiet()
    root.addHandler(handler)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, category, *rest: log.debug(
            "%s: %s", category.__name__, message)
        try:
            yield
        finally:
            root.removeHandler(handler)


class _Quiet(logging.Handler):
    """Ours shown as with no handler at all (plain, on stderr); others' at DEBUG."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".")[0] in OURS:
            if record.levelno >= logging.WARNING and logging.lastResort is not None:
                logging.lastResort.handle(record)
        elif record.levelno >= logging.WARNING:
            log.debug("%s: %s", record.name, record.getMessage())
