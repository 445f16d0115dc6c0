"""`clipsearch serve`: the HTTP API and the web page over one warm `Library`.

Uses only the public `clipsearch` API (tests/test_architecture.py checks it).

    from clipsearch import Library
    from clipsearch.server import ServeConfig, create_app, serve
    app = create_app(Library.open("/data/photo-index"))   # any ASGI server can run it
"""

from .app import create_app
from .config import ServeConfig, check_binding
from .run import serve

__all__ = ["ServeConfig", "check_binding", "create_app", "serve"]
