"""Where the CPU goes in bench.serve_speed's part B scenario: CPU seconds of each serving
process, the index run and the clients (from /proc/PID/stat), one client then 8.

    python -m bench.serve_cpu [--workers N] [--no-index]

A diagnostic beside bench.serve_speed (its figures are the targets'): on a temporary
shapes-tiny library, one client x200, then 8 clients x200 while a POST /api/index run of
3600 new photos writes (or without one). Linux only (/proc).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench import serve_speed as sp

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            found.update(int(k) for k in (task / "children").read_text().split())
    return found


def name(pid: int) -> str:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    return next((a.decode() for a in args if a.startswith(b"clipsearch.server.")), "serve")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.serve_cpu")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--no-index", action="store_true")
    args = parser.parse_args(argv)
    sp.WORKERS[:] = ["--workers", str(args.workers)] if args.workers else []
    from clipsearch import Library
    from clipsearch.shapes import write_corpus

    print(f"load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        write_corpus(photos, per_pair=2, seed=1, size=128)
        with Library(Path(tmp) / "lib", model="shapes-tiny") as lib:
            lib.index([photos])
        server, port = sp.start_server(Path(tmp) / "lib")
        try:
            sp.timed_gets(port, sp.search_paths(10))
            pids = [server.pid, *children(server.pid)]
            before, mine = {p: cpu_s(p) for p in pids}, time.process_time()
            single, _ = sp.timed_gets(port, sp.search_paths(200))
            used = sum(cpu_s(p) - before[p] for p in pids)
            print(f"one client: {200 / (sum(single) / 1000):.0f} q/s, server CPU "
                  f"{used / 200 * 1000:.2f} ms a request, client CPU "
                  f"{(time.process_time() - mine) / 200 * 1000:.2f} ms")
            if not args.no_index:
                write_corpus(photos / "new", per_pair=150, seed=2, size=256)
                conn = http.client.HTTPConnection("127.0.0.1", port)
                conn.request("POST", "/api/index")
                conn.getresponse().read()
                conn.close()
                time.sleep(0.5)
            pids = [server.pid, *children(server.pid)]
            before, mine = {p: cpu_s(p) for p in pids}, time.process_time()
            threads = [threading.Thread(target=sp.timed_gets,
                                        args=(port, sp.search_paths(200)))
                       for _ in range(8)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - start
            print(f"8 clients: {1600 / wall:.0f} q/s over {wall:.2f} s")
            for pid in pids:
                try:
                    used = cpu_s(pid) - before[pid]
                except OSError:
                    used = float("nan")
                print(f"  {name(pid)} ({pid}): {used:.2f} s CPU")
            print(f"  the clients: {time.process_time() - mine:.2f} s CPU")
        finally:
            sp.stop(server)
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
