"""The rest of the library at scale: open, status, planning an unchanged tree, and garbage
collection, on a bench.scale library (docs/scale.md).

    python -m bench.scale_ops [--count 1000000] [--prepare]

Each step in a fresh process state would be fairer; this runs them in order in one process
and reports seconds, CPU seconds, the growth of peak resident memory (ru_maxrss, which
counts the catalog pages read through SQLite's 1 GB memory map) and of resident anonymous
memory (RssAnon sampled every 5 ms: the heap) each step caused. There are no 1M files on
disk: planning is fed a generated crawl with the paths and stats bench.scale wrote (made
before the step, untimed: a real crawl's list costs the same), merged with the catalog's
streamed rows as an index run does (indexer/plan.py). The
baseline, measured last in the same process (its memory growth is then a lower bound), is
what planning read before: every row into a dict and every hash into a set
(`old_files_in_root`, `old_hashes_with_vectors`: the catalog's methods of then).

`--prepare` (run once on a copy, before): the first writable open of a library made before
the status tallies (store/tallies.py) counts every row once (reported as "open"); and
bench.scale writes no photo metadata, so every row would be planned as "indexed before
schema 2, refresh its header": `format` is set as a refreshed tree's would be.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
from typing import NamedTuple

from bench.scale import MODEL, library


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _anon_mb() -> float:
    """Resident anonymous memory now (the heap: Python objects, SQLite's caches), apart
    from the catalog pages mapped through SQLite's memory map, which ru_maxrss counts."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return 0.0


class OldRow(NamedTuple):
    """A row as `Catalog.files_in_root` returned it (a FileRow with its meta_missing)."""

    id: int
    path: str
    root_id: int
    size: int
    mtime_ns: int
    content_hash: str | None
    status: str
    error_reason: str | None
    meta_missing: bool


def old_files_in_root(cat, root_id: int) -> dict[str, OldRow]:
    """What planning and the shard import read before they streamed (the catalog's
    `files_in_root`, removed since): every row of the root. With `old_hashes_with_vectors`:
    the baseline here, the oracle in tests."""
    return {r[1]: OldRow(*r[:8], bool(r[8])) for r in cat.conn.execute(
        "SELECT id, path, root_id, size, mtime_ns, content_hash, status, error_reason,"
        " status = 'ok' AND format IS NULL FROM files WHERE root_id = ?", (root_id,))}


def old_hashes_with_vectors(cat, model_id: str) -> set[str]:
    """Every content hash with a vector of the model (the catalog's method of then)."""
    return {h for (h,) in cat.conn.execute(
        "SELECT content_hash FROM embeddings WHERE model_id = ?", (model_id,))}


def _crawl(count: int, root_id: int) -> list:
    """The Candidates a crawl of bench.scale's tree would list, unchanged since written."""
    from indexer.crawl import Candidate

    return [Candidate(f"/photos/{i // 1000:04d}/IMG_{i:07d}.jpg", root_id,
                      2_500_000 + i, 1_700_000_000 * 10**9 + i) for i in range(count)]


class _AnonPeak:
    """The highest RssAnon seen while a step runs (sampled every 5 ms): what a step held at
    its peak, which the value after it (its objects freed) does not show."""

    def __init__(self) -> None:
        self.peak, self._stop = _anon_mb(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _anon_mb())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _anon_mb())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_ops")
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--prepare", action="store_true")
    args = parser.parse_args(argv)
    work = library(args.count)  # used in place: copy it first (its first open migrates it)
    out: dict[str, dict] = {}

    def step(name, fn):
        before, anon = _peak_mb(), _anon_mb()
        sampler = _AnonPeak()
        start, cpu = time.perf_counter(), time.process_time()
        value = fn()
        out[name] = {"s": round(time.perf_counter() - start, 2),
                     "cpu_s": round(time.process_time() - cpu, 2),
                     "peak_rss_growth_mb": round(_peak_mb() - before, 1),
                     "peak_anon_growth_mb": round(sampler.stop() - anon, 1)}
        print(name, json.dumps(out[name]), flush=True)
        return value

    from clipsearch import Library
    from indexer.plan import merge_plan

    lib = step("open", lambda: Library(work, model="ViT-B-32", pretrained="none"))
    if args.prepare:
        with lib.catalog.transaction() as conn:
            conn.execute("UPDATE files SET format = 'JPEG' WHERE status = 'ok'")
        lib.close()
        return 0
    status = step("status", lib.status)
    print("status:", status.files, "files,", status.indexed, "indexed,", status.models)
    root = lib.catalog.root_id("/photos")
    crawl = _crawl(args.count, root)
    plan = step("plan_unchanged_tree", lambda: merge_plan(
        crawl, lib.catalog.plan_rows(root, MODEL)))
    print("plan:", plan.unchanged, "unchanged,", len(plan.todo), "todo,", len(plan.gone), "gone")
    assert (plan.unchanged, len(plan.todo), len(plan.gone)) == (args.count, 0, 0)
    crawl.clear()  # the crawl and plan are not the steps below's memory
    del plan
    step("gc_nothing_to_do", lib.catalog.collect_garbage)
    step("baseline_plan_catalog_reads_before",  # held while measured
         lambda: (old_files_in_root(lib.catalog, root),
                  old_hashes_with_vectors(lib.catalog, MODEL)))
    lib.close()
    print(json.dumps({"count": args.count, **out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
