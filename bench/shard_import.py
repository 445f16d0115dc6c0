"""import-shards against a big root (docs/scale.md): repeating the import of shards that a
library already holds, the catalog comparison alone (nothing is written).

    python -m bench.shard_import --prepare --count 200000 --shards 40 --work DIR
    python -m bench.shard_import --work DIR        # the import, timed (run it per version)

--prepare (untimed) writes COUNT empty sparse files under DIR/photos with the sizes and
mtimes of bench.scale's rows, a catalog holding them with 512-d CLIP-like vectors
(DIR/library), and SHARDS Parquet shards describing the same files (DIR/shards, each a
stretch of the sorted paths, as Ray writes a crawl's blocks). The timed step opens the catalog
and imports every shard through `indexer.shards.import_shards`, reporting seconds, CPU
seconds, the growth of peak RSS and of peak anonymous memory (the heap; bench.scale_ops). It
imports only names every version had, so the baseline is the same command with an older
checkout's code first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

MODEL = "clip-like"
BATCH = 10_000


def _records(work: Path, start: int, n: int, root_id: int | None) -> list:
    from store import FileRecord

    return [FileRecord(str(work / "photos" / f"{i // 1000:04d}" / f"IMG_{i:07d}.jpg"), root_id,
                       2_500_000 + i, 1_700_000_000 * 10**9 + i,
                       hashlib.sha256(f"shard-bench-{i}".encode()).hexdigest(), "ok", 4000,
                       3000, "2024-05-01T12:00:00", format="JPEG")
            for i in range(start, start + n)]


def prepare(work: Path, count: int, shards: int) -> None:
    import pyarrow.parquet as pq

    from bench.clip_like import World
    from indexer.shards import shard_table
    from store import Catalog

    world = World()
    for rec in _records(work, 0, count, None):  # sparse: no data blocks, only the stat
        os.makedirs(os.path.dirname(rec.path), exist_ok=True)
        with open(rec.path, "wb") as f:
            f.truncate(rec.size)
        os.utime(rec.path, ns=(rec.mtime_ns, rec.mtime_ns))
    cat = Catalog(work / "library" / "catalog.db")
    root = cat.add_root(str(work / "photos"))
    cat.register_model(MODEL, {"model": MODEL}, world.dim)
    for start in range(0, count, BATCH):
        recs = _records(work, start, min(BATCH, count - start), root)
        cat.write_batch(recs, {r.content_hash: v for r, v in
                               zip(recs, world.vectors(start, len(recs)), strict=True)}, MODEL)
    cat.close()
    (work / "shards").mkdir()
    per = -(-count // shards)
    for s, start in enumerate(range(0, count, per)):
        recs = _records(work, start, min(per, count - start), None)
        table = shard_table(str(work / "photos"), recs, list(world.vectors(start, len(recs))),
                            MODEL, json.dumps({"model": MODEL}))
        pq.write_table(table, work / "shards" / f"{s:04d}.parquet")


def measure(work: Path) -> dict:
    from bench.scale_ops import _anon_mb, _AnonPeak, _peak_mb
    from indexer.shards import import_shards
    from store import Catalog

    __import__("pyarrow.parquet")  # its import (both versions pay it) is not the comparison
    cat = Catalog(work / "library" / "catalog.db")
    generation = cat.generation
    before, anon = _peak_mb(), _anon_mb()
    sampler = _AnonPeak()
    start, cpu = time.perf_counter(), time.process_time()
    report = import_shards(cat, str(work / "shards"))
    out = {"s": round(time.perf_counter() - start, 2),
           "cpu_s": round(time.process_time() - cpu, 2),
           "peak_rss_growth_mb": round(_peak_mb() - before, 1),
           "peak_anon_growth_mb": round(sampler.stop() - anon, 1),
           "load_1min": os.getloadavg()[0], "report": report.to_dict(),
           "wrote": cat.generation != generation, "code": os.environ.get("PYTHONPATH", "")}
    cat.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.shard_import")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--shards", type=int, default=40)
    parser.add_argument("--prepare", action="store_true")
    args = parser.parse_args(argv)
    if args.prepare:
        prepare(args.work, args.count, args.shards)
        return 0
    print(json.dumps(measure(args.work)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
