"""Cosine statistics of the generator against vectors real models make here.

    python -m bench.clip_like_check [--images 300]

No pretrained ViT-B-32 weights exist on this machine, so this compares the generator with
(1) ViT-B-32 with random weights on caltech photos (a cone, but no learned clusters) and
(2) shapes-tiny, a trained CLIP, on its demo photos. docs/scale.md records the output.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from bench.clip_like import World, cosine_stats
from bench.images import CALTECH, IMAGE_SUFFIXES


def _encode(model: str, pretrained: str | None, files: list[Path]):
    from clip_core.encoder import ClipEncoder
    from clip_core.model_ref import parse_model
    from PIL import Image

    enc = ClipEncoder.load(parse_model(model, pretrained), device="cpu", precision="fp32")
    out = []
    for start in range(0, len(files), 32):
        images = [Image.open(f).convert("RGB") for f in files[start:start + 32]]
        out.append(enc.encode_images(images))
    import numpy as np
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.clip_like_check")
    parser.add_argument("--images", type=int, default=300)
    args = parser.parse_args(argv)
    report = {"generator": cosine_stats(World().vectors(0, 20_000))}
    photos = sorted(p for p in (CALTECH / "images").rglob("*")
                    if p.suffix.lower() in IMAGE_SUFFIXES)[::4][:args.images]
    if photos:
        report["vit_b32_random_caltech"] = cosine_stats(_encode("ViT-B-32", "none", photos))
    from clipsearch.shapes import write_corpus
    with tempfile.TemporaryDirectory() as tmp:
        demo = sorted(p for p, _, _ in write_corpus(Path(tmp), per_pair=8, seed=2024, size=160))
        report["shapes_tiny_demo"] = cosine_stats(_encode("shapes-tiny", None, demo))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
