"""The warm query's int8 scan (store/int8_scan.py): its error bound, its guard, and a
searcher that stays exact with it, on whatever CPU runs them (the scan is used only where
its guard passes; either way results are the exact fp32 top k)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from search import Searcher
from store import Catalog, FileRecord, int8_scan, vector_index
from store.int8_scan import BLOCK, MARGIN, Codes, Int8Scan, bound_weights
from tests.helpers import mapped_kb

DIM = 512


def clip_like(n: int, seed: int = 0) -> np.ndarray:
    """Unit vectors in clusters, a few dimensions much larger than the rest (as in CLIP),
    and a burst of near-copies: where rounding errors and ties are worst."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, DIM))
    vectors = centres[rng.integers(0, 40, n)] + rng.normal(0, 0.5, (n, DIM))
    vectors[:, :3] *= 8
    burst = min(n, 200)
    vectors[:burst] = vectors[0] + rng.normal(0, 0.002, (burst, DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def int8_scores(codes: Codes, query: np.ndarray, saturate: bool = False) -> np.ndarray:
    """The int8 arithmetic the bound is proven for, in exact integers: the query quantised
    per block (s_q = max|q_b| / 127), code x query summed per block, scaled. `saturate`: a
    kernel without int8 dot products (AVX2's vpmaddubsw) summing pairs of u8 x s8 products in
    16 bits with saturation."""
    q = query.reshape(-1, BLOCK).astype(np.float64)
    s_q = np.abs(q).max(axis=1) / 127
    r = np.rint(q / np.where(s_q > 0, s_q, 1)[:, None]).astype(np.int64)
    products = codes.codes.astype(np.int64) * r  # u8 codes (value + 128) x s8 query
    if saturate:
        pairs = products.reshape(*products.shape[:2], BLOCK // 2, 2).sum(axis=3)
        products = np.clip(pairs, -32768, 32767)
    sums = products.sum(axis=2) - 128 * r.sum(axis=1)  # the zero point, exactly
    return (sums * codes.scales * s_q).sum(axis=1)


def emulated_bounds(codes: Codes, saturate: bool):
    def bounds(query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = int8_scores(codes, query, saturate)
        margin = codes.row_bounds(np.arange(len(codes)), query, MARGIN)
        return scores - margin, scores + margin
    return bounds


def test_bound_holds_for_every_row_of_exact_int8_arithmetic():
    rows = clip_like(3000).astype(np.float16)
    codes = Codes.of(rows)
    queries = [rows[5].astype(np.float32), clip_like(2, seed=9)[1]]
    for query in queries:
        exact = rows.astype(np.float32) @ query
        error = np.abs(int8_scores(codes, query) - exact)
        bound = codes.row_bounds(np.arange(len(rows)), query)
        assert (error <= bound).all()
        assert error.max() > 0.02 * bound.max()  # a real rounding, not a zero one
    # The codes decode to within half a step of each value.
    step = np.repeat(codes.scales, BLOCK, axis=1)
    assert (np.abs(codes.decoded(np.arange(50)) - rows[:50]) <= step[:50] / 2 + 1e-7).all()


def test_guard_catches_a_kernel_that_saturates():
    """The rows the guard scores are built so that 16-bit pair sums overflow: a kernel that
    saturates there lands outside its bound, the exact one inside."""
    rows, queries = int8_scan.guard_case(DIM)
    codes = Codes.of(rows)
    every = np.arange(len(rows))
    exact = int8_scan.worst_error(emulated_bounds(codes, False), codes, rows, queries, every)
    saturating = int8_scan.worst_error(emulated_bounds(codes, True), codes, rows, queries,
                                       every)
    assert exact <= 1.0 < saturating


def test_scan_is_kept_only_where_it_passes_its_guard():
    """On this CPU: either the onnxruntime scan passed its guard and every row's bounds hold
    the exact score, its candidates holding the true top k; or it was refused, saying why."""
    rows = clip_like(6000, seed=1).astype(np.float16)
    scan, why = int8_scan.build(rows, threads=2)
    if not int8_scan.saturation_free(DIM, 2):
        assert scan is None and "saturate" in why
        return
    assert scan is not None, why
    exact_rows = rows.astype(np.float32)
    for query in (exact_rows[3], clip_like(3, seed=5)[2], exact_rows[4000]):
        lower, upper = scan.bounds(query)
        exact = exact_rows @ query
        assert (lower <= exact).all() and (exact <= upper).all()
        for k in (1, 36, 200):
            picked = scan.candidates(query, k)
            assert set(np.argsort(-exact)[:k]) <= set(picked.tolist())
            assert len(picked) < len(rows) / 4  # it does narrow the scan down
            # Exactly the rows that may beat the k-th best lower bound, less those whose
            # decoded scores cannot reach the k-th best of theirs: none left out can.
            kth_lower = np.sort(lower)[-k]
            reach = np.flatnonzero(upper >= kth_lower)
            if len(reach) > k:
                decoded, bound = scan.codes.decoded_scores(reach, query)
                kth_decoded = np.sort(decoded - bound)[-k]
                assert set(picked.tolist()) == set(reach[decoded + bound >= kth_decoded])
            else:
                assert set(picked.tolist()) == set(reach.tolist())


def test_decoded_scores_hold_the_exact_score_within_half_the_int8_bound():
    """The candidates' second filter: x^.q from the codes, the query unquantised, within its
    bound of the fp16 copy's exact score on every row, worst cases included (near-copies,
    the guard's +-127 rows), and tighter than the int8 score's bound."""
    rows = clip_like(3000, seed=4).astype(np.float16)
    codes = Codes.of(rows)
    every = np.arange(len(rows))
    guard_rows, guard_queries = int8_scan.guard_case(DIM)
    guard_codes = Codes.of(guard_rows)
    cases = [(codes, rows, q) for q in (rows[7].astype(np.float32), clip_like(2, seed=8)[1])]
    cases += [(guard_codes, guard_rows, q) for q in guard_queries]
    for c, r, query in cases:
        picked = np.arange(len(r))
        decoded, bound = c.decoded_scores(picked, query)
        exact = r.astype(np.float64) @ query.astype(np.float64)
        assert (np.abs(decoded - exact) <= bound).all()
    decoded, bound = codes.decoded_scores(every, rows[7].astype(np.float32))
    error = np.abs(decoded - rows.astype(np.float64) @ rows[7].astype(np.float64))
    assert error.max() > 0.02 * bound.max()  # a real rounding, not a zero one
    assert bound.max() < 0.75 * codes.row_bounds(every, rows[7].astype(np.float32)).min()


def test_the_speed_check_times_both_scans_in_turns():
    """A scan timed against the fp16 one runs in turns with it, so a slow spell of the
    machine (this VM's speed swings by a third within minutes) slows both alike; the faster
    one is kept and the slower refused, saying so."""
    rows = clip_like(6000, seed=1).astype(np.float16)
    if not int8_scan.saturation_free(DIM, 2):
        pytest.skip("this CPU's int8 sums saturate: the scan is refused before any timing")
    calls: list[str] = []
    slow = [0.0]

    def fp16_scan(query):
        calls.append("fp16")
        deadline = time.perf_counter() + slow[0]
        while time.perf_counter() < deadline:
            pass

    real_candidates = Int8Scan.candidates

    def counted(self, query, k):
        calls.append("int8")
        return real_candidates(self, query, k)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Int8Scan, "candidates", counted)
        slow[0] = 0.2  # seconds: far slower than any int8 scan of 6000 rows
        scan, why = int8_scan.build(rows, threads=2, fp16_scan=fp16_scan)
        assert scan is not None and "kept" in why, why
        # the guard's own checks call candidates before the timing's warm-ups
        timed = calls[calls.index("fp16") - 1:]
        assert len(timed) == 20 and timed == ["int8", "fp16"] * 10, calls
        calls.clear()
        slow[0] = 0.0  # an fp16 scan that does nothing wins
        scan, why = int8_scan.build(rows, threads=2, fp16_scan=fp16_scan)
        assert scan is None and "not faster" in why, why
    first, second = int8_scan.paired_ms(lambda: time.sleep(0.004), lambda: None, rounds=3)
    assert first >= 4 > second


def test_query_weights_match_the_proven_terms():
    query = clip_like(1, seed=3)[0]
    of_scales, of_l1 = bound_weights(query, margin=2.0)
    blocks = np.abs(query.reshape(-1, BLOCK))
    np.testing.assert_allclose(of_scales, blocks.sum(axis=1), rtol=1e-6)
    np.testing.assert_allclose(of_l1, blocks.max(axis=1) / 127, rtol=1e-6)


def _catalog(tmp_path, vectors: np.ndarray) -> tuple[Catalog, np.ndarray, np.ndarray]:
    cat = Catalog(tmp_path / "c.db")
    root = cat.add_root("/p")
    records = [FileRecord(f"/p/{i}.jpg", root, 10, 1, f"h{i}", "ok")
               for i in range(len(vectors))]
    cat.write_batch(records, {f"h{i}": v for i, v in enumerate(vectors)}, "m")
    ids, stored = cat.vectors("m")
    return cat, ids, stored


@pytest.fixture
def small_split(monkeypatch):
    monkeypatch.setattr(vector_index, "SPLIT_MIN", 1000)  # the int8 scan from 1000 vectors


def test_searcher_with_the_int8_scan_stays_exact(tmp_path, small_split):
    """Results (order and scores) are the exact fp32 top k, with and without exclusions,
    and the scan answers the single queries once its guard passed."""
    vectors = clip_like(6000, seed=2)
    cat, ids, stored = _catalog(tmp_path, vectors)
    Searcher(cat, tmp_path / "vectors").search("m", vectors[0], limit=5)  # the file, saved
    searcher = Searcher(Catalog(cat.path, readonly=True), tmp_path / "vectors", int8_scan="on")
    index = searcher.prepare("m", DIM)
    assert (index.int8 is not None) == int8_scan.saturation_free(DIM, vector_index._scan_parts())
    rng = np.random.default_rng(4)
    for q in range(15):
        query = vectors[rng.integers(len(vectors))] + rng.normal(0, 0.01, DIM)
        query = (query / np.linalg.norm(query)).astype(np.float32)
        exact = stored @ query
        order = np.lexsort((ids, -exact))
        got = searcher.search("m", query, limit=25)
        assert [r.file_id for r in got] == ids[order[:25]].tolist(), q
        assert np.allclose([r.score for r in got], exact[order[:25]], atol=1e-6)
        hits = index.search(query[None], 36)[0]  # what the searcher builds on
        left_out = ~np.isin(ids, hits.ids)
        assert exact[left_out].max() <= hits.ceiling < exact[order[9]]
        skip = set(ids[order[:7]].tolist())
        got = searcher.search("m", query, limit=10, exclude=skip)
        assert [r.file_id for r in got] == ids[order[7:17]].tolist(), q


class _CountedRuns:
    """An onnxruntime session that counts its runs."""

    def __init__(self, session):
        self.session, self.runs = session, 0

    def run(self, *args, **kwargs):
        self.runs += 1
        return self.session.run(*args, **kwargs)


def test_a_widened_search_scores_every_row_once(tmp_path, small_split, monkeypatch):
    """Sixty copies of one photo tie at the top: the searcher's first candidates cannot
    show the exact top 10 and it asks again for more, which re-reads the same query's
    scores instead of scanning again. Results stay the exact top (ties by id)."""
    vectors = clip_like(4000, seed=8)
    vectors[1000:1060] = vectors[5]
    cat, ids, stored = _catalog(tmp_path, vectors)
    Searcher(cat, tmp_path / "vectors").search("m", vectors[0], limit=5)  # the file, saved
    searcher = Searcher(Catalog(cat.path, readonly=True), tmp_path / "vectors", int8_scan="on")
    index = searcher.prepare("m", DIM)
    if index.int8 is None:
        pytest.skip("this CPU's int8 sums saturate: the fp16 scan answers")
    counted = _CountedRuns(index.int8.session)
    index.int8.session = counted
    asked: list[int] = []
    real_search = vector_index.VectorIndex.search
    monkeypatch.setattr(vector_index.VectorIndex, "search", lambda self, q, k, allowed=None: (
        asked.append(k), real_search(self, q, k, allowed))[1])
    query = vectors[5]
    exact = stored @ query
    order = np.lexsort((ids, -exact))
    got = searcher.search("m", query, limit=10)
    assert [r.file_id for r in got] == ids[order[:10]].tolist()
    assert len(asked) >= 2 and asked[0] < 60 < asked[-1]  # widened past the copies
    assert counted.runs == 1
    other = vectors[7]
    searcher.search("m", other, limit=10)
    assert counted.runs == 2  # another query: scanned


def test_scan_is_built_in_the_background_from_the_second_query(tmp_path, small_split):
    vectors = clip_like(3000, seed=6)
    cat, _, _ = _catalog(tmp_path, vectors)
    searcher = Searcher(cat, tmp_path / "vectors", int8_scan="on")
    searcher.search("m", vectors[1], limit=3)
    index = searcher.index_for("m", DIM)
    assert index.int8_build is None and index.int8 is None  # a one-off query pays nothing
    searcher.search("m", vectors[2], limit=3)
    assert index.int8_build is not None
    index.int8_build.join(timeout=60)
    assert index.int8_note != "building"
    kept = int8_scan.saturation_free(DIM, vector_index._scan_parts())
    assert (index.int8 is not None) == kept, index.int8_note
    if kept:  # it answers now, and a change to the index drops it
        assert searcher.search("m", vectors[2], limit=1)[0].score == pytest.approx(1, abs=1e-6)
        index.add(np.array([10**6]), vectors[:1])
        assert index.int8 is None


def test_off_never_builds_it(tmp_path, small_split):
    vectors = clip_like(2000, seed=7)
    cat, _, _ = _catalog(tmp_path, vectors)
    searcher = Searcher(cat, tmp_path / "vectors")
    for i in range(4):
        searcher.search("m", vectors[i], limit=3)
    index = searcher.prepare("m", DIM)
    assert index.int8 is None and index.int8_build is None
    with pytest.raises(ValueError):
        Searcher(cat, tmp_path / "vectors", int8_scan="yes")


@pytest.mark.skipif(not hasattr(vector_index.os, "pread"), reason="POSIX pread")
def test_rows_come_from_the_file_once_the_scan_answers(tmp_path, small_split):
    """With the int8 scan the fp16 copy's pages leave the process; the rows the search then
    reads come from the index file, the same values."""
    vectors = clip_like(3000, seed=8)
    cat, _, _ = _catalog(tmp_path, vectors)
    Searcher(cat, tmp_path / "vectors").search("m", vectors[0], limit=5)
    path = vector_index.index_path(tmp_path / "vectors", "m")
    index = vector_index.VectorIndex.load(path, DIM)
    rows = np.array([0, 17, 2999, 1500])
    mapped = index._rows16()[rows].astype(np.float32)
    some = index._ids()[::7]
    queries = vectors[[5, 2500]]
    filtered, batched = (index.search(queries[:1], 10, allowed=some)[0],
                         index.search(queries, 10))
    index.use_int8_scan(now=True)
    if index.int8 is None:
        pytest.skip(f"no int8 scan on this CPU: {index.int8_note}")
    assert index._file is not None
    np.testing.assert_array_equal(index._fp16_rows(rows), mapped)
    if vector_index.MMAP_FLAGS & getattr(vector_index.faiss, "IO_FLAG_MMAP_IFC", 0):
        assert "not a mapping" not in index.int8_note  # the pages did leave
    # What FAISS still scans (filtered, batched searches) is intact: dropped pages of a
    # file mapping come back from the file.
    np.testing.assert_array_equal(index._rows16()[rows].astype(np.float32), mapped)
    _assert_same_hits(index.search(queries[:1], 10, allowed=some)[0], filtered)
    for got, before in zip(index.search(queries, 10), batched, strict=True):
        _assert_same_hits(got, before)


def test_filtered_searches_through_the_scan_answer_as_faiss_filtered_does(tmp_path,
                                                                          small_split,
                                                                          monkeypatch):
    """A filter (ids allowed) through the int8 scan: the same ids, scores and ceiling as
    FAISS's filtered fp16 scan, for a filter of a third of the index, one around the burst
    of near-copies, one with ids the index lacks, one smaller than k and an empty one."""
    vectors = clip_like(3000, seed=11)
    cat, _, _ = _catalog(tmp_path, vectors)
    Searcher(cat, tmp_path / "vectors").search("m", vectors[0], limit=5)
    index = vector_index.VectorIndex.load(vector_index.index_path(tmp_path / "vectors", "m"),
                                          DIM)
    ids = index._ids()
    rng = np.random.default_rng(3)
    filters = [rng.choice(ids, 1000, replace=False), ids[150:400],
               np.concatenate([ids[::5], [10**9, -7]]), ids[2000:2020], ids[:0]]
    queries = [vectors[3], vectors[2500], clip_like(2, seed=12)[1]]
    before = [[index.search(q[None], 36, allowed=f)[0] for f in filters] for q in queries]
    index.use_int8_scan(now=True)
    if index.int8 is None:
        pytest.skip(f"no int8 scan on this CPU: {index.int8_note}")
    calls = []
    real = index.int8.candidates
    index.int8.candidates = lambda *a: calls.append(a) or real(*a)
    for q, expected in zip(queries, before, strict=True):
        for allowed, was in zip(filters, expected, strict=True):
            got = index.search(q[None], 36, allowed=allowed)[0]
            _assert_same_hits(got, was)
            if len(got.ids) == 36 and len(np.intersect1d(allowed, ids)) > 36:
                assert got.ceiling == pytest.approx(was.ceiling, abs=1e-6)
            elif len(allowed):  # every allowed photo returned: nothing left out can beat them
                assert got.ceiling == -np.inf
            else:
                assert got.ceiling == was.ceiling and not len(got.ids)
    assert len(calls) == len(queries) * (len(filters) - 1)  # the empty filter asks nothing
    # What a user sees: the searcher's exact results, filtered, as without the scan (these
    # filters scanned, not scored one by one)
    from search import searcher as searcher_module

    monkeypatch.setattr(searcher_module, "DIRECT_MAX", 10)
    with_scan, without = (Searcher(cat, tmp_path / "vectors", int8_scan=s) for s in ("on", "off"))
    scanned = with_scan.prepare("m", DIM).int8
    assert scanned is not None
    calls.clear()
    own = scanned.candidates
    monkeypatch.setattr(scanned, "candidates", lambda *a: calls.append(a) or own(*a))
    for q in queries:
        for allowed in filters[:3]:
            ours, theirs = (s.search("m", q, limit=10, allowed=allowed)
                            for s in (with_scan, without))
            assert [(r.file_id, r.score) for r in ours] == [(r.file_id, r.score) for r in theirs]
    assert len(calls) >= len(queries) * 3


def test_codes_read_into_memory_are_never_dropped(tmp_path, small_split, monkeypatch):
    """A FAISS that reads the index's codes into memory instead of mapping the file: their
    pages must stay (dropped, they would read as zeros: filtered and batched searches then
    ranked every photo at score 0, as FAISS 1.15 did with IO_FLAG_MMAP alone)."""
    vectors = clip_like(3000, seed=8)
    cat, _, _ = _catalog(tmp_path, vectors)
    Searcher(cat, tmp_path / "vectors").search("m", vectors[0], limit=5)
    monkeypatch.setattr(vector_index, "MMAP_FLAGS", 0)  # read into memory
    index = vector_index.VectorIndex.load(vector_index.index_path(tmp_path / "vectors", "m"),
                                          DIM)
    before = index.search(vectors[[5]], 10, allowed=index._ids()[::7])[0]
    index.use_int8_scan(now=True)
    if index.int8 is None:
        pytest.skip(f"no int8 scan on this CPU: {index.int8_note}")
    assert "not a mapping of the file: it stays" in index.int8_note
    _assert_same_hits(index.search(vectors[[5]], 10, allowed=index._ids()[::7])[0], before)
    assert index.search(vectors[[5, 6]], 1)[0].scores[0] == pytest.approx(1, abs=1e-3)


def test_file_mapped_tells_a_read_only_file_mapping_from_other_memory(tmp_path):
    import mmap

    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(256)) * 64)  # 4 pages
    with open(path, "rb") as handle, open(path, "r+b") as writable:
        mapped = mmap.mmap(handle.fileno(), 0, prot=mmap.PROT_READ)
        written = mmap.mmap(writable.fileno(), 0)
        anonymous = np.zeros(1 << 16, np.uint8)
        base = np.frombuffer(mapped, np.uint8).ctypes.data
        assert vector_index.file_mapped(base, base + len(mapped), handle.fileno())
        assert vector_index.file_mapped(base + 4096, base + 8192, handle.fileno())
        assert not vector_index.file_mapped(base, base + len(mapped) + 4096, handle.fileno())
        start = anonymous.ctypes.data
        assert not vector_index.file_mapped(start, start + 4096, handle.fileno())
        start = np.frombuffer(written, np.uint8).ctypes.data
        assert not vector_index.file_mapped(start, start + 4096, writable.fileno())
        del base, start
        mapped.close()
        written.close()


def _assert_same_hits(got, expected, tie: float = 1e-5) -> None:
    """The same hits up to near-ties: FAISS sums a row's fp16 products in its own order, so
    scores within float rounding may swap places (the searcher re-ranks them exactly)."""
    np.testing.assert_allclose(got.scores, expected.scores, atol=tie)
    clear = expected.scores > expected.scores[-1] + tie if len(expected.ids) else []
    assert set(got.ids[got.scores > expected.scores[-1] + tie].tolist()) == \
        set(expected.ids[clear].tolist()) if len(expected.ids) else not len(got.ids)
    theirs = dict(zip(expected.ids.tolist(), expected.scores.tolist(), strict=True))
    for i, score in zip(got.ids.tolist(), got.scores.tolist(), strict=True):
        if i in theirs:
            assert abs(theirs[i] - score) <= tie


def test_the_scan_of_a_real_graph_matches_exact_int8_arithmetic():
    """onnxruntime's MatMulNBits computes what the bound is proven for (where the guard
    passes): its scores equal exact int8 arithmetic up to float32 rounding."""
    rows = clip_like(2000, seed=10).astype(np.float16)
    if not int8_scan.saturation_free(DIM, 1):
        pytest.skip("int8 sums saturate on this CPU: the scan is refused there")
    scan = Int8Scan(Codes.of(rows), threads=1)
    query = rows[11].astype(np.float32)
    lower, upper = scan.bounds(query)
    np.testing.assert_allclose((lower + upper) / 2, int8_scores(scan.codes, query), atol=2e-6)


def test_library_warm_up_readies_the_scan_of_a_long_lived_app(tmp_path, monkeypatch):
    """Library.warm_up (an app or server at start): text tower, index and its int8 scan
    ready before the first query, which answers the same as without it; a one-shot
    (low-memory) Library or CLIPSEARCH_INT8_SCAN=off never builds the scan."""
    from clipsearch import Library
    from tests.helpers import draw_photos, pair_of

    monkeypatch.setattr(vector_index, "SPLIT_MIN", 10)
    draw_photos(tmp_path / "p", per_pair=2, seed=3)
    with Library(tmp_path / "lib", model="shapes-tiny") as lib:
        assert lib.warm_up() == {}  # nothing indexed yet
        lib.index([tmp_path / "p"])
    with Library(tmp_path / "lib") as lib:
        ready = lib.warm_up()
        assert ready["vectors"] >= 10
        assert ready["text_tower"] in ("int8-dynamic", "int8-unsigned", "int8-blocks", "fp32",
                                       "numpy")
        index = lib.searcher.index_for(ready["model"], lib.embed_text(["x"]).shape[1])
        assert (ready["scan"] == "int8") == (index.int8 is not None)
        if index.int8 is None:  # the shapes model's width may not be a multiple of 32
            assert ready["scan"] == index.int8_note != "not asked for"
        hits = lib.query("a green star", limit=3)
        assert pair_of(hits[0].path) == ("green", "star")
    for settings in ({"low_memory": True}, {}):
        if not settings:
            monkeypatch.setenv("CLIPSEARCH_INT8_SCAN", "off")
        with Library(tmp_path / "lib", **settings) as lib:
            assert lib.searcher.int8_scan == "off"
            assert lib.warm_up()["scan"] == "not asked for"
            assert [h.path for h in lib.query("a green star", limit=3)] == \
                [h.path for h in hits]


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads /proc/self/smaps")
def test_the_grading_sample_leaves_the_fp16_pages_out(tmp_path, small_split):
    """The first long-lived process after an index run measures the grading bars on a sample
    of the stored vectors after its int8 scan has let the fp16 copy's pages go: the sample
    comes from the file too (a strided read of the mapping faulted nearly all of it back in,
    98 MB at 100k for the process's life), the same vectors as FAISS's own decoding."""
    vectors = clip_like(3000, seed=9)
    cat, _, _ = _catalog(tmp_path, vectors)
    Searcher(cat, tmp_path / "vectors").search("m", vectors[0], limit=5)
    path = vector_index.index_path(tmp_path / "vectors", "m")
    index = vector_index.VectorIndex.load(path, DIM)
    inner = vector_index.faiss.downcast_index(index.index.index)
    rows = np.unique(np.linspace(0, 2999, 1024).astype(np.int64))
    expected = np.vstack([inner.reconstruct(int(r)) for r in rows])
    np.testing.assert_array_equal(index.sample(1024), expected)  # through the mapping
    np.testing.assert_array_equal(index.sample(5000), inner.reconstruct_n(0, 3000))
    index.use_int8_scan(now=True)
    if index.int8 is None or "not a mapping" in index.int8_note:
        pytest.skip(f"the fp16 pages stay in this build: {index.int8_note}")
    before = mapped_kb(path)
    assert before < 512, before  # 3 MB of rows, dropped
    np.testing.assert_array_equal(index.sample(1024), expected)
    assert mapped_kb(path) < before + 256, (before, mapped_kb(path))

