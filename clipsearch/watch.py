"""A library that indexes itself: watch the roots, and on every change run the normal index
run (same writer lock, same crash guarantees, incremental: only what changed is read).

    from clipsearch import Library, watch
    with Library.open("/data/photo-index") as lib:
        watch(lib, on_report=lambda r: print(r.indexed, r.removed))   # until Ctrl-C
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence

from clipsearch_errors import UsageError
from indexer import IndexReport, IndexSettings
from store import LibraryBusyError

from .api import Library

DEBOUNCE_MS = 1000  # the longest a burst of changes (a folder copied in) is grouped
QUIET_MS = 300  # a batch is handed over once no change came for this long
RETRY_S = 2.0  # a run refused because another process indexes is retried this often


def watch_roots(roots: Sequence[str], *, ignore: Sequence[str | os.PathLike] = (),
                include_hidden: bool = False, stop: threading.Event | None = None,
                tick: float = RETRY_S) -> Iterator[list[str]]:
    """Yield the roots under which something changed, a batch at a time (about QUIET_MS after
    the last change of a burst), and [] every `tick` seconds without changes; ends when
    `stop` is set. `ignore`: folders whose changes do not count (the library itself when it
    lies inside a root: its own writes must not start runs). Hidden entries (dot-names)
    count only with `include_hidden`, as in an index run.

        for roots in watch_roots(["/data/photos"], stop=event):
            ...
    """
    import watchfiles

    roots = [os.path.abspath(r) for r in roots]
    ignored = [os.path.abspath(p) for p in ignore]

    def counts(change: watchfiles.Change, path: str) -> bool:
        if any(path == p or path.startswith(p + os.sep) for p in ignored):
            return False
        if include_hidden:
            return True
        root = next((r for r in roots if path.startswith(r + os.sep)), None)
        rel = path[len(root) + 1:] if root else os.path.basename(path)
        return not any(part.startswith(".") for part in rel.split(os.sep))

    for changes in watchfiles.watch(*roots, watch_filter=counts, debounce=DEBOUNCE_MS,
                                    step=QUIET_MS, stop_event=stop, rust_timeout=int(tick * 1000),
                                    yield_on_timeout=True, raise_interrupt=False,
                                    ignore_permission_denied=True):
        touched = {r for _, path in changes for r in roots
                   if path == r or path.startswith(r + os.sep)}
        yield sorted(touched)


def watch(lib: Library, *, settings: IndexSettings | None = None,
          stop: threading.Event | None = None,
          on_report: Callable[[IndexReport], None] | None = None,
          on_busy: Callable[[LibraryBusyError], None] | None = None) -> None:
    """Index every root now, then again whenever something changes under one of them
    (new, changed, moved or deleted photos are searchable or gone within a few seconds),
    until `stop` is set or Ctrl-C. A run refused because another process is indexing is
    retried every few seconds (`on_busy` hears of it). Raises what `Library.index` raises
    before a run starts (ValueError: no roots; MissingModelError ...).

        watch(lib, on_report=lambda r: print(f"{r.indexed} new, {r.removed} gone"))
    """
    stop = stop or threading.Event()
    roots = lib.roots
    if not roots:
        raise UsageError(f"the library at {lib.path} has no folders to watch: add one "
                         "(`clipsearch index FOLDER`)")
    hidden = bool(settings and settings.include_hidden)
    # The first run brings the library up to date; it starts once the watch is set up (the
    # first batch, at most RETRY_S later), so no change can fall between the two.
    pending: set[str] = set(roots)
    for touched in watch_roots(roots, ignore=[lib.path], include_hidden=hidden, stop=stop):
        pending.update(touched)
        if not pending or stop.is_set():
            continue
        try:
            report = lib.index(sorted(pending), settings=settings)
        except LibraryBusyError as exc:
            if on_busy is not None:
                on_busy(exc)
            continue
        pending.clear()
        if on_report is not None:
            on_report(report)
        if report.interrupted:  # Ctrl-C during the run
            return
