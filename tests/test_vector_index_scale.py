"""The index chosen by size, kept up to date by the change log, and what it promises
(docs/scale.md): exact below the threshold or with `exact`, recall above the floor above it,
an incremental update equal to a rebuild, filters that stay exact, and a SIGKILL during an
update that the next reader shrugs off."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.clip_like import World
from search.searcher import Searcher
from store import AnnIndex, Catalog, FileRecord, VectorIndex, index_cache
from store.ann_index import RECALL_TARGET
from store.vector_index import index_path

DIM = 64
RECALL_FLOOR = 0.95  # docs/scale.md: the tuned index measures >= RECALL_TARGET on its probes


def add_files(cat: Catalog, root: int, start: int, vectors: np.ndarray) -> None:
    records, by_hash = [], {}
    for i, vector in enumerate(vectors, start):
        records.append(FileRecord(f"/p/{i // 100:03d}/{i:06d}.jpg", root, 10, 1, f"h{i}", "ok"))
        by_hash[f"h{i}"] = vector
    cat.write_batch(records, by_hash, "m")


def library(tmp_path: Path, count: int) -> tuple[Catalog, World]:
    world = World(dim=DIM, seed=3)
    cat = Catalog(tmp_path / "catalog.db")
    root = cat.add_root("/p")
    for start in range(0, count, 1000):
        add_files(cat, root, start, world.vectors(start, min(1000, count - start)))
    return cat, world


def brute(cat: Catalog, query: np.ndarray, k: int, allowed=None) -> list[int]:
    ids, vectors = cat.vectors("m")
    if allowed is not None:
        keep = np.isin(ids, allowed)
        ids, vectors = ids[keep], vectors[keep]
    scores = vectors @ query
    return [int(i) for i in ids[np.lexsort((ids, -scores))[:k]]]


@pytest.fixture
def ann_min(monkeypatch):
    monkeypatch.setattr(index_cache, "ANN_MIN", 1500)


def test_kind_follows_size_and_exact_below_it(tmp_path, ann_min):
    cat, world = library(tmp_path, 1000)
    searcher = Searcher(cat, tmp_path / "vectors")
    assert searcher.index_for("m", DIM, upkeep=True).exact
    for q in world.queries(5):
        assert [h.file_id for h in searcher.search("m", q, 10)] == brute(cat, q, 10)
    add_files(cat, 1, 1000, world.vectors(1000, 1000))  # crosses ANN_MIN
    index = searcher.index_for("m", DIM, upkeep=True)
    assert isinstance(index, AnnIndex) and len(index) == 2000
    info = index_cache.describe(cat, tmp_path / "vectors", "m")
    assert info["kind"] == "ivf-sq4-ip" and info["up_to_date"] and not info["exact"]
    assert info["recall_at_10"] >= RECALL_TARGET and 1 <= info["nprobe"] <= info["nlist"]
    sample = index.sample(50)  # relevance grading's score distribution (search/grading.py)
    _, vectors = cat.vectors("m")
    assert sample.shape == (50, DIM) and ((sample @ vectors.T).max(axis=1) > 0.95).all()
    add_files(cat, 1, 2000, world.vectors(2000, 6500))  # 4x what its cells were trained on
    retrained = searcher.index_for("m", DIM, upkeep=True)
    assert retrained.params["trained_count"] == 8500 and len(retrained) == 8500


def test_ann_recall_above_floor_scores_exact_and_exact_option(tmp_path, ann_min):
    cat, world = library(tmp_path, 3000)
    searcher = Searcher(cat, tmp_path / "vectors")
    assert not searcher.index_for("m", DIM, upkeep=True).exact
    ids, vectors = cat.vectors("m")
    by_id = dict(zip(ids.tolist(), vectors, strict=True))
    recall = []
    for q in world.queries(40):
        truth = brute(cat, q, 10)
        hits = searcher.search("m", q, 10)
        for hit in hits:  # every score is the catalog's exact fp32 cosine
            assert hit.score == pytest.approx(float(by_id[hit.file_id] @ q), abs=1e-6)
        recall.append(len(set(truth) & {h.file_id for h in hits}) / 10)
        assert [h.file_id for h in searcher.search("m", q, 10, exact=True)] == truth
    assert np.mean(recall) >= RECALL_FLOOR


def test_filters_stay_exact_over_the_ann_index(tmp_path, ann_min):
    cat, world = library(tmp_path, 3000)
    searcher = Searcher(cat, tmp_path / "vectors")
    searcher.index_for("m", DIM, upkeep=True)
    ids, _ = cat.vectors("m")
    selective = ids[::50]  # 60 files: scored exactly from the catalog
    broad = ids[ids % 3 == 0]  # 1000 files: the ANN index with an id selector
    for q in world.queries(10):
        assert [h.file_id for h in searcher.search("m", q, 10, allowed=selective)] == \
            brute(cat, q, 10, selective)
        found = [h.file_id for h in searcher.search("m", q, 10, allowed=broad)]
        assert len(found) == 10 and set(found) <= set(broad.tolist())
        folder = [h.file_id for h in searcher.search("m", q, 10, within="/p/007")]
        assert folder == brute(cat, q, 10, cat.ids_in_folder("/p/007"))


@pytest.mark.parametrize("count", [1000, 3000])  # the exact index, then the ANN index
def test_incremental_update_equals_rebuild(tmp_path, ann_min, count):
    cat, world = library(tmp_path, count)
    folder = tmp_path / "vectors"
    first = index_cache.open_index(cat, "m", folder, DIM, upkeep=True)
    before = json.loads(index_path(folder, "m").with_suffix(".json").read_text())
    add_files(cat, 1, count, world.vectors(count, 300))  # new files
    ids, _ = cat.vectors("m")
    cat.delete_files(ids[5:200:3].tolist())  # gone files
    changed = cat.file_id("/p/000/000001.jpg")
    cat.write_batch([FileRecord("/p/000/000001.jpg", 1, 11, 2, "new", "ok")],
                    {"new": world.vectors(10**6, 1)[0]}, "m")  # a changed file: same id
    updated = index_cache.open_index(cat, "m", folder, DIM, upkeep=True)
    after = json.loads(index_path(folder, "m").with_suffix(".json").read_text())
    assert type(updated) is type(first) and after["generation"] == cat.generation
    if isinstance(updated, AnnIndex):  # updated in place: the same cells, no retraining
        assert after["trained_count"] == before["trained_count"] == count
    rebuilt = index_cache.open_index(cat, "m", tmp_path / "fresh", DIM, upkeep=True)
    ids, vectors = cat.vectors("m")
    assert len(updated) == len(rebuilt) == len(ids)
    # Every file once, with its current vector: an exhaustive search of each index gives
    # the same candidates with the same (quantised) scores as the rebuilt one.
    for index in (updated, rebuilt):
        if isinstance(index, AnnIndex):
            index.params["nprobe"] = index.params["nlist"]
    for q in [*world.queries(5), vectors[ids == changed][0]]:
        a = updated.search(q[None], len(ids))[0]
        b = rebuilt.search(q[None], len(ids))[0]
        assert sorted(a.ids.tolist()) == sorted(b.ids.tolist()) == ids.tolist()
        if isinstance(updated, VectorIndex):
            assert dict(zip(a.ids.tolist(), a.scores.tolist(), strict=True)) == \
                dict(zip(b.ids.tolist(), b.scores.tolist(), strict=True))
    # The log was used and then pruned: nothing older than the caches remains.
    left = cat.conn.execute("SELECT MIN(generation) FROM vector_changes").fetchone()[0]
    assert left is None or left >= after["generation"]


KILL_SCRIPT = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {repo!r})
import store.vector_index
from store import Catalog, index_cache
index_cache.ANN_MIN = 1500
real = os.replace
def replace(src, dst):
    if {first_only} or str(dst).endswith(".json"):
        os.kill(os.getpid(), signal.SIGKILL)  # mid-update: after the FAISS file moved
    return real(src, dst)
store.vector_index.os.replace = replace
cat = Catalog({db!r})
index_cache.open_index(cat, "m", Path({folder!r}), {dim}, upkeep=True)
"""


@pytest.mark.parametrize("first_only", [True, False])
def test_sigkill_during_incremental_update_next_query_correct(tmp_path, ann_min, first_only):
    cat, world = library(tmp_path, 3000)
    folder = tmp_path / "vectors"
    searcher = Searcher(cat, folder)
    searcher.index_for("m", DIM, upkeep=True)
    add_files(cat, 1, 3000, world.vectors(3000, 200))
    cat.delete_files(cat.vectors("m")[0][:100].tolist())
    script = KILL_SCRIPT.format(repo=str(Path(__file__).resolve().parent.parent),
                                first_only=first_only, db=str(cat.path), folder=str(folder),
                                dim=DIM)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    reader = Searcher(Catalog(cat.path, readonly=True), folder)  # the next reader
    ids, vectors = cat.vectors("m")
    for q in [*world.queries(10), vectors[-1]]:
        exact = [h.file_id for h in reader.search("m", q, 10, exact=True)]
        assert exact == brute(cat, q, 10)
        assert set(h.file_id for h in reader.search("m", q, 10)) <= set(ids.tolist())
    assert vectors[-1] @ vectors[-1] == pytest.approx(
        reader.search("m", vectors[-1], 1)[0].score, abs=1e-6)  # the added file is found


def test_status_and_cli_show_the_index_and_exact_scans(tmp_path, ann_min):
    from clipsearch import Library
    from tests.helpers import cli, cli_json

    world = World(dim=DIM, seed=3)
    lib = Library(tmp_path / "lib", model="shapes-tiny")
    model_id = lib.default_model.model_id
    cat = lib.catalog
    root = cat.add_root("/p")
    cat.register_model(model_id, lib.default_model.to_spec(), DIM)
    records = [FileRecord(f"/p/{i:06d}.jpg", root, 10, 1, f"h{i}", "ok") for i in range(2000)]
    cat.write_batch(records, dict(zip((f"h{i}" for i in range(2000)),
                                      world.vectors(0, 2000), strict=True)), model_id)
    lib.searcher.index_for(model_id, DIM, upkeep=True)
    info = lib.status().vector_indexes[model_id]
    assert info["kind"] == "ivf-sq4-ip" and info["recall_at_10"] >= RECALL_TARGET
    assert info["up_to_date"]
    q = world.queries(1)[0]
    exact = lib.searcher.search(model_id, q, 5, exact=True)
    ids, vectors = cat.vectors(model_id)
    assert [h.file_id for h in exact] == [int(i) for i in ids[np.argsort(-(vectors @ q))[:5]]]
    lib.close()
    out = cli("status", library=tmp_path / "lib").stdout
    assert "index: approximate ivf-sq4-ip" in out and "measured recall@10" in out
    as_json = cli_json("status", library=tmp_path / "lib")
    assert as_json["vector_indexes"][model_id]["nprobe"] >= 1
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    refused = cli("query", "--image", str(image), "--exact", library=tmp_path / "lib", ok=False)
    assert refused.exit_code == 2 and "--exact goes with a QUERY" in refused.output


def test_a_long_lived_reader_follows_commits_without_reloading(tmp_path, ann_min):
    cat, world = library(tmp_path, 3000)
    searcher = Searcher(cat, tmp_path / "vectors")
    held = searcher.index_for("m", DIM, upkeep=True)
    new = world.vectors(5000, 3)
    add_files(cat, 1, 3000, new)
    gone = cat.file_id("/p/000/000007.jpg")
    cat.delete_files([gone])
    assert searcher.search("m", new[1], 1)[0].file_id == cat.file_id("/p/030/003001.jpg")
    assert searcher.index_for("m", DIM) is held and len(held) == 3002  # updated in place
    _, vectors = cat.vectors("m")
    assert gone not in {h.file_id for h in searcher.search("m", world.vectors(7, 1)[0], 20)}


def test_stored_order_reads_the_same_vectors(tmp_path):
    """A build reads vectors in the table's own order (docs/scale.md: 6x faster at 1M):
    the same (file, vector) pairs as file-id order, a shared vector once per file."""
    cat, world = library(tmp_path, 1200)
    cat.write_batch([FileRecord("/p/dup/copy.jpg", 1, 10, 1, "h7", "ok")], {}, "m")
    by_id = {int(i): v for ids, vs in cat.iter_vectors("m", 500)
             for i, v in zip(ids, vs, strict=True)}
    stored = {int(i): v for ids, vs in cat.iter_vectors("m", 500, stored_order=True)
              for i, v in zip(ids, vs, strict=True)}
    assert len(by_id) == 1201 and by_id.keys() == stored.keys()
    assert all(np.array_equal(by_id[i], stored[i]) for i in by_id)
