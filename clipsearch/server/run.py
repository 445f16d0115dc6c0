"""Running the server: bind, print the URL, answer until Ctrl-C or SIGTERM, stop cleanly
(with `--workers N`, in N processes: workers.py).

On a stop signal the index run in flight is asked to stop (it commits the batch it holds),
event streams end, and the warm library is closed after uvicorn has finished its requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable

import uvicorn

from clipsearch import Library, watch_roots
from clipsearch.remote import remove_server_file, write_server_file

from .app import create_app
from .config import ServeConfig, check_binding
from .workers import Workers, warm


class _Server(uvicorn.Server):
    """uvicorn serving `app` as every serving process does (the owner and serve_worker.py's)."""

    def __init__(self, app: Callable, on_exit: Callable[[], None],
                 on_ready: Callable[[], None],
                 on_tick: Callable[[_Server], None] | None = None):
        super().__init__(uvicorn.Config(app, log_level="warning", lifespan="off",
                                        timeout_graceful_shutdown=5))
        self._on_exit = on_exit
        self._on_ready = on_ready
        self._on_tick = on_tick
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = 0  # connections handed over by take() that have ended

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        if not self.should_exit:  # serving, with the stop signals handled: say so
            self._on_ready()

    async def on_tick(self, counter: int) -> bool:
        if self._on_tick is not None:  # every 0.1 s
            self._on_tick(self)
        return await super().on_tick(counter)

    def take(self, sock: socket.socket) -> None:
        """Serve a connection accepted elsewhere (workers.py deals them out); any thread."""
        if self._loop is None:
            sock.close()
            return
        self._loop.call_soon_threadsafe(self._loop.create_task, self._serve_taken(sock))

    async def _serve_taken(self, sock: socket.socket) -> None:
        # The protocol uvicorn's own listener makes (uvicorn.Server.startup).
        protocol = self.config.http_protocol_class(  # type: ignore[call-arg]
            config=self.config, server_state=self.server_state, app_state=self.lifespan.state)
        lost = protocol.connection_lost

        def connection_lost(exc: Exception | None) -> None:
            self.closed += 1
            lost(exc)

        protocol.connection_lost = connection_lost  # type: ignore[method-assign]
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: protocol, sock)
        except OSError:  # the client left already
            self.closed += 1
            sock.close()

    def handle_exit(self, sig: int, frame: object) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)
        # uvicorn raises the signal again once it has stopped, which would kill the process
        # before the index run has committed its batch: the stop is handled, exit normally.
        self._captured_signals.clear()


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are
    # TCP, and without it a keep-alive response waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(2048)  # connections wait in the backlog until uvicorn accepts them
    sock.set_inheritable(True)
    return sock


def url_of(config: ServeConfig, port: int) -> str:
    host = f"[{config.host}]" if ":" in config.host else config.host
    token = f"?token={config.token}" if config.token else ""
    return f"http://{host}:{port}/{token}"


def serve(lib: Library, config: ServeConfig,
          announce: Callable[[str], None] = print) -> None:
    """Serve `lib` until a stop signal. Raises ValueError (binding refused), OSError (the
    port is taken)."""
    check_binding(config)
    guard = create_app(lib, config)
    app = guard.app
    sock = bind(config.host, config.port)
    port = sock.getsockname()[1]
    # --workers N: N-1 more serving processes; this one accepts every connection and deals
    # them out, and owns index runs.
    spread = config.workers > 1
    workers = Workers(lib, config, app.state.jobs, say=announce) if spread else None

    stop = threading.Event()

    def stopping() -> None:
        stop.set()
        app.state.stopping = True
        app.state.jobs.stop(timeout=0)  # only ask here; joined below
        if workers is not None:
            workers.stop()  # they stop at the same time as this one

    if config.watch:
        if app.state.read_only:
            raise ValueError("--watch indexes, --read-only does not: pick one")
        threading.Thread(target=keep_indexed, args=(lib, app.state.jobs, stop),
                         name="clipsearch-watch", daemon=True).start()

    def ready() -> None:
        if workers is not None:
            workers.deal(sock, server)  # from now on, in this event loop
        with contextlib.suppress(OSError):  # a read-only library: the CLI works in-process
            write_server_file(lib.path, config.host, port, config.token)
        announce(f"clipsearch serves {lib.path} at {url_of(config, port)}"
                 + (f"  ({config.workers} processes)" if spread else "")
                 + ("  (read-only)" if app.state.read_only else "")
                 + ("  (watching the roots)" if config.watch else ""))

    server = _Server(guard, stopping, ready)
    try:
        if workers is not None:
            workers.start(config.workers - 1)
            warm(app)  # meanwhile the others warm up too
            workers.wait_ready(timeout=300)
        else:  # one process: it answers at once, and is warm within a second or two
            threading.Thread(target=warm, args=(app,), daemon=True,
                             name="clipsearch-warm").start()
        server.run(sockets=[] if workers is not None else [sock])
    finally:
        remove_server_file(lib.path)
        if workers is not None:
            workers.stop()
        app.state.jobs.stop(timeout=120)  # the run commits its batch in flight
        if workers is not None:
            workers.join(timeout=30)
        app.state.readers.close()  # before the caller closes the library
        sock.close()


def keep_indexed(lib: Library, jobs, stop: threading.Event) -> None:
    """--watch: index every root now, then the roots under which something changed, through
    the same runs as POST /api/index (the page shows their progress). Changes during a run
    wait for its end; a run refused because another process indexes is tried again."""
    pending = set(lib.roots)
    last: list[str] = []
    retried = -1  # the jobs.version of the busy failure already retried
    for touched in watch_roots(lib.roots, ignore=[lib.path], stop=stop):
        state = jobs.state
        if (not jobs.running and jobs.version != retried and state.get("state") == "failed"
                and state.get("error_type") == "LibraryBusyError"):
            pending.update(last)
            retried = jobs.version
        pending.update(touched)
        if pending and not jobs.running and not stop.is_set():
            last = sorted(pending)
            pending.clear()
            try:
                jobs.start(last)
            except RuntimeError:  # a POST /api/index got there first
                pending.update(last)
