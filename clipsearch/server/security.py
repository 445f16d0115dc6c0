"""Who may talk to the server: the token, the Host header, the Origin of writes.

- With a token, every request carries it (`Authorization: Bearer T`, the `clipsearch_token`
  cookie, or `?token=T`); the page gets it once from its URL and keeps it in a cookie.
- Bound to loopback, only loopback Host names are answered: a web page cannot reach the
  server through DNS rebinding (a name of its own that it points at 127.0.0.1).
- A request that changes something (POST) from another site's page is refused, unless that
  origin was allowed with `--cors`.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode

from .config import LOOPBACK_NAMES, ServeConfig, is_loopback

COOKIE = "clipsearch_token"
Scope = dict
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


class Guard:
    def __init__(self, app: Callable, config: ServeConfig):
        self.app = app
        self.config = config
        self.check_host = is_loopback(config.host)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if self.check_host and _host_name(host) not in LOOPBACK_NAMES:
            return await _refuse(send, 403, f"unknown Host header {host!r}: this server "
                                 "answers only to localhost / 127.0.0.1")
        origin = headers.get("origin")
        if (scope["method"] not in ("GET", "HEAD", "OPTIONS") and origin
                and origin not in self.config.cors and _host_of(origin) != host):
            return await _refuse(send, 403, f"requests from {origin} may not change "
                                 "anything here (see --cors)")
        token = self.config.token
        if token is None:
            return await self.app(scope, receive, send)
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        given = _bearer(headers.get("authorization", "")) or _cookie(headers.get("cookie", ""))
        if given and hmac.compare_digest(given.encode(), token.encode()):
            return await self.app(scope, receive, send)
        in_url = query.get("token", "")
        if in_url and hmac.compare_digest(in_url.encode(), token.encode()):
            if scope["path"] == "/" and scope["method"] == "GET":
                return await _keep_token(send, token, query)
            return await self.app(scope, receive, send)
        return await _refuse(send, 401, "this server needs its token: open the URL that "
                             "`clipsearch serve` printed, or send 'Authorization: Bearer TOKEN'")


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host[1:].split("]")[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _host_of(origin: str) -> str:
    return origin.split("://", 1)[-1]


def _bearer(value: str) -> str:
    scheme, _, credentials = value.partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else ""


def _cookie(value: str) -> str:
    jar = SimpleCookie()
    try:
        jar.load(value)
    except Exception:  # a malformed Cookie header is no token
        return ""
    return jar[COOKIE].value if COOKIE in jar else ""


async def _keep_token(send: Send, token: str, query: dict[str, str]) -> None:
    """The page's first visit: keep the token in a cookie and drop it from the address bar
    (and so from history and bookmarks)."""
    rest = urlencode({k: v for k, v in query.items() if k != "token"})
    await send({"type": "http.response.start", "status": 303, "headers": [
        (b"location", ("/?" + rest if rest else "/").encode()),
        (b"set-cookie", f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict".encode()),
        (b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


async def _refuse(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message, "status": status}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
