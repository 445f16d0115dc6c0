"""GET /api/search without FastAPI's per-request work, for the requests a photo app sends
in a loop: `q` with `limit`, `offset`, `in` and `model`, each at most once, whole numbers in
plain digits. FastAPI solves and validates the endpoint's twelve parameters on every
request (~0.6 ms of a ~2 ms budget over the query itself), and its router's layers cost
~0.1 ms more with the caches cold from the search; this middleware reads the five from the
query string as Starlette does and calls the same function. Anything else (filters, expr,
repeats, a number FastAPI might read differently, a wrong type, HEAD) goes on to the
FastAPI route, so answers and errors stay those of the documented endpoint (its OpenAPI
schema is unchanged).

A plain search also skips the thread pool when that is safe (`Inline`): run on the event
loop's thread it saves the two thread hops of each request (loop -> worker -> loop), each a
wake-up that waits for a core. Safe means: no other request is being answered (event
streams left out), this model's last search took at most `INLINE_MAX_S` (so not a cold
model load), and no index run of the server's is committing (each commit makes the next
search reload the index). A request that arrives meanwhile waits for that one search (at
most about `INLINE_MAX_S`), then is answered as before; two at once go to the pool, one
reader each, side by side.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qsl

from clipsearch import crowd

KEYS = {"q": "q", "limit": "limit", "offset": "offset", "in": "folder", "model": "model"}
NUMBERS = ("limit", "offset")
SEARCH_THREADS = 8  # searches answered at once (each waits for one of the readers)
INLINE_MAX_S = 0.05  # the longest a search may hold the event loop (others wait that long)


class Inline:
    """Whether a search may run on the event loop's thread (the module's docstring)."""

    def __init__(self, busy: Callable[[], bool], max_s: float = INLINE_MAX_S):
        self.busy = busy  # the server's own index run is going
        self.max_s = max_s
        self.in_flight = 0  # requests being answered, event streams left out
        self.last_s: dict[str | None, float] = {}  # model -> its last good search's seconds

    def ok(self, model: str | None) -> bool:
        last = self.last_s.get(model)  # None: this model's first search (it may load it)
        return self.in_flight <= 1 and last is not None and last <= self.max_s \
            and not self.busy()


class FastSearch:
    """ASGI middleware, outermost but for Starlette's error handling (and CORS when on):
    counts the requests in progress into `inline.in_flight` (only the event loop's thread
    changes it; paths in `left_out`, event streams open for hours, are not counted) and
    answers a plain GET /api/search itself, without the router's layers: `run_search(q=...,
    limit=..., ...)` (a plain function like FastAPI's `def` endpoints) inline or in the
    thread pool (`Inline`), an `error` it raises answered by `on_error` (as the app's
    exception handler answers it). Every other request goes on to `app`."""

    def __init__(self, app: Callable, *, run_search: Callable[..., Any], inline: Inline,
                 error: type[Exception], on_error: Callable[[Any], Any],
                 left_out: frozenset[str] = frozenset()):
        self.app = app
        self.run_search = run_search
        self.inline = inline
        self.error = error
        self.on_error = on_error
        self.left_out = left_out
        # Its own threads, not anyio's to_thread (capacity limiter, backend lookups: ~19%
        # of a busy process's GIL time): a search waits for a free reader anyway.
        self.pool = ThreadPoolExecutor(SEARCH_THREADS, thread_name_prefix="clipsearch-search")

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] in self.left_out:
            return await self.app(scope, receive, send)
        self.inline.in_flight += 1
        crowd.enter()  # meanwhile a search's compute does not spread over the cores
        try:
            kwargs = (plain(scope["query_string"]) if scope["path"] == "/api/search"
                      and scope["method"] == "GET" and not scope.get("root_path") else None)
            if kwargs is None:
                await self.app(scope, receive, send)
            else:
                await self.search(kwargs, scope, receive, send)
        finally:
            self.inline.in_flight -= 1
            crowd.leave()

    async def search(self, kwargs: dict[str, Any], scope: dict, receive: Callable,
                     send: Callable) -> None:
        model = kwargs.get("model")
        try:
            if self.inline.ok(model):
                await asyncio.sleep(0)  # requests read with this one start (and count) first
            if self.inline.ok(model):
                response = self.timed(kwargs)
            else:
                response = await asyncio.get_running_loop().run_in_executor(
                    self.pool, self.timed, kwargs)
        except self.error as exc:
            response = self.on_error(exc)
        await response(scope, receive, send)

    def timed(self, kwargs: dict[str, Any]) -> Any:
        start = time.perf_counter()
        response = self.run_search(expr=None, **kwargs)  # an error: not a search's time
        self.inline.last_s[kwargs.get("model")] = time.perf_counter() - start
        return response


def plain(query_string: bytes) -> dict[str, Any] | None:
    """The keyword arguments of run_search for a plain request, or None. Parsed as
    Starlette's QueryParams parses (latin-1, then percent-decoded UTF-8, blanks kept)."""
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    kwargs: dict[str, Any] = {}
    for key, value in pairs:
        name = KEYS.get(key)
        if name is None or name in kwargs:
            return None
        if key in NUMBERS:
            if not (value.isascii() and value.isdigit() and len(value) <= 9):
                return None
            kwargs[name] = int(value)
        else:
            kwargs[name] = value
    return kwargs if "q" in kwargs else None
