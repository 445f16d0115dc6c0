"""`clipsearch serve --workers N`: N processes answer on one port.

One process's searches share one GIL: one client already kept it busy, and 8 clients got
0.84x of one client's rate (docs/benchmarks.md). So the process the CLI started (the
owner) serves as a single server does and alone runs index runs, `--watch` and the server
file, and it starts N-1 more (serve_worker.py), each with a warm Library and a socket of
its own on the same port: with SO_REUSEPORT the kernel spreads new connections over them.

Each is linked to the owner by a socketpair carrying JSON lines: the owner sends the setup,
then every change of its index run's state (so /api/status and the progress events read
the same everywhere); a worker asks it to start a run and passes on its answer. The end of
the link (the owner stopping, or dying) stops the worker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from .jobs import _OWN_GROUP, _same_code


class Link:
    """One end of a socketpair: JSON lines both ways, sends from any thread."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._sending = threading.Lock()
        self._lines = sock.makefile("rb")

    def send(self, message: dict) -> bool:
        # ASCII JSON: a path's undecodable bytes travel as \udcXX escapes and come back.
        data = (json.dumps(message) + "\n").encode()
        with self._sending, contextlib.suppress(OSError):
            self.sock.sendall(data)
            return True
        return False

    def messages(self) -> Iterator[dict]:
        """Every message until the other end closes (or dies)."""
        with contextlib.suppress(OSError, ValueError):
            for line in self._lines:
                yield json.loads(line)

    def end_sending(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._lines.close()
            self.sock.close()


@dataclasses.dataclass
class _Worker:
    proc: subprocess.Popen
    link: Link
    ready: threading.Event = dataclasses.field(default_factory=threading.Event)
    gone: bool = False


def child_options(lib: Any) -> dict:
    """The Library options a worker opens the library with: the owner's model and settings."""
    options = {**dataclasses.asdict(lib.settings), **lib.default_model.to_spec(),
               "create": False, "readonly": lib.readonly}
    return {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in options.items()}


class Workers:
    """The owner's side: starts the other serving processes, tells them every change of
    the index run's state, starts the runs they ask for, stops them."""

    def __init__(self, lib: Any, config: Any, jobs: Any, port: int,
                 say: Callable[[str], None] = print):
        self.jobs = jobs
        self.say = say
        self.setup = {"path": str(lib.path), "options": child_options(lib), "port": port,
                      "config": dataclasses.asdict(config)}
        self.workers: list[_Worker] = []
        self._lock = threading.Lock()  # the list, and the order of state messages
        self._changed = threading.Event()
        self._stopping = False

    def start(self, count: int) -> None:
        self.jobs.on_change = self._changed.set
        threading.Thread(target=self._tell_changes, name="clipsearch-workers",
                         daemon=True).start()
        for _ in range(count):
            self._spawn()

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair()
        proc = subprocess.Popen(
            [sys.executable, "-m", "clipsearch.server.serve_worker", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=_same_code(),
            # A group of its own, like the index worker: a Ctrl-C in the terminal is the
            # owner's, which stops the workers by ending their links.
            **_OWN_GROUP)
        theirs.close()
        worker = _Worker(proc, Link(ours))
        with self._lock:  # the state in the setup, then every later change, in order
            worker.link.send({"setup": self.setup, "index": self._index_state()})
            self.workers.append(worker)
        threading.Thread(target=self._follow, args=(worker,), name="clipsearch-worker-link",
                         daemon=True).start()

    def _index_state(self) -> dict:
        return {"version": self.jobs.version, "state": self.jobs.state}

    def _follow(self, worker: _Worker) -> None:
        for message in worker.link.messages():
            if "ready" in message:
                worker.ready.set()
            elif "ask" in message:
                worker.link.send({"reply": message["ask"], **self._start_run(message)})
        worker.gone = True
        worker.ready.set()  # nobody waits for a worker that has ended
        if not self._stopping:
            code = worker.proc.wait()
            self.say(f"clipsearch: serving process {worker.proc.pid} ended (exit code {code});"
                     " the others go on")

    def _start_run(self, message: dict) -> dict:
        try:
            state = self.jobs.start(message.get("roots"))
        except RuntimeError as exc:  # one is going: the worker answers 409, as the owner
            return {"error": str(exc)}
        return {"state": state, "version": self.jobs.version}

    def _tell_changes(self) -> None:
        while True:
            self._changed.wait()
            self._changed.clear()
            if self._stopping:
                return
            with self._lock:
                message = self._index_state()
                for worker in self.workers:
                    if not worker.gone:
                        worker.link.send(message)

    def wait_ready(self, timeout: float) -> int:
        """Until every worker answers (or has ended); how many answer."""
        for worker in list(self.workers):
            worker.ready.wait(timeout)
        return sum(1 for w in self.workers if w.ready.is_set() and not w.gone)

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers]

    def stop(self) -> None:
        """Ask every worker to stop (the end of its link); returns at once."""
        self._stopping = True
        self._changed.set()
        for worker in self.workers:
            worker.link.end_sending()

    def join(self, timeout: float) -> None:
        """Wait for the workers to end; kill what is left after `timeout`."""
        self.stop()
        for worker in self.workers:
            try:
                worker.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()
            worker.link.close()


def warm(app: Any) -> None:
    """One query through a reader before a process is announced: the text model loaded, the
    vector index mapped, the grading bars measured (a cold first query costs ~0.3-1 s).
    Nothing to warm in an empty library, or with a model missing: the first query says so."""
    with contextlib.suppress(Exception), app.state.readers.one() as reader:
        reader.query("a photo", limit=1)
