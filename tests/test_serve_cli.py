"""`clipsearch query` asks the library's running server (found through LIBRARY/server.json,
checked for liveness and identity) and prints exactly what it prints in-process."""

from __future__ import annotations

import json
import os
import signal

import clipsearch.remote
from clipsearch import SearchResult
from tests.helpers import PAIRS, assert_only_near_ties_swap, cli, cli_json
from tests.serve_support import indexed_library, start_server

QUERIES = [("a", "red", "circle", "-n", "5"), ("a green square", "--paths")]
JSON_QUERIES = [f"{c} {s}" for c, s in PAIRS[:8]]  # "red circle": asked as "a red circle"


def json_rankings(lib_dir) -> dict[str, list[SearchResult]]:
    return {q: [SearchResult(**r) for r in cli_json("query", f"a {q}", "-n", "10",
                                                        library=lib_dir)]
            for q in JSON_QUERIES}


def _same_but_the_score(mine: str, theirs: str, tolerance: float = 0.005) -> bool:
    """One printed result line ("rank  score  grade  path", or a path alone) the same, but
    for a score within `tolerance` (int8 vs fp32 text vectors: measured 0.001 apart)."""
    if mine == theirs:
        return True
    a, b = mine.split(), theirs.split()
    return (len(a) == len(b) >= 4 and a[0] == b[0] and a[2:] == b[2:]
            and abs(float(a[1]) - float(b[1])) <= tolerance)


def test_query_asks_a_running_server_and_prints_the_same(tmp_path, monkeypatch):
    lib_dir = indexed_library(tmp_path)
    answered: list[bool] = []
    real = clipsearch.remote.query_server

    def spy(*args, **kwargs):
        results = real(*args, **kwargs)
        answered.append(results is not None)
        return results

    monkeypatch.setattr(clipsearch.remote, "query_server", spy)
    here = [cli("query", *q, library=lib_dir).stdout for q in QUERIES]
    here_json = json_rankings(lib_dir)
    assert answered and not any(answered)  # no server yet: in-process
    answered.clear()

    proc, _ = start_server(lib_dir)
    try:
        info = json.loads((lib_dir / "server.json").read_text())
        assert info["pid"] == proc.pid
        assert oct((lib_dir / "server.json").stat().st_mode)[-3:] == "600"
        served = [cli("query", *q, library=lib_dir).stdout for q in QUERIES]
        served_json = json_rankings(lib_dir)
        assert answered and all(answered)
        # The same printing; the server's long-lived text tower (int8 on onnxruntime) and the
        # CLI's one-shot numpy tower agree within their checked tolerance: near-ties may swap,
        # and a printed score may differ in its last digit.
        for mine, theirs in zip(served, here, strict=True):
            assert _same_but_the_score(mine.splitlines()[0], theirs.splitlines()[0])
            assert len(mine.splitlines()) == len(theirs.splitlines())
        assert_only_near_ties_swap(here_json, served_json)
        inside = cli_json("query", "a red circle", "--in", str(tmp_path / "photos"),
                          library=lib_dir)
        assert answered[-1] and inside
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    assert not (lib_dir / "server.json").exists()  # withdrawn on the way out


def test_a_stale_or_foreign_server_file_is_ignored(tmp_path):
    lib_dir = indexed_library(tmp_path)
    expected = cli("query", "a red circle", "--json", library=lib_dir).stdout
    server_file = lib_dir / "server.json"
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    for info in ({"pid": dead, "host": "127.0.0.1", "port": 9, "token": None},  # crashed
                 {"pid": os.getpid(), "host": "127.0.0.1", "port": 9, "token": None},  # no one
                 "not json"):
        server_file.write_text(json.dumps(info) if isinstance(info, dict) else info)
        assert cli("query", "a red circle", "--json", library=lib_dir).stdout == expected
