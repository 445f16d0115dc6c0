"""`clipsearch serve`: the HTTP API and the web page over one warm `Library`.

Uses only the public `clipsearch` API (tests/test_architecture.py checks it).

    from clipsearch import Library
    from clipsearch.server import ServeConfig, create_app, serve
    app = create_app(Library.open("/data/photo-index"))   # any ASGI server can run it
"""

from __future__ import annotations

from typing import Any

from .config import ServeConfig, check_binding, default_workers

__all__ = ["ServeConfig", "check_binding", "create_app", "default_workers", "serve"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the index worker (python -m clipsearch.server.index_worker)
    # needs none of the web stack.
    if name == "create_app":
        from .app import create_app
        return create_app
    if name == "serve":
        from .run import serve
        return serve
    raise AttributeError(name)
