"""Nearest-neighbour search over one model's vectors, answered with catalog rows."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from store import Catalog, VectorIndex, open_vector_index

from .results import SearchResult


class Searcher:
    def __init__(self, catalog: Catalog, index_folder: Path):
        self.catalog = catalog
        self.index_folder = index_folder
        self._indexes: dict[tuple[str, int], VectorIndex] = {}

    def index_for(self, model_id: str, dim: int) -> VectorIndex:
        """Cached per catalog generation, so a long-lived app sees new commits."""
        key = (model_id, self.catalog.generation)
        if key not in self._indexes:
            self._indexes = {key: open_vector_index(self.catalog, model_id, self.index_folder,
                                                     dim)}
        return self._indexes[key]

    def search(
        self,
        model_id: str,
        query: np.ndarray,
        limit: int = 10,
        within: str | os.PathLike | None = None,
        exclude: set[int] | None = None,
    ) -> list[SearchResult]:
        query = np.asarray(query, np.float32).reshape(1, -1)
        index = self.index_for(model_id, query.shape[1])
        allowed = None
        if within is not None:
            allowed = self.catalog.ids_in_folder(os.path.abspath(os.fspath(within)))
        extra = len(exclude) if exclude else 0
        hits = index.search(query, limit + extra, allowed)[0]
        rows = self.catalog.file_rows(hits.ids.tolist())
        results: list[SearchResult] = []
        for file_id, score in zip(hits.ids.tolist(), hits.scores.tolist(), strict=True):
            row = rows.get(file_id)
            if row is None or (exclude and file_id in exclude):
                continue  # deleted since the index snapshot, or the query image itself
            results.append(SearchResult(
                rank=len(results) + 1, score=round(float(score), 6), path=row["path"],
                file_id=file_id, root=row["root"], width=row["width"], height=row["height"],
                taken_at=row["taken_at"],
            ))
            if len(results) == limit:
                break
        return results
