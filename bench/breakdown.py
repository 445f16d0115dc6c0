"""Where an index run's time goes, stage by stage, on one core.

    python -m bench.breakdown [--set phone|caltech] [--limit 32] [--precisions auto,fp32]

Times clipsearch's own stage functions one after another (read, SHA-256, decode with and
without JPEG draft, preprocess, encode per precision, catalog write), so the figures are
per-core costs: the real pipeline overlaps loading (thread pool) with encoding.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import images


def _ms(samples: list[float]) -> dict:
    return {"median_ms": round(statistics.median(samples) * 1000, 2),
            "total_s": round(sum(samples), 3)}


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def profile(files: list[Path], precisions: list[str], batch: int) -> dict:
    from clip_core.pixels.decode import decode_image
    from clip_core.pixels.preprocess import preprocess
    from indexer.stages import content_hash, read_file

    t0 = time.perf_counter()
    import torch  # noqa: F401  (import cost reported on its own)

    from clip_core.models.ref import parse_model
    from clip_core.torch_backend.encoder import ClipEncoder

    timings: dict[str, dict] = {"import_torch_clip_core_s": round(time.perf_counter() - t0, 2)}
    ref = parse_model("ViT-B-32", "none")
    encoders = {}
    for precision in precisions:
        enc, seconds = _timed(ClipEncoder.load, ref, precision=precision,
                              towers=frozenset({"image"}))
        encoders[precision] = enc
        timings[f"model_load_{precision}_s"] = round(seconds, 2)
    spec = next(iter(encoders.values())).preprocess
    stages: dict[str, list[float]] = {k: [] for k in ("read", "sha256", "decode_draft",
                                                      "decode_full", "preprocess")}
    pixels = []
    for path in files:
        (data, _), t = _timed(read_file, str(path))
        stages["read"].append(t)
        stages["sha256"].append(_timed(content_hash, data)[1])
        decoded, t = _timed(decode_image, io.BytesIO(data), min_side=spec.min_side)
        stages["decode_draft"].append(t)
        stages["decode_full"].append(_timed(decode_image, io.BytesIO(data))[1])
        arr, t = _timed(preprocess, decoded.image, spec)
        stages["preprocess"].append(t)
        pixels.append(arr)
    timings.update({k: _ms(v) for k, v in stages.items()})
    import numpy as np

    stack = np.stack((pixels * (batch // len(pixels) + 1))[:batch])
    for precision, enc in encoders.items():
        enc.encode_pixels(stack[:2])  # warm-up: first call allocates and picks kernels
        _, seconds = _timed(enc.encode_pixels, stack)
        timings[f"encode_{precision}_batch{batch}"] = {
            "per_image_ms": round(seconds / batch * 1000, 2),
            "images_per_s": round(batch / seconds, 1),
            "chosen": enc.loaded.precision}
    timings["write_batch"] = _write_cost(len(files), enc.embed_dim)
    return timings


def _write_cost(count: int, dim: int) -> dict:
    import numpy as np

    from store import Catalog, FileRecord

    with tempfile.TemporaryDirectory() as tmp:
        catalog = Catalog(Path(tmp) / "catalog.db")
        catalog.register_model("bench/random", {}, dim)
        records = [FileRecord(f"/x/{i}.jpg", None, 1, 1, f"{i:064x}", "ok", 10, 10)
                   for i in range(count)]
        vectors = {r.content_hash: np.ones(dim, np.float32) for r in records}
        _, seconds = _timed(catalog.write_batch, records, vectors, "bench/random")
        catalog.close()
    return {"per_image_ms": round(seconds / max(1, count) * 1000, 3), "files": count}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.breakdown")
    parser.add_argument("--set", choices=("phone", "caltech"), default="phone")
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--precisions", default="auto,fp32")
    args = parser.parse_args(argv)
    files = images.sample_files(args.set, args.limit)
    if files is None:
        print(f"no caltech set at {images.CALTECH}", file=sys.stderr)
        return 1
    images.warm_page_cache(files)
    timings = profile(files, args.precisions.split(","), args.batch)
    width = max(len(k) for k in timings)
    for key, value in timings.items():
        print(f"{key.ljust(width)}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
