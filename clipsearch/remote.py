"""A running `clipsearch serve` found through its library: the CLI asks it instead of loading
the model itself.

The server writes LIBRARY/server.json (pid, address, port, token; 0600 like the rest of the
library) when it starts and removes it when it stops. A client uses it only when that pid is
alive and the answer names the same library; anything else (no file, a stale one, a refused
connection, an error answer) sends it back to working in-process.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import urllib.parse
import urllib.request
from dataclasses import fields
from pathlib import Path

from search import SearchResult
from search.grading import QueryResults

SERVER_FILE = "server.json"
LIBRARY_HEADER = "X-Clipsearch-Library"


def library_tag(path: str | os.PathLike) -> str:
    """The library's path as an HTTP header value (any bytes, quoted)."""
    return urllib.parse.quote(os.fsencode(os.path.abspath(path)))


def write_server_file(library: Path, host: str, port: int, token: str | None) -> Path:
    """Announce a server of `library` (atomically; private to the user like the library)."""
    connect = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    data = json.dumps({"pid": os.getpid(), "host": connect, "port": port, "token": token})
    fd, tmp = tempfile.mkstemp(dir=library, prefix=".tmp-server-")  # 0600
    with os.fdopen(fd, "w") as f:
        f.write(data)
    path = library / SERVER_FILE
    os.replace(tmp, path)
    return path


def remove_server_file(library: Path) -> None:
    """Withdraw the announcement, if it still is this process's."""
    path = library / SERVER_FILE
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()


def query_server(library: str | os.PathLike | None, text: str, *, limit: int = 10,
                 within: str | os.PathLike | None = None, model: str | None = None,
                 timeout: float = 30.0) -> QueryResults | None:
    """The results of a text query from the library's running server, or None when there is
    no live server of this library or it did not answer with results.

        query_server("~/.local/share/clipsearch/library", "a red circle", limit=5)
    """
    from .api import default_library_dir

    folder = Path(library).expanduser().absolute() if library else default_library_dir()
    try:
        info = json.loads((folder / SERVER_FILE).read_text())
        os.kill(int(info["pid"]), 0)  # alive (a stale file after a crash is ignored)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    params = {"q": text, "limit": limit}
    if within is not None:
        params["in"] = os.path.abspath(os.fspath(within))
    if model is not None:
        params["model"] = model
    host = f"[{info['host']}]" if ":" in str(info["host"]) else info["host"]
    request = urllib.request.Request(
        f"http://{host}:{int(info['port'])}/api/search?{urllib.parse.urlencode(params)}")
    if info.get("token"):
        request.add_header("Authorization", f"Bearer {info['token']}")
    try:
        with _opener().open(request, timeout=timeout) as response:
            if response.headers.get(LIBRARY_HEADER) != library_tag(folder):
                return None  # another server took the port since
            body = json.loads(response.read())
    except (OSError, ValueError):  # refused, timed out, an error answer: work in-process
        return None
    names = {f.name for f in fields(SearchResult)}
    results = QueryResults(SearchResult(**{k: v for k, v in r.items() if k in names})
                           for r in body["results"])
    results.good_match, results.reason = body.get("good_match"), body.get("reason")
    return results


def _opener() -> urllib.request.OpenerDirector:
    # No proxies: the server is on this machine, and http_proxy must not see the token.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))

