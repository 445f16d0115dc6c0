"""A serving process of `clipsearch serve --workers N` other than the owner (workers.py):
`python -m clipsearch.server.serve_worker LINK CONNS CROWD SLOT`, the file descriptors of its
link to the owner (JSON lines), of the socket the owner passes it connections through and of
the table every serving process counts its requests in (clip_core.crowd), and its slot there.

It opens the library with the owner's model and settings, answers one query to warm up
and serves the same app on every connection the owner passes it, reporting how many have
ended. Index runs are the owner's: `POST /api/index` asks it over the link, and the run's
state (/api/status, the progress events) is the one the owner last sent. The link's end
(the owner stopping, or dying) stops this process.
"""

from __future__ import annotations

import os
import queue
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Sequence

from clipsearch import crowd

from .workers import Link, warm

ANSWER_WITHIN = 30.0  # seconds the owner has to answer a request to start a run


class OwnersJobs:
    """IndexJobs' face in a process that does not run index runs: the owner's state as it
    last sent it (`version` is the owner's, so events move when the owner's state moves),
    and start() asks the owner."""

    def __init__(self, link: Link, state: dict, version: int):
        self.link = link
        self.state, self.version = state, version
        self._lock = threading.Lock()
        self._asked = 0
        self._waiting: dict[int, queue.Queue] = {}

    @property
    def running(self) -> bool:
        return self.state.get("state") == "running"

    def start(self, roots: Sequence[str] | None = None) -> dict:
        """As IndexJobs.start, through the owner: RuntimeError when a run is going (or the
        owner does not answer)."""
        answer: queue.Queue = queue.Queue(1)
        with self._lock:
            self._asked += 1
            ask = self._asked
            self._waiting[ask] = answer
        try:
            if not self.link.send({"ask": ask, "roots": list(roots) if roots else None}):
                raise RuntimeError("the serving process that runs index runs is gone")
            try:
                reply = answer.get(timeout=ANSWER_WITHIN)
            except queue.Empty:
                raise RuntimeError("the serving process that runs index runs did not "
                                   "answer") from None
        finally:
            with self._lock:
                self._waiting.pop(ask, None)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        self._update(reply["state"], reply["version"])
        return dict(reply["state"])

    def stop(self, timeout: float = 0) -> None:
        """Nothing runs here to stop."""

    def wait(self, timeout: float | None = None) -> None:
        """Nothing runs here to wait for."""

    def _update(self, state: dict, version: int) -> None:
        with self._lock:
            if version >= self.version:  # a reply and a broadcast may cross
                self.state, self.version = state, version

    def follow(self, messages: Iterator[dict], at_end: Callable[[], None]) -> None:
        """Take in the owner's messages until the link ends, then call `at_end`."""
        for message in messages:
            if "reply" in message:
                with self._lock:
                    waiting = self._waiting.get(message["reply"])
                if waiting is not None:
                    waiting.put(message)
            elif "state" in message:
                self._update(message["state"], message["version"])
        at_end()


def main(argv: list[str]) -> int:
    link = Link(socket.socket(fileno=int(argv[1])))
    conns = socket.socket(fileno=int(argv[2]))
    crowd.share(int(argv[3]), int(argv[4]))
    messages = link.messages()
    first = next(messages, None)
    if first is None:  # the owner ended before it said anything
        return 0
    setup = first["setup"]
    jobs = OwnersJobs(link, first["index"]["state"], first["index"]["version"])
    running: dict = {}

    def owner_gone() -> None:
        server = running.get("server")
        if server is None:  # still starting: nothing to finish
            os._exit(0)
        running["app"].state.stopping = True  # event streams end
        server.should_exit = True

    threading.Thread(target=jobs.follow, args=(messages, owner_gone), daemon=True,
                     name="clipsearch-owner-link").start()

    from clipsearch import Library

    from .app import create_app
    from .config import ServeConfig
    from .run import _Server

    config = ServeConfig(**setup["config"])
    with Library(setup["path"], **setup["options"]) as lib:
        guard = create_app(lib, config, jobs=jobs)
        app = guard.app
        warm(app)

        def stopping() -> None:  # a signal sent to this process itself
            app.state.stopping = True

        reported = [0]

        def report(server: _Server) -> None:  # how many have ended: the owner deals by it
            if server.closed != reported[0]:
                reported[0] = server.closed
                link.send({"closed": server.closed})

        server = _Server(guard, stopping, lambda: link.send({"ready": os.getpid()}), report)
        running.update(server=server, app=app)
        threading.Thread(target=take_connections, args=(conns, server), daemon=True,
                         name="clipsearch-connections").start()
        try:
            server.run(sockets=[])  # no socket of its own: the owner's connections
        finally:
            app.state.readers.close()  # before the library closes
    return 0


def take_connections(conns: socket.socket, server: object) -> None:
    """Serve each connection the owner passes, until it closes its end."""
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(conns, 1, 8)
        except OSError:
            return
        if not data and not fds:  # the owner's end is closed
            return
        for fd in fds:
            server.take(socket.socket(fileno=fd))  # type: ignore[attr-defined]


if __name__ == "__main__":
    sys.exit(main(sys.argv))
