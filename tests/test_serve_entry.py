"""The `clipsearch` console script (clipsearch_entry): with a live server, a plain text query
is answered without importing the clipsearch package, and prints exactly the bytes the full
CLI prints; everything else, and every query without a live server, goes to the full CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from clipsearch import Library, SearchResult
from clipsearch_entry import LIBRARY_HEADER, RESULT_FIELDS, library_tag
from tests.helpers import draw_photos
from tests.serve_support import REPO, start_server

# The console script pip writes for `clipsearch = "clipsearch_entry:main"`, plus a record of
# the modules the process imported.
SCRIPT = """import atexit, os, sys
atexit.register(lambda: open(os.environ["MODULES_OUT"], "w").write("\\n".join(sys.modules)))
from clipsearch_entry import main
sys.exit(main())
"""
FAST = [  # plain text queries the server answers
    ("query", "a", "red", "circle"),
    ("query", "a red circle", "-n", "3", "--json"),
    ("query", "--limit=4", "a", "blue", "square", "--paths"),
    ("query", "red", "circle", "--paths", "-0", "-n", "40"),
    ("query", "a green triangle", "--in", "PHOTOS/odd", "--json"),
    ("query", "a green triangle", "--model", "shapes-tiny", "-n", "2", "--json", "--json"),
    ("query", "zzzz qqqq xxxx"),  # graded: may say "No good match" first
]
FULL = [  # the full CLI: other forms, other commands, bad input
    ("query", "a", "dog", "+", "snow"),
    ("query", "2:red circle"),
    ("query", "id:1"),
    ("query", "a red circle", "-n", "0"),
    ("query", "a red circle", "--json", "--paths"),
    ("query", "a red circle", "-0"),
    ("query", "a red circle", "--after", "2020"),
    ("query", "a red circle", "--in", "PHOTOS/odd/name.png"),  # a file, not a folder
    ("query", "a red circle", "--library"),
    ("query", "   "),
    ("query",),
    ("status", "--json"),
    ("--version",),
]


def run(argv: tuple[str, ...], lib_dir: Path, entry: bool, tmp_path: Path,
        env: dict | None = None) -> tuple[tuple[int, bytes, bytes], set[str]]:
    """(exit code, stdout, stderr) of the console script (entry) or the full CLI, and the
    modules the console script imported."""
    argv = tuple(a.replace("PHOTOS", str(lib_dir.parent / "photos")) for a in argv)
    if "--library" not in argv and not (env or {}).get("CLIPSEARCH_LIBRARY"):
        argv += ("--library", str(lib_dir))
    out = tmp_path / f"modules-{uuid.uuid4().hex}.txt"  # runs may overlap (in_pairs)
    script = SCRIPT if entry else SCRIPT.replace("clipsearch_entry", "clipsearch.cli")
    command = [sys.executable, "-c", script]  # the same program name in click's messages
    proc = subprocess.run([*command, *argv], capture_output=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO), "MODULES_OUT": str(out),
                               **(env or {})}, timeout=120)
    return (proc.returncode, proc.stdout, proc.stderr), set(out.read_text().split())


def in_pairs(argvs, lib_dir: Path, tmp_path: Path, env: dict | None = None) -> list:
    """run() of each argv through the console script and through the full CLI, two
    processes at a time (the suite's time: ~45 CLI starts): [(entry's, full CLI's), ...]."""
    jobs = [(argv, entry) for argv in argvs for entry in (True, False)]
    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda job: run(job[0], lib_dir, job[1], tmp_path, env=env), jobs))
    return list(zip(done[::2], done[1::2], strict=True))


def odd_library(tmp_path: Path) -> Path:
    """A shapes library with a file whose name needs escaping (undecodable byte, newline,
    non-ASCII), in a folder of its own."""
    photos = tmp_path / "photos"
    draw_photos(photos, per_pair=1, seed=91)
    (photos / "odd").mkdir()
    odd = os.fsencode(photos / "odd") + b"/gr\xc3\xbcn-triangle-\xff\n.png"
    os.rename(photos / "green-triangle-0.png", odd)
    os.link(odd, os.fsencode(photos / "odd" / "name.png"))
    with Library(tmp_path / "lib", model="shapes-tiny") as lib:
        lib.index([photos])
    return tmp_path / "lib"


def test_the_entry_knows_every_result_field():
    assert tuple(f.name for f in dataclasses.fields(SearchResult)) == RESULT_FIELDS


def test_plain_queries_skip_the_package_and_print_the_same_bytes(tmp_path):
    lib_dir = odd_library(tmp_path)
    proc, _ = start_server(lib_dir)
    try:
        for argv, ((fast, modules), (full, _)) in zip(FAST, in_pairs(FAST, lib_dir, tmp_path),
                                                      strict=True):
            assert "clipsearch" not in modules and "click" not in modules, argv
            assert fast == full, argv
            assert fast[0] == 0 and fast[1], argv
        odd = run(("query", "a green triangle", "--in", "PHOTOS/odd"), lib_dir, True,
                  tmp_path)[0][1]
        assert b"gr\xc3\xbcn-triangle-\\xff\\n.png" in odd  # escaped as the CLI does
        for argv, ((got, modules), (full, _)) in zip(FULL, in_pairs(FULL, lib_dir, tmp_path),
                                                     strict=True):
            assert "clipsearch.cli" in modules, argv
            assert got == full, argv
        # The library named by the environment, as --library's envvar.
        env = {"CLIPSEARCH_LIBRARY": str(lib_dir)}
        ((fast, modules), (full, _)), = in_pairs([("query", "a red circle", "--json")],
                                                 lib_dir, tmp_path, env)
        assert "clipsearch" not in modules
        assert fast == full
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, proc.stderr.read()


def answering(lib_dir: Path, body: bytes) -> ThreadingHTTPServer:
    """A live server of this library (it names it) that answers every request with `body`."""
    tag = library_tag(lib_dir)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header(LIBRARY_HEADER, tag)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_without_a_live_server_the_full_cli_answers(tmp_path):
    lib_dir = odd_library(tmp_path)
    argv = ("query", "a red circle", "--json")
    expected = run(argv, lib_dir, False, tmp_path)[0]  # in-process: no server file
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    listener = __import__("socket").create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]  # alive, listening, but not a clipsearch server
    listener.close()
    for info in (None,  # no server file
                 {"pid": dead, "host": "127.0.0.1", "port": port, "token": None},  # crashed
                 {"pid": os.getpid(), "host": "127.0.0.1", "port": port, "token": None},
                 {"pid": os.getpid(), "host": "127.0.0.1", "port": "x"},
                 "not json"):
        if info is not None:
            (lib_dir / "server.json").write_text(
                json.dumps(info) if isinstance(info, dict) else info)
        got, modules = run(argv, lib_dir, True, tmp_path)
        assert "clipsearch.cli" in modules, info
        assert got == expected, info
    # A live server of this library whose answer this version cannot read (an older or
    # newer server still running across an upgrade): the full CLI answers. Each output
    # form meets a bad answer (one form a body: 8 CLI starts, not 24).
    forms = (argv, ("query", "a red circle"), ("query", "a red circle", "--paths"), argv)
    bodies = (b'{"results": [{"path": 1}]}', b'{"results": 3}', b"[]", b"\xff")
    for body, form in zip(bodies, forms, strict=True):
        server = answering(lib_dir, body)
        try:
            (lib_dir / "server.json").write_text(json.dumps(
                {"pid": os.getpid(), "host": "127.0.0.1", "port": server.server_address[1],
                 "token": None}))
            ((got, modules), (full, _)), = in_pairs([form], lib_dir, tmp_path)
            assert "clipsearch.cli" in modules, body
            assert got == full, body
        finally:
            server.shutdown()
