"""`status`'s counts are kept by triggers (store/tallies.py): they must always equal what the
joins over every file and vector row answer, whatever wrote the catalog and however it ended."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from clipsearch import Library
from store import Catalog, FileRecord
from store import tallies as tallies_mod
from store.salvage import salvage

REPO = Path(__file__).resolve().parent.parent


def joined(cat: Catalog) -> dict:
    """The answers of the joins status ran before the tallies (and still runs without them)."""
    conn = cat.conn
    return {
        "counts": {s: n for s, n in conn.execute(
            "SELECT status, COUNT(*) FROM files GROUP BY status")},
        "models": {m: n for m, n in conn.execute(
            "SELECT e.model_id, COUNT(*) FROM files f JOIN embeddings e"
            " ON e.content_hash = f.content_hash WHERE f.status = 'ok' GROUP BY e.model_id")},
        "unindexed": conn.execute(
            "SELECT COUNT(*) FROM files f WHERE f.status = 'ok' AND NOT EXISTS"
            " (SELECT 1 FROM embeddings e WHERE e.content_hash = f.content_hash)").fetchone()[0],
    }


def kept(cat: Catalog) -> dict:
    return {"counts": cat.counts(), "models": cat.model_counts(),
            "unindexed": cat.count_without_vectors()}


def vec(seed: int, dim: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=dim).astype(np.float32)


def test_counts_equal_the_joins_after_every_kind_of_change(tmp_path):
    cat = Catalog(tmp_path / "c.db")
    assert tallies_mod.present(cat.conn)
    root = cat.add_root("/p")
    rng = random.Random(5)
    paths = [f"/p/{i:03d}.jpg" for i in range(60)]
    for step in range(40):
        model = rng.choice(["m1", "m2"])
        records, vectors = [], {}
        for path in rng.sample(paths, 8):  # adds and changed files (new content, or a copy)
            digest = f"h{rng.randrange(30)}"
            status = "error" if rng.random() < 0.15 else "ok"
            records.append(FileRecord(path, root, 1, step, digest if status == "ok" else None,
                                      status, error_reason=None if status == "ok" else "x"))
            if status == "ok" and rng.random() < 0.8:
                vectors[digest] = vec(step)  # INSERT OR REPLACE of a stored vector too
        cat.write_batch(records, vectors, model)
        assert kept(cat) == joined(cat), step
        if step % 5 == 4:
            doomed = [cat.file_id(p) for p in rng.sample(paths, 6)]
            cat.delete_files([i for i in doomed if i is not None])
            assert kept(cat) == joined(cat), step
        if step % 7 == 6:
            cat.collect_garbage()
            assert kept(cat) == joined(cat), step
    cat.remove_model("m1")
    assert kept(cat) == joined(cat)
    assert joined(cat)["unindexed"] > 0  # files left without any vector are counted too
    with cat.transaction() as conn:  # a re-keyed vector (nothing does this today)
        conn.execute("UPDATE embeddings SET content_hash = 'h999' WHERE content_hash ="
                     " (SELECT MIN(content_hash) FROM embeddings)")
        conn.execute("UPDATE embeddings SET model_id = 'm3' WHERE content_hash ="
                     " (SELECT MAX(content_hash) FROM embeddings)")
    assert kept(cat) == joined(cat)
    cat.remove_root("/p")
    assert kept(cat) == joined(cat) == {"counts": {}, "models": {}, "unindexed": 0}
    assert cat.problems() == []


def test_a_library_without_tallies_is_counted_then_migrated_once(tmp_path):
    """A catalog of the previous schema (no tallies): a read-only open counts from the rows
    and writes nothing; the first writable open adds the tallies, every row kept."""
    photos = tmp_path / "photos"
    from tests.helpers import draw_photos

    draw_photos(photos, per_pair=1)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    lib_path = tmp_path / "lib"
    with Library(lib_path, model="shapes-tiny") as lib:
        lib.index([photos])
        before = lib.status()
    db = lib_path / "catalog.db"
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM meta WHERE key LIKE 'tally:%'")  # as before the tallies
    conn.commit()
    rows = conn.execute("SELECT * FROM files ORDER BY id").fetchall()
    conn.close()
    mtime = db.stat().st_mtime_ns

    with Library(lib_path, readonly=True) as lib:
        old = lib.status()
        assert not tallies_mod.present(lib.catalog.conn)
    assert db.stat().st_mtime_ns == mtime
    with Library(lib_path) as lib:  # writable: migrates
        assert tallies_mod.present(lib.catalog.conn)
        new = lib.status()
        assert kept(lib.catalog) == joined(lib.catalog)
        assert lib.catalog.conn.execute("SELECT * FROM files ORDER BY id").fetchall() == rows
    for st in (old, new):
        assert (st.files, st.indexed, st.errors, st.models, st.unindexed) == (
            before.files, before.indexed, before.errors, before.models, before.unindexed)
    assert before.errors == 1 and before.indexed == before.files - 1


def test_a_write_without_the_triggers_is_not_miscounted(tmp_path):
    """A writer that does not keep the tallies (an older clipsearch, the sqlite3 shell):
    status counts from the rows, and the next writable open counts them again."""
    db = tmp_path / "catalog.db"
    cat = Catalog(db)
    root = cat.add_root("/p")
    cat.write_batch([FileRecord(f"/p/{i}.jpg", root, 1, 1, f"h{i}", "ok") for i in range(6)],
                    {f"h{i}": vec(i) for i in range(6)}, "m")
    reader = Catalog(db, readonly=True)
    assert tallies_mod.read(reader.conn) is not None
    foreign = sqlite3.connect(db)  # no TEMP triggers; bumps the generation as writers do
    foreign.execute("DELETE FROM files WHERE path = '/p/0.jpg'")
    foreign.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1"
                    " WHERE key = 'generation'")
    foreign.commit()
    foreign.close()
    for c in (cat, reader):  # the open writer and a reader: counted from the rows
        assert tallies_mod.read(c.conn) is None
        assert kept(c) == joined(c) and c.counts() == {"ok": 5}
    cat.write_batch([FileRecord("/p/new.jpg", root, 1, 1, "h9", "ok")], {"h9": vec(9)}, "m")
    assert tallies_mod.read(cat.conn) is None  # still not trusted after our own write
    assert kept(cat) == joined(cat)
    cat.close()
    reader.close()
    again = Catalog(db)  # a writable open counts again
    assert tallies_mod.read(again.conn) is not None
    assert kept(again) == joined(again) and again.counts() == {"ok": 6}


def test_salvage_keeps_the_counts_exact(tmp_path):
    cat = Catalog(tmp_path / "catalog.db")
    root = cat.add_root("/p")
    cat.write_batch([FileRecord(f"/p/{i}.jpg", root, 1, 1, f"h{i % 7}", "ok")
                     for i in range(20)], {f"h{i}": vec(i) for i in range(5)}, "m")
    cat.close()
    salvage(tmp_path / "catalog.db")
    cat = Catalog(tmp_path / "catalog.db")
    assert kept(cat) == joined(cat) and cat.problems() == []


_WRITER = """
import random, sys
import numpy as np
from store import Catalog, FileRecord
cat = Catalog(sys.argv[1])
root = cat.add_root("/p")
rng = random.Random(int(sys.argv[2]))
print("ready", flush=True)
while True:
    recs = [FileRecord(f"/p/{rng.randrange(3000)}.jpg", root, 1, rng.randrange(9),
                       f"h{rng.randrange(2000)}", "ok") for _ in range(400)]
    cat.write_batch(recs, {r.content_hash: np.ones(64, np.float32) for r in recs
                           if rng.random() < 0.7}, "m")
    ids = [cat.file_id(f"/p/{rng.randrange(3000)}.jpg") for _ in range(100)]
    cat.delete_files([i for i in ids if i is not None])
    cat.collect_garbage()
"""


def test_counts_stay_exact_when_a_writer_is_killed_mid_batch(tmp_path):
    db = tmp_path / "catalog.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rng = random.Random(11)
    for attempt in range(6):
        child = subprocess.Popen([sys.executable, "-c", _WRITER, str(db), str(attempt)],
                                 stdout=subprocess.PIPE, env=env, cwd=REPO)
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.05, 0.6))
        child.send_signal(signal.SIGKILL)
        child.wait()
        cat = Catalog(db)
        assert kept(cat) == joined(cat), attempt
        cat.close()
    cat = Catalog(db)
    assert sum(cat.counts().values()) > 0 and cat.model_counts()
    assert tallies_mod.disagreement(cat.conn) is None
