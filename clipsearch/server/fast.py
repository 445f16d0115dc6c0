"""GET /api/search without FastAPI's per-request work, for the requests a photo app sends
in a loop: `q` with `limit`, `offset`, `in` and `model`, each at most once, whole numbers in
plain digits. FastAPI solves and validates the endpoint's twelve parameters on every
request (~0.6 ms of a ~2 ms budget over the query itself); this reads the five from the
query string as Starlette does and calls the same function. Anything else (filters, expr,
repeats, a number FastAPI might read differently, a wrong type) goes on to the FastAPI
route, so answers and errors stay those of the documented endpoint (its OpenAPI schema is
unchanged).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

KEYS = {"q": "q", "limit": "limit", "offset": "offset", "in": "folder", "model": "model"}
NUMBERS = ("limit", "offset")


def search_route(app: FastAPI) -> APIRoute:
    return next(r for r in app.router.routes
                if isinstance(r, APIRoute) and r.path == "/api/search")


class FastSearch:
    """An ASGI app: `run_search(q=..., limit=..., ...)` in the thread pool (it is a plain
    function like FastAPI's `def` endpoints), its Response sent as is."""

    def __init__(self, run_search: Callable[..., Any], route: APIRoute):
        self.run_search = run_search
        self.route = route

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        kwargs = plain(scope.get("query_string", b""))
        if kwargs is None:
            return await self.route.handle(scope, receive, send)
        response = await run_in_threadpool(self.run_search, expr=None, **kwargs)
        await response(scope, receive, send)


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
