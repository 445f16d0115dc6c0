"""The rest of the library at scale: open, status, the catalog side of planning an unchanged
tree, and garbage collection, on a bench.scale library (docs/scale.md).

    python -m bench.scale_ops [--count 1000000]

Each step in a fresh process state would be fairer; this runs them in order in one process
and reports seconds and the growth of peak resident memory (ru_maxrss) each step caused.
Planning is timed for its catalog reads only (`files_in_root` + `hashes_with_vectors`, what
indexer/pipeline.py loads before comparing with the crawl): there are no 1M files on disk.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

from bench.scale import MODEL, library


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_ops")
    parser.add_argument("--count", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    work = library(args.count)  # used in place (a copy is 5 GB at 1M); nothing is changed
    out: dict[str, dict] = {}

    def step(name, fn):
        before, start = _peak_mb(), time.perf_counter()
        value = fn()
        out[name] = {"s": round(time.perf_counter() - start, 2),
                     "peak_rss_growth_mb": round(_peak_mb() - before, 1)}
        print(name, json.dumps(out[name]), flush=True)
        return value

    from clipsearch import Library

    lib = step("open", lambda: Library(work, model="ViT-B-32", pretrained="none"))
    step("status", lib.status)
    root = lib.catalog.root_id("/photos")
    step("plan_catalog_reads", lambda: (len(lib.catalog.files_in_root(root)),
                                        len(lib.catalog.hashes_with_vectors(MODEL))))
    step("gc_nothing_to_do", lib.catalog.collect_garbage)
    lib.close()
    print(json.dumps({"count": args.count, **out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
