"""FAISS-level comparison of approximate indexes on CLIP-like vectors (docs/scale.md, "Why
this index"): no catalog, candidates re-scored from the fp32 vectors in memory as the
searcher does from the catalog, recall@10 against brute force on text-like queries.

    python -m bench.ann_variants --count 100000 \\
        --variants "IVF1024,SQ4|1024|16,32,64|40;HNSW32,SQ8|0|64,128|40"

A variant is FACTORY|CELLS|NPROBES (efSearch for HNSW)|CANDIDATES; prints one JSON line per
setting: recall, p50 CPU and wall ms of the FAISS search (one thread), bytes per vector of
the written index, build wall and CPU s (k-means on 32 vectors a cell, or 65,536 for others).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import faiss
import numpy as np

from bench.clip_like import World


def build(vectors: np.ndarray, spec: str, nlist: int) -> tuple[faiss.Index, float, float]:
    rng = np.random.default_rng(0)
    wall, cpu = time.perf_counter(), time.process_time()
    index = faiss.index_factory(vectors.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
    if "IVF" in spec:
        faiss.extract_index_ivf(index).cp.niter = 10
    take = min(len(vectors), 32 * nlist if nlist else 65_536)
    index.train(vectors[np.sort(rng.choice(len(vectors), take, replace=False))])
    index.add(vectors)
    return index, time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ann_variants")
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--variants", required=True)
    args = parser.parse_args(argv)
    world = World()
    vectors = np.ascontiguousarray(np.concatenate(list(world.iter_vectors(args.count))))
    queries = world.queries(args.queries)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    for variant in args.variants.split(";"):
        spec, nlist, nprobes, candidates = variant.split("|")
        faiss.omp_set_num_threads(2)
        index, build_wall, build_cpu = build(vectors, spec, int(nlist))
        with tempfile.TemporaryDirectory() as tmp:
            faiss.write_index(index, os.path.join(tmp, "i"))
            size = os.path.getsize(os.path.join(tmp, "i"))
        faiss.omp_set_num_threads(1)
        for nprobe in map(int, nprobes.split(",")):
            for k in map(int, candidates.split(",")):
                params = faiss.SearchParametersHNSW(efSearch=nprobe) if "IVF" not in spec \
                    else faiss.SearchParametersIVF(nprobe=nprobe)
                recall, cpu, wall = [], [], []
                for q, t in zip(queries, truth, strict=True):
                    c, w = time.process_time(), time.perf_counter()
                    _, found = index.search(q[None], k, params=params)
                    cpu.append((time.process_time() - c) * 1e3)
                    wall.append((time.perf_counter() - w) * 1e3)
                    cand = found[0][found[0] >= 0]
                    top = cand[np.argsort(-(vectors[cand] @ q))[:10]]
                    recall.append(len(set(top.tolist()) & set(t.tolist())) / 10)
                print(json.dumps({
                    "count": args.count, "spec": spec, "nlist": int(nlist), "nprobe": nprobe,
                    "candidates": k, "recall_at_10": round(float(np.mean(recall)), 4),
                    "p50_cpu_ms": round(float(np.median(cpu)), 3),
                    "p50_ms": round(float(np.median(wall)), 3),
                    "bytes_per_vector": round(size / args.count, 1),
                    "build_s": round(build_wall, 1), "build_cpu_s": round(build_cpu, 1),
                    "load_avg": round(os.getloadavg()[0], 2)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
