"""Write ViT-B-32's random weights (those of `--pretrained none`) as a safetensors file.

A user's model is a weights file (open_clip's laion2b_s34b_b79k is open_clip_model.safetensors
in the Hugging Face cache). `--pretrained none` is such a file too now, made in numpy
(clip_core.models.random_weights) into the model cache; this writes the same bytes to OUT,
without torch, for the bench's compile and first-run jobs: the same architecture, compute
and weights as the random model, named by path as a user's own file is.

Usage: python -m bench.weights_file OUT.safetensors
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(out: Path) -> None:
    from clip_core.models import random_weights

    random_weights.write_random("ViT-B-32", random_weights.SEED, out)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
