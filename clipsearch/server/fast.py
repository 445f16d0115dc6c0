"""GET /api/search without FastAPI's per-request work, for the requests a photo app sends
in a loop: `q` with `limit`, `offset`, `in` and `model`, each at most once, whole numbers in
plain digits. FastAPI solves and validates the endpoint's twelve parameters on every
request (~0.6 ms of a ~2 ms budget over the query itself); this reads the five from the
query string as Starlette does and calls the same function. Anything else (filters, expr,
repeats, a number FastAPI might read differently, a wrong type) goes on to the FastAPI
route, so answers and errors stay those of the documented endpoint (its OpenAPI schema is
unchanged).

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
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

KEYS = {"q": "q", "limit": "limit", "offset": "offset", "in": "folder", "model": "model"}
NUMBERS = ("limit", "offset")
INLINE_MAX_S = 0.05  # the longest a search may hold the event loop (others wait that long)


def search_route(app: FastAPI) -> APIRoute:
    return next(r for r in app.router.routes
                if isinstance(r, APIRoute) and r.path == "/api/search")


class Inline:
    """Whether a search may run on the event loop's thread (the module's docstring)."""

    def __init__(self, busy: Callable[[], bool], max_s: float = INLINE_MAX_S):
        self.busy = busy  # the server's own index run is going
        self.max_s = max_s
        self.in_flight = 0  # requests being answered, event streams left out (Counting)
        self.last_s: dict[str | None, float] = {}  # model -> its last good search's seconds

    def ok(self, model: str | None) -> bool:
        last = self.last_s.get(model)  # None: this model's first search (it may load it)
        return self.in_flight <= 1 and last is not None and last <= self.max_s \
            and not self.busy()


class Counting:
    """ASGI middleware: the HTTP requests in progress, into `inline.in_flight` (only the
    event loop's thread changes it). Paths in `left_out` (event streams: open for hours,
    idle) are not counted."""

    def __init__(self, app: Callable, inline: Inline, left_out: frozenset[str]):
        self.app = app
        self.inline = inline
        self.left_out = left_out

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] in self.left_out:
            return await self.app(scope, receive, send)
        self.inline.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inline.in_flight -= 1


class FastSearch:
    """An ASGI app: `run_search(q=..., limit=..., ...)` (a plain function like FastAPI's
    `def` endpoints) inline or in the thread pool (`Inline`), its Response sent as is."""

    def __init__(self, run_search: Callable[..., Any], route: APIRoute, inline: Inline):
        self.run_search = run_search
        self.route = route
        self.inline = inline

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        kwargs = plain(scope.get("query_string", b""))
        if kwargs is None:
            return await self.route.handle(scope, receive, send)
        model = kwargs.get("model")
        if self.inline.ok(model):
            await asyncio.sleep(0)  # requests read with this one start (and count) first
        if self.inline.ok(model):
            response = self.timed(kwargs)
        else:
            response = await run_in_threadpool(self.timed, kwargs)
        await response(scope, receive, send)

    def timed(self, kwargs: dict[str, Any]) -> Any:
        start = time.perf_counter()
        response = self.run_search(expr=None, **kwargs)  # an ApiError: not a search's time
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
