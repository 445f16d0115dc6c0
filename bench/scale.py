"""`make bench-scale`: the vector index at 10k / 100k / 1M CLIP-like vectors through the
real storage (Catalog + index cache + Searcher; no model: queries are generated vectors).

    python -m bench.scale [--sizes 10000,100000,1000000] [--queries 200] [--out FILE]
                          [--no-baseline] [--lock /work/cpu.lock]

Per size and index (the chosen one, and the exact scan as the baseline): count, kind,
recall_at_10 against brute force over the catalog's fp32 vectors, p50_ms / p99_ms of a warm
query (search + exact re-scoring + catalog rows; p50_cpu_ms: its CPU time, which a busy
machine does not inflate), resident bytes per vector (the index file, loaded whole), build_s
(from scratch, as the index run does), add_10k_s (10k new files committed, then the index
run's incremental update: index_update_10k_s) and first_query_after_add_ms (a new reader).
Libraries are cached in bench/.cache/scale-N (made once; minutes at 1M).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench.clip_like import World
from bench.images import CACHE

MODEL = "clip-like"
DIM = 512
BATCH = 10_000
OUT = Path(__file__).resolve().parent / "results" / "scale.json"
_lock: list = []  # --lock: the open lock file (shared between timed parts)
_loads: list = []  # 1-minute load average as each timed part began (and whether locked)
LOCK_WAIT_S = 300  # a timed part waits this long for the lock, then runs without it


@contextlib.contextmanager
def _timed():
    """A timed part: with --lock, hold the lock exclusively (other jobs on a shared machine
    wait), then go back to sharing it; notes the load average either way, and "unlocked"
    when the lock could not be had within LOCK_WAIT_S (the figure is then a busy one)."""
    held = False
    if _lock:
        fcntl.flock(_lock[0], fcntl.LOCK_UN)  # a waiting reader must not block the others
        deadline = time.monotonic() + LOCK_WAIT_S
        while not held and time.monotonic() < deadline:
            try:
                fcntl.flock(_lock[0], fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
            except BlockingIOError:
                time.sleep(0.5)
    load = round(os.getloadavg()[0], 2)
    _loads.append(load if held or not _lock else f"{load} unlocked")
    try:
        yield
    finally:
        if _lock:
            fcntl.flock(_lock[0], fcntl.LOCK_SH)


def _records(start: int, n: int, root_id: int):
    from store import FileRecord

    out = []
    for i in range(start, start + n):
        digest = hashlib.sha256(f"scale-{i}".encode()).hexdigest()
        out.append(FileRecord(f"/photos/{i // 1000:04d}/IMG_{i:07d}.jpg", root_id,
                              2_500_000 + i, 1_700_000_000 * 10**9 + i, digest, "ok", 4000,
                              3000, "2024-05-01T12:00:00"))
    return out


def write(cat, world: World, start: int, n: int) -> None:
    root_id = cat.add_root("/photos")
    for s in range(start, start + n, BATCH):
        m = min(BATCH, start + n - s)
        records = _records(s, m, root_id)
        cat.write_batch(records, {r.content_hash: v for r, v in
                                  zip(records, world.vectors(s, m), strict=True)}, MODEL)


def library(count: int) -> Path:
    from store import Catalog

    folder = CACHE / f"scale-{count}"
    marker = folder / "ready.json"
    if marker.is_file():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    print(f"bench.scale: writing {count} CLIP-like vectors into {folder} (once)", flush=True)
    cat = Catalog(folder / "catalog.db")
    write(cat, World(), 0, count)
    cat.close()
    marker.write_text(json.dumps({"count": count}))
    return folder


def measure(count: int, queries: int, ann_min: int) -> dict:
    from search.searcher import Searcher
    from store import Catalog, index_cache

    index_cache.ANN_MIN = ann_min
    src = library(count)
    work = CACHE / f"scale-{count}-work"  # this run's index files; the catalog is shared
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    cat = Catalog(src / "catalog.db")
    searcher = Searcher(cat, work / "vectors")
    _loads.clear()
    with _timed():
        start = time.perf_counter()
        index = searcher.index_for(MODEL, DIM, upkeep=True)
        build_s = time.perf_counter() - start
    world = World()
    qs = world.queries(queries)
    truth = _truth(cat, qs)
    times, cpu, recall = [], [], []
    with _timed():
        searcher.search(MODEL, qs[0], 10)  # warm
        for q in qs:
            s, c = time.perf_counter(), time.process_time()
            hits = searcher.search(MODEL, q, 10)
            times.append((time.perf_counter() - s) * 1000)
            cpu.append((time.process_time() - c) * 1000)
            recall.append(hits)
    recall = [len(set(t) & {h.file_id for h in hits}) / 10
              for t, hits in zip(truth, recall, strict=True)]
    index_bytes = next((work / "vectors").glob("*.faiss")).stat().st_size
    info = index_cache.describe(cat, work / "vectors", MODEL)
    with _timed():
        s = time.perf_counter()
        write(cat, world, count, 10_000)
        u = time.perf_counter()
        searcher.index_for(MODEL, DIM, upkeep=True)
        add_s, update_s = time.perf_counter() - s, time.perf_counter() - u
        s = time.perf_counter()
        Searcher(Catalog(src / "catalog.db", readonly=True), work / "vectors").search(
            MODEL, qs[1], 10)
        first_ms = (time.perf_counter() - s) * 1000
    # Back to `count` files (the library is reused by the next measurement and run).
    cat.delete_files(range(count + 1, count + 10_001))
    cat.close()
    shutil.rmtree(work, ignore_errors=True)
    times.sort()
    return {"count": count, "kind": index.kind, "params": {k: info[k] for k in
                                                           ("nlist", "nprobe", "recall_at_10")
                                                           if k in info},
            "recall_at_10": round(float(np.mean(recall)), 4),
            "p50_ms": round(statistics.median(times), 2),
            "p99_ms": round(times[int(0.99 * (len(times) - 1))], 2),
            "p50_cpu_ms": round(statistics.median(cpu), 2),  # all threads: robust to a busy box
            "resident_bytes_per_vector": round(index_bytes / count, 1),
            "build_s": round(build_s, 1), "add_10k_s": round(add_s, 1),
            "index_update_10k_s": round(update_s, 1),
            "first_query_after_add_ms": round(first_ms, 1),
            "load_avg": list(_loads)}  # as the build, queries and add began


def _truth(cat, qs: np.ndarray) -> list[list[int]]:
    best = [(np.empty(0, np.int64), np.empty(0, np.float32)) for _ in qs]
    for ids, vectors in cat.iter_vectors(MODEL, 100_000, stored_order=True):
        scores = qs @ vectors.T
        for row, (bi, bs) in enumerate(best):
            all_ids = np.concatenate([bi, ids])
            all_s = np.concatenate([bs, scores[row]])
            top = np.lexsort((all_ids, -all_s))[:10]
            best[row] = (all_ids[top], all_s[top])
    return [b[0].tolist() for b in best]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the exact scan where the approximate index is chosen")
    parser.add_argument("--lock", type=Path,
                        help="a lock file shared with other jobs: held exclusively only while "
                             "timing, shared otherwise (flock)")
    args = parser.parse_args(argv)
    if args.lock:
        _lock.append(open(args.lock, "a"))  # noqa: SIM115 (held until exit)
        fcntl.flock(_lock[0], fcntl.LOCK_SH)
    from store import index_cache

    chosen_min = index_cache.ANN_MIN
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        rows.append({"index": "chosen", **measure(size, args.queries, chosen_min)})
        print(json.dumps(rows[-1]), flush=True)
        if size >= chosen_min and not args.no_baseline:
            rows.append({"index": "exact", **measure(size, args.queries, 10**12)})
            print(json.dumps(rows[-1]), flush=True)
        elif size < chosen_min:
            rows.append({"index": "ann", **measure(size, args.queries, 0)})
            print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"command": "python -m bench.scale " + " ".join(
        argv if argv is not None else sys.argv[1:]), "ann_min": chosen_min, "sizes": rows},
        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
