"""Planning streams the catalog's rows in path byte order and merges them with the sorted
crawl (indexer/plan.py): its plans must equal those of the dict-and-set planner it replaced,
for any paths (undecodable bytes, characters that sort differently as str and as UTF-8)."""

from __future__ import annotations

import os
import random

import numpy as np

from bench.scale_ops import OldRow, old_files_in_root, old_hashes_with_vectors
from indexer.crawl import Candidate, CrawlSkip
from indexer.plan import Plan, merge_plan
from store import Catalog, FileRecord, FileRow

RETRY = frozenset({"unreadable"})


def old_plan_root(candidates, rows: dict[str, OldRow], hashes: set[str], skips=(),
                  retry=frozenset()) -> Plan:
    """The planner before the streamed merge (main at 157a2ba), kept as the oracle."""
    plan = Plan()
    seen: set[str] = set()
    for skip in skips:
        seen.add(skip.path)
        row = rows.get(skip.path)
        if (row is not None and row.status == "error" and row.error_reason == skip.reason
                and row.size == skip.size and row.mtime_ns == skip.mtime_ns):
            plan.known_errors += 1
        else:
            plan.errors.append(skip)
    unlisted = tuple(s.path.rstrip(os.sep) + os.sep for s in skips if s.folder)
    for cand in candidates:
        seen.add(cand.path)
        row = rows.get(cand.path)
        same_stat = row is not None and row.size == cand.size and row.mtime_ns == cand.mtime_ns
        if same_stat and row.status == "error" and row.error_reason not in retry:
            plan.known_errors += 1
        elif same_stat and row.content_hash in hashes and not row.meta_missing:
            plan.unchanged += 1
        else:
            plan.todo.append(cand)
    plan.gone = [row.id for path, row in rows.items()
                 if path not in seen and not (unlisted and path.startswith(unlisted))]
    return plan


NAMES = ["a.jpg", "b.jpg", "é.jpg", "\ue000.jpg", "😀.jpg", os.fsdecode(b"\xff.jpg"),
         os.fsdecode(b"\xe9-latin1.jpg"), "sub/x.jpg", "sub/y.jpg", "sub-z.jpg", "sub0.jpg",
         "deep/er/z.jpg", "deep/er/w.jpg", "Z.jpg", "0.jpg"]


def _scenario(tmp_path, seed: int):
    """Odd seeds: every ok file's content has a vector (plan_rows then skips the lookups)."""
    rng = random.Random(seed)
    cat = Catalog(tmp_path / f"c{seed}.db")
    root = cat.add_root("/r")
    other = cat.add_root("/elsewhere")
    paths = [f"/r/{n}" for n in NAMES] + [f"/r/sub/{i}.jpg" for i in range(20)]
    records, vectors = [], {}
    for path in paths:
        if rng.random() < 0.2:
            continue  # a new file
        status = "error" if rng.random() < 0.25 else "ok"
        digest = f"h{rng.randrange(15)}" if status == "ok" or rng.random() < 0.3 else None
        records.append(FileRecord(path, root, rng.randrange(3), rng.randrange(3), digest,
                                  status, error_reason=rng.choice(["unreadable", "corrupt"])
                                  if status == "error" else None,
                                  format=None if rng.random() < 0.2 else "JPEG"))
        if digest and (rng.random() < 0.7 or (seed % 2 and status == "ok")):
            vectors[digest] = np.ones(4, np.float32)
    records.append(FileRecord("/elsewhere/a.jpg", other, 1, 1, "h1", "ok", format="JPEG"))
    if seed % 2:
        vectors["h1"] = np.ones(4, np.float32)
    cat.write_batch(records, vectors, "m")
    cat.write_batch([], {"h2": np.ones(4, np.float32)}, "other-model")
    cands, skips = [], []
    for path in paths:
        pick = rng.random()
        if pick < 0.6:
            cands.append(Candidate(path, root, rng.randrange(3), rng.randrange(3)))
        elif pick < 0.75:
            skips.append(CrawlSkip(path, rng.choice(["unreadable", "corrupt"]), "m",
                                   rng.randrange(3), rng.randrange(3)))
    if rng.random() < 0.5:
        skips.append(CrawlSkip("/r/sub", "unreadable", "cannot list", folder=True))
    rng.shuffle(cands)  # the crawl's order is the file system's
    return cat, root, cands, skips


def _same(new: Plan, old: Plan) -> None:
    assert sorted(c.path for c in new.todo) == sorted(c.path for c in old.todo)
    assert (new.unchanged, new.known_errors) == (old.unchanged, old.known_errors)
    assert sorted(new.gone) == sorted(old.gone)
    assert sorted(s.path for s in new.errors) == sorted(s.path for s in old.errors)


def test_streamed_plan_equals_the_dict_plan(tmp_path):
    checked = {"unchanged": 0, "gone": 0, "todo": 0, "known": 0, "every": 0}
    for seed in range(40):
        cat, root, cands, skips = _scenario(tmp_path, seed)
        rows, hashes = old_files_in_root(cat, root), old_hashes_with_vectors(cat, "m")
        kept = cat.model_counts().get("m"), cat.counts().get("ok")
        checked["every"] += kept[0] == kept[1]
        assert kept[0] == kept[1] or not seed % 2
        old = old_plan_root(cands, rows, hashes, skips, RETRY)
        new = merge_plan(cands, cat.plan_rows(root, "m"), skips, RETRY)
        _same(new, old)
        for path, row in new.retried.items():  # what the loaders compare a retry with
            assert row == FileRow(*[getattr(rows[path], f) for f in (
                "id", "path", "root_id", "size", "mtime_ns", "content_hash", "status",
                "error_reason")])
            assert row.status == "error" and row.error_reason in RETRY
        checked["unchanged"] += old.unchanged
        checked["gone"] += len(old.gone)
        checked["todo"] += len(old.todo)
        checked["known"] += old.known_errors
        cat.close()
    assert all(checked.values()), checked  # every branch was exercised


def test_plan_rows_come_in_the_order_sqlite_compares_paths(tmp_path):
    cat, root, _, _ = _scenario(tmp_path, 1)
    keys = [r.path for r in cat.plan_rows(root, "m", chunk=3)]
    assert keys == sorted(keys) and len(keys) == len(old_files_in_root(cat, root))
    # str order differs from byte order here, which is why the merge sorts by bytes
    assert sorted(["\ue000", os.fsdecode(b"\xff")]) != sorted(
        ["\ue000", os.fsdecode(b"\xff")], key=os.fsencode)


def test_vector_lookup_sees_committed_vectors(tmp_path):
    cat = Catalog(tmp_path / "c.db")
    root = cat.add_root("/r")
    lookup = cat.vector_lookup("m")
    assert "h1" not in lookup
    cat.write_batch([FileRecord("/r/a.jpg", root, 1, 1, "h1", "ok")],
                    {"h1": np.ones(4, np.float32)}, "m")
    assert "h1" in lookup and "h1" not in cat.vector_lookup("other")
    assert set(lookup) == {"h1"}
    lookup.close()
    assert "h1" not in lookup  # a loader thread asking after the run closed it: no crash
    lookup.close()
