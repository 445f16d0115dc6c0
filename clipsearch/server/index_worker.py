"""The server's index run, in a process of its own: `python -m clipsearch.server.index_worker`.

In the server's process a run shared the GIL with every search (a lower nice value orders
CPU time, not the GIL); here it has its own, at a lower CPU priority, and the server's
searches keep theirs. The server writes one JSON line on stdin, {"path", "options",
"roots"}, and keeps stdin open: its end (the server stopping, or dying) asks the run to
stop, which commits the batch in flight, like Ctrl-C of `clipsearch index`. Progress goes
to stdout as JSON lines, {"progress": {...}}, then one last {"report": ..., "model_id": ...}
or {"error": ..., "error_type": ...}. Same writer lock and crash guarantees as any run.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time

BACKGROUND_NICE = 10  # added to the server's niceness for its index runs
EVERY = 0.1  # seconds between progress lines (the page polls 4 times a second)


def lower_priority() -> int | None:
    """Yield the CPU to the server's searches: the run, and the threads and processes it
    starts (decoders, the encoder's pool) after this, at BACKGROUND_NICE more. Returns the
    niceness now (None where there is none)."""
    if not hasattr(os, "nice"):
        return None
    with contextlib.suppress(OSError):
        os.nice(min(BACKGROUND_NICE, 19 - os.nice(0)))
    return os.nice(0)


def placement() -> dict:
    """The session and process group this run is in (the server checks it kept its own
    session, whose CPU group its nice value counts in: jobs.py)."""
    if not hasattr(os, "getsid"):
        return {}
    return {"session": os.getsid(0), "group": os.getpgid(0)}


STOP = threading.Event()  # the run's cancel: set when the server is gone or asks


def emit(message: dict) -> None:
    try:
        sys.stdout.write(json.dumps(message, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    except (OSError, ValueError):  # nobody reads: the server is gone, stop as asked
        STOP.set()


def main() -> int:
    nice = lower_priority()  # first: before any thread is started
    job = json.loads(sys.stdin.readline())
    def until_stdin_ends() -> None:
        sys.stdin.read()  # returns at EOF: the server closed it, or is gone
        STOP.set()

    threading.Thread(target=until_stdin_ends, daemon=True).start()

    from clipsearch import IndexSettings, Library, Progress

    last = 0.0

    def progress(p: Progress) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= EVERY or p.done == p.total:
            last = now
            emit({"progress": {"done": p.done, "total": p.total, "path": p.path,
                               "errors": p.errors, "stage": p.stage}})

    try:
        with Library(job["path"], **job["options"]) as lib:
            report = lib.index(job["roots"], settings=IndexSettings(cancel=STOP),
                               progress=progress)
            model_id = lib.default_model.model_id
    except Exception as exc:  # shown on the page and in the events, never lost
        emit({"error": str(exc), "error_type": type(exc).__name__, "nice": nice})
        return 1
    emit({"report": report.to_dict(), "model_id": model_id, "nice": nice, **placement()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
