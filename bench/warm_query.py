"""Warm text-query latency through the library API, in its own process.

    python -m bench.warm_query LIBRARY [--queries 100] [--warmup 3]

Opens the library, warms it up as a long-lived app does at start (`Library.warm_up`: text
tower, vector index and its int8 scan), runs a few warm-up queries, then times
`Library.query` end to end (tokenise + text tower + search + catalog rows) and prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

TEXTS = [
    "a photo of a dog", "a red car parked on a street", "sunset over the sea",
    "two people hiking in the mountains", "a birthday cake with candles", "a cat on a sofa",
    "snow-covered trees", "a plate of pasta", "a bicycle leaning on a wall",
    "children playing football", "an old church", "a bowl of fruit on a table",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.warm_query")
    parser.add_argument("library")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    args = parser.parse_args(argv)

    from clipsearch import Library

    with Library(args.library, model=args.model, pretrained=args.pretrained) as lib:
        start = time.perf_counter()
        ready = lib.warm_up()  # what a long-lived app does at start (its int8 scan built)
        warm_up_s = time.perf_counter() - start
        for i in range(args.warmup):
            lib.query(TEXTS[i % len(TEXTS)], limit=args.limit)
        times = []
        hits = 0
        for i in range(args.queries):
            start = time.perf_counter()
            hits += len(lib.query(TEXTS[i % len(TEXTS)], limit=args.limit))
            times.append(time.perf_counter() - start)
        resident = _resident_mb()  # what a long-lived app holds between queries
    times_ms = sorted(t * 1000 for t in times)
    print(json.dumps({
        "queries": args.queries,
        "p50_ms": statistics.median(times_ms),
        "p90_ms": times_ms[int(0.9 * (len(times_ms) - 1))],
        "min_ms": times_ms[0],
        "max_ms": times_ms[-1],
        "hits_per_query": hits / max(1, args.queries),
        "resident_mb": resident,
        "warm_up_s": round(warm_up_s, 3),
        "ready": ready,
    }))
    return 0


def _resident_mb() -> float | None:
    """VmRSS after the timed queries (MB = 1e6 bytes); the peak also counts the start-up's
    passing use (the int8 text tower's agreement check pages the fp32 weights in)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) * 1024 / 1e6, 1)
    except OSError:
        pass
    return None


if __name__ == "__main__":
    sys.exit(main())
