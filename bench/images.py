"""The image sets: the caltech sample from ../shared, phone-size JPEGs made from it, 10k tiny
files for the re-index job, and link folders holding a subset (`--limit`).

    python -m bench.images phone|tiny [--count N] [--fresh]   # generate a cached set
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# CLIPSEARCH_BENCH_CACHE lets several checkouts (git worktrees) share the made-once inputs.
CACHE = Path(os.environ.get("CLIPSEARCH_BENCH_CACHE") or REPO / "bench" / ".cache")
CALTECH = REPO.parent / "shared" / "datasets" / "caltech101-1200"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

PHONE_COUNT = 200
PHONE_SIZE = (4000, 3000)
# Bump when the generator changes so cached files are remade.
PHONE_VERSION = 1
TINY_VERSION = 2


@dataclass
class ImageSet:
    name: str
    folder: Path  # what gets indexed: holds exactly `files` (links when a subset)
    files: list[Path]

    @property
    def count(self) -> int:
        return len(self.files)

    @property
    def bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


def list_images(folder: Path) -> list[Path]:
    """Sorted image files under `folder` (links followed), the same set both tools see."""
    found = [Path(d) / n for d, _, names in os.walk(folder, followlinks=True) for n in names
             if n.lower().endswith(IMAGE_SUFFIXES)]
    return sorted(found)


def caltech_files() -> list[Path] | None:
    return list_images(CALTECH / "images") if (CALTECH / "images").is_dir() else None


def phone_ready() -> bool:
    return _manifest_ok(CACHE / "phone", _phone_expect())


def _phone_expect() -> dict:
    return {"version": PHONE_VERSION, "count": PHONE_COUNT, "size": list(PHONE_SIZE)}


def _manifest_ok(folder: Path, expect: dict) -> bool:
    try:
        return json.loads((folder / "manifest.json").read_text()) == expect
    except (OSError, ValueError):
        return False


def phone_set(sources: list[Path], fresh: bool = False) -> Path:
    """200 phone-size JPEGs (4000 x 3000, q90, 2-4 MB, some EXIF-rotated), made once."""
    folder = CACHE / "phone"
    expect = _phone_expect()
    if not fresh and _manifest_ok(folder, expect):
        return folder
    import numpy as np
    from PIL import Image

    shutil.rmtree(folder, ignore_errors=True)
    (folder / "photos").mkdir(parents=True)
    rng = np.random.default_rng(101)
    width, height = PHONE_SIZE
    pad = 256
    # One grain field, sliced at a random offset per photo: drawing 36M normals per photo
    # would dominate generation, and JPEG cannot exploit the reuse.
    grain = rng.normal(0, 5, (height + pad, width + pad, 1)).astype(np.int16)
    chroma = rng.integers(-2, 3, (height + pad, width + pad, 3), dtype=np.int16)
    step = max(1, len(sources) // PHONE_COUNT)
    print(f"bench: generating {PHONE_COUNT} phone-size JPEGs into {folder} (once)", flush=True)
    for i in range(PHONE_COUNT):
        src = Image.open(sources[(i * step) % len(sources)]).convert("RGB")
        big = np.asarray(src.resize(PHONE_SIZE, Image.Resampling.BICUBIC), np.int16)
        y, x, v, u = rng.integers(0, pad, 4)
        big += grain[y : y + height, x : x + width]
        big += chroma[v : v + height, u : u + width]
        photo = Image.fromarray(np.clip(big, 0, 255).astype(np.uint8))
        photo.save(folder / "photos" / f"IMG_{i:04d}.jpg", "JPEG", quality=90,
                   exif=_phone_exif(i).tobytes())
    (folder / "manifest.json").write_text(json.dumps(expect))
    return folder


def _phone_exif(i: int):
    from PIL import Image

    exif = Image.Exif()
    exif[0x010F] = "BenchPhone"  # Make
    exif[0x0110] = "Model 12MP"  # Model
    # Orientation: mostly upright, some rotated 90 (6), 270 (8) and 180 (3) like real rolls.
    exif[0x0112] = {3: 6, 6: 8, 9: 3}.get(i % 10, 1)
    exif.get_ifd(0x8769)[0x9003] = f"2024:05:{1 + i % 28:02d} 12:{i % 60:02d}:00"
    return exif


def tiny_ready(count: int) -> bool:
    return _manifest_ok(CACHE / f"tiny{count}", {"version": TINY_VERSION, "count": count})


def tiny_set(count: int = 10_000, fresh: bool = False) -> Path:
    """`count` tiny PNGs in folders of 100, for timing a re-index of an unchanged tree.
    Lossless, so every colour gives distinct bytes (no duplicates for the hash to merge)."""
    folder = CACHE / f"tiny{count}"
    expect = {"version": TINY_VERSION, "count": count}
    if not fresh and _manifest_ok(folder, expect):
        return folder
    from PIL import Image

    shutil.rmtree(folder, ignore_errors=True)
    print(f"bench: generating {count} tiny images into {folder} (once)", flush=True)
    for i in range(count):
        sub = folder / "photos" / f"{i // 100:03d}"
        if i % 100 == 0:
            sub.mkdir(parents=True)
        color = (i % 256, (i // 256) % 256, (i * 37) % 256)
        Image.new("RGB", (32, 24), color).save(sub / f"t{i:05d}.png")
    (folder / "manifest.json").write_text(json.dumps(expect))
    return folder


def make_set(name: str, files: list[Path], limit: int | None) -> ImageSet:
    """The set to index: `limit` files drawn with a fixed seed (every class and EXIF
    orientation gets a share; a fixed stride could miss one), linked into one folder
    (links are followed by both tools, so no bytes are copied)."""
    if limit is None or limit >= len(files):
        chosen = files
    else:
        chosen = sorted(random.Random(0).sample(files, limit))
    folder = CACHE / "sets" / f"{name}-{len(chosen)}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    links = []
    for i, src in enumerate(chosen):
        link = folder / f"{i:05d}-{src.name}"
        link.symlink_to(src.resolve())
        links.append(link)
    return ImageSet(name, folder, links)


def sample_files(name: str, limit: int) -> list[Path] | None:
    """`limit` files spread evenly over the phone or caltech set (None: caltech missing)."""
    sources = caltech_files()
    if name == "caltech":
        if sources is None:
            return None
        files = sources
    else:
        files = list_images(phone_set(sources or []))
    return [files[i * len(files) // limit] for i in range(min(limit, len(files)))]


def warm_page_cache(files: list[Path]) -> None:
    """Read every file once so neither tool pays for the first disk read."""
    for path in files:
        with open(path, "rb") as handle:
            while handle.read(1 << 22):
                pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.images")
    parser.add_argument("which", choices=("phone", "tiny"))
    parser.add_argument("--count", type=int, default=10_000, help="tiny images")
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args(argv)
    if args.which == "tiny":
        print(tiny_set(args.count, args.fresh))
        return 0
    sources = caltech_files()
    if sources is None:
        print(f"the phone set is made from {CALTECH}, which is missing", file=sys.stderr)
        return 1
    print(phone_set(sources, args.fresh))
    return 0


if __name__ == "__main__":
    sys.exit(main())
