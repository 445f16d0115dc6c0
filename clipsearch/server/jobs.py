"""Index runs started over HTTP, each in a child process (index_worker.py) at a lower CPU
priority: the warm library keeps answering queries with the GIL to itself (SQLite WAL: its
readers see each committed batch)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class IndexJobs:
    """At most one run at a time; its state is a dict that SSE subscribers poll."""

    def __init__(self, path: Path, library_options: dict,
                 on_finish: Callable[[str], None] | None = None):
        self.path = path
        self.library_options = library_options
        self.on_finish = on_finish
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._worker: subprocess.Popen | None = None
        self.version = 0  # bumped on every change: subscribers send when it moved
        self.state: dict = {"state": "idle"}
        # Called after every change (server/workers.py passes it on to the other processes).
        self.on_change: Callable[[], None] | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, roots: Sequence[str] | None = None) -> dict:
        """Start a run of every root (or of these); raises RuntimeError when one is going."""
        with self._lock:
            if self.running:
                raise RuntimeError("an index run is already going")
            roots = list(roots) if roots else None
            self._set({"state": "running", "roots": roots, "done": 0, "total": None, "errors": 0,
                       "rate": 0.0, "path": None, "started": time.time()})
            job = {"path": str(self.path), "options": self.library_options, "roots": roots}
            self._thread = threading.Thread(target=self._run, args=(job,),
                                            name="clipsearch-index", daemon=True)
            self._thread.start()
            return dict(self.state)

    def wait(self, timeout: float | None = None) -> None:
        """Until the run in progress (if any) ends."""
        if self._thread is not None:
            self._thread.join(timeout)

    def stop(self, timeout: float = 60.0) -> None:
        """Ask the run to stop (it commits what is encoded) and wait for it."""
        worker = self._worker
        if worker is not None and worker.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                worker.stdin.close()  # the worker's stop request (index_worker.py)
        if self._thread is not None:
            self._thread.join(timeout)

    def _set(self, state: dict) -> None:
        self.state = state
        self.version += 1
        if self.on_change is not None:
            self.on_change()

    def _progress(self, p: dict) -> None:
        started = self.state.get("started") or time.time()
        rate = p["done"] / max(time.time() - started, 1e-6)
        self._set({**self.state, **p, "rate": round(rate, 2)})

    def _run(self, job: dict) -> None:
        with tempfile.TemporaryFile("w+") as stderr:
            end = self._talk(job, stderr)
            if end is None:  # it died without a word: say how, with its last lines
                stderr.seek(0)
                tail = "\n".join(stderr.read().strip().splitlines()[-5:])
                code = self._worker.returncode if self._worker else None
                end = {"error": f"the index process exited with code {code}: {tail}",
                       "error_type": "WorkerDied"}
        if "error" in end:
            self._set({**self.state, "state": "failed", "error": end["error"],
                       "error_type": end["error_type"], "finished": time.time()})
            return
        report = end["report"]
        if self.on_finish is not None:  # before "done": a query that follows sees it
            with contextlib.suppress(Exception):  # the run's own outcome is what counts
                self.on_finish(end["model_id"])
        final = "stopped" if report.get("interrupted") else "done"
        self._set({**self.state, "state": final, "report": report, "nice": end.get("nice"),
                   "session": end.get("session"), "group": end.get("group"),
                   "errors": len(report.get("skipped", ())), "finished": time.time()})

    def _talk(self, job: dict, stderr) -> dict | None:
        """Start the worker, follow its progress; its last message (None: it said none)."""
        worker = subprocess.Popen(
            [sys.executable, "-m", "clipsearch.server.index_worker"], text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=_same_code(),
            # A process group of its own: a Ctrl-C in the terminal is the server's to pass on.
            # Not a session of its own: with the kernel's autogroups (most desktops and
            # servers) a new session is a new CPU group that gets a share equal to the
            # server's whatever its nice value; in the server's session the nice +10 holds.
            **_OWN_GROUP)
        self._worker = worker
        end = None
        try:
            worker.stdin.write(json.dumps(job) + "\n")
            worker.stdin.flush()
            for line in worker.stdout:
                message = json.loads(line)
                if "progress" in message:
                    self._progress(message["progress"])
                else:
                    end = message
        except (OSError, ValueError):  # a broken pipe or line: the exit code tells
            pass
        finally:
            with contextlib.suppress(OSError, ValueError):
                worker.stdin.close()
            worker.wait()
            worker.stdout.close()
        return end


# Python 3.10 has no process_group: a session of its own there (the old behaviour).
_OWN_GROUP: dict = ({"process_group": 0} if sys.version_info >= (3, 11)
                    else {"start_new_session": True})


def _same_code() -> dict[str, str]:
    """The environment with this process's clipsearch first on the path: the worker runs
    the server's code, not another copy installed in the same Python."""
    here = str(Path(__file__).resolve().parents[2])  # holds clipsearch/server/jobs.py
    paths = [here, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
