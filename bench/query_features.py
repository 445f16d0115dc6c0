"""Filtered queries and duplicate finding on the synthetic library, in their own process.

    python -m bench.query_features LIBRARY [--queries 50]

Times `Library.query` unfiltered, with filters that keep 1% of the photos (one folder of
the hundred, plus an orientation clause, so the filter's SQL and id selector both run),
and with a date filter the SQLite query must scan every row for; then `Library.duplicates()`
over every vector once. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from bench.warm_query import TEXTS


def _p50s_ms(calls: list, queries: int) -> list[float]:
    """Each call's p50 over `queries` texts, the calls interleaved so that a busy machine's
    slow moments fall on all of them alike."""
    times: list[list[float]] = [[] for _ in calls]
    for i in range(queries):
        for call, spent in zip(calls, times, strict=True):
            start = time.perf_counter()
            call(TEXTS[i % len(TEXTS)])
            spent.append((time.perf_counter() - start) * 1000)
    return [round(statistics.median(spent), 2) for spent in times]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.query_features")
    parser.add_argument("library")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none")
    args = parser.parse_args(argv)

    from clipsearch import Filters, Library

    with Library(args.library, model=args.model, pretrained=args.pretrained) as lib:
        count = sum(lib.status().models.values())
        folder = f"{lib.roots[0]}/{count // 2000:03d}"  # bench.synthetic: 1,000 a folder
        landscape = Filters(orientation="landscape")
        keeps = len(lib.query(None, filters=landscape, within=folder, limit=10**6))
        for text in TEXTS[:3]:  # warm: text tower, FAISS file, calibration
            lib.query(text)
        plain, filtered, by_date = _p50s_ms([
            lambda t: lib.query(t),
            lambda t: lib.query(t, filters=landscape, within=folder),
            lambda t: lib.query(t, filters=Filters(after="2024-05-01")),  # keeps all
        ], args.queries)
        start = time.perf_counter()
        groups = lib.duplicates()
        dup_s = time.perf_counter() - start
    print(json.dumps({
        "photos": count, "filtered_keeps": keeps,
        "p50_ms": plain, "filtered_p50_ms": filtered, "date_filter_p50_ms": by_date,
        "filtered_vs_plain": round(filtered / plain, 2),
        "duplicates_seconds": round(dup_s, 1), "duplicate_groups": len(groups),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
