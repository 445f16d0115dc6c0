"""Is an int8 scan with a provable error bound faster than the fp16 FAISS scan? The
measurement that led to store/int8_scan.py (docs/benchmarks.md, "Intel Xeon AMX details"),
kept as a check of the kernel alone; clipsearch's own scan adds each row's bound to the graph
and re-scores its candidates from the fp16 copy.

    python -m bench.int8_scan [--count 100000] [--queries 50] [--rounds 50]

Over CLIP-like vectors (bench.clip_like) it times one query's exhaustive scan:
- FAISS fp16 codes through store.vector_index, as clipsearch scans today (the rows split in
  one range per core);
- onnxruntime's MatMulNBits over the same vectors as 8-bit codes with a scale per block of
  32 values, the query quantised per block too (accuracy_level 4: int8 arithmetic).

The int8 score of vector x for query q differs from the exact x.q by at most, block by block,
s_x/2 * |q_b|_1 (the code's rounding) + s_q/2 * |x^_b|_1 (the query's), where s are the
blocks' scales and x^ the decoded vector; the script checks every score against that bound
and counts the candidates an exact re-scoring would read: those within twice the largest
bound of the k-th best int8 score. Caveat: without int8 dot-product instructions (AVX2-only
CPUs) u8 x s8 products may saturate in 16-bit sums, which no bound covers: there the check
here is the evidence to look at.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import numpy as np

BLOCK = 32


def quantise(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 codes [n, dim/BLOCK, BLOCK] with zero point 128, float32 scales [n, dim/BLOCK])."""
    n, dim = vectors.shape
    blocks = vectors.reshape(n, dim // BLOCK, BLOCK)
    scales = np.abs(blocks).max(axis=2) / 127.0
    safe = np.where(scales > 0, scales, 1.0)[..., None]
    codes = np.clip(np.round(blocks / safe), -127, 127) + 128
    return codes.astype(np.uint8), scales.astype(np.float32)


def nbits_session(codes: np.ndarray, scales: np.ndarray, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    n, nblocks, _ = codes.shape
    dim = nblocks * BLOCK
    node = helper.make_node("MatMulNBits", ["q", "codes", "scales"], ["scores"],
                            domain="com.microsoft", K=dim, N=n, bits=8, block_size=BLOCK,
                            accuracy_level=4)
    graph = helper.make_graph(
        [node], "int8_scan", [helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, dim])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, n])],
        initializer=[numpy_helper.from_array(codes, "codes"),
                     numpy_helper.from_array(scales.reshape(-1), "scales")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def decoded_l1(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """|x^_b|_1 of every block of every decoded vector: [n, dim/BLOCK]."""
    return np.abs(codes.astype(np.int16) - 128).sum(axis=2) * scales


def code_rounding_bound(scales: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Per vector, the largest |x^.q - x.q|: each block's codes are off by s_x/2 at most."""
    return scales @ np.abs(query.reshape(-1, BLOCK)).sum(axis=1) / 2


def query_rounding_bound(l1: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Per vector, the largest |x^.q^ - x^.q|: each query block is off by s_q/2 at most."""
    return l1 @ (np.abs(query.reshape(-1, BLOCK)).max(axis=1) / 127.0) / 2


def score_bounds(scales: np.ndarray, l1: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Per vector, the largest |int8 score - exact score| (see the module's docstring), with
    slack for the float32 sums."""
    return code_rounding_bound(scales, query) + query_rounding_bound(l1, query) + 1e-5


def fp16_scan(vectors: np.ndarray) -> Callable[[np.ndarray], object]:
    """clipsearch's own exact index (store.vector_index): one query's scan split by rows."""
    from store.vector_index import VectorIndex

    index = VectorIndex.build(np.arange(len(vectors)), vectors, vectors.shape[1])
    return lambda query: index.search(query[None], 10)


def measure(count: int, queries: int, rounds: int, k: int = 10) -> dict:
    from bench.clip_like import World
    from clip_core.cpu import CpuFeatures, available_cores
    from store.int8_scan import median_ms

    world = World()
    vectors = world.vectors(0, count).astype(np.float32)
    texts = world.queries(queries).astype(np.float32)
    codes, scales = quantise(vectors)
    l1 = decoded_l1(codes, scales)
    cores = available_cores()
    fp16 = fp16_scan(vectors)
    sessions = {threads: nbits_session(codes, scales, threads) for threads in sorted({1, cores})}
    worst_ratio, worst_error, candidates, bound = 0.0, 0.0, [], 0.0
    for query in texts:
        scores = sessions[cores].run(None, {"q": query[None]})[0][0]
        errors = np.abs(scores - vectors @ query)
        bounds = score_bounds(scales, l1, query)
        worst_ratio = max(worst_ratio, float((errors / bounds).max()))
        worst_error = max(worst_error, float(errors.max()))
        bound = max(bound, float(bounds.max()))
        kth = np.partition(scores, -k)[-k]
        candidates.append(int((scores >= kth - 2 * bounds.max()).sum()))
    query = texts[0]
    return {
        "count": count, "cores": cores,
        "int8_dot_product": CpuFeatures.here().int8_dot_product,
        "fp16_faiss_split_ms": round(median_ms(lambda: fp16(query), rounds), 2),
        "int8_nbits_ms": {str(t): round(median_ms(lambda s=s: s.run(None, {"q": query[None]}),
                                                  rounds), 2)
                          for t, s in sessions.items()},
        "max_error": round(worst_error, 6), "max_error_over_bound": round(worst_ratio, 4),
        "largest_bound": round(bound, 6),
        "rescore_candidates_median": int(np.median(candidates)),
        "rescore_candidates_max": max(candidates),
        "memory_mb": {"fp16": round(vectors.size * 2 / 1e6, 1),
                      "int8_codes_scales": round((codes.nbytes + scales.nbytes) / 1e6, 1)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    print(json.dumps(measure(args.count, args.queries, args.rounds), indent=2))


if __name__ == "__main__":
    main()
