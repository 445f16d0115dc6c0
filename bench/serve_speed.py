"""`clipsearch serve` speed, as ratios measured in the same run (issue 13).

    python -m bench.serve_speed LIBRARY [--model ViT-B-32 --pretrained none] [--queries 200]

A. On LIBRARY (the 100k synthetic library of `make bench`): the warm in-process query p50
   against the same query over HTTP to a real server; `clipsearch query` with the server
   running against the cold in-process CLI query.
B. On a temporary shapes-tiny library: the first thumbnail of a 12 MP JPEG (one core) and a
   cached one over HTTP; 8 clients x 200 queries each while an index run writes.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

from bench import proc
from bench.warm_query import TEXTS

# The console script as pip writes it for pyproject's `clipsearch = "clipsearch_entry:main"`
# (an installed .venv/bin/clipsearch can predate that entry point until it is reinstalled).
CONSOLE_SCRIPT = "import sys\nfrom clipsearch_entry import main\nsys.exit(main())"


def console(*args: str) -> list[str]:
    return [sys.executable, "-c", CONSOLE_SCRIPT, *args]


def start_server(library: Path, *args: str) -> tuple[subprocess.Popen, int]:
    server = subprocess.Popen(proc.clipsearch("serve", "--library", str(library), "--port", "0",
                                              *args), stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(proc.REPO)})
    line = server.stderr.readline()
    match = re.search(r"127\.0\.0\.1:(\d+)/", line)
    if not match:
        server.kill()
        raise RuntimeError(f"the server did not start: {line}{server.stderr.read()}")
    return server, int(match.group(1))


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    server.wait(timeout=120)


def timed_gets(port: int, paths: list[str],
               keep: http.client.HTTPConnection | None = None) -> tuple[list[float], int]:
    """Milliseconds per request over one keep-alive connection (`keep`, else a new one), and
    the failures."""
    conn = keep or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    times, errors = [], 0
    for path in paths:
        start = time.perf_counter()
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            errors += response.status != 200
        except OSError:
            errors += 1
            conn.close()  # the next request connects again
        times.append((time.perf_counter() - start) * 1000)
    if keep is None:
        conn.close()
    return times, errors


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def search_paths(n: int) -> list[str]:
    return [f"/api/search?{urllib.parse.urlencode({'q': TEXTS[i % len(TEXTS)]})}&limit=10"
            for i in range(n)]


def part_a(library: Path, model: list[str], queries: int, cold_runs: int) -> dict:
    from clipsearch import Library

    kwargs = dict(zip(("model", "pretrained"), model[1::2], strict=False))
    query = console("query", TEXTS[0], "--library", str(library))
    cold = [proc.run(query).check().seconds for _ in range(cold_runs)]
    server, port = start_server(library, *model)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        timed_gets(port, search_paths(5))  # warm-up: model load, FAISS mapped
        warm, http_ms, errors = [], [], 0
        with Library(library, **kwargs) as lib:
            for text in TEXTS[:3]:
                lib.query(text)
            # Alternated, one of each at a time: on a shared machine both see the same load.
            for i, path in enumerate(search_paths(queries)):
                start = time.perf_counter()
                lib.query(TEXTS[i % len(TEXTS)])
                warm.append((time.perf_counter() - start) * 1000)
                ms, failed = timed_gets(port, [path], conn)
                http_ms += ms
                errors += failed
        served = [proc.run(query).check().seconds for _ in range(cold_runs)]
    finally:
        conn.close()
        stop(server)
    return {"warm_p50_ms": statistics.median(warm), "http_p50_ms": statistics.median(http_ms),
            "http_over_warm_ms": statistics.median(http_ms) - statistics.median(warm),
            "http_errors": errors, "cli_cold_s": statistics.median(cold),
            "cli_with_server_s": statistics.median(served),
            "cli_with_server_vs_cold": statistics.median(served) / statistics.median(cold)}


def part_b(clients: int, per_client: int) -> dict:
    import io

    import numpy as np
    from PIL import Image

    from clipsearch import Library
    from clipsearch.server.thumbnails import make_thumbnail
    from clipsearch.shapes import write_corpus

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        photos = folder / "photos"
        write_corpus(photos, per_pair=2, seed=1, size=128)
        rng = np.random.default_rng(0)  # a 12 MP photo-like JPEG (noise over gradients)
        base = np.linspace(0, 255, 4000, dtype=np.float32)[None, :, None]
        pixels = np.clip(base + rng.normal(0, 40, (3000, 4000, 3)), 0, 255).astype(np.uint8)
        big = photos / "big-12mp.jpg"
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
        big.write_bytes(buffer.getvalue())
        first, first_cpu = [], []
        for _ in range(5):
            start, cpu = time.perf_counter(), time.thread_time()
            make_thumbnail(str(big), 256)
            first.append((time.perf_counter() - start) * 1000)
            first_cpu.append((time.thread_time() - cpu) * 1000)  # what other load adds less to
        with Library(folder / "lib", model="shapes-tiny") as lib:
            lib.index([photos])
            big_id = lib.query_image(str(big), limit=1, include_self=True)[0].file_id
        server, port = start_server(folder / "lib")
        try:
            timed_gets(port, [f"/api/thumbnail/{big_id}?size=256"])  # made and cached
            cached, _ = timed_gets(port, [f"/api/thumbnail/{big_id}?size=256"] * 100)
            timed_gets(port, search_paths(10))
            single, _ = timed_gets(port, search_paths(per_client))
            single_qps = per_client / (sum(single) / 1000)
            write_corpus(photos / "new", per_pair=20, seed=2, size=256)  # 480 to index
            conn = http.client.HTTPConnection("127.0.0.1", port)
            conn.request("POST", "/api/index")
            conn.getresponse().read()
            results: list[tuple[list[float], int]] = []

            def client() -> None:
                results.append(timed_gets(port, search_paths(per_client)))

            threads = [threading.Thread(target=client) for _ in range(clients)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - start
            conn.close()  # idle past uvicorn's keep-alive (5 s) while the clients ran
            conn = http.client.HTTPConnection("127.0.0.1", port)
            conn.request("GET", "/api/status")
            index_state = json.loads(conn.getresponse().read())["index"]["state"]
        finally:
            stop(server)
    times = [t for ms, _ in results for t in ms]
    return {"thumb_first_12mp_p50_ms": statistics.median(first),
            "thumb_first_12mp_cpu_p50_ms": statistics.median(first_cpu),
            "thumb_cached_p50_ms": statistics.median(cached),
            "concurrent_errors": sum(e for _, e in results),
            "concurrent_p50_ms": statistics.median(times), "concurrent_p99_ms": p(times, 0.99),
            "concurrent_p99_over_p50": p(times, 0.99) / statistics.median(times),
            "concurrent_qps": len(times) / wall, "single_client_qps": single_qps,
            "concurrent_vs_single": len(times) / wall / single_qps,
            "index_run_during_clients": index_state}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve_speed")
    parser.add_argument("library", type=Path)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none", help="'' for none given")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--parts", default="ab", help="a, b or ab (see above)")
    args = parser.parse_args(argv)
    model = ["--model", args.model] + (["--pretrained", args.pretrained] if args.pretrained
                                       else [])
    # Figures from a shared machine mean little without its load (docs/benchmarks.md).
    result = {"load_average_at_start": round(os.getloadavg()[0], 2)}
    if "a" in args.parts:
        result.update(part_a(args.library, model, args.queries, args.cold_runs))
    if "b" in args.parts:
        result.update(part_b(args.clients, args.queries))
    result["load_average_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v
                      for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
