"""A library of N synthetic indexed files (random unit vectors) for query timings at scale.

    python -m bench.synthetic [--count 100000] [--fresh]


Written through the real storage API (Catalog.write_batch with fake FileRecords), tagged with
the random ViT-B-32's model id, so `Library.query` and `clipsearch query` treat it like any
indexed library. Made once into bench/.cache and reused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

from bench.images import CACHE

MODEL, PRETRAINED = "ViT-B-32", "none"
DIM = 512
VERSION = 2  # 2: holds the compiled model's text tower, as an indexed library does
BATCH = 5_000


def is_ready(count: int) -> bool:
    marker = CACHE / f"lib-synthetic-{count}" / "bench-synthetic.json"
    try:
        return json.loads(marker.read_text()) == _expect(count)
    except (OSError, ValueError):
        return False


def _expect(count: int) -> dict:
    return {"version": VERSION, "count": count, "model": MODEL, "dim": DIM}


def synthetic_library(count: int = 100_000, fresh: bool = False) -> Path:
    if not fresh and is_ready(count):
        return library_path(count)
    folder = CACHE / f"lib-synthetic-{count}"
    import numpy as np

    from clipsearch import Library
    from store import FileRecord

    shutil.rmtree(folder, ignore_errors=True)
    root = folder / "photos"  # must exist to be a root; the files themselves are fake
    root.mkdir(parents=True)
    print(f"bench: writing a synthetic library of {count} vectors into {folder} (once)",
          flush=True)
    rng = np.random.default_rng(7)
    saved = []  # the same vectors as .npy, for the baseline's brute-force query
    with Library(folder / "library", model=MODEL, pretrained=PRETRAINED) as lib:
        ref = lib.default_model
        lib.add_root(root)
        root_id = lib.catalog.root_id(str(root))
        lib.catalog.register_model(ref.model_id, ref.to_spec(), DIM)
        for start in range(0, count, BATCH):
            n = min(BATCH, count - start)
            vectors = rng.standard_normal((n, DIM), dtype=np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            saved.append(vectors)
            records, by_hash = [], {}
            for i, vector in zip(range(start, start + n), vectors, strict=True):
                digest = hashlib.sha256(f"synthetic-{i}".encode()).hexdigest()
                path = root / f"{i // 1000:03d}" / f"IMG_{i:06d}.jpg"
                records.append(FileRecord(str(path), root_id, 2_500_000 + i, 1_700_000_000 *
                                          10**9 + i, digest, "ok", 4000, 3000,
                                          "2024-05-01T12:00:00"))
                by_hash[digest] = vector
            lib.catalog.write_batch(records, by_hash, ref.model_id)
        lib.searcher.index_for(ref.model_id, DIM)  # build the FAISS cache file now
        # What an index run leaves beside the vectors: the compiled model's text tower, so
        # queries never load torch. Without it the warm-query process exported the tower
        # through torch on its first query and kept torch resident (1.9 GB at 100k).
        lib.image_encoder(ref)
    np.save(vectors_path(count), np.concatenate(saved))
    (folder / "bench-synthetic.json").write_text(json.dumps(_expect(count)))
    return library_path(count)


def library_path(count: int) -> Path:
    return CACHE / f"lib-synthetic-{count}" / "library"


def vectors_path(count: int) -> Path:
    return CACHE / f"lib-synthetic-{count}" / "vectors.npy"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.synthetic")
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args(argv)
    print(synthetic_library(args.count, args.fresh))
    return 0


if __name__ == "__main__":
    sys.exit(main())
