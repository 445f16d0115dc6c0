"""The approximate index a large library uses (docs/scale.md: why this one, measured).

An inverted file (IVF: k-means cells, a query scans the `nprobe` nearest cells) over 4-bit
scalar-quantised codes, ids = catalog file ids. The codes only pick candidates: the searcher
re-scores them with the catalog's exact fp32 vectors, so a returned score is always exact
and only membership of the top k is approximate. `nprobe` is tuned at build time to the
smallest value whose measured recall@10 (against brute force, on probe queries) reaches
RECALL_TARGET, and the figure is kept in the sidecar for `clipsearch status`.
"""

from __future__ import annotations

import math
from pathlib import Path

import faiss
import numpy as np

from .vector_index import Hits, omp_threads, save_atomic, search_shape

KIND = "ivf-sq4-ip"
RECALL_TARGET = 0.98  # on the off-cone probes, harder than text-like queries (docs/scale.md)
# Candidates re-scored exactly per query (at least; more for a larger limit). Each costs a
# catalog read (~60 us at 1M); 4-bit scores rank well enough that recall@10 saturates near
# 30-50 candidates (measured: 100k, 30 -> 0.962, 100 -> 0.965).
RERANK = 40
TRAIN_PER_CELL = 16
PROBES = 100  # probe queries for measuring recall
GAP = 1.0  # weight of a probe's own direction, relative to its picture part
NPROBES = (8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def cells_for(count: int) -> int:
    """Cells for `count` vectors: a power of two near 4 sqrt(n) (1M -> 4096). Measured at
    1M: 4096 cells, nprobe 32 reach recall 0.998 scanning 1.4 ms of codes where 2048 cells
    needed nprobe 64 and 6 ms for 0.996."""
    return max(16, 2 ** round(math.log2(4 * math.sqrt(max(count, 1)))))


class AnnIndex:
    exact = False

    def __init__(self, index: faiss.IndexIVF, dim: int, params: dict):
        self.index = index
        self.dim = dim
        self.params = params  # nlist, nprobe, trained_count, recall_at_10

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def kind(self) -> str:
        return KIND

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, dim: int, seed: int = 0) -> AnnIndex:
        vectors = np.ascontiguousarray(vectors, np.float32)
        nlist = cells_for(len(ids))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_4bit,
                                              faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10  # k-means: 10 rounds place the cells well enough for re-scoring
        index.cp.seed = seed
        index.cp.min_points_per_centroid = TRAIN_PER_CELL  # (FAISS warns below 39)
        rng = np.random.default_rng(seed)
        # 16 vectors a cell: at 1M (4096 cells) the same recall as 32 (0.982 at nprobe 32,
        # 40 candidates) for half the k-means time (46 against 90 s of CPU).
        train = vectors[np.sort(rng.choice(len(ids), min(len(ids), TRAIN_PER_CELL * nlist),
                                           replace=False))]
        index.train(train)
        index.add_with_ids(vectors, np.asarray(ids, np.int64))
        made = cls(index, dim, {"nlist": nlist, "trained_count": len(ids)})
        made.tune(np.asarray(ids, np.int64), vectors, rng)
        return made

    def tune(self, ids: np.ndarray, vectors: np.ndarray, rng: np.random.Generator) -> None:
        """nprobe: the smallest reaching RECALL_TARGET on probe queries shaped like text
        queries, scored after exact re-scoring as the searcher does; recall_at_10 is the
        probes' at the chosen one."""
        probes = _probes(vectors, rng)
        truth = _top(probes @ vectors.T, 10)  # rows of `vectors`
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]

        def recall_at(nprobe: int) -> float:
            self.params["nprobe"] = nprobe
            found = []
            for probe in probes:
                hits = self.search(probe[None], RERANK)[0]
                rows = order[np.searchsorted(sorted_ids, hits.ids)]
                found.append(rows[np.argsort(-(vectors[rows] @ probe), kind="stable")[:10]])
            return float(np.mean([len(set(f) & set(t)) / 10
                                  for f, t in zip(found, truth, strict=True)]))

        nprobes = [p for p in NPROBES if p < self.params["nlist"]] + [self.params["nlist"]]
        for nprobe in nprobes:
            recall = recall_at(nprobe)
            if recall >= RECALL_TARGET:
                break
        self.params["recall_at_10"] = round(recall, 4)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[Hits]:
        queries, k = search_shape(queries, k, len(self) if allowed is None else len(allowed))
        if k <= 0:
            return [Hits.none() for _ in queries]
        nprobe = int(self.params.get("nprobe", 32))
        sel = None
        if allowed is not None:
            # A filter keeping a fraction f of the files leaves ~f of each cell: scan 1/f
            # more cells so as many candidates pass (capped at every cell: then exhaustive).
            sel = faiss.IDSelectorBatch(np.asarray(allowed, np.int64))
            nprobe = int(min(self.params["nlist"],
                             math.ceil(nprobe * len(self) / max(1, len(allowed)))))
        params = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)
        with omp_threads(1 if len(queries) == 1 else faiss.omp_get_max_threads()):
            scores, ids = self.index.search(queries, k, params=params)
        return Hits.per_query(scores, ids)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, np.float32),
                                    np.asarray(ids, np.int64))

    def remove(self, ids: np.ndarray) -> None:
        if len(ids):
            self.index.remove_ids(faiss.IDSelectorBatch(np.asarray(ids, np.int64)))

    def sample(self, n: int) -> np.ndarray:
        """Up to `n` stored vectors (decoded 4-bit codes, cosine ~0.99 to the real ones),
        spread over the cells."""
        total = len(self)
        if total == 0:
            return np.empty((0, self.dim), np.float32)
        take = set(np.linspace(0, total - 1, min(n, total)).astype(np.int64).tolist())
        out, seen = [], 0
        sq = self.index.sq
        size = self.index.code_size
        for c in range(self.index.nlist):
            length = self.index.invlists.list_size(c)
            wanted = [i - seen for i in range(seen, seen + length) if i in take]
            if wanted:
                codes = faiss.rev_swig_ptr(self.index.invlists.get_codes(c), length * size)
                rows = codes.reshape(length, size)[wanted]
                decoded = sq.decode(np.ascontiguousarray(rows))
                if self.index.by_residual:  # codes hold the offset from the cell's centroid
                    decoded += self.index.quantizer.reconstruct(c)
                out.append(decoded)
            seen += length
        return np.vstack(out).astype(np.float32)

    def save(self, path: Path, meta: dict) -> None:
        save_atomic(self.index, path, {**meta, **self.params})

    @classmethod
    def load(cls, path: Path, dim: int, meta: dict) -> AnnIndex:
        index = faiss.read_index(str(path))  # typed already; downcast would drop ownership
        keys = ("nlist", "nprobe", "trained_count", "recall_at_10")
        return cls(index, dim, {k: meta[k] for k in keys if k in meta})


def _probes(vectors: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Queries that behave like text ones: CLIP's text vectors sit outside the pictures'
    cone (the modality gap: a direction of their own) and aim at a neighbourhood of them.
    So: a stored vector, half its collection's mean direction taken out, plus a random
    direction of the same weight (GAP) and some noise. Two stored vectors summed (the
    earlier probes) were easier than text-like queries (100k: recall 0.99 where text-like
    queries had 0.96); these are a little harder (0.944), so reaching the target on them
    leaves a margin instead of a guessed 2x (docs/scale.md)."""
    n, dim = vectors.shape
    mean = vectors[rng.choice(n, min(n, 10_000), replace=False)].mean(axis=0)
    base = vectors[rng.choice(n, PROBES)] - 0.5 * mean
    own = _unit(rng.standard_normal((PROBES, dim)))
    noise = rng.standard_normal((PROBES, dim)) / math.sqrt(dim)
    scale = np.linalg.norm(base, axis=1, keepdims=True)
    return _unit(base + GAP * scale * own + 0.5 * noise).astype(np.float32)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    part = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)
