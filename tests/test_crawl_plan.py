"""Stages 1-2 alone: crawling real folders and planning work from stat data."""

from __future__ import annotations

import os
from collections.abc import Sequence

from indexer.crawl import Candidate, CrawlSkip, crawl
from indexer.plan import Plan, merge_plan
from store import FileRow
from store.catalog import PlanRow


def plan_root(
    candidates: list[Candidate],
    rows: dict[str, FileRow],
    hashes_with_vectors: set[str],
    skips: Sequence[CrawlSkip] = (),
    retry: frozenset[str] = frozenset(),
) -> Plan:
    """merge_plan over rows held in a dict (as a test writes them), in path byte order."""
    ordered = sorted(rows.values(), key=lambda r: os.fsencode(r.path))
    return merge_plan(candidates, (
        PlanRow(os.fsencode(r.path), r.id, r.size, r.mtime_ns, r.content_hash, r.status,
                r.error_reason, r.content_hash in hashes_with_vectors)
        for r in ordered), skips, retry)


EXTS = frozenset({".jpg", ".png"})


def test_crawl_finds_images_case_insensitively_and_survives_links(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.JPG").write_bytes(b"1")
    (tmp_path / "a" / "notes.txt").write_text("no")
    (tmp_path / "b.png").write_bytes(b"2")
    (tmp_path / "dir.jpg").mkdir()  # a directory named like an image is descended, not read
    (tmp_path / "dir.jpg" / "in.png").write_bytes(b"3")
    os.symlink(tmp_path / "missing.jpg", tmp_path / "broken.jpg")
    os.symlink(tmp_path, tmp_path / "a" / "loop")  # a symlink loop back to the root
    items = list(crawl(str(tmp_path), 1, EXTS))
    found = sorted(os.path.relpath(i.path, tmp_path) for i in items if isinstance(i, Candidate))
    skipped = {os.path.basename(i.path): i.reason for i in items if isinstance(i, CrawlSkip)}
    assert found == ["a/x.JPG", "b.png", "dir.jpg/in.png"]
    assert skipped == {"broken.jpg": "broken-symlink"}


def test_crawl_leaves_hidden_entries_and_nas_thumbnails_unless_asked(tmp_path):
    for rel in ("a.jpg", ".hidden.jpg", ".thumbnails/t.png", ".Trash-1000/files/old.jpg",
                "trip/@eaDir/a.jpg/SYNOPHOTO_THUMB_M.jpg", "trip/b.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"1")
    root = tmp_path / ".photos"  # a root may itself be hidden
    root.mkdir()
    (root / "c.jpg").write_bytes(b"1")

    def found(folder, **kwargs):
        return sorted(os.path.relpath(i.path, folder) for i in crawl(str(folder), 1, EXTS,
                                                                     **kwargs))

    assert found(tmp_path) == ["a.jpg", "trip/b.jpg"]
    assert found(root) == ["c.jpg"]
    assert len(found(tmp_path, include_hidden=True)) == 7


def test_crawl_skips_nested_roots(tmp_path):
    (tmp_path / "inner").mkdir()
    (tmp_path / "inner" / "x.jpg").write_bytes(b"1")
    (tmp_path / "y.jpg").write_bytes(b"1")
    items = list(crawl(str(tmp_path), 1, EXTS, skip_dirs=frozenset({str(tmp_path / "inner")})))
    assert [os.path.basename(i.path) for i in items] == ["y.jpg"]


def test_plan_uses_stat_and_model_vectors():
    rows = {
        "/r/same.jpg": FileRow(1, "/r/same.jpg", 1, 10, 5, "h1", "ok"),
        "/r/changed.jpg": FileRow(2, "/r/changed.jpg", 1, 10, 5, "h2", "ok"),
        "/r/bad.jpg": FileRow(3, "/r/bad.jpg", 1, 10, 5, None, "error"),
        "/r/gone.jpg": FileRow(4, "/r/gone.jpg", 1, 10, 5, "h4", "ok"),
        "/r/other-model.jpg": FileRow(5, "/r/other-model.jpg", 1, 10, 5, "h5", "ok"),
    }
    cands = [
        Candidate("/r/same.jpg", 1, 10, 5),
        Candidate("/r/changed.jpg", 1, 11, 6),
        Candidate("/r/bad.jpg", 1, 10, 5),
        Candidate("/r/new.jpg", 1, 3, 3),
        Candidate("/r/other-model.jpg", 1, 10, 5),
    ]
    plan = plan_root(cands, rows, {"h1", "h2", "h4"})
    assert plan.unchanged == 1 and plan.known_errors == 1
    assert sorted(c.path for c in plan.todo) == [
        "/r/changed.jpg", "/r/new.jpg", "/r/other-model.jpg"]
    assert plan.gone == [4]
