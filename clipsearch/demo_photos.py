"""Draw the demo's photo folder: two synthetic PNGs of every colour-shape pair, in one folder.

    python -m clipsearch.demo_photos OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

from .shapes import write_corpus


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else ".demo/photos")
    written = write_corpus(out, per_pair=2, seed=2024, size=160)
    print(f"Drew {len(written)} demo photos in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
