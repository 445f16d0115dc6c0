"""Nearest-neighbour search over one model's vectors, answered with catalog rows."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import numpy as np

from store import AnnIndex, Catalog, VectorIndex, open_vector_index
from store.ann_index import RERANK  # candidates the approximate index hands over

from .results import SearchResult

DIRECT_MAX = 2000  # an id selector this small (or under 2% of the index) is scored directly


class Searcher:
    def __init__(self, catalog: Catalog, index_folder: Path, int8_scan: str = "off"):
        """`int8_scan`: "off" (one-shot processes), "on" (long-lived ones: an exact index
        of 20k+ vectors is scored in int8 once its guard passes, store/int8_scan.py) or
        "timed" (the same, kept only where measured faster: CPUs without int8 dot
        products)."""
        if int8_scan not in ("off", "on", "timed"):
            raise ValueError(f"int8_scan must be off, on or timed, not {int8_scan!r}")
        self.catalog = catalog
        self.index_folder = index_folder
        self.int8_scan = int8_scan
        self._indexes: dict[tuple[str, int], VectorIndex] = {}

    def index_for(self, model_id: str, dim: int, upkeep: bool = False) -> VectorIndex | AnnIndex:
        """Cached per catalog generation, so a long-lived app sees new commits. `upkeep`
        (an index run): also rebuild an index of the wrong kind for the library's size."""
        key = (model_id, self.catalog.generation)
        if key not in self._indexes or upkeep:
            held = [(gen, index) for (m, gen), index in self._indexes.items() if m == model_id]
            self._indexes = {key: open_vector_index(self.catalog, model_id, self.index_folder,
                                                     dim, upkeep=upkeep,
                                                     previous=held[0] if held else None)}
        return self._indexes[key]

    def prepare(self, model_id: str, dim: int) -> VectorIndex | AnnIndex:
        """Make ready what this searcher's queries of `model_id` will use (the index of
        the current generation; its int8 scan, where on), and return that index."""
        index = self.index_for(model_id, dim)
        if index.exact:
            self._ask_int8(index, now=True)
        return index

    def _ask_int8(self, index: VectorIndex, now: bool = False) -> None:
        if self.int8_scan != "off":
            index.use_int8_scan(timed=self.int8_scan == "timed", now=now)

    def search(
        self,
        model_id: str,
        query: np.ndarray,
        limit: int = 10,
        within: str | os.PathLike | None = None,
        exclude: set[int] | None = None,
        allowed: np.ndarray | None = None,
        exact: bool = False,
    ) -> list[SearchResult]:
        """Top `limit` by cosine; `within` (a folder) or `allowed` (file ids, from
        filters: already scoped to `within` when both apply) select inside the scan. Exact
        below the approximate index's size (store/index_cache.py) or with `exact`; above it
        every score is exact and the set is the approximate index's (recall in status)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a whole number >= 1, not {limit!r}")
        query = np.asarray(query, np.float32).reshape(1, -1)
        index = self.index_for(model_id, query.shape[1])
        if allowed is None and within is not None:
            allowed = self.catalog.ids_in_folder(os.path.abspath(os.fspath(within)))
        if not index.exact:
            if exact or (allowed is not None and len(allowed) <= DIRECT_MAX):
                return self._scan_catalog(model_id, query[0], limit, allowed, exclude)
            return self._approximate(model_id, index, query, limit, allowed, exclude)
        if allowed is not None and len(allowed) <= max(DIRECT_MAX, len(index) // 50):
            return self._direct(model_id, index, query[0], limit, allowed, exclude)
        extra = len(exclude) if exclude else 0
        self._ask_int8(index)
        # The FAISS cache holds fp16 copies (half the memory and time; scanned through int8
        # codes in a long-lived process, same answer): fetch a margin of candidates, re-score
        # them with the catalog's exact fp32 vectors, and widen the margin until no file
        # left out could beat the results (the hits' ceiling: the last candidate's fp16
        # score plus fp16's rounding bound). Scores and order are then exact, not just very
        # likely so.
        want = first_want(limit + extra)
        bound = index.error_bound(query[0])
        while True:
            hits = index.search(query, want, allowed)[0]
            ids, scores = hits.ids, hits.scores
            if exclude:
                keep = ~np.isin(ids, np.fromiter(exclude, np.int64, count=len(exclude)))
                ids, scores = ids[keep], scores[keep]
            # Only those that may be in the exact top `limit` (~12 of 18: a catalog read
            # is ~20 us), with their rows for the results
            rows = self.catalog.file_rows(_contenders(ids, scores, limit, bound).tolist(),
                                          vector_of=model_id)
            ranked = _ranked({i: row["vector"] for i, row in rows.items()}, query[0], None)
            exhausted = len(hits.ids) < want
            if exhausted or (len(ranked) >= limit and ranked[limit - 1][0] > hits.ceiling):
                break
            want *= 4
        return self.results(ranked[:limit], rows=rows)

    def _approximate(self, model_id: str, index: AnnIndex, query: np.ndarray, limit: int,
                     allowed: np.ndarray | None, exclude: set[int] | None
                     ) -> list[SearchResult]:
        """Candidates from the approximate index (a broad filter: its id selector),
        re-scored with the catalog's exact vectors: exact scores, approximate membership."""
        extra = len(exclude) if exclude else 0
        want = max(RERANK, 4 * (limit + extra))
        hits = index.search(query, want, allowed)[0]
        exact = self.catalog.vectors_for_files(model_id, hits.ids.tolist())
        return self.results(_ranked(exact, query[0], exclude)[:limit])

    def _scan_catalog(self, model_id: str, query: np.ndarray, limit: int,
                      allowed: np.ndarray | None, exclude: set[int] | None
                      ) -> list[SearchResult]:
        """Exact: every selected file's fp32 vector from the catalog (a selective filter:
        a few reads; `exact` over a large library: a streamed scan, seconds at 1M)."""
        if allowed is not None:
            exact = self.catalog.vectors_for_files(model_id, allowed.tolist())
            return self.results(_ranked(exact, query, exclude)[:limit])
        extra = len(exclude) if exclude else 0
        keep = limit + extra
        best_ids, best_scores = np.empty(0, np.int64), np.empty(0, np.float32)
        for ids, vectors in self.catalog.iter_vectors(model_id, stored_order=True):
            scores = np.concatenate([best_scores, vectors @ query])
            ids = np.concatenate([best_ids, ids])
            top = np.lexsort((ids, -scores))[:keep]
            best_ids, best_scores = ids[top], scores[top]
        ranked = [(float(s), int(i)) for s, i in zip(best_scores, best_ids, strict=True)
                  if not (exclude and int(i) in exclude)]
        return self.results(ranked[:limit])

    def _direct(self, model_id: str, index: VectorIndex, query: np.ndarray, limit: int,
                allowed: np.ndarray, exclude: set[int] | None) -> list[SearchResult]:
        """A selective filter: score only its files' fp16 rows, then re-score exactly every
        file that could still be in the top `limit` (within 2 error bounds of the
        limit-th). FAISS with an id selector still visits every row (20k vectors: 75 ms
        against 9 for the unfiltered scan, busy machine); this reads 1% of them."""
        if exclude:
            allowed = np.setdiff1d(allowed, np.fromiter(exclude, np.int64))
        ids, approx = index.approx_scores(allowed, query)
        ids = _contenders(ids, approx, limit, index.error_bound(query))
        rows = self.catalog.file_rows(ids.tolist(), vector_of=model_id)
        return self.results(
            _ranked({i: row["vector"] for i, row in rows.items()}, query, None)[:limit], rows=rows)

    def results(self, scored: list[tuple[float | None, int]], first_rank: int = 1,
                rows: dict[int, dict] | None = None) -> list[SearchResult]:
        """(score, file id) pairs, best first, as results with their catalog rows (a score
        of None: a listing without a query); `rows`: those rows, where already read."""
        if rows is None:
            rows = self.catalog.file_rows([file_id for _, file_id in scored])
        results: list[SearchResult] = []
        for score, file_id in scored:
            row = rows.get(file_id)
            if row is None:
                continue  # deleted since the index snapshot
            results.append(SearchResult(
                rank=len(results) + first_rank,
                score=None if score is None else round(score, 6), path=row["path"],
                file_id=file_id, root=row["root"], width=row["width"], height=row["height"],
                **_photo_facts(row),
            ))
        return results


def first_want(wanted: int) -> int:
    """Candidates to fetch first for `wanted` exact results. The fp16 scores stray from
    the exact ones by ~5e-4 at most, so a few more than wanted nearly always hold the exact
    top (the loop above widens where not). Each one counts where the int8 scan answers: its
    rows to re-score grow with the candidates (100k: ~190 for 16, ~390 for 36)."""
    return wanted + 8


def _contenders(ids: np.ndarray, scores: np.ndarray, limit: int, bound: float
                ) -> np.ndarray:
    """The ids that may be in the exact top `limit`, by scores each within `bound` of its
    exact one: those within two bounds of the limit-th best (the rest score below the
    limit-th exactly)."""
    if len(ids) <= limit:
        return ids
    kth = -np.partition(-scores, limit - 1)[limit - 1]
    return ids[scores >= kth - 2 * bound]


def _ranked(exact: dict[int, np.ndarray], query: np.ndarray,
            exclude: set[int] | None) -> list[tuple[float, int]]:
    return sorted(((float(vec @ query), file_id) for file_id, vec in exact.items()
                   if not (exclude and file_id in exclude)), key=lambda item: (-item[0], item[1]))


def _photo_facts(row: dict) -> dict:
    """A row's date (EXIF, else mtime in local time: the date filters use) and metadata."""
    exif = row["taken_at"] is not None
    taken = row["taken_at"] if exif else _local_time(row["mtime_ns"])
    return {"taken_at": taken, "taken_at_source": "exif" if exif else "mtime",
            "taken_offset": row.get("taken_offset"), "camera_make": row.get("camera_make"),
            "camera_model": row.get("camera_model"), "format": row.get("format")}


def _local_time(mtime_ns: int | None) -> str | None:
    if mtime_ns is None:
        return None
    return datetime.fromtimestamp(mtime_ns // 1_000_000_000).isoformat()
