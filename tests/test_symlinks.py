"""Symlinks never lead an index run out of its root, and non-images are never hashed
(issue 10, item 3)."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from clip_core.pixels.preprocess import OPENAI_MEAN, OPENAI_STD, PreprocessSpec
from indexer.crawl import Candidate, CrawlSkip, crawl
from indexer.stages import load_one
from tests.helpers import cli_json, draw_photos
from tests.reliability_support import MODEL, catalog_rows

EXTS = frozenset({".jpg", ".png"})


def _tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    """root/ with good photos, links out of it (a folder of photos, a photo, a secret file
    named .png, /proc) and links that stay inside it."""
    root, outside = tmp_path / "root", tmp_path / "elsewhere"
    draw_photos(root / "mine", per_pair=1)
    draw_photos(outside, per_pair=1, seed=3)
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$not-an-image:19000:0:99999:7:::\n")
    secret.chmod(0o600)
    os.symlink(outside, root / "outside")
    os.symlink(next(outside.iterdir()), root / "out.png")
    os.symlink(secret, root / "shadow.png")
    os.symlink("/proc", root / "proc_dir")
    os.symlink(root / "mine", root / "alias")  # inside the root: followed (walked once)
    os.symlink("mine/" + next((root / "mine").iterdir()).name, root / "inside.png")
    return root, outside, secret


def _crawl(root: Path, limit: int = 20_000, **kwargs) -> list[Candidate | CrawlSkip]:
    # islice: before the fix the walk went through /proc into the whole machine.
    return list(itertools.islice(crawl(str(root), 1, EXTS, **kwargs), limit))


def test_links_out_of_the_root_are_reported_not_followed(tmp_path):
    root, _, _ = _tree(tmp_path)
    items = _crawl(root)
    found = {i.path for i in items if isinstance(i, Candidate)}
    assert found and all(p.startswith(str(root) + os.sep) for p in found)
    assert all(os.path.realpath(p).startswith(str(root) + os.sep) for p in found)
    assert str(root / "inside.png") in found
    skipped = {os.path.basename(i.path): i.reason for i in items if isinstance(i, CrawlSkip)}
    assert skipped == {"outside": "outside-root", "out.png": "outside-root",
                       "shadow.png": "outside-root", "proc_dir": "outside-root"}
    message = next(i.message for i in items if isinstance(i, CrawlSkip))
    assert "--follow-links" in message


def test_follow_links_follows_them_but_never_into_pseudo_filesystems(tmp_path):
    root, outside, _ = _tree(tmp_path)
    items = _crawl(root, follow_links=True)
    found = {os.path.realpath(i.path) for i in items if isinstance(i, Candidate)}
    assert {str(p) for p in outside.iterdir()} <= found
    assert not any(p.startswith(("/proc", "/sys", "/dev")) for p in found)
    skipped = {os.path.basename(i.path): i.reason for i in items if isinstance(i, CrawlSkip)}
    assert skipped == {"proc_dir": "pseudo-filesystem"}
    for pseudo in ("/proc", "/sys", "/dev"):  # as a root, too
        if os.path.isdir(pseudo):
            assert [(i.reason, i.folder) for i in _crawl(Path(pseudo), follow_links=True)] == [
                ("pseudo-filesystem", True)]


def test_a_non_image_is_never_hashed(tmp_path):
    secret = tmp_path / "shadow.png"
    secret.write_text("root:$6$secret\n")
    cand = Candidate(str(secret), 1, secret.stat().st_size, secret.stat().st_mtime_ns)
    spec = PreprocessSpec(32, OPENAI_MEAN, OPENAI_STD)
    asked: list[str] = []
    loaded = load_one(cand, spec, lambda digest: bool(asked.append(digest)), 32)
    assert loaded.record.status == "error" and loaded.record.error_reason == "not-an-image"
    assert loaded.record.content_hash is None and asked == []


@pytest.mark.parametrize("follow", [False, True])
def test_index_stays_in_the_root_unless_asked(tmp_path, follow):
    root, outside, secret = _tree(tmp_path)
    library = tmp_path / "lib"
    extra = ["--follow-links"] if follow else []
    report = cli_json("index", str(root), "--model", MODEL, "-q", *extra, library=library)
    assert not report["interrupted"]
    rows = catalog_rows(library)
    skipped = {os.path.basename(s["path"]): s["reason"] for s in report["skipped"]}
    if follow:
        assert skipped == {"proc_dir": "pseudo-filesystem", "shadow.png": "not-an-image"}
        assert rows[str(root / "shadow.png").encode()]["content_hash"] is None
        linked = {os.path.realpath(os.fsdecode(p)) for p, r in rows.items()
                  if r["status"] == "ok"}
        assert {str(p) for p in outside.iterdir()} <= linked
    else:
        assert skipped == {"outside": "outside-root", "out.png": "outside-root",
                           "shadow.png": "outside-root", "proc_dir": "outside-root"}
        for path, row in rows.items():
            assert os.path.realpath(os.fsdecode(path)).startswith(str(root) + os.sep) or (
                row["error_reason"] == "outside-root" and row["content_hash"] is None)
    assert not any(os.fsdecode(p).startswith(str(root / "proc_dir") + os.sep) for p in rows)


def test_a_pseudo_filesystem_mounted_inside_a_root_is_found_by_its_device(tmp_path):
    """Not by its path: proc mounted at root/mnt (as /proc is inside a root of "/")."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) to mount a proc filesystem")
    root = tmp_path / "root"
    draw_photos(root, per_pair=1)
    (root / "mnt").mkdir()
    mounted = subprocess.run(["mount", "-t", "proc", "proc", str(root / "mnt")],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"mount -t proc not allowed here: {mounted.stderr.strip()}")
    try:
        for follow in (False, True):
            items = _crawl(root, follow_links=follow)
            skipped = [(os.path.basename(i.path), i.reason) for i in items
                       if isinstance(i, CrawlSkip)]
            assert skipped == [("mnt", "pseudo-filesystem")]
            assert not any(str(root / "mnt") in i.path for i in items
                           if isinstance(i, Candidate))
    finally:
        subprocess.run(["umount", str(root / "mnt")], check=True)
