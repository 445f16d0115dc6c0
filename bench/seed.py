"""Index a folder once, cheaply, for the unchanged re-index job.

    python -m bench.seed FOLDER LIBRARY

The run goes through `Library.index` (real crawl, hashing, decoding, catalog rows), but
image vectors come from a stub encoder tagged with the random ViT-B-32's model id instead of
the model itself: 10k images through ViT-B-32 would take many minutes on two cores, and a
re-index of an unchanged tree never looks at vector values or loads a model.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from clip_core.encoders import MICRO_BATCH
from clip_core.pixels.preprocess import OPENAI_MEAN, OPENAI_STD, PreprocessSpec
from clipsearch import Library

MODEL, PRETRAINED, DIM = "ViT-B-32", "none", 512


class StubEncoder:
    """An ImageEncoder (clip_core.encoders) whose vectors are random unit vectors."""

    def __init__(self, model_id: str):
        self.model_id = model_id
        self.preprocess = PreprocessSpec(size=224, mean=OPENAI_MEAN, std=OPENAI_STD)
        self.embed_dim = DIM
        self.micro_batch = MICRO_BATCH
        self._rng = np.random.default_rng(0)

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        vectors = self._rng.standard_normal((len(pixels), DIM), dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    def close(self) -> None:
        """Holds nothing to release."""


class StubLibrary(Library):
    def encoder(self, ref, towers=frozenset({"image", "text"})):  # type: ignore[override]
        return StubEncoder(ref.model_id)


def main(argv: list[str] | None = None) -> int:
    folder, library = (argv if argv is not None else sys.argv[1:])[:2]
    with StubLibrary(library, model=MODEL, pretrained=PRETRAINED) as lib:
        report = lib.index([folder])
    print(json.dumps(report.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
