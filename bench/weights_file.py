"""Write ViT-B-32's random weights (those of `--pretrained none`) as a safetensors file.

A user's model is a weights file (open_clip's laion2b_s34b_b79k is open_clip_model.safetensors
in the Hugging Face cache), and the compile reads such a file without torch
(clip_core.compiled.weights_file); random weights exist only inside torch. The bench's
compile and first-run jobs use this file: the same architecture and compute as the
random model, read the way a user's model is read.

Usage: python -m bench.weights_file OUT.safetensors
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(out: Path) -> None:
    from safetensors.torch import save_file

    from clip_core.models.ref import parse_model
    from clip_core.torch_backend.loading import load_model

    model = load_model(parse_model("ViT-B-32", "none"), precision="fp32").model
    tmp = out.with_name(out.name + ".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.rename(out)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
