"""`clipsearch serve` speed, as ratios measured in the same run (issue 13).

    python -m bench.serve_speed LIBRARY [--model ViT-B-32 --pretrained none] [--queries 200]

A. On LIBRARY (the 100k synthetic library of `make bench`): the warm in-process query p50
   against the same query over HTTP to a real server; `clipsearch query` with the server
   running against the cold in-process CLI query.
B. On a temporary shapes-tiny library: the first thumbnail of a 12 MP JPEG (one core): a
   photo-like one (the target figure), the phone set's (when cached) and a noise worst case;
   a cached one over HTTP; 8 clients x 200 queries each while an index run writes against
   one client x 200 alone, 3 times (`--trials`), each by a server of its own on a copy of
   the same library: a 2-core machine's share of noise moved single trials' ratio from 1.33
   to 1.86 for the same code; the median is the figure, each trial's is printed beside it,
   and errors and p99/p50 hold in every trial.
The server runs with its default number of processes (`--workers`: one per core, at most
4) unless --workers says; the JSON names the count and (part A) their memory at 100k.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING

from bench import proc
from bench.warm_query import TEXTS

if TYPE_CHECKING:
    import numpy as np

# The console script as pip writes it for pyproject's `clipsearch = "clipsearch_entry:main"`
# (an installed .venv/bin/clipsearch can predate that entry point until it is reinstalled).
CONSOLE_SCRIPT = "import sys\nfrom clipsearch_entry import main\nsys.exit(main())"


def console(*args: str) -> list[str]:
    return [sys.executable, "-c", CONSOLE_SCRIPT, *args]


WORKERS: list[str] = []  # ["--workers", N] when asked; else the server's default


def start_server(library: Path, *args: str) -> tuple[subprocess.Popen, int]:
    server = subprocess.Popen(proc.clipsearch("serve", "--library", str(library), "--port", "0",
                                              *WORKERS, *args),
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(proc.REPO)})
    line = server.stderr.readline()
    match = re.search(r"127\.0\.0\.1:(\d+)/", line)
    if not match:
        server.kill()
        raise RuntimeError(f"the server did not start: {line}{server.stderr.read()}")
    return server, int(match.group(1))


def serving(port: int, owner: int) -> dict:
    """The server's processes (`--workers`; `owner`: the one started) and their memory
    (MB): resident, and the proportional share (PSS: pages shared between them, such as
    the mapped vector index and model files, counted once in the sum)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/api/status")
    workers = json.loads(conn.getresponse().read())["serving"]["workers"]
    conn.close()
    pids = [owner, *_serving_children(owner)]
    rss = pss = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith(("Rss:", "Pss:")):
                    kb = int(line.split()[1]) / 1024
                    rss, pss = (rss + kb, pss) if line.startswith("Rss:") else (rss, pss + kb)
    return {"workers": workers, "processes": len(pids), "rss_mb": round(rss, 1),
            "pss_mb": round(pss, 1)}


def _serving_children(pid: int) -> list[int]:
    """The owner's child processes that serve (not an index run's worker)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            for kid in (task / "children").read_text().split():
                if b"serve_worker" in Path(f"/proc/{kid}/cmdline").read_bytes():
                    found.add(int(kid))
    return sorted(found)


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
        # Every process warm: each answered queries (one connection each lands anywhere).
        for _ in range(8):
            timed_gets(port, search_paths(3))
        memory = serving(port, server.pid)
    finally:
        conn.close()
        stop(server)
    return {"warm_p50_ms": statistics.median(warm), "http_p50_ms": statistics.median(http_ms),
            "http_over_warm_ms": statistics.median(http_ms) - statistics.median(warm),
            "http_errors": errors, "cli_cold_s": statistics.median(cold),
            "cli_with_server_s": statistics.median(served),
            "cli_with_server_vs_cold": statistics.median(served) / statistics.median(cold),
            "serve_workers_a": memory["workers"], "server_processes_a": memory["processes"],
            "server_rss_mb_100k": memory["rss_mb"],
            "server_pss_mb_100k": memory["pss_mb"]}


def noise_12mp() -> np.ndarray:
    """The worst case: strong per-pixel noise over a gradient (7.9 MB at q90), whose
    Huffman decoding alone costs ~65 ms on one core, whatever the scale decoded."""
    import numpy as np

    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, 4000, dtype=np.float32)[None, :, None]
    return np.clip(base + rng.normal(0, 40, (3000, 4000, 3)), 0, 255).astype(np.uint8)


def photo_12mp() -> np.ndarray:
    """A phone photo's kind of content (3.7 MB at q90, like 12 MP phone JPEGs of 3-5 MB;
    the phone set's are 2.9 MB): smooth shading, mid-frequency texture, sensor noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), np.uint8))
    scene = np.asarray(coarse.resize((4000, 3000), Image.Resampling.BICUBIC), np.float32)
    texture = Image.fromarray(rng.integers(0, 256, (375, 500), np.uint8)).resize(
        (4000, 3000), Image.Resampling.BILINEAR)
    scene += (np.asarray(texture, np.float32)[..., None] - 128) * 0.35
    scene += rng.normal(0, 8, scene.shape).astype(np.float32)
    return np.clip(scene, 0, 255).astype(np.uint8)


def first_thumbnails(paths: list[Path], runs: int) -> tuple[list[float], list[float]]:
    """Wall and thread CPU ms of make_thumbnail (256 px), in this thread: one core."""
    from clipsearch.server.thumbnails import make_thumbnail

    wall, cpu = [], []
    for _ in range(runs):
        for path in paths:
            start, cpu0 = time.perf_counter(), time.thread_time()
            make_thumbnail(str(path), 256)
            wall.append((time.perf_counter() - start) * 1000)
            cpu.append((time.thread_time() - cpu0) * 1000)  # what other load adds less to
    return wall, cpu


def phone_photos(count: int = 20) -> list[Path]:
    """The first `count` of bench.images' cached phone set ([] when it was never made)."""
    from bench import images

    if not images.phone_ready():
        return []
    return images.list_images(images.CACHE / "phone")[:count]


def part_b(clients: int, per_client: int, trials: int) -> dict:
    from PIL import Image

    from clipsearch import Library
    from clipsearch.shapes import write_corpus

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        photos = folder / "photos"
        write_corpus(photos, per_pair=2, seed=1, size=128)
        big = photos / "big-12mp.jpg"
        Image.fromarray(noise_12mp()).save(big, "JPEG", quality=90)
        photo = folder / "photo-12mp.jpg"
        Image.fromarray(photo_12mp()).save(photo, "JPEG", quality=90)
        first, first_cpu = first_thumbnails([photo], 7)
        noise, noise_cpu = first_thumbnails([big], 7)
        phone = phone_photos()
        _, phone_cpu = first_thumbnails(phone, 1) if phone else ([], [])
        thumbs = {"thumb_first_12mp_p50_ms": statistics.median(first),
                  "thumb_first_12mp_cpu_p50_ms": statistics.median(first_cpu),
                  "thumb_first_12mp_bytes": photo.stat().st_size,
                  "thumb_first_12mp_noise_p50_ms": statistics.median(noise),
                  "thumb_first_12mp_noise_cpu_p50_ms": statistics.median(noise_cpu),
                  "thumb_first_12mp_noise_bytes": big.stat().st_size,
                  "thumb_first_phone_set_cpu_p50_ms": (statistics.median(phone_cpu)
                                                       if phone_cpu else None),
                  "thumb_first_phone_set_cpu_max_ms": max(phone_cpu) if phone_cpu else None,
                  "thumb_first_phone_set_files": len(phone)}
        with Library(folder / "lib", model="shapes-tiny") as lib:
            lib.index([photos])
            big_id = lib.query_image(str(big), limit=1, include_self=True)[0].file_id
        # Each trial indexes 3600 new photos: enough that the run is still writing when
        # its clients end (index_run_overlap says which share of their time it was).
        waiting = [folder / "waiting" / f"new-{t}" for t in range(trials)]  # not in a root
        for t, new in enumerate(waiting):
            write_corpus(new, per_pair=150, seed=2 + t, size=256)
        if hasattr(os, "sync"):  # their writeback, not during the trials
            os.sync()
        server, port = start_server(folder / "lib")
        try:
            timed_gets(port, [f"/api/thumbnail/{big_id}?size=256"])  # made and cached
            cached, _ = timed_gets(port, [f"/api/thumbnail/{big_id}?size=256"] * 100)
            workers = serving(port, server.pid)["workers"]
        finally:
            stop(server)
        runs = []
        for t, new in enumerate(waiting):
            # Each on a copy of the library as it was, by a server of its own: trials alike.
            shutil.copytree(folder / "lib", folder / f"lib-{t}")
            runs.append(trial(folder / f"lib-{t}", new, photos, clients, per_client))
    ratios = [r["ratio"] for r in runs]
    times = [t for r in runs for t in r["times"]]
    middle = sorted(runs, key=lambda r: r["ratio"])[len(runs) // 2]
    return {**thumbs,
            "thumb_cached_p50_ms": statistics.median(cached),
            "concurrent_errors": sum(r["errors"] for r in runs),
            "concurrent_p50_ms": statistics.median(times), "concurrent_p99_ms": p(times, 0.99),
            # the worst trial's: the target holds in each
            "concurrent_p99_over_p50": max(r["p99_over_p50"] for r in runs),
            "serve_workers": workers,
            "concurrent_trials": len(runs),
            "concurrent_qps": middle["qps"], "single_client_qps": middle["single_qps"],
            "concurrent_vs_single": statistics.median(ratios),
            "concurrent_vs_single_each": [round(r, 3) for r in ratios],
            "concurrent_qps_each": [round(r["qps"], 1) for r in runs],
            "single_client_qps_each": [round(r["single_qps"], 1) for r in runs],
            "index_run_during_clients": [r["index_state"] for r in runs],
            "index_run_overlap": min(r["overlap"] for r in runs)}


def trial(library: Path, new: Path, root: Path, clients: int, per_client: int) -> dict:
    """A server on `library`: one client's throughput alone, then `clients` clients' while
    an index run writes the photos in `new` (moved into `root` meanwhile, then back out)."""
    server, port = start_server(library)
    try:
        timed_gets(port, search_paths(10))
        single, _ = timed_gets(port, search_paths(per_client))
        single_qps = per_client / (sum(single) / 1000)
        new.rename(root / new.name)
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("POST", "/api/index")
        conn.getresponse().read()
        results: list[tuple[list[float], int]] = []

        def client() -> None:
            results.append(timed_gets(port, search_paths(per_client)))

        threads = [threading.Thread(target=client) for _ in range(clients)]
        start, began = time.perf_counter(), time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        ended = time.time()
        conn.close()  # idle past uvicorn's keep-alive (5 s) while the clients ran
        index = index_state(http.client.HTTPConnection("127.0.0.1", port))
        writing = min(index.get("finished") or ended, ended) - max(index["started"], began)
    finally:
        stop(server)  # the run stops, committing its batch in flight
        (root / new.name).rename(new)
    times = [t for ms, _ in results for t in ms]
    qps = len(times) / wall
    return {"times": times, "errors": sum(e for _, e in results), "qps": qps,
            "single_qps": single_qps, "ratio": qps / single_qps,
            "p99_over_p50": p(times, 0.99) / statistics.median(times),
            "index_state": index["state"], "overlap": max(0.0, writing) / (ended - began)}


def index_state(conn: http.client.HTTPConnection) -> dict:
    conn.request("GET", "/api/status")
    return json.loads(conn.getresponse().read())["index"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve_speed")
    parser.add_argument("library", type=Path)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none", help="'' for none given")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--trials", type=int, default=3,
                        help="part b: one client then the clients while indexing, this many "
                             "times (the ratio's median and each trial's are printed)")
    parser.add_argument("--parts", default="ab", help="a, b or ab (see above)")
    parser.add_argument("--workers", type=int, default=None,
                        help="serving processes (default: the server's, one per core, <= 4)")
    args = parser.parse_args(argv)
    WORKERS[:] = ["--workers", str(args.workers)] if args.workers else []
    model = ["--model", args.model] + (["--pretrained", args.pretrained] if args.pretrained
                                       else [])
    # Figures from a shared machine mean little without its load (docs/benchmarks.md).
    result = {"load_average_at_start": round(os.getloadavg()[0], 2)}
    if "a" in args.parts:
        result.update(part_a(args.library, model, args.queries, args.cold_runs))
    if "b" in args.parts:
        result.update(part_b(args.clients, args.queries, args.trials))
    result["load_average_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v
                      for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
