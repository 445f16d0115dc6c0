"""Fuzz the crawl and the index run with hostile trees: an index, every skip named, nothing else.

Each example builds a real tree: images, non-images named .png, empty files, FIFOs, hidden
files, folders that cannot be read (chmod 000: root still reads them, so both outcomes occur),
symlinks to folders and files inside the root, loops to an ancestor, dangling links, links
out of the root (a folder of photos, a photo, /proc). Entries vanish during the crawl (between
the generator's items) and between crawl and load (from the progress callback, with one
decode thread and no prefetch so the next file is not read yet), and files are swapped for
FIFOs there. Checks: the crawl and the run complete in bounded time, never leave the root
(or /proc, /sys, /dev with follow_links), every file is a candidate or a named skip (unless
it or a folder above it vanished or was skipped), every error row has a known reason, and a
non-image never gets a content hash.

CLIPSEARCH_FUZZ_EXAMPLES sets the number of examples (default 25, about half a minute);
`make fuzz` raises it.
"""

from __future__ import annotations

import faulthandler
import io
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from clip_core.pixels.decode import REASONS
from clipsearch import IndexSettings, Library
from indexer.crawl import Candidate, crawl
from tests.reliability_support import MODEL, catalog_rows

# Each example indexes a tree (~0.5 s): 1/40 of the decoder fuzz's count (500 in `make fuzz`).
_ASKED = os.environ.get("CLIPSEARCH_FUZZ_EXAMPLES")
EXAMPLES = max(1, int(_ASKED) // 40) if _ASKED else 25
HANG_S = 120  # one example taking this long is a hang: dump stacks and exit
CRAWL_REASONS = frozenset({"broken-symlink", "symlink-loop", "unreadable", "not-a-file",
                           "outside-root", "pseudo-filesystem", "missing"})
EXTS = frozenset({".png", ".jpg"})
KINDS = ("image", "image", "not-image", "empty", "fifo", "hidden", "link-dir-inside",
         "link-file-inside", "link-loop", "link-dangling", "link-outside-dir",
         "link-outside-file", "link-proc", "locked-dir")
NOT_AN_IMAGE = b"root:$6$secret-hash-not-an-image\n"


def _png(seed: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (24 + seed % 7, 20), (seed * 37 % 256, 90, 200)).save(out, "PNG")
    return out.getvalue()


@st.composite
def trees(draw) -> dict:
    dirs = [None]  # parent index of each folder; folder 0 is the root
    for _ in range(draw(st.integers(0, 4))):
        dirs.append(draw(st.integers(0, len(dirs) - 1)))
    entries = [(draw(st.sampled_from(KINDS)), draw(st.integers(0, len(dirs) - 1)))
               for _ in range(draw(st.integers(1, 14)))]
    return {
        "dirs": dirs,
        "entries": entries,
        "crawl_vanish": draw(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 40)),
                                      max_size=3)),
        "load_vanish": draw(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 40),
                                               st.booleans()), max_size=3)),
        "follow_links": draw(st.booleans()),
    }


def _build(base: Path, tree: dict) -> tuple[Path, list[Path], set[Path]]:
    """Returns the root, every path made inside it (folders first) and the non-images."""
    root, outside = base / "root", base / "outside"
    outside.mkdir()
    (outside / "far.png").write_bytes(_png(99))
    folders = [root]
    root.mkdir()
    for i, parent in enumerate(tree["dirs"][1:], 1):
        folders.append(folders[parent] / f"d{i}" if i % 3 else folders[parent] / f"d{i}.jpg")
        folders[-1].mkdir()
    made: list[Path] = list(folders[1:])
    not_images: set[Path] = set()
    for i, (kind, at) in enumerate(tree["entries"]):
        folder = folders[at]
        path = folder / f"e{i}-{kind}.png"
        if kind == "image":
            path.write_bytes(_png(i))
        elif kind == "not-image":
            path.write_bytes(NOT_AN_IMAGE)
            not_images.add(path)
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "hidden":
            path = folder / f".e{i}.png"
            path.write_bytes(_png(i))
        elif kind == "link-dir-inside":
            path = folder / f"e{i}-link"
            path.symlink_to(folders[i % len(folders)])
        elif kind == "link-file-inside":
            target = root / f"t{i}.png"
            target.write_bytes(_png(i + 50))
            made.append(target)
            path.symlink_to(target)
        elif kind == "link-loop":
            path = folder / f"e{i}-loop"
            path.symlink_to(folder)
        elif kind == "link-dangling":
            path.symlink_to(base / "nowhere.png")
        elif kind == "link-outside-dir":
            path = folder / f"e{i}-out"
            path.symlink_to(outside)
        elif kind == "link-outside-file":
            path.symlink_to(outside / "far.png")
        elif kind == "link-proc":
            path = folder / f"e{i}-proc"
            path.symlink_to("/proc")
        elif kind == "locked-dir":
            path = folder / f"e{i}-locked"
            path.mkdir()
            (path / "inside.png").write_bytes(_png(i))
            made.append(path / "inside.png")
            path.chmod(0)
        made.append(path)
    return root, made, not_images


def _vanish(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o700)
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def _inside(path: str, real_root: str) -> bool:
    return (os.path.realpath(path) + os.sep).startswith(real_root + os.sep)


def _under(path: Path, others: set[Path]) -> bool:
    return any(path == o or o in path.parents for o in others)


def _check_crawl(root: Path, made: list[Path], tree: dict) -> None:
    real_root = os.path.realpath(root)
    follow = tree["follow_links"]
    vanish = dict(tree["crawl_vanish"])
    seen_real: set[str] = set()
    skipped: set[Path] = set()
    gone: set[Path] = set()
    started = time.monotonic()
    for n, item in enumerate(crawl(str(root), 1, EXTS, follow_links=follow)):
        real = os.path.realpath(item.path)
        if isinstance(item, Candidate):
            assert follow or _inside(item.path, real_root), item
            assert not real.startswith(("/proc/", "/sys/", "/dev/")), item
            seen_real.add(real)
        else:
            assert item.reason in CRAWL_REASONS and item.message, item
            skipped.add(Path(item.path))
            skipped.add(Path(real))  # a folder met first through a link names its files so
        if n in vanish and made:
            victim = made[vanish[n] % len(made)]
            gone.add(victim)
            _vanish(victim)
    assert time.monotonic() - started < 60
    for path in made:
        if path.suffix != ".png" or path.name.startswith(".") or _under(path, gone | skipped):
            continue
        if any(p.is_symlink() or p.name.startswith(".") for p in [path, *path.parents]
               if root in p.parents):
            continue  # reached through a link: named by the link, checked above
        assert os.path.realpath(path) in seen_real or _under(path, skipped), path


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    with Library(tmp_path_factory.mktemp("fuzz-lib"), model=MODEL) as lib:
        yield lib


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(tree=trees())
def test_hostile_trees_crawl_and_index_completely_and_stay_in_the_root(library, tree):
    base = Path(tempfile.mkdtemp(prefix="crawl-fuzz-"))
    faulthandler.dump_traceback_later(HANG_S, exit=True)
    try:
        root, made, not_images = _build(base, tree)
        _check_crawl(root, made, tree)
        alive = [p for p in made if os.path.lexists(p)]
        vanish = {n: (alive[i % len(alive)], fifo) for n, i, fifo in tree["load_vanish"]
                  if alive}

        def progress(p) -> None:  # between this file's load and the next one's
            if p.done in vanish:
                victim, fifo = vanish[p.done]
                _vanish(victim)
                if fifo and not os.path.lexists(victim) and victim.parent.is_dir():
                    os.mkfifo(victim)

        started = time.monotonic()
        report = library.index([root], settings=IndexSettings(
            workers=1, prefetch=1, batch_size=4, follow_links=tree["follow_links"]),
            progress=progress)
        assert time.monotonic() - started < 90
        assert not report.interrupted
        for skip in report.skipped:
            assert skip.reason in (REASONS | CRAWL_REASONS) and skip.message, skip
        real_root = os.path.realpath(root)
        prefix = os.fsencode(str(root) + os.sep)
        for path, row in catalog_rows(library.path).items():
            if not path.startswith(prefix):
                continue  # other examples' roots
            name = os.fsdecode(path)
            if row["status"] == "ok":
                assert tree["follow_links"] or _inside(name, real_root) or not os.path.lexists(
                    name), name
                assert row["content_hash"]
            else:
                assert row["error_reason"] in (REASONS | CRAWL_REASONS), row
                if Path(name) in not_images:
                    assert row["content_hash"] is None, row
            assert not os.path.realpath(name).startswith(("/proc/", "/sys/", "/dev/"))
    finally:
        faulthandler.cancel_dump_traceback_later()
        for folder, dirs, _ in os.walk(base):
            for d in dirs:
                p = os.path.join(folder, d)
                if not os.path.islink(p):
                    os.chmod(p, 0o700)
        shutil.rmtree(base, ignore_errors=True)
