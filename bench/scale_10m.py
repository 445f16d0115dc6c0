"""10M CLIP-like vectors at the FAISS level (issue 15; docs/scale.md, "The curve").

    python -m bench.scale_10m [--count 10000000] [--queries 100] [--phase build|query|all]
                              [--work DIR] [--lock /work/cpu.lock] [--out FILE]

No catalog: vectors come from bench/clip_like.World in 50k chunks (never all in memory:
10M x 512 fp32 is 20 GB), and the index is store/ann_index.py's recipe (its cells_for, its
training sample of 32 vectors a cell, 4-bit SQ codes, 10 k-means rounds, its nprobe rule).
Re-scoring, as the library does with the catalog's fp32 vectors, reads an fp16 copy of the
vectors on disk instead (np.memmap, 1 KB a vector: 10 GB at 10M): the RERANK candidates of
the codes are re-scored exactly from it. The codes are made from that fp16 copy too (its
rounding, ~1e-3, is far below a 4-bit step), so the 10M vectors are generated only once.

build: pass 1 generates the vectors, writes the fp16 copy, keeps the brute-force top 10 of
each text-like query (per chunk, merged) and gathers the training sample and the tuning's
probe sources; k-means; pass 2 adds the fp16 copy chunk by chunk and computes the probes'
truth. query: loads the index, picks nprobe by the library's rule (SAFETY x the smallest
nprobe whose probe recall reaches RECALL_TARGET), measures recall of every nprobe, then
times warm queries (p50/p99 wall, CPU) at the chosen nprobe and its neighbours. With --lock
the untimed work holds the lock shared and only the timed loop holds it exclusively.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import resource
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np

from bench.clip_like import CHUNK, World
from store.ann_index import NPROBES, PROBES, RECALL_TARGET, RERANK, cells_for
from store.vector_index import omp_threads

# The rule the recorded 10M run used (docs/scale.md): the smallest nprobe whose summed-pair
# probes reach RECALL_TARGET, doubled. The library itself now tunes on text-shaped probes
# without doubling (store/ann_index.py); this script keeps the older rule so its figures
# stay reproducible.
SAFETY = 2

DIM = 512
K = 10
OUT = Path(__file__).resolve().parent / "results" / "scale_10m.json"
WORK = Path("/work/scratch-h15big")


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


@contextmanager
def cpu_lock(path: Path | None, exclusive: bool) -> Iterator[None]:
    if path is None:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def merge_top(best_ids: np.ndarray, best_s: np.ndarray, ids: np.ndarray,
              scores: np.ndarray, k: int = K) -> tuple[np.ndarray, np.ndarray]:
    """The running top k per row, merged with this chunk's scores (rows x chunk); ties go
    to the lower id, as a brute force over everything at once would give them."""
    part = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
    all_ids = np.hstack([best_ids, ids[part]])
    all_s = np.hstack([best_s, np.take_along_axis(scores, part, axis=1)])
    order = np.lexsort((all_ids, -all_s))[:, :k]
    return np.take_along_axis(all_ids, order, axis=1), np.take_along_axis(all_s, order, axis=1)


def empty_top(rows: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((rows, 0), -1, np.int64), np.full((rows, 0), -np.inf, np.float32)


def sample_plan(count: int, nlist: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Positions of the training sample (as AnnIndex.build draws it), the probes' pairs
    and the mean-direction sample (as AnnIndex.tune draws them), all in one rng."""
    rng = np.random.default_rng(seed)
    train = np.sort(rng.choice(count, min(count, 32 * nlist), replace=False))
    mean = np.sort(rng.choice(count, min(count, 10_000), replace=False))
    pairs = rng.choice(count, (PROBES, 2))
    return {"train": train, "mean": mean, "pairs": pairs}


def _rows_in(positions: np.ndarray, start: int, chunk: np.ndarray) -> tuple[np.ndarray,
                                                                          np.ndarray]:
    inside = (positions >= start) & (positions < start + len(chunk))
    return np.flatnonzero(inside), chunk[positions[inside] - start]


def pass_one(count: int, queries: int, work: Path, nlist: int) -> dict:
    """Generate the vectors once: the fp16 copy, the queries' truth, the samples. Kept in
    pass1.npz, so a build that fails later starts again from pass 2."""
    saved = work / "pass1.npz"
    if saved.is_file():
        data = dict(np.load(saved))
        if int(data["count"]) == count and len(data["queries"]) == queries:
            return data
    world = World(DIM)
    qs = world.queries(queries)
    plan = sample_plan(count, nlist)
    train = np.empty((len(plan["train"]), DIM), np.float32)
    mean_rows = np.empty((len(plan["mean"]), DIM), np.float32)
    flat = plan["pairs"].reshape(-1)
    sources = np.empty((len(flat), DIM), np.float32)
    top = empty_top(len(qs))
    t0 = time.perf_counter()
    # Plain writes, not a writable memmap: its dirty pages would count in this process's RSS.
    copy = open(work / "vectors.f16", "wb")  # noqa: SIM115 (closed after the loop)
    for start in range(0, count, CHUNK):  # pass 1: generate, copy, truth, samples
        x = world.vectors(start, min(CHUNK, count - start))
        copy.write(x.astype(np.float16).tobytes())
        top = merge_top(*top, np.arange(start, start + len(x)), qs @ x.T)
        for where, out in ((plan["train"], train), (plan["mean"], mean_rows), (flat, sources)):
            slots, rows = _rows_in(where, start, x)
            out[slots] = rows
        if start // CHUNK % 20 == 0:
            print(f"pass 1: {start + len(x)} vectors, {time.perf_counter() - t0:.0f} s",
                  flush=True)
    copy.close()
    generate_s = time.perf_counter() - t0
    # The probes as AnnIndex.tune makes them: two stored vectors summed, less the mean.
    pairs = sources.reshape(PROBES, 2, DIM)
    probes = _unit(pairs[:, 0] + pairs[:, 1] - mean_rows.mean(axis=0)).astype(np.float32)
    data = {"count": np.int64(count), "queries": qs, "truth": top[0], "truth_scores": top[1],
            "train": train, "probes": probes, "generate_s": np.float64(generate_s)}
    np.savez(saved, **data)
    return data


def build(count: int, queries: int, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    nlist = cells_for(count)
    one = pass_one(count, queries, work, nlist)
    probes = one["probes"]
    t = time.perf_counter()
    quantizer = faiss.IndexFlatIP(DIM)
    index = faiss.IndexIVFScalarQuantizer(quantizer, DIM, nlist, faiss.ScalarQuantizer.QT_4bit,
                                          faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = 10
    index.cp.seed = 0
    index.train(one.pop("train"))
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    ptop = empty_top(len(probes))
    for start in range(0, count, CHUNK):  # pass 2: add the codes; the probes' truth
        x = read_rows(work, start, min(CHUNK, count - start))
        ids = np.arange(start, start + len(x), dtype=np.int64)
        index.add_with_ids(x, ids)
        ptop = merge_top(*ptop, ids, probes @ x.T)
        if start // CHUNK % 20 == 0:
            print(f"pass 2: {start + len(x)} added, {time.perf_counter() - t:.0f} s", flush=True)
    add_s = time.perf_counter() - t
    faiss.write_index(index, str(work / "index.faiss"))
    np.savez(work / "truth.npz", queries=one["queries"], truth=one["truth"],
             truth_scores=one["truth_scores"], probes=probes, probe_truth=ptop[0])
    meta = {"count": count, "dim": DIM, "kind": "ivf-sq4-ip", "nlist": nlist,
            "trained_on": min(count, 32 * nlist),
            "generate_copy_truth_s": round(float(one["generate_s"]), 1),
            "train_s": round(train_s, 1), "add_s": round(add_s, 1),
            "index_bytes": (work / "index.faiss").stat().st_size,
            "build_peak_rss_mb": peak_rss_mb()}
    (work / "build.json").write_text(json.dumps(meta, indent=1) + "\n")
    print("build", json.dumps(meta), flush=True)
    return meta


def read_rows(work: Path, start: int, n: int) -> np.ndarray:
    rows = np.fromfile(work / "vectors.f16", np.float16, n * DIM, offset=start * DIM * 2)
    return rows.reshape(n, DIM).astype(np.float32)


class Answerer:
    """The searcher's two steps at the FAISS level: RERANK candidates from the codes, then
    their exact scores from the fp16 copy."""

    def __init__(self, index: faiss.IndexIVF, copy: np.ndarray):
        self.index = index
        self.copy = copy

    def candidates(self, q: np.ndarray, nprobe: int) -> np.ndarray:
        params = faiss.SearchParametersIVF(nprobe=nprobe)
        with omp_threads(1):  # one query runs on one thread in the library too
            _, ids = self.index.search(q[None], RERANK, params=params)
        return ids[0][ids[0] >= 0]

    def top(self, q: np.ndarray, nprobe: int) -> np.ndarray:
        ids = np.sort(self.candidates(q, nprobe))
        scores = np.asarray(self.copy[ids], np.float32) @ q
        return ids[np.argsort(-scores, kind="stable")[:K]]


def recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / K
                          for f, t in zip(found, truth, strict=True)]))


def query(work: Path, lock: Path | None, repeats: int = 1) -> dict:
    meta = json.loads((work / "build.json").read_text())
    with cpu_lock(lock, exclusive=False):
        t = time.perf_counter()
        index = faiss.read_index(str(work / "index.faiss"))
        load_s = time.perf_counter() - t
        rss_loaded = peak_rss_mb()
        copy = np.memmap(work / "vectors.f16", np.float16, "r", shape=(meta["count"], DIM))
        data = np.load(work / "truth.npz")
        qs, truth = data["queries"], data["truth"]
        ask = Answerer(index, copy)
        nprobes = [p for p in NPROBES if p <= meta["nlist"]]
        # The library's rule (AnnIndex.tune) on the probes.
        probe_recall = {}
        for p in nprobes:
            probe_recall[p] = recall([ask.top(q, p) for q in data["probes"]], data["probe_truth"])
            if probe_recall[p] >= RECALL_TARGET:
                break
        enough = next((p for p, r in probe_recall.items() if r >= RECALL_TARGET), nprobes[-1])
        chosen = min(meta["nlist"], SAFETY * enough)
        sweep = {}
        for p in nprobes:  # untimed: recall of the codes alone and after re-scoring
            cands = [ask.candidates(q, p) for q in qs]
            sweep[p] = {"recall_at_10": round(recall([ask.top(q, p) for q in qs], truth), 4),
                        "codes_only_recall_at_10": round(recall([c[:K] for c in cands], truth),
                                                         4)}
    timed = sorted({p for p in nprobes if p * 2 >= chosen and p <= chosen * 2})
    with cpu_lock(lock, exclusive=True):  # one short section for every timed nprobe
        for p in timed:
            uptime = _load_average()
            for q in qs:  # warm: the candidates' fp16 rows into the page cache
                ask.top(q, p)
            walls, cpus = [], []
            for _ in range(repeats):
                for q in qs:
                    s, c = time.perf_counter(), time.process_time()
                    ask.top(q, p)
                    walls.append((time.perf_counter() - s) * 1000)
                    cpus.append((time.process_time() - c) * 1000)
            walls.sort()
            sweep[p].update({"p50_ms": round(statistics.median(walls), 2),
                             "p99_ms": round(walls[int(0.99 * (len(walls) - 1))], 2),
                             "p50_cpu_ms": round(statistics.median(cpus), 2),
                             "load_average": uptime})
            print(f"nprobe {p}", json.dumps(sweep[p]), flush=True)
    return {**meta, "rerank": RERANK, "rescoring": "exact, fp16 copy on disk (np.memmap)",
            "probe_recall": probe_recall, "nprobe": chosen, **sweep[chosen],
            "index_bytes_per_vector": round(meta["index_bytes"] / meta["count"], 1),
            "load_s": round(load_s, 1), "rss_after_load_mb": rss_loaded,
            "query_peak_rss_mb": peak_rss_mb(), "nprobe_sweep": sweep}


def _load_average() -> list[float]:
    return [round(x, 2) for x in __import__("os").getloadavg()]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_10m")
    parser.add_argument("--count", type=int, default=10_000_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--phase", choices=("build", "query", "all"), default="all")
    parser.add_argument("--work", type=Path, default=WORK)
    parser.add_argument("--lock", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.phase in ("build", "all"):
        build(args.count, args.queries, args.work)
    if args.phase in ("query", "all"):
        result = query(args.work, args.lock)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"command": "python -m bench.scale_10m " + " ".join(
            argv if argv is not None else sys.argv[1:]), **result}, indent=1) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k != "nprobe_sweep"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
