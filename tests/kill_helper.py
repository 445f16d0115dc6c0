"""Fork server for the SIGKILL test: imports torch/open_clip once, then forks one
`clipsearch index ...` child per request and SIGKILLs it at the requested moment.

A fresh `clipsearch` process spends seconds importing torch before it writes anything; forking
from a process that has imported (but never run) torch skips that, so many kills fit in a short
test and land while the indexer is working. Each child runs the real CLI entry point.

Protocol: one JSON request per stdin line, one JSON reply per stdout line.
  request: {"argv": [...], "log": PATH, "kill_after": SECONDS or null,
            "hook": "commit" | "replace" | null, "hook_at": N}
  hook "commit": kill inside the N-th SQLite write transaction of the run, after its
  statements ran and before COMMIT. hook "replace": kill just before the N-th os.replace
  (1: FAISS temp file written, nothing renamed; 2: new FAISS file in place, old sidecar).
  reply: {"killed": bool, "code": exit status or -signal, "seconds": float}
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
from contextlib import contextmanager

import faiss  # noqa: F401 - imported before fork on purpose
import open_clip  # noqa: F401
import torch  # noqa: F401

import store.catalog
import store.vector_index
from clipsearch.cli import main


def _install_hook(kind: str, at: int, notify_fd: int) -> None:
    count = 0

    def reached() -> None:
        nonlocal count
        count += 1
        if count == at:
            os.write(notify_fd, b"!")
            time.sleep(60)  # the parent kills us here

    if kind == "commit":
        original = store.catalog.Catalog.transaction

        @contextmanager
        def transaction(self):
            with original(self) as conn:
                yield conn
                reached()  # statements done, COMMIT not yet issued

        store.catalog.Catalog.transaction = transaction
    elif kind == "replace":
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            reached()
            return real_replace(src, dst, *args, **kwargs)

        store.vector_index.os.replace = replace  # os module: affects this child only


def _child(request: dict, notify_fd: int) -> None:
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if request.get("hook"):
        _install_hook(request["hook"], int(request["hook_at"]), notify_fd)
    code = 0
    try:
        main(request["argv"], prog_name="clipsearch")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _serve(request: dict) -> dict:
    read_fd, notify_fd = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(request, notify_fd)
    os.close(notify_fd)
    deadline = None if request.get("kill_after") is None else started + request["kill_after"]
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        timeout = 0.01 if deadline is None else max(0.0, min(0.01, deadline - time.monotonic()))
        ready, _, _ = select.select([read_fd], [], [], timeout)
        hooked = bool(ready) and os.read(read_fd, 1) == b"!"
        if hooked or (deadline is not None and time.monotonic() >= deadline):
            os.kill(pid, signal.SIGKILL)  # not yet reaped, so the pid cannot be reused
            _, status = os.waitpid(pid, 0)
            break
    os.close(read_fd)
    code = os.waitstatus_to_exitcode(status)
    # A child that finished just before the kill is not counted as killed.
    return {"killed": code == -signal.SIGKILL, "code": code,
            "seconds": time.monotonic() - started}


def serve_forever() -> None:
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(_serve(json.loads(line))), flush=True)


if __name__ == "__main__":
    serve_forever()
