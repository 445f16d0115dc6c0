"""The baseline: the classic loop from the CLIP README, each job as its own process.

    python -m bench.baseline index FOLDER OUT.npy      # embed every image, save vectors
    python -m bench.baseline query TEXT VECTORS.npy    # cold query: load model, embed, rank
    python -m bench.baseline warm-query VECTORS.npy    # warm query latency, JSON

Index: for each image, PIL open, open_clip's own preprocess, `encode_image` on a batch of one,
fp32, sequential, torch's default threads. Query: open_clip tokenizer + `encode_text`, then a
numpy dot product over the saved vectors. Weights are random, seeded exactly as clipsearch's
`--pretrained none` seeds them, so the two tools' vectors can be compared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from bench.images import list_images
from bench.warm_query import TEXTS


def _model(name: str):
    import open_clip
    import torch

    torch.manual_seed(0)  # as clip_core.torch_backend.loading does for random weights
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    return model.eval(), preprocess, open_clip.get_tokenizer(name)


def index(folder: Path, out: Path, model_name: str) -> None:
    import numpy as np
    import torch
    from PIL import Image

    model, preprocess, _ = _model(model_name)
    paths = list_images(folder)
    vectors = []
    with torch.no_grad():
        for path in paths:
            image = preprocess(Image.open(path)).unsqueeze(0)
            features = model.encode_image(image)
            features /= features.norm(dim=-1, keepdim=True)
            vectors.append(features[0].numpy())
    np.save(out, np.stack(vectors).astype(np.float32))
    out.with_suffix(".json").write_text(json.dumps([str(p) for p in paths]))
    print(len(vectors))


def _text_vector(model, tokenizer, text: str):
    import torch

    with torch.no_grad():
        features = model.encode_text(tokenizer([text]))
        features /= features.norm(dim=-1, keepdim=True)
    return features[0].numpy()


def query(text: str, vectors_path: Path, model_name: str, limit: int = 10) -> None:
    import numpy as np

    model, _, tokenizer = _model(model_name)
    vectors = np.load(vectors_path, mmap_mode="r")
    scores = vectors @ _text_vector(model, tokenizer, text)
    for i in np.argsort(-scores)[:limit]:
        print(f"{scores[i]:.3f}  {i}")


def warm_query(vectors_path: Path, model_name: str, queries: int, limit: int = 10) -> None:
    import numpy as np

    model, _, tokenizer = _model(model_name)
    vectors = np.load(vectors_path)
    times = []
    for i in range(queries + 3):  # the first three are warm-up
        start = time.perf_counter()
        scores = vectors @ _text_vector(model, tokenizer, TEXTS[i % len(TEXTS)])
        np.argsort(-scores)[:limit].tolist()
        if i >= 3:
            times.append((time.perf_counter() - start) * 1000)
    print(json.dumps({"queries": queries, "p50_ms": statistics.median(times),
                      "min_ms": min(times), "max_ms": max(times)}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline")
    parser.add_argument("--model", default="ViT-B-32")
    sub = parser.add_subparsers(dest="job", required=True)
    p = sub.add_parser("index")
    p.add_argument("folder", type=Path)
    p.add_argument("out", type=Path)
    p = sub.add_parser("query")
    p.add_argument("text")
    p.add_argument("vectors", type=Path)
    p = sub.add_parser("warm-query")
    p.add_argument("vectors", type=Path)
    p.add_argument("--queries", type=int, default=100)
    args = parser.parse_args(argv)
    if args.job == "index":
        index(args.folder, args.out, args.model)
    elif args.job == "query":
        query(args.text, args.vectors, args.model)
    else:
        warm_query(args.vectors, args.model, args.queries)
    return 0


if __name__ == "__main__":
    sys.exit(main())
