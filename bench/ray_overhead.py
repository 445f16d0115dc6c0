"""The cost of indexing through Ray on one machine: the same images indexed by a local run and
by `--ray` on a local Ray cluster (this machine's cores), fresh libraries each, same model.

    python -m bench.ray_overhead [--images DIR] [--limit N] [--model M --pretrained P]

Ray's start (ray.init) is timed apart: a cluster is started once and serves many runs. The
compiled model is made before the timed runs (a first run's compile is not Ray's cost).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CALTECH = REPO.parent / "shared" / "datasets" / "caltech101-1200" / "images"


def _folder(images: Path | None, limit: int, work: Path) -> Path:
    """`limit` images linked into one folder: caltech's JPEGs when present, else drawn shapes."""
    source = images or (CALTECH if CALTECH.is_dir() else None)
    folder = work / "photos"
    if source is None:
        from clipsearch.shapes import write_corpus

        write_corpus(folder, per_pair=max(1, limit // 48), seed=5, size=320)
        return folder
    folder.mkdir(parents=True)
    files = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    for i, path in enumerate(files[:limit]):
        os.symlink(path, folder / f"{i:05d}{path.suffix.lower()}")
    return folder


def _index(folder: Path, library: Path, model: str, pretrained: str | None,
           ray: str | None) -> dict:
    from clipsearch import IndexSettings, Library

    with Library(library, model=model, pretrained=pretrained) as lib:
        started = time.perf_counter()
        report = lib.index([folder], settings=IndexSettings(ray=ray, follow_links=True))
        seconds = time.perf_counter() - started
    return {"files": report.todo, "seconds": round(seconds, 2),
            "images_per_s": round(report.todo / seconds, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ray_overhead")
    parser.add_argument("--images", type=Path, help="folder of photos (default: caltech sample)")
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--pretrained", default="none", help="'none': random weights")
    args = parser.parse_args(argv)
    pretrained = None if args.model == "shapes-tiny" else args.pretrained
    import ray

    with tempfile.TemporaryDirectory(prefix="clipsearch-ray-bench-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("CLIPSEARCH_CACHE", str(work / "cache"))
        folder = _folder(args.images, args.limit, work)
        warm = work / "warm"  # compiles the model once, outside the timed runs
        _index(folder, warm / "library", args.model, pretrained, None)
        local = _index(folder, work / "local", args.model, pretrained, None)
        started = time.perf_counter()
        ray.init(include_dashboard=False, log_to_driver=False)
        start_s = time.perf_counter() - started
        try:
            cluster = _index(folder, work / "ray", args.model, pretrained, "auto")
        finally:
            ray.shutdown()
    result = {"model": args.model, "pretrained": pretrained, "cores": os.cpu_count(),
              "local": local, "ray_local": cluster, "ray_start_s": round(start_s, 1),
              "ray_slower_pct": round(100 * (cluster["seconds"] / local["seconds"] - 1), 1)}
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
