"""A running `clipsearch serve` found through its library: the CLI asks it instead of loading
the model itself.

The server writes LIBRARY/server.json (pid, address, port, token; 0600 like the rest of the
library) when it starts and removes it when it stops. A client uses it only when that pid is
alive and the answer names the same library; anything else (no file, a stale one, a refused
connection, an error answer) sends it back to working in-process. The client side is in
clipsearch_entry (the console script), which speaks to the server before this package loads.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import fields
from pathlib import Path

# The client side lives in the `clipsearch` command's entry module, which answers plain
# queries without importing this package; one protocol, one place.
from clipsearch_entry import LIBRARY_HEADER, SERVER_FILE, ask_server, library_tag
from search import SearchResult
from search.grading import QueryResults

__all__ = ["LIBRARY_HEADER", "SERVER_FILE", "library_tag", "query_server",
           "remove_server_file", "write_server_file"]


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
    body = ask_server(os.fspath(library) if library else None, text, limit=limit,
                      within=os.fspath(within) if within is not None else None, model=model,
                      timeout=timeout)
    if body is None:
        return None
    names = {f.name for f in fields(SearchResult)}
    try:
        results = QueryResults(SearchResult(**{k: v for k, v in r.items() if k in names})
                               for r in body["results"])
    except (TypeError, AttributeError):  # a server of another version: work in-process
        return None
    results.good_match, results.reason = body.get("good_match"), body.get("reason")
    return results
