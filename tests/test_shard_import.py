"""import-shards compares each shard with the catalog through streamed rows (indexer/shards.py
with Catalog.plan_rows): its reports and the library it leaves must equal those of the
importer that held a root's every row and a model's every hash (main at 93baf23), over random
shards, catalogs and files on disk (stale files, error rows, copies, odd path bytes)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from bench.scale_ops import old_files_in_root, old_hashes_with_vectors
from indexer.shards import ShardImport, import_shards, shard_files, shard_table
from store import Catalog, FileRecord
from store.catalog import META_COLUMNS

pq = pytest.importorskip("pyarrow.parquet")
SEEDS = 12

NAMES = [b"a.jpg", b"b.jpg", "é.jpg".encode(), b"\xff.jpg", b"\xe9-latin1.jpg", b"sub/x.jpg",
         b"sub/y.jpg", b"sub-z.jpg", b"sub0.jpg", b"Z.jpg"] + [b"deep/%d.jpg" % i
                                                              for i in range(12)]


def old_import_shards(catalog: Catalog, folder: str, batch_size: int
                      ) -> tuple[ShardImport, int]:
    """The importer before it streamed (93baf23), its catalog reads as they were; and how
    many rows it imported again only because it had read the model's hashes before an
    earlier batch of the same shard stored their vector (`early`: the streamed importer
    asks at write time and counts them unchanged, rewriting nothing)."""
    report, early = ShardImport(), [0]
    filesystem, paths = shard_files(folder)
    for shard in paths:
        rows = pq.read_table(shard, filesystem=filesystem).to_pylist()
        library = _OldLibrary(catalog)
        for start in range(0, len(rows), batch_size):
            records, vectors, model_id = [], {}, ""
            for row in rows[start:start + batch_size]:
                model_id = row["model_id"]
                record = _old_current_record(library, row, report, early)
                if record is None:
                    continue
                records.append(record)
                if row["vector"] is not None:
                    vectors[str(record.content_hash)] = np.asarray(row["vector"], np.float32)
            if vectors:
                catalog.register_model(model_id, json.loads(rows[start]["model_spec"]),
                                       len(next(iter(vectors.values()))))
            if records:
                catalog.write_batch(records, vectors, model_id)
                report.imported += len(records)
            report.model_id = report.model_id or model_id or None
    return report, early[0]


class _OldLibrary:
    def __init__(self, catalog: Catalog):
        self.catalog, self.root_ids, self.rows, self.hashes = catalog, {}, {}, {}

    def root_id(self, root: str) -> int:
        if root not in self.root_ids:
            self.root_ids[root] = self.catalog.add_root(root)
            self.rows[self.root_ids[root]] = old_files_in_root(self.catalog,
                                                               self.root_ids[root])
        return self.root_ids[root]

    def has_vector(self, model_id: str, digest: str) -> bool:
        if model_id not in self.hashes:
            self.hashes[model_id] = old_hashes_with_vectors(self.catalog, model_id)
        return digest in self.hashes[model_id]


def _old_current_record(library: _OldLibrary, row: dict, report: ShardImport, early: list):
    path, root = os.fsdecode(row["path"]), os.fsdecode(row["root"])
    try:
        st = os.stat(path)
    except OSError:
        st = None
    if st is None or (st.st_size, st.st_mtime_ns) != (row["size"], row["mtime_ns"]):
        report.stale += 1
        return None
    root_id = library.root_id(root)
    known = library.rows[root_id].get(path)
    if (known is not None and (known.size, known.mtime_ns, known.content_hash, known.status,
                               known.error_reason)
            == (row["size"], row["mtime_ns"], row["content_hash"], row["status"],
                row["error_reason"])
            and (row["status"] == "error"
                 or library.has_vector(row["model_id"], row["content_hash"]))
            and not (known.meta_missing and row.get("format"))):
        report.unchanged += 1
        return None
    if (known is not None and row["model_id"] in library.hashes  # it was asked, said no
            and (known.size, known.mtime_ns, known.content_hash, known.status,
                 known.error_reason, row["status"])
            == (row["size"], row["mtime_ns"], row["content_hash"], row["status"],
                row["error_reason"], "ok")
            and not (known.meta_missing and row.get("format"))):
        early[0] += row["content_hash"] in old_hashes_with_vectors(library.catalog,
                                                                   row["model_id"])
    return FileRecord(path, root_id, row["size"], row["mtime_ns"], row["content_hash"],
                      row["status"], row["width"], row["height"], row["taken_at"],
                      row["error_reason"], row["error_message"],
                      **{name: row.get(name) for name in META_COLUMNS})


def _shard_record(rng: random.Random, path: str, st: os.stat_result) -> FileRecord:
    ok = rng.random() < 0.75
    return FileRecord(path, None, st.st_size, st.st_mtime_ns,
                      f"h{rng.randrange(5)}" if ok or rng.random() < 0.3 else None,
                      "ok" if ok else "error", 4, 3, None,
                      None if ok else rng.choice(["corrupt", "unreadable"]),
                      None if ok else "bad", format="JPEG" if ok else None)


def _perturbed(rng: random.Random, rec: FileRecord, root_id: int) -> FileRecord:
    """What the catalog holds for a file before the import: mostly the shard's row."""
    change = rng.choice(["same", "same", "same", "size", "hash", "status", "no-format"])
    return FileRecord(rec.path, root_id, rec.size + (change == "size"), rec.mtime_ns,
                      "h9" if change == "hash" else rec.content_hash,
                      ("ok" if rec.status == "error" else "error") if change == "status"
                      else rec.status, rec.width, rec.height, rec.taken_at, rec.error_reason,
                      rec.error_message,
                      format=None if change == "no-format" else rec.format)


def _scenario(tmp: Path, seed: int) -> tuple[str, list[tuple[str, int, list]]]:
    """Files on disk and shards describing them (some changed or gone since); returns the
    shard folder and what each catalog must hold before the import: (root, rows, vectors)."""
    rng = random.Random(seed)
    shards, stored = tmp / "shards", []
    shards.mkdir(parents=True)
    per_shard: list[list[tuple[str, FileRecord, np.ndarray | None]]] = [[] for _ in range(3)]
    for root in (tmp / "photos", tmp / "other"):
        rows, vectors = [], {}
        for name in NAMES[: rng.randrange(4, len(NAMES))]:
            path = os.path.join(os.fsencode(root), name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Path(os.fsdecode(path)).write_bytes(b"x" * rng.randrange(1, 4))
            os.utime(path, ns=(0, rng.randrange(3) * 10**9))
            rec = _shard_record(rng, os.fsdecode(path), os.stat(path))
            vector = (np.full(4, 1 + int(rec.content_hash[1:]), np.float32)  # one per content
                      if rec.status == "ok" else None)
            for shard in rng.sample(range(3), rng.choice([1, 1, 1, 2])):  # sometimes twice
                per_shard[shard].append((str(root), rec, vector))
            if rng.random() < 0.6:
                rows.append(_perturbed(rng, rec, 0))
                if rows[-1].content_hash and rng.random() < 0.4:
                    vectors[rows[-1].content_hash] = np.ones(4, np.float32)
            pick = rng.random()
            if pick < 0.1:
                os.unlink(path)  # gone since it was embedded
            elif pick < 0.2:
                os.utime(path, ns=(0, 7 * 10**9))  # changed since
        stored.append((str(root), rows, list(vectors.items())))
    for i, rows in enumerate(per_shard):
        rng.shuffle(rows)  # a shard's order is the cluster's
        for root in {r for r, _, _ in rows}:
            mine = [(rec, v) for r, rec, v in rows if r == root]
            table = shard_table(root, [rec for rec, _ in mine], [v for _, v in mine], "m",
                                json.dumps({"model": "m"}))
            if rng.random() < 0.3:  # written before photo metadata
                table = table.drop_columns(list(META_COLUMNS))
            pq.write_table(table, shards / f"{i}-{len(os.listdir(shards))}.parquet")
    return str(shards), stored


def _catalog(path: Path, stored) -> Catalog:
    cat = Catalog(path)
    for root, rows, vectors in stored:
        root_id = cat.add_root(root)
        for row in rows:
            row.root_id = root_id
        cat.write_batch(rows, dict(vectors), "m")
    cat.write_batch([], {"h3": np.ones(4, np.float32)}, "other-model")
    return cat


def _state(cat: Catalog) -> tuple:
    return tuple(cat.conn.execute(sql).fetchall() for sql in (
        "SELECT id, path, root_id, size, mtime_ns, content_hash, width, height, taken_at,"
        " status, error_reason, error_message, format FROM files ORDER BY id",
        "SELECT content_hash, model_id, vector FROM embeddings ORDER BY 1, 2",
        "SELECT id, path FROM roots ORDER BY id", "SELECT model_id, spec FROM models"))


def test_streamed_import_equals_the_dict_import(tmp_path):
    seen = {"imported": 0, "unchanged": 0, "stale": 0, "early": 0, "same state": 0}
    for seed in range(SEEDS):
        folder, stored = _scenario(tmp_path / f"s{seed}", seed)
        batch = random.Random(seed).choice([2, 256])
        old_cat = _catalog(tmp_path / f"s{seed}" / "old.db", stored)
        new_cat = _catalog(tmp_path / f"s{seed}" / "new.db", stored)
        old, early = old_import_shards(old_cat, folder, batch)
        new = import_shards(new_cat, folder, batch)
        old.unchanged, old.imported = old.unchanged + early, old.imported - early
        assert new.to_dict() == old.to_dict(), seed
        seen["early"] += early
        if not early:  # else the old one rewrote rows (an older shard's: without metadata)
            assert _state(new_cat) == _state(old_cat), seed
            seen["same state"] += 1
        for key in ("imported", "unchanged", "stale"):
            seen[key] += getattr(new, key)
        again = import_shards(new_cat, folder, batch)  # safe to repeat: nothing new
        assert (again.imported, again.stale) == (0, new.stale), seed
        old_cat.close()
        new_cat.close()
    assert all(v for k, v in seen.items() if k != "early"), seen  # every outcome was seen


def test_a_vector_stored_by_an_earlier_batch_counts(tmp_path):
    """A stored file lacking the shard's model's vector, whose content an earlier batch of
    the same shard stored (a copy, new to the library): unchanged, not written again. The
    old importer rewrote it from an older shard's row, without its photo metadata."""
    photos = tmp_path / "photos"
    photos.mkdir()
    recs = []
    for name, digest in (("c.jpg", "hC"), ("copy.jpg", "hA"), ("a.jpg", "hA")):
        (photos / name).write_bytes(digest.encode())
        st = os.stat(photos / name)
        recs.append(FileRecord(str(photos / name), None, st.st_size, st.st_mtime_ns, digest,
                               "ok", 4, 3))
    one = np.ones(4, np.float32)
    table = shard_table(str(photos), recs, [one, one, one], "m", "{}")  # no metadata: older
    (tmp_path / "shards").mkdir()
    pq.write_table(table.drop_columns(list(META_COLUMNS)), tmp_path / "shards" / "0.parquet")
    results = []
    for name, run in (("old", old_import_shards), ("new", import_shards)):
        cat = Catalog(tmp_path / f"{name}.db")
        root = cat.add_root(str(photos))
        stored = [FileRecord(r.path, root, r.size, r.mtime_ns, r.content_hash, "ok", 4, 3,
                             format="JPEG") for r in (recs[0], recs[2])]
        cat.write_batch(stored, {"hC": one}, "m")
        cat.write_batch([], {"hA": one}, "other-model")  # a.jpg has another model's only
        report = run(cat, str(tmp_path / "shards"), 1)
        report = report[0] if isinstance(report, tuple) else report
        formats = dict(cat.conn.execute("SELECT path, format FROM files"))
        results.append((report.imported, report.unchanged, formats[str(photos / "a.jpg")]))
        cat.close()
    assert results == [(2, 1, None), (1, 2, "JPEG")]


def test_a_shard_reads_only_its_stretch_of_the_root(tmp_path):
    """The catalog rows outside a shard's first..last path are not read."""
    cat = Catalog(tmp_path / "c.db")
    root = cat.add_root("/r")
    cat.write_batch([FileRecord(f"/r/{i:03d}.jpg", root, 1, 1, f"h{i}", "ok", format="JPEG")
                     for i in range(100)], {f"h{i}": np.ones(4, np.float32)
                                            for i in range(100)}, "m")
    statements: list[str] = []
    cat.conn.set_trace_callback(statements.append)
    rows = list(cat.plan_rows(root, "m", first=b"/r/010.jpg", last=b"/r/019.jpg"))
    cat.conn.set_trace_callback(None)
    assert [r.path for r in rows] == [b"/r/%03d.jpg" % i for i in range(10, 20)]
    assert all(r.done for r in rows)
    query = next(s for s in statements if "FROM files WHERE" in s)
    plan = str(cat.conn.execute(f"EXPLAIN QUERY PLAN {query}").fetchall())
    assert "idx_files_path" in plan and "TEMP B-TREE" not in plan, plan  # no sort of the root
