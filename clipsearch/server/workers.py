"""`clipsearch serve --workers N`: N processes answer on one port.

One process's searches share one GIL: one client already kept it busy, and 8 clients got
0.84x of one client's rate (docs/benchmarks.md). So the process the CLI started (the
owner) starts N-1 more (serve_worker.py), each with a warm Library, and it alone runs
index runs, `--watch` and the server file.

The owner alone listens: it accepts each connection and deals it to the process with the
fewest open connections (itself included), passing the socket over a Unix socketpair
(SCM_RIGHTS); the process serves it to its end (keep-alive included). The kernel's own
spreading (SO_REUSEPORT) hashes connections: 8 clients on 2 processes landed 6/2 or 7/1
often enough that one process idled while the other was GIL-bound.

Each worker is also linked to the owner by a stream socketpair carrying JSON lines: the
owner sends the setup, then every change of its index run's state (so /api/status and the
progress events read the same everywhere); a worker asks it to start a run and passes on
its answer, and reports how many of its connections have ended. The end of the link (the
owner stopping, or dying) stops the worker.
"""

from __future__ import annotations

import asyncio
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

from clipsearch import crowd

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
    conns: socket.socket  # where accepted connections go (SCM_RIGHTS)
    slot: int  # its count's in the crowd table
    ready: threading.Event = dataclasses.field(default_factory=threading.Event)
    gone: bool = False
    dealt: int = 0  # connections passed to it
    closed: int = 0  # of those, ended (as it last reported)


def child_options(lib: Any) -> dict:
    """The Library options a worker opens the library with: the owner's model and settings."""
    options = {**dataclasses.asdict(lib.settings), **lib.default_model.to_spec(),
               "create": False, "readonly": lib.readonly}
    return {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in options.items()}


class Workers:
    """The owner's side: starts the other serving processes, deals them connections, tells
    them every change of the index run's state, starts the runs they ask for, stops them."""

    def __init__(self, lib: Any, config: Any, jobs: Any, say: Callable[[str], None] = print):
        self.jobs = jobs
        self.say = say
        self.setup = {"path": str(lib.path), "options": child_options(lib),
                      "config": dataclasses.asdict(config)}
        self.workers: list[_Worker] = []
        self._lock = threading.Lock()  # the list, and the order of state messages
        self._changed = threading.Event()
        self._stopping = False
        self._listener: socket.socket | None = None
        self._own: Any = None  # this process's server (run._Server)
        self._own_dealt = 0
        self._crowd_fd = -1  # the table all count their requests in (clip_core.crowd)

    def start(self, count: int) -> None:
        self.jobs.on_change = self._changed.set
        threading.Thread(target=self._tell_changes, name="clipsearch-workers",
                         daemon=True).start()
        # Requests in progress in every process, so that a search alone on the machine
        # spreads over the cores and one among others does not (a crowd of 8 clients: 1.6x
        # one client's rate against 1.3x).
        self._crowd_fd = crowd.host(count + 1)
        for slot in range(1, count + 1):
            self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        ours, theirs = socket.socketpair()
        conns, their_conns = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fds = (theirs.fileno(), their_conns.fileno(), self._crowd_fd)
        proc = subprocess.Popen(
            [sys.executable, "-m", "clipsearch.server.serve_worker", *map(str, fds),
             str(slot)],
            pass_fds=fds, stdin=subprocess.DEVNULL, env=_same_code(),
            # A group of its own, like the index worker: a Ctrl-C in the terminal is the
            # owner's, which stops the workers by ending their links.
            **_OWN_GROUP)
        theirs.close()
        their_conns.close()
        worker = _Worker(proc, Link(ours), conns, slot)
        with self._lock:  # the state in the setup, then every later change, in order
            worker.link.send({"setup": self.setup, "index": self._index_state()})
            self.workers.append(worker)
        threading.Thread(target=self._follow, args=(worker,), name="clipsearch-worker-link",
                         daemon=True).start()

    def _index_state(self) -> dict:
        return {"version": self.jobs.version, "state": self.jobs.state}

    def _follow(self, worker: _Worker) -> None:
        for message in worker.link.messages():
            if "closed" in message:
                worker.closed = message["closed"]
            elif "ready" in message:
                worker.ready.set()
            elif "ask" in message:
                worker.link.send({"reply": message["ask"], **self._start_run(message)})
        worker.gone = True
        worker.ready.set()  # nobody waits for a worker that has ended
        crowd.clear(worker.slot)  # requests it was answering when it ended
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

    # -- dealing connections (in the owner's event loop) ----------------------------------
    def deal(self, listener: socket.socket, own: Any) -> None:
        """Accept on `listener` from now on, in the running event loop, and deal each
        connection to the process with the fewest open ones (`own`: this process's)."""
        self._listener, self._own = listener, own
        listener.setblocking(False)
        asyncio.get_running_loop().add_reader(listener.fileno(), self._accept)

    def _accept(self) -> None:
        while self._listener is not None:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # BlockingIOError: none left for now
                return
            self._hand(conn)

    def _hand(self, conn: socket.socket) -> None:
        ready = [w for w in self.workers if w.ready.is_set() and not w.gone]
        own_open = self._own_dealt - self._own.closed
        worker = min(ready, key=lambda w: w.dealt - w.closed, default=None)
        if worker is not None and worker.dealt - worker.closed < own_open:
            try:
                socket.send_fds(worker.conns, [b"c"], [conn.fileno()])
            except OSError:  # it has ended: serve it here
                worker.gone = True
            else:
                worker.dealt += 1
                conn.close()  # this process's copy
                return
        self._own_dealt += 1
        self._own.take(conn)

    def _stop_dealing(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(listener.fileno())

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers]

    def stop(self) -> None:
        """Stop dealing and ask every worker to stop (the end of its link); returns at
        once (from a signal handler too)."""
        self._stopping = True
        self._changed.set()
        own = self._own
        if own is not None and own._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has ended
                own._loop.call_soon_threadsafe(self._stop_dealing)
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
            worker.conns.close()


def warm(app: Any) -> None:
    """Library.warm_up and one query through a reader before a process is announced: the
    text model loaded, the vector index mapped with its int8 scan, the grading bars measured
    (a cold first query costs ~0.3-1 s). Nothing to warm in an empty library, or with a
    model missing: the first query says so."""
    with contextlib.suppress(Exception), app.state.readers.one() as reader:
        reader.warm_up()
        reader.query("a photo", limit=1)
