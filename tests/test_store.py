"""The catalog (source of truth) and the FAISS cache derived from it."""

from __future__ import annotations

import os

import numpy as np
import pytest

from store import Catalog, FileRecord, open_vector_index
from store.vector_index import index_path


def unit(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def record(path: str, root_id: int, digest: str, status: str = "ok") -> FileRecord:
    return FileRecord(path, root_id, 10, 1, digest, status)


def test_paths_with_any_bytes_round_trip(tmp_path):
    cat = Catalog(tmp_path / "c.db")
    root = cat.add_root("/photos")
    weird = [
        "/photos/a b.jpg", "/photos/quote\"'.jpg", "/photos/new\nline.jpg", "/photos/😀.jpg",
        os.fsdecode(b"/photos/latin1-\xe9.jpg"), "/photos/sub/x.jpg",
    ]
    vecs = unit(len(weird))
    cat.write_batch([record(p, root, f"h{i}") for i, p in enumerate(weird)],
                    {f"h{i}": vecs[i] for i in range(len(weird))}, "m")
    stored = {os.fsdecode(r.path) for r in cat.plan_rows(root, "m")}
    assert stored == set(weird)
    assert len(cat.ids_in_folder("/photos/sub")) == 1
    assert len(cat.ids_in_folder("/photos")) == len(weird)
    assert len(cat.ids_in_folder("/photo")) == 0  # a prefix that is not a folder


def test_vectors_shared_by_hash_and_collected_when_unreferenced(tmp_path):
    cat = Catalog(tmp_path / "c.db")
    root = cat.add_root("/p")
    v = unit(2)
    cat.write_batch([record("/p/a.jpg", root, "h1"), record("/p/copy.jpg", root, "h1"),
                     record("/p/b.jpg", root, "h2")], {"h1": v[0], "h2": v[1]}, "m")
    ids, vectors = cat.vectors("m")
    assert len(ids) == 3 and np.allclose(vectors[0], vectors[1])
    cat.delete_files([cat.file_id("/p/a.jpg")])
    hashes = "SELECT content_hash FROM embeddings WHERE model_id = 'm'"
    assert set(cat.conn.execute(hashes)) == {("h1",), ("h2",)}  # the copy still needs h1
    cat.delete_files([cat.file_id("/p/copy.jpg")])
    assert set(cat.conn.execute(hashes)) == {("h2",)}


def test_generation_bumps_on_every_write_and_rollback_keeps_it(tmp_path):
    cat = Catalog(tmp_path / "c.db")
    g0 = cat.generation
    root = cat.add_root("/p")
    assert cat.generation == g0 + 1
    try:
        with cat.transaction() as conn:
            conn.execute("DELETE FROM roots WHERE id = ?", (root,))
            raise RuntimeError("crash inside a write")
    except RuntimeError:
        pass
    assert cat.generation == g0 + 1 and cat.roots() == {root: "/p"}


def test_faiss_cache_is_rebuilt_when_stale(tmp_path):
    cat = Catalog(tmp_path / "c.db")
    root = cat.add_root("/p")
    v = unit(3)
    cat.write_batch([record(f"/p/{i}.jpg", root, f"h{i}") for i in range(2)],
                    {"h0": v[0], "h1": v[1]}, "m")
    folder = tmp_path / "vectors"
    idx = open_vector_index(cat, "m", folder, 8)
    assert len(idx) == 2 and index_path(folder, "m").exists()
    # A write the cache has not seen: the next open must include it.
    cat.write_batch([record("/p/2.jpg", root, "h2")], {"h2": v[2]}, "m")
    idx = open_vector_index(cat, "m", folder, 8)
    assert len(idx) == 3
    hit = idx.search(v[2], 1)[0]
    assert hit.ids.tolist() == [cat.file_id("/p/2.jpg")]
    # A corrupt cache file is rebuilt, never trusted.
    index_path(folder, "m").write_bytes(b"garbage")
    assert len(open_vector_index(cat, "m", folder, 8)) == 3


def test_search_scoped_to_allowed_ids(tmp_path):
    cat = Catalog(tmp_path / "c.db")
    root = cat.add_root("/p")
    v = unit(4)
    paths = ["/p/a/1.jpg", "/p/a/2.jpg", "/p/b/3.jpg", "/p/b/4.jpg"]
    cat.write_batch([record(p, root, f"h{i}") for i, p in enumerate(paths)],
                    {f"h{i}": v[i] for i in range(4)}, "m")
    idx = open_vector_index(cat, "m", tmp_path / "v", 8)
    allowed = cat.ids_in_folder("/p/b")
    hits = idx.search(v[0], 10, allowed)[0]
    assert sorted(hits.ids.tolist()) == sorted(allowed.tolist())


def test_readonly_catalog_answers_queries(tmp_path):
    cat = Catalog(tmp_path / "c.db")
    root = cat.add_root("/p")
    cat.write_batch([record("/p/a.jpg", root, "h")], {"h": unit(1)[0]}, "m")
    cat.close()
    os.chmod(tmp_path, 0o555)
    try:
        ro = Catalog(tmp_path / "c.db", readonly=True)
        assert len(open_vector_index(ro, "m", tmp_path / "v", 8)) == 1
    finally:
        os.chmod(tmp_path, 0o755)


@pytest.mark.parametrize("split", [False, True])
@pytest.mark.parametrize("outliers", [False, True])
def test_search_equals_brute_force_over_exact_vectors(tmp_path, outliers, split, monkeypatch):
    """The reduced-precision FAISS copies only pick candidates: results (order and scores)
    must be the exact fp32 top-k, also where many vectors crowd near the query (bursts of
    near-duplicates) and where a few dimensions are much larger than the rest (as in CLIP)."""
    from search import Searcher
    from store import vector_index

    # split: one query's scan divided between threads (used for big indexes)
    monkeypatch.setattr(vector_index, "SPLIT_MIN", 0 if split else 10**12)
    rng = np.random.default_rng(7)
    centres = unit(40, dim=512, seed=3)
    vectors = centres[rng.integers(0, 40, 6000)] + rng.normal(0, 0.02, (6000, 512))
    if outliers:
        vectors[:, :3] *= 8
        vectors[:300] = vectors[0] + rng.normal(0, 0.002, (300, 512))  # a burst of near-copies
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    cat = Catalog(tmp_path / "c.db")
    root = cat.add_root("/p")
    half = cat.add_root("/p/half")
    records = [record(f"/p/{'half/' if i % 2 else ''}{i}.jpg", half if i % 2 else root, f"h{i}")
               for i in range(len(vectors))]
    cat.write_batch(records, {f"h{i}": v for i, v in enumerate(vectors)}, "m")
    ids, stored = cat.vectors("m")
    searcher = Searcher(cat, tmp_path / "vectors")
    for q in range(20):
        query = vectors[rng.integers(len(vectors))] + rng.normal(0, 0.01, 512)
        query = (query / np.linalg.norm(query)).astype(np.float32)
        for within, mask in ((None, np.ones(len(ids), bool)), ("/p/half", ids % 2 == 0)):
            exact = stored[mask] @ query
            order = np.lexsort((ids[mask], -exact))[:25]
            got = searcher.search("m", query, limit=25, within=within)
            assert [r.file_id for r in got] == ids[mask][order].tolist(), (q, within)
            assert np.allclose([r.score for r in got], exact[order], atol=1e-6)
