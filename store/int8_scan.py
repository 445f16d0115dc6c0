"""One query scored against every vector of an exact index in int8 arithmetic, with a proven
bound on each score's error: the warm query's scan for long-lived processes.

The exact index scans fp16 copies (store/vector_index.py); FAISS's fp16 kernel converts each
value to float and streams ~6.5 GB/s a core on the AMX VM: 8.5-9 ms for 100k ViT-B-32
vectors on two threads. Here the same vectors are 8-bit codes with one scale per 32 values,
scored by onnxruntime's MatMulNBits with the query quantised per 32 values as well (int8
products summed in 32 bits): 70 MB streamed instead of 102 at 100k (docs/benchmarks.md).

Error bound. The codes quantise the fp16 copy x (each block b of 32 values to a scale s_b =
max|x_b|/127 and codes round(x/s_b)); decoded, x^ is within s_b/2 of x per value. The query q
becomes q^, within s_qb/2 per value (s_qb = max|q_b|/127). Then, block by block,
    |x^.q^ - x.q| <= sum_b  s_b/2 |q_b|_1  +  s_qb/2 |x^_b|_1
Each row's bound comes from its s_b and |x^_b|_1 (kept beside the codes), giving it a lower
and an upper bound on x.q. Only the rows whose upper bound reaches the k-th best lower bound
can be among the k best; VectorIndex re-scores those from the fp16 copy, so the searcher sees
the fp16 scan's very answer and stays exact as before. The graph only scores: the bounds are
needed for the few rows near the top (Int8Scan.candidates), not for every row.

Guard. Without int8 dot-product instructions (AVX2-only x86) a kernel may sum pairs of u8 x s8
products in 16 bits with saturation, which no bound covers. A scan is kept only after every
score of rows built to saturate such sums, and of a sample of the index's own rows against a
few queries, lies within its bound; where the caller asks (CPUs without int8 dot products) it
must also be measured faster than the fp16 scan. Otherwise the fp16 scan answers.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

BLOCK = 32  # values per scale, in the vectors and in the query (MatMulNBits' block_size)
SLACK = 1e-5  # float32 sums of the block products
MARGIN = 1.1  # headroom over the proven bound: the query is quantised by onnxruntime, not us
SAMPLE = 4096  # rows of the index checked against exact arithmetic before use


@dataclass(frozen=True)
class Codes:
    """Vectors as 8-bit codes: value round(x / scale) + 128 per block of BLOCK values."""

    codes: np.ndarray  # uint8 [n, blocks, BLOCK]
    scales: np.ndarray  # float32 [n, blocks], contiguous: the scan's kernel reads them
    # float32 [n, 2 * blocks]: each row's scales, then its |x^_b|_1 (the other term of its
    # bound), side by side: a row's bound reads one 128-byte run, not one line in each of
    # two arrays (1,400 rows a query after the scan evicted them: 0.96 -> 0.43 ms)
    terms: np.ndarray

    @classmethod
    def of(cls, rows: np.ndarray, chunk: int = 4096) -> Codes:
        """Quantise [n, dim] rows (fp16 or fp32), `chunk` rows at a time: no fp32 copy of
        the whole index (100k ViT-B-32: 205 MB) is ever made."""
        n, dim = rows.shape
        if dim % BLOCK:
            raise ValueError(f"dimension {dim} is not a multiple of {BLOCK}")
        blocks = dim // BLOCK
        codes = np.empty((n, blocks, BLOCK), np.uint8)
        terms = np.empty((n, 2 * blocks), np.float32)
        for lo in range(0, n, chunk):
            part = rows[lo:lo + chunk].astype(np.float32).reshape(-1, blocks, BLOCK)
            scale = np.abs(part).max(axis=2) / np.float32(127)
            scale[scale == 0] = 1.0
            part /= scale[..., None]
            np.clip(np.rint(part, out=part), -127, 127, out=part)
            terms[lo:lo + chunk, :blocks] = scale
            terms[lo:lo + chunk, blocks:] = np.abs(part).sum(axis=2) * scale
            part += 128
            codes[lo:lo + chunk] = part
        return cls(codes, np.ascontiguousarray(terms[:, :blocks]), terms)

    def __len__(self) -> int:
        return len(self.codes)

    def decoded(self, rows: np.ndarray) -> np.ndarray:
        """x^ of the given rows, float32 [len(rows), dim]."""
        values = self.codes[rows].astype(np.float32) - 128
        return (values * self.scales[rows][..., None]).reshape(len(rows), -1)

    def decoded_scores(self, rows: np.ndarray, query: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
        """x^.q of the given rows in float32 from their codes and the query as it is (not
        quantised), and each one's bound on |x^.q - x.q|: the codes' rounding,
        sum_b s_b/2 |q_b|_1 (its first term above; the query's own term is gone), plus the
        float sums' error, at most gamma_dim sum_i |x^_i q_i| <= gamma_dim sum_b |x^_b|_1
        max|q_b| (gamma_n = n u / (1 - n u), u = 2^-24: any order of summation). About
        half the int8 score's bound, for ~0.4 ms on the few hundred rows that pass it."""
        q = np.asarray(query, np.float32).reshape(-1, BLOCK)
        centred = (self.codes[rows] ^ np.uint8(128)).view(np.int8).astype(np.float32)
        scores = (np.einsum("rbi,bi->rb", centred, q) * self.scales[rows]).sum(axis=1)
        dim = q.size
        gamma = dim * 2.0 ** -24 / (1 - dim * 2.0 ** -24)
        q_abs = np.abs(q)
        # 1 + 1e-4: float rounding of the codes' x / s (|x / s| <= 127: < 1e-5 of a step)
        # and of this very sum of positive terms
        weights = np.concatenate([q_abs.sum(axis=1) * np.float32(0.5 * (1 + 1e-4)),
                                  q_abs.max(axis=1) * np.float32(gamma)])
        return scores, self.terms[rows] @ weights + SLACK

    def row_bounds(self, rows: np.ndarray | slice, query: np.ndarray, margin: float = 1.0
                   ) -> np.ndarray:
        """The proven bound of each given row's score (the module's docstring), times
        `margin`."""
        return self.terms[rows] @ np.concatenate(bound_weights(query, margin)) + SLACK


def bound_weights(query: np.ndarray, margin: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A query's weights of a row's bound terms, times `margin`: its blocks' |q_b|_1 / 2
    for the row's scales (the codes' rounding), and s_qb / 2 = max|q_b| / 254 for the
    row's |x^_b|_1 (its own rounding)."""
    q = np.abs(np.asarray(query, np.float32).reshape(-1, BLOCK))
    half = np.float32(margin / 2)
    return q.sum(axis=1) * half, q.max(axis=1) / np.float32(127) * half


class Int8Scan:
    """Bounds on one query's score of every row of `codes` (row order), from int8
    arithmetic on `threads` threads; they pick the few rows worth scoring exactly."""

    def __init__(self, codes: Codes, threads: int):
        self.codes = codes  # the session borrows these buffers: keep them alive
        self.session = _session(codes, threads)
        # Each block's largest scale and |x^_b|_1 over the rows: a bound for every row
        self._most = codes.terms.max(axis=0) if len(codes) else None
        self._last: tuple[bytes, np.ndarray] | None = None  # (query, its scores)

    def __len__(self) -> int:
        return len(self.codes)

    def scores(self, query: np.ndarray) -> np.ndarray:
        """Each row's int8 score (onnxruntime's MatMulNBits: the only pass over the codes).
        The last query's are kept: a searcher that widens its candidates asks again."""
        feed = np.ascontiguousarray(np.asarray(query, np.float32).reshape(1, -1))
        key = feed.tobytes()
        last = self._last
        if last is not None and last[0] == key:
            return last[1]
        scores = self.session.run(None, {"q": feed})[0][0]
        scores.flags.writeable = False  # shared by the asks of one query
        self._last = (key, scores)
        return scores

    def bounds(self, query: np.ndarray, rows: np.ndarray | None = None,
               scores: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) of the given rows (default: all; `scores`: theirs, if known):
        each row's int8 score minus / plus its bound x MARGIN + SLACK. The score of the
        vector the codes quantise lies between them."""
        if scores is None:
            scores = self.scores(query)
            scores = scores if rows is None else scores[rows]
        picked = slice(None) if rows is None else rows
        margin = self.codes.row_bounds(picked, query, MARGIN)
        return scores - margin, scores + margin

    def candidates(self, query: np.ndarray, k: int, within: np.ndarray | None = None
                   ) -> np.ndarray:
        """Rows (of `within`, sorted rows, when given) that may be among the k best by their
        exact score: each one whose upper bound reaches the k-th best lower bound (the k rows
        of best lower bound score at least that, so no row below it can be among the k
        best). Row order.

        Only the scores pass over every row. No row's bound exceeds `widest` (each block's
        largest terms), so the k-th best lower bound is at least the k-th best score minus
        `widest`, and a row scoring below that minus `widest` cannot reach it: the rows'
        own bounds are computed for the rest only (100k CLIP-like rows: ~1,400 of them,
        ~200 kept), the same rows as from every row's bounds. Those are then narrowed by
        their scores on the decoded codes (_narrowed)."""
        scores = self.scores(query)
        if within is not None:
            scores = scores[within]
        n = len(scores)
        if k >= n:
            return np.arange(n, dtype=np.int64) if within is None else within
        assert self._most is not None
        widest = float(self._most @ np.concatenate(bound_weights(query, MARGIN))) + SLACK
        kth_score = np.partition(scores, n - k)[n - k]
        # SLACK again: widest is summed in float64, the rows' own bounds in float32
        near = np.flatnonzero(scores >= kth_score - 2 * widest - SLACK)
        rows = near if within is None else within[near]
        lower, upper = self.bounds(query, rows, scores[near])
        kth = np.partition(lower, len(near) - k)[len(near) - k]
        return self._narrowed(query, rows[upper >= kth], k)

    def _narrowed(self, query: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
        """`rows` (which hold the k best) less those that cannot be among them by their
        decoded scores' tighter bounds (Codes.decoded_scores): k of these rows score at
        least the k-th best lower bound, so a row whose upper bound is below it is out.
        100k CLIP-like rows: ~200 -> ~60, each one fewer row of the fp16 copy to read (a
        pread each: ~5 us)."""
        if len(rows) <= k:
            return rows
        scores, bound = self.codes.decoded_scores(rows, query)
        lower = scores - bound
        kth = np.partition(lower, len(rows) - k)[len(rows) - k]
        return rows[scores + bound >= kth]


def build(rows: np.ndarray, threads: int, fp16_scan: Callable[[np.ndarray], object] | None
          = None) -> tuple[Int8Scan | None, str]:
    """A guarded scan over `rows` ([n, dim] fp16 or fp32 copies of unit vectors), or None,
    and why. `fp16_scan(query)`: the scan it would replace, timed against it where the caller
    asks (CPUs without int8 dot products: faster is not sure there)."""
    dim = rows.shape[1]
    if dim % BLOCK:
        return None, f"dimension {dim} is not a multiple of {BLOCK}"
    if not saturation_free(dim, threads):
        return None, "int8 sums saturate on this CPU (guard rows out of their bound)"
    codes = Codes.of(rows)
    scan = Int8Scan(codes, threads)
    worst = agreement(scan, rows)
    if worst > 1.0:
        return None, f"int8 scores off by {worst:.2f}x their bound on the index's rows"
    if fp16_scan is not None:
        # a query after another, each step: a repeated one would find its scores kept
        queries = itertools.cycle(_check_queries(rows))
        int8_ms, fp16_ms = paired_ms(lambda: scan.candidates(next(queries), 64),
                                     lambda: fp16_scan(next(queries)))
        if int8_ms >= fp16_ms:
            return None, f"int8 scan not faster here ({int8_ms:.2f} vs {fp16_ms:.2f} ms)"
    return scan, f"int8 scan kept (worst error {worst:.2f} of its bound)"


Bounds = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # query -> (lower, upper)


def worst_error(bounds: Bounds, codes: Codes, rows: np.ndarray, queries: list[np.ndarray],
                sample: np.ndarray) -> float:
    """The largest |int8 score - exact score| over its row's proven bound, for the `sample`
    rows of `rows` (what `codes` quantise) and each query; `bounds`: a kernel's (lower,
    upper), whose middle is its int8 score. Above 1: the kernel is wrong here."""
    exact_rows = rows[sample].astype(np.float32)
    worst = 0.0
    for query in queries:
        lower, upper = bounds(query)
        scores = ((lower + upper) / 2)[sample]  # the int8 score, up to float rounding
        errors = np.abs(scores - exact_rows @ query)
        worst = max(worst, float((errors / codes.row_bounds(sample, query)).max()))
    return worst


def agreement(scan: Int8Scan, rows: np.ndarray) -> float:
    """worst_error on a sample of the index's own rows against a few queries (random ones,
    and rows of the index: near-duplicates score high, where rounding adds up most)."""
    n = len(rows)
    sample = np.unique(np.linspace(0, n - 1, min(n, SAMPLE)).astype(np.int64))
    return worst_error(scan.bounds, scan.codes, rows, _check_queries(rows), sample)


def guard_case(dim: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """(rows, queries) built to overflow 16-bit sums of u8 x s8 products: every code at
    +-127 (u8 1 or 255), queries of matching and random signs (every value at +-127)."""
    rng = np.random.default_rng(0)
    signs = rng.choice(np.float32([-1, 1]), (254, dim))
    rows = np.vstack([np.ones((1, dim), np.float32), -np.ones((1, dim), np.float32), signs])
    rows /= np.sqrt(dim)
    return rows, [rows[0], rows[1], rows[2], rows[3], -rows[4]]


@functools.lru_cache(maxsize=8)
def saturation_free(dim: int, threads: int) -> bool:
    """Whether this CPU's kernel keeps every score of guard_case's rows within its bound."""
    rows, queries = guard_case(dim)
    scan = Int8Scan(Codes.of(rows), threads)
    return worst_error(scan.bounds, scan.codes, rows, queries, np.arange(len(rows))) <= 1.0


def _check_queries(rows: np.ndarray) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    picked = [rows[int(i)].astype(np.float32) for i in rng.integers(0, len(rows), 3)]
    randoms = list(rng.standard_normal((2, rows.shape[1])).astype(np.float32))
    return [q / max(float(np.linalg.norm(q)), 1e-12) for q in picked + randoms]


def median_ms(step: Callable[[], object], rounds: int = 7) -> float:
    """Median milliseconds of `step` over `rounds` runs, after one warm-up run."""
    step()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def paired_ms(first: Callable[[], object], second: Callable[[], object], rounds: int = 9
              ) -> tuple[float, float]:
    """Median milliseconds of each step, run in turns after one warm-up run each: a slow
    spell of a busy or virtual machine then slows both alike (timed one after the other on a
    masked AVX2 VM, the int8 scan once took 12.1 ms against the fp16 scan's 11.8 and was
    refused, where in turns it takes 5-7.5 against 10.5-16)."""
    first()
    second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for step, spent in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            step()
            spent.append(time.perf_counter() - start)
    return float(np.median(times[0]) * 1000), float(np.median(times[1]) * 1000)


_session_lock = threading.Lock()  # one session made at a time: each copies its codes once


def _session(codes: Codes, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    n, blocks, _ = codes.codes.shape
    dim = blocks * BLOCK
    nodes = [
        helper.make_node("MatMulNBits", ["q", "codes", "scales"], ["scores"],
                         domain="com.microsoft", K=dim, N=n, bits=8, block_size=BLOCK,
                         accuracy_level=4),  # int8 arithmetic: the bound above
    ]
    supplied = [_placeholder("codes", codes.codes.shape, TensorProto.UINT8),
                _placeholder("scales", (n * blocks,), TensorProto.FLOAT)]
    graph = helper.make_graph(
        nodes, "int8_scan",
        [helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, dim])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, n])])
    graph.initializer.extend(supplied)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # One operator a run: nothing to spin for between ops, and a spinning pool thread
    # would take a core from the request beside it.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # Handed over without a copy (a serialised graph holds one more: +~90 MB at 100k).
    options.add_external_initializers(
        ["codes", "scales"],
        [ort.OrtValue.ortvalue_from_numpy(a) for a in (codes.codes, codes.scales.reshape(-1))])
    with _session_lock:
        return ort.InferenceSession(model.SerializeToString(), options,
                                    providers=["CPUExecutionProvider"])


def _placeholder(name: str, shape: tuple[int, ...], dtype: int):
    from onnx import TensorProto

    tensor = TensorProto(name=name, data_type=dtype, dims=list(shape),
                         data_location=TensorProto.EXTERNAL)
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "supplied-at-session-creation"
    return tensor
