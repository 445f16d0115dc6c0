"""Image-tower throughput alone: precision x threads x micro-batch (no decoding, no start-up).

    python -m bench.encoder_speed [--model ViT-B-32] [--precisions bf16,fp32]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--precisions", default="bf16,fp32")
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()
    import torch

    from clip_core.models.ref import parse_model
    from clip_core.torch_backend.encoder import ClipEncoder

    for precision in args.precisions.split(","):
        enc = ClipEncoder.load(parse_model(args.model, "none"), towers=frozenset({"image"}),
                               precision=precision)
        height, width = enc.preprocess.hw
        pixels = np.random.default_rng(0).random((args.images, 3, height, width), np.float32)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for micro in (16, 32, 64):
                enc.micro_batch = micro
                enc.encode_pixels(pixels[:micro])  # warm-up
                start = time.perf_counter()
                enc.encode_pixels(pixels)
                rate = args.images / (time.perf_counter() - start)
                print(f"{precision} threads {threads} micro-batch {micro}: {rate:.1f} img/s")


if __name__ == "__main__":
    main()
