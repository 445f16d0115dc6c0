"""Reduced-size JPEG decoding on every decoder at hand: is any faster than Pillow's draft?

    python -m bench.jpeg_decoders [--set phone] [--limit 20]
    (optional decoders: pip install simplejpeg imagecodecs)

One core, files already in memory, best of 3 passes. Each decoder is asked for the smallest
DCT-scaled image that still covers the model input (224 px), as clipsearch decodes; a full
decode is shown for scale.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from bench import images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", default="phone", choices=("phone", "caltech"))
    parser.add_argument("--limit", type=int, default=20)
    args = parser.parse_args()
    files = images.sample_files(args.set, args.limit)
    if files is None:
        raise SystemExit(f"no caltech set at {images.CALTECH}")
    datas = [path.read_bytes() for path in files]
    print(f"{len(datas)} files, {sum(map(len, datas)) / len(datas) / 1e6:.2f} MB each on average")
    for label, ms in measure(datas).items():
        print(f"{label:40s} {ms:7.1f} ms/image")


def measure(datas: list[bytes]) -> dict[str, float]:
    """{decoder: best ms per file on one core} for every decoder at hand."""
    return {label: best_ms(decode, datas) for label, decode in _decoders()}


PILLOW_DRAFT = "Pillow draft (clipsearch)"


def pillow(data: bytes, draft: bool = True):
    """Pillow's decode, with draft: the smallest DCT scale that still covers 224 px, as
    clipsearch decodes (bench.pace times it too)."""
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    if draft:
        image.draft("RGB", (224, 224))
    image.load()
    return image


def _decoders():
    yield PILLOW_DRAFT, pillow
    yield "Pillow full size", lambda data: pillow(data, draft=False)
    try:
        import simplejpeg
    except ImportError:
        print("simplejpeg not installed: skipped")
    else:
        yield "simplejpeg, min 224 px", lambda data: simplejpeg.decode_jpeg(
            data, min_height=224, min_width=224, fastdct=True, fastupsample=True)
    try:
        import imagecodecs
    except ImportError:
        print("imagecodecs not installed: skipped")
    else:
        yield "imagecodecs libjpeg-turbo, full size", imagecodecs.jpeg8_decode


Item = TypeVar("Item")


def core_clock() -> float:
    """This thread's CPU seconds: what one core spends on a step, without the time a VM's
    host takes the core away (bench.steal), which a wall clock would count. Every step
    timed with it runs on the calling thread (one-thread decoders and tower sessions)."""
    return time.thread_time()


def best_ms(step: Callable[[Item], object], items: Sequence[Item], passes: int = 3) -> float:
    """Core-ms per item of the fastest of `passes` passes over `items` (after one warm-up
    call); bench.limit and bench.pace time their other per-image steps with it too."""
    step(items[0])
    best = float("inf")
    for _ in range(passes):
        start = core_clock()
        for item in items:
            step(item)
        best = min(best, (core_clock() - start) / len(items) * 1000)
    return best


if __name__ == "__main__":
    main()
