"""Shared pieces of the reliability tests: subprocess environment, tiny random model bundles,
and an exact check of a library against the folder it indexes."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import sys
from pathlib import Path

import numpy as np

from clip_core.pixels.decode import IMAGE_EXTENSIONS

REPO = Path(__file__).resolve().parent.parent
CLIPSEARCH = str(Path(sys.executable).parent / "clipsearch")
MODEL = "shapes-tiny"
QUERIES = ("a red circle", "a blue star", "a green square", "a yellow triangle",
           "a black star", "a white circle")


def subprocess_env(tmp: Path) -> dict[str, str]:
    """A child clipsearch that finds the bundled model and nothing of the user's."""
    return {**os.environ, "CLIPSEARCH_MODELS": str(tmp / "models"), "HF_HOME": str(tmp / "hf"),
            "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}


def make_random_bundle(folder: Path, embed_dim: int = 24, seed: int = 1) -> str:
    """A second, different tiny open_clip model (local-dir bundle, safetensors)."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    cfg = {"embed_dim": embed_dim,
           "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "patch_size": 16,
                          "head_width": 16},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                        "layers": 1}}
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    return f"local-dir:{folder}"


def default_model_id(library: Path) -> str:
    from clipsearch import Library

    with Library(library) as lib:
        return lib.default_model.model_id


def catalog_rows(library: Path) -> dict[bytes, dict]:
    """Every file row, keyed by the exact path bytes (read without clipsearch's code)."""
    conn = sqlite3.connect(f"file:{library / 'catalog.db'}?mode=ro", uri=True)
    conn.text_factory = bytes
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute("SELECT * FROM files").fetchall()
    finally:
        conn.close()
    out = {}
    for row in rows:
        item = dict(row)
        for key in ("status", "error_reason", "content_hash"):
            if isinstance(item[key], bytes):
                item[key] = item[key].decode()
        out[bytes(item["path"])] = item
    return out


def images_on_disk(folder: Path) -> dict[bytes, bytes]:
    """path bytes -> content of every image file under folder (symlinks not followed)."""
    out = {}
    for dirpath, _, names in os.walk(os.fsencode(folder)):
        for name in names:
            path = os.path.join(dirpath, name)
            if (os.path.splitext(name)[1].lower().decode(errors="replace") in IMAGE_EXTENSIONS
                    and os.path.isfile(path) and not os.path.islink(path)):
                with open(path, "rb") as handle:
                    out[path] = handle.read()
    return out


def assert_library_exact(library: Path, photos: Path, model_id: str) -> None:
    """Every image once with the right bytes, its vector present, no orphan or foreign
    vectors, a sound SQLite file and an up-to-date FAISS cache."""
    from store import Catalog, VectorIndex
    from store.vector_index import index_path

    disk = images_on_disk(photos)
    rows = catalog_rows(library)
    ok = {p: r for p, r in rows.items() if r["status"] == "ok"}
    assert set(ok) == set(disk), (set(disk) ^ set(ok))
    assert len(rows) == len(ok), [p for p, r in rows.items() if r["status"] != "ok"]
    for path, row in ok.items():
        st = os.stat(path)
        assert row["content_hash"] == hashlib.sha256(disk[path]).hexdigest(), path
        assert (row["size"], row["mtime_ns"]) == (st.st_size, st.st_mtime_ns), path
    cat = Catalog(library / "catalog.db", readonly=True)
    try:
        assert cat.problems() == []
        assert {h for (h,) in cat.conn.execute(
            "SELECT content_hash FROM embeddings WHERE model_id = ?", (model_id,))
        } == {r["content_hash"] for r in ok.values()}
        assert set(cat.model_counts()) == {model_id}
        ids, vectors = cat.vectors(model_id)
        faiss_file = index_path(library / "vectors", model_id)
        meta = json.loads(faiss_file.with_suffix(".json").read_text())
        assert meta["generation"] == cat.generation and meta["count"] == len(ids)
        assert meta["faiss_ino"] == faiss_file.stat().st_ino
        cached = VectorIndex.load(faiss_file, vectors.shape[1])
        assert np.array_equal(np.sort(faiss_ids(cached)), ids)
    finally:
        cat.close()
    assert not [p for p in (library / "vectors").iterdir() if p.name.endswith(".tmp")]


def faiss_ids(index) -> np.ndarray:
    import faiss

    return faiss.vector_to_array(index.index.id_map).astype(np.int64)


def vectors_by_path(library: Path, model_id: str) -> dict[bytes, np.ndarray]:
    from store import Catalog

    cat = Catalog(library / "catalog.db", readonly=True)
    try:
        ids, vectors = cat.vectors(model_id)
        rows = cat.file_rows(ids.tolist())
        return {os.fsencode(rows[int(i)]["path"]): v for i, v in zip(ids, vectors, strict=True)}
    finally:
        cat.close()


def top_k(library: Path, model: str | None = None, k: int = 10,
          texts: tuple[str, ...] = QUERIES) -> list[list[tuple[str, float]]]:
    from clipsearch import Library

    with Library(library) as lib:
        return [[(r.path, r.score) for r in lib.query(t, limit=k, model=model)] for t in texts]
