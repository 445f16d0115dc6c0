"""FAISS indexes derived from the catalog, one per model, cached as files.

The catalog is the truth; a FAISS file carries the catalog generation it was built at in a
JSON sidecar, and is rebuilt whenever that differs. Writes are atomic (temp file + rename), so
a crash leaves either the old file or the new one, and at worst a stale one that is rebuilt.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from .catalog import Catalog


@dataclass
class Hits:
    ids: np.ndarray  # int64 file ids, best first
    scores: np.ndarray  # float32 cosine similarities


class VectorIndex:
    """Exact inner-product search over L2-normalised vectors, keyed by catalog file id."""

    def __init__(self, index: faiss.Index, dim: int):
        self.index = index
        self.dim = dim

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, dim: int) -> VectorIndex:
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        if len(ids):
            index.add_with_ids(np.ascontiguousarray(vectors, np.float32), ids.astype(np.int64))
        return cls(index, dim)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[Hits]:
        queries = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
        total = len(self) if allowed is None else len(allowed)
        k = min(k, total)
        if k <= 0:
            return [Hits(np.empty(0, np.int64), np.empty(0, np.float32)) for _ in queries]
        params = None
        if allowed is not None:
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed.astype(np.int64)))
        scores, ids = self.index.search(queries, k, params=params)
        out = []
        for row_scores, row_ids in zip(scores, ids, strict=True):
            keep = row_ids >= 0
            out.append(Hits(row_ids[keep], row_scores[keep]))
        return out

    def save(self, path: Path, meta: dict) -> None:
        tmp = path.with_suffix(".faiss.tmp")
        faiss.write_index(self.index, str(tmp))
        _fsync(tmp)
        os.replace(tmp, path)
        sidecar = path.with_suffix(".json")
        tmp_meta = sidecar.with_suffix(".json.tmp")
        tmp_meta.write_text(json.dumps(meta))
        _fsync(tmp_meta)
        os.replace(tmp_meta, sidecar)

    @classmethod
    def load(cls, path: Path, dim: int) -> VectorIndex:
        return cls(faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY), dim)


def index_path(folder: Path, model_id: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("_")
    return folder / f"{slug}.faiss"


def open_vector_index(catalog: Catalog, model_id: str, folder: Path, dim: int) -> VectorIndex:
    """The up-to-date index for `model_id`: the cached file when it matches the catalog's
    generation, else rebuilt from the catalog (and cached again when the folder is writable)."""
    path = index_path(folder, model_id)
    generation = catalog.generation
    sidecar = path.with_suffix(".json")
    try:
        meta = json.loads(sidecar.read_text())
        if meta.get("generation") == generation and meta.get("model_id") == model_id:
            return VectorIndex.load(path, dim)
    except (OSError, ValueError, RuntimeError):
        pass  # missing, partial or stale: rebuild below
    ids, vectors = catalog.vectors(model_id)
    index = VectorIndex.build(ids, vectors, dim)
    if not catalog.readonly:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            index.save(path, {"generation": generation, "model_id": model_id, "count": len(ids)})
        except OSError:
            pass  # read-only or full disk: the in-memory index still answers this query
    return index


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
