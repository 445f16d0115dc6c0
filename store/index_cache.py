"""Which vector index a model gets, and keeping its cached file up to date (docs/scale.md).

Below ANN_MIN vectors: the exact fp16 scan (store/vector_index.py), whose results the
searcher proves exact. From ANN_MIN on: the IVF index (store/ann_index.py), whose candidates
the searcher re-scores exactly. A cached file at an older generation is brought up to date
by removing and re-adding the files the change log names (store/change_log.py), not rebuilt.
A full build happens when there is no usable file, the log does not reach back, the index is
of the wrong kind or mis-tuned for the library's size (IVF cells trained on a quarter of
it), or the change is large; for the IVF index only in an index run (`upkeep`), never in a
user's query: a query then answers from the stale index plus the change, or, with no IVF
file at all, from an exact index built in memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from pathlib import Path

import faiss
import numpy as np

from . import change_log
from .ann_index import KIND as ANN_KIND
from .ann_index import AnnIndex
from .catalog import Catalog
from .vector_index import VectorIndex, index_path

# Measured on 2 cores (docs/scale.md): the exact scan takes ~10 ms a query near 200k vectors.
ANN_MIN = int(os.environ.get("CLIPSEARCH_ANN_MIN", "200000"))
DELTA_SHARE = 0.2  # a change above this share of the index: rebuild in the index run
EXACT_KIND = VectorIndex.kind


def kind_for(count: int) -> str:
    return ANN_KIND if count >= ANN_MIN else EXACT_KIND


def open_index(catalog: Catalog, model_id: str, folder: Path, dim: int, *,
               upkeep: bool = False, use_cache: bool = True,
               previous: tuple[int, VectorIndex | AnnIndex] | None = None
               ) -> VectorIndex | AnnIndex:
    """The up-to-date index for `model_id`. `upkeep` (an index run, holding the writer
    lock): also rebuild a mis-chosen or mis-tuned index and save every result. `previous`
    (generation, index): what a long-lived reader holds; an approximate one is brought up
    to date in place instead of read again from disk (1M: ~0.3 GB)."""
    path = index_path(folder, model_id)
    if previous is not None and not upkeep and not previous[1].exact:
        with catalog.snapshot():
            generation = catalog.generation
            changed = change_log.changed_since(catalog.conn, previous[0]) \
                if previous[0] <= generation else None
            fresh = catalog.vectors_for_files(model_id, changed.tolist()) \
                if changed is not None else None
        if changed is not None:
            return _apply(previous[1], changed, fresh)
    with catalog.snapshot():  # generation, change list and vectors from one committed state
        generation = catalog.generation
        meta = _meta(path, model_id) if use_cache else None
        # The sidecar's count is exact at its generation: no pass over every vector (1M:
        # tens of seconds of reads) just to decide; a rebuild counts for real.
        index = changed = fresh = ids = vectors = None
        if meta is not None and not (upkeep and _misfit(meta["kind"], meta["count"], meta)):
            if meta["generation"] == generation:
                index = _load(path, meta, dim, writable=False)
                if index is not None:
                    return index
            elif meta["generation"] < generation:
                changed = change_log.changed_since(catalog.conn, meta["generation"])
                if changed is not None and upkeep and \
                        len(changed) > DELTA_SHARE * meta["count"] + 1000:
                    changed = None  # cheaper to rebuild
                if changed is not None:
                    fresh = catalog.vectors_for_files(model_id, changed.tolist())
        if changed is None:
            ids, vectors = _all_vectors(catalog, model_id, catalog.vector_count(model_id))
    if changed is not None:
        index = _load(path, meta, dim, writable=True)
        if index is not None:
            _apply(index, changed, fresh)
            if not (upkeep and _misfit(index.kind, len(index), index.params)):
                if upkeep or index.exact:  # a query never writes the big IVF file
                    _save(catalog, folder, path, index, model_id, generation, upkeep)
                return index
        return open_index(catalog, model_id, folder, dim, upkeep=upkeep,  # rebuild
                          use_cache=False)
    kind = kind_for(len(ids))
    if kind == ANN_KIND and upkeep:
        index = AnnIndex.build(ids, vectors, dim)
    else:
        index = VectorIndex.build(ids, vectors, dim)  # a query's stand-in: exact, in memory
    del ids, vectors
    _give_back_heap()
    if upkeep or kind == EXACT_KIND:
        _save(catalog, folder, path, index, model_id, generation, upkeep)
    return index


def _give_back_heap() -> None:
    """The build's fp32 copy of every vector (100k: 205 MB) is freed in chunks that glibc
    keeps for reuse: hand them back, or a warm app that built the index in its first query
    stays ~100 MB bigger for its whole life (docs/benchmarks.md)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to hand back
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _misfit(kind: str, count: int, params: dict) -> bool:
    """An index of the wrong kind for `count` vectors, or IVF cells trained for a library 4x
    smaller or larger: rebuild (in an index run)."""
    if kind != kind_for(count):
        return True
    trained = int(params.get("trained_count", 0))
    return kind == ANN_KIND and not (trained / 4 <= count <= trained * 4)


def _apply(index: VectorIndex | AnnIndex, changed: np.ndarray,
           fresh: dict[int, np.ndarray]) -> VectorIndex | AnnIndex:
    """Remove the changed files and add back those with a vector (their current one)."""
    index.remove(changed)
    if fresh:
        add = np.fromiter(sorted(fresh), np.int64, count=len(fresh))
        index.add(add, np.stack([fresh[int(i)] for i in add]))
    return index


def describe(catalog: Catalog, folder: Path, model_id: str) -> dict:
    """What `status` shows of a model's index, from its sidecar alone (nothing loaded)."""
    meta = _meta(index_path(folder, model_id), model_id) or {}
    out = {"kind": meta.get("kind"), "count": meta.get("count"),
           "up_to_date": meta.get("generation") == catalog.generation,
           "exact": meta.get("kind") == EXACT_KIND, "ann_min": ANN_MIN}
    for key in ("nlist", "nprobe", "recall_at_10"):
        if key in meta:
            out[key] = meta[key]
    return out


def _all_vectors(catalog: Catalog, model_id: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Every vector into one preallocated array (at 1M: 2 GB once, not a list of blobs and
    a joined copy besides)."""
    ids = np.empty(count, np.int64)
    vectors: np.ndarray | None = None
    at = 0
    for chunk_ids, chunk in catalog.iter_vectors(model_id, stored_order=True):
        if vectors is None:
            vectors = np.empty((count, chunk.shape[1]), np.float32)
        ids[at:at + len(chunk_ids)] = chunk_ids
        vectors[at:at + len(chunk_ids)] = chunk
        at += len(chunk_ids)
    if vectors is None:
        return np.empty(0, np.int64), np.empty((0, 0), np.float32)
    return ids[:at], vectors[:at]


def _meta(path: Path, model_id: str) -> dict | None:
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
        st = path.stat()
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("model_id") != model_id \
            or meta.get("kind") not in (EXACT_KIND, ANN_KIND) \
            or (st.st_ino, st.st_size) != (meta.get("faiss_ino"), meta.get("faiss_size")) \
            or not isinstance(meta.get("generation"), int):
        return None  # foreign, old, or not the FAISS file this sidecar was written with
    return meta


def _load(path: Path, meta: dict, dim: int, *, writable: bool) -> VectorIndex | AnnIndex | None:
    try:
        before = path.stat().st_ino
        if meta["kind"] == ANN_KIND:
            index = AnnIndex.load(path, dim, meta)
        elif writable:
            index = VectorIndex(faiss.read_index(str(path)), dim)
        else:
            index = VectorIndex.load(path, dim)
        if path.stat().st_ino != before or len(index) != meta.get("count"):
            return None  # replaced while loading: rebuild rather than guess
        return index
    except (OSError, ValueError, RuntimeError, AttributeError):
        return None  # partial or foreign: rebuild


def _save(catalog: Catalog, folder: Path, path: Path, index: VectorIndex | AnnIndex,
          model_id: str, generation: int, upkeep: bool) -> None:
    if catalog.readonly:
        return
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # private (store/private.py)
        index.save(path, {"generation": generation, "model_id": model_id, "count": len(index),
                          "kind": index.kind})
    except OSError:
        return  # read-only or full disk: the in-memory index still answers
    if upkeep:  # the writer: a query must never wait for the catalog's write lock
        _prune_log(catalog, folder)


def _prune_log(catalog: Catalog, folder: Path) -> None:
    """Drop change-log rows older than every cache on disk (each model's sidecar)."""
    oldest = None
    for sidecar in folder.glob("*.json"):
        if sidecar.name.endswith(".grades.json"):
            continue
        try:
            generation = json.loads(sidecar.read_text()).get("generation")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(generation, int):
            oldest = generation if oldest is None else min(oldest, generation)
    if oldest is not None:
        with contextlib.suppress(sqlite3.Error):  # housekeeping: a busy catalog can wait
            change_log.prune(catalog.conn, oldest)


def open_vector_index(catalog: Catalog, model_id: str, folder: Path, dim: int, *,
                      upkeep: bool = False, previous=None):
    """The up-to-date index for `model_id`: the exact scan or the approximate one, whichever
    the library's size calls for (open_index)."""
    return open_index(catalog, model_id, folder, dim, upkeep=upkeep, previous=previous)
