"""Where one HTTP search's time goes (issue 13): part a of bench.serve_speed's loop (the
in-process query alternating with the same query over keep-alive HTTP) against a
`clipsearch serve` that stamps each request with time.perf_counter_ns (CLOCK_MONOTONIC: the
client's stamps and the server's compare). Medians in microseconds, one JSON object.

    python -m bench.serve_stamps LIBRARY [--queries 200] [--model ViT-B-32 --pretrained none]

The stamps wrap uvicorn's HttpToolsProtocol, the Guard, the fast path (FastSearch) and
Library.query in the server process only, for a profile: they cost it a few us.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ns = time.perf_counter_ns
STAGES = [  # (name, from, to): server stamps, and the client's c0 (sent) and ch (headers)
    ("client request -> data_received", "c0", "r0"),
    ("httptools parse -> message complete", "r0", "r1"),
    ("-> Guard", "r1", "g0"),
    ("Guard -> fast path", "g0", "s0"),
    ("fast path -> run_search (hop or inline)", "s0", "s1"),
    ("-> Library.query", "s1", "q0"),
    ("Library.query", "q0", "q1"),
    ("rows, JSON, Response", "q1", "s3"),
    ("-> sending (hop back)", "s3", "s4"),
    ("sending", "s4", "s5"),
    ("-> client has the headers", "s5", "ch"),
    ("total", "c0", "c1"),
]


def serve(out: str, argv: list[str]) -> None:
    """The server: `clipsearch serve ARGV` with stamps, written to `out` at exit."""
    import uvicorn.protocols.http.httptools_impl as h

    import clipsearch.api as api
    import clipsearch.server.fast as fast
    import clipsearch.server.security as security
    from clipsearch.cli import main

    rows: list[dict] = []
    pre: dict[str, int] = {}
    cur: dict[str, int] = {}

    def wrap(cls, name, before=None, after=None):
        inner = getattr(cls, name)

        def outer(self, *a, **k):
            before(self, a, k) if before else None
            try:
                return inner(self, *a, **k)
            finally:
                after() if after else None
        setattr(cls, name, outer)

    wrap(h.HttpToolsProtocol, "data_received", lambda *_: pre.__setitem__("r0", ns()))
    wrap(h.HttpToolsProtocol, "on_message_complete", lambda *_: pre.__setitem__("r1", ns()))
    guard = security.Guard.__call__

    async def guarded(self, scope, receive, send):  # uvicorn reads this signature (ASGI 3)
        pre["g0"] = ns()
        await guard(self, scope, receive, send)

    security.Guard.__call__ = guarded
    wrap(api.Library, "query", lambda *_: cur.__setitem__("q0", ns()),
         lambda: cur.__setitem__("q1", ns()))

    class Stamped:  # the response: stamps when its sending starts
        def __init__(self, response):
            self.response = response

        async def __call__(self, scope, receive, send):
            cur["s4"] = ns()
            await self.response(scope, receive, send)

    init = fast.FastSearch.__init__

    def stamped_init(self, app, *, run_search, **kwargs):
        def run(**kw):
            cur["s1"] = ns()
            try:
                asyncio.get_running_loop()
                cur["inline"] = 1
            except RuntimeError:  # a worker thread
                cur["inline"] = 0
            response = run_search(**kw)
            cur["s3"] = ns()
            return Stamped(response)
        init(self, app, run_search=run, **kwargs)

    fast.FastSearch.__init__ = stamped_init

    async def search(self, kwargs, scope, receive, send, inner=fast.FastSearch.search):
        cur.clear()
        cur.update(pre, s0=ns())
        await inner(self, kwargs, scope, receive, send)
        cur["s5"] = ns()
        rows.append(dict(cur))

    fast.FastSearch.search = search
    atexit.register(lambda: Path(out).write_text(json.dumps(rows)))
    sys.argv = ["clipsearch", "serve", *argv]
    main()


def measure(library: Path, queries: int, model: list[str]) -> dict:
    from bench.serve_speed import TEXTS, search_paths
    from clipsearch import Library

    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"serve-stamps-{os.getpid()}.json"
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.serve_stamps", "--serve", str(out), "--library",
         str(library), "--port", "0", *model], stderr=subprocess.PIPE, text=True)
    client, warm = [], []
    kwargs = dict(zip(("model", "pretrained"), model[1::2], strict=False))
    conn = None
    try:
        for line in server.stderr:  # warnings first, then the URL
            if match := re.search(r"127\.0\.0\.1:(\d+)/", line):
                break
        else:
            raise RuntimeError("the server did not start")
        conn = http.client.HTTPConnection("127.0.0.1", int(match.group(1)), timeout=60)
        with Library(library, **kwargs) as lib:
            for i, path in enumerate(search_paths(queries + 5)):  # 5 warm-ups
                start = ns()
                lib.query(TEXTS[i % len(TEXTS)])
                done = ns()
                c0 = ns()
                conn.request("GET", path)
                response = conn.getresponse()
                ch = ns()
                body = response.read()
                c1 = ns()
                if response.status != 200:
                    raise RuntimeError(f"{path}: {response.status} {body[:200]!r}")
                if i >= 5:
                    warm.append(done - start)
                    client.append({"c0": c0, "ch": ch, "c1": c1})
    finally:
        if conn is not None:
            conn.close()
        server.terminate()
        server.wait(60)
    rows = json.loads(out.read_text())[-queries:]
    out.unlink()
    stamps = [{**s, **c} for s, c in zip(rows, client, strict=True)]
    result = {name: round(statistics.median((s[b] - s[a]) / 1e3 for s in stamps), 1)
              for name, a, b in STAGES}
    result["total minus Library.query"] = round(statistics.median(
        (s["c1"] - s["c0"] - s["q1"] + s["q0"]) / 1e3 for s in stamps), 1)
    result["in-process Library.query"] = round(statistics.median(warm) / 1e3, 1)
    result["inline"] = sum(s["inline"] for s in stamps)
    result["load_average"] = round(os.getloadavg()[0], 2)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        serve(argv[1], argv[2:])
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench.serve_stamps")
    parser.add_argument("library", type=Path)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    args = parser.parse_args(argv)
    model = ["--model", args.model] + (["--pretrained", args.pretrained]
                                       if args.pretrained else [])
    print(json.dumps(measure(args.library, args.queries, model)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
