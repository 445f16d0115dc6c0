"""FAISS indexes derived from the catalog, one per model, cached as files.

The catalog is the truth; a FAISS file carries the catalog generation it was built at in a
JSON sidecar, and is used only while that equals the catalog's. The sidecar also names the
FAISS file's inode and size: the two files are renamed into place one after the other, and
several processes (queries and the indexer) may refresh the cache at once, so a sidecar is
trusted only for the very file it was written with. Temp files are unique per writer and
removed on failure; a killed writer's leftovers are swept by the next writer.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import mmap
import os
import re
import tempfile
import threading
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from . import int8_scan

log = logging.getLogger(__name__)


@dataclass
class Hits:
    ids: np.ndarray  # int64 file ids, best first
    scores: np.ndarray  # float32 cosine similarities
    # Exact index: no vector left out scores above this exactly (fp32), which is what the
    # searcher's stopping rule needs; -inf when every vector searched was returned.
    ceiling: float = np.inf

    @staticmethod
    def none() -> Hits:
        return Hits(np.empty(0, np.int64), np.empty(0, np.float32))

    @staticmethod
    def per_query(scores: np.ndarray, ids: np.ndarray) -> list[Hits]:
        """One Hits per row of a FAISS search, without its -1 padding (fewer than k found)."""
        return [Hits(row_ids[row_ids >= 0], row_scores[row_ids >= 0])
                for row_scores, row_ids in zip(scores, ids, strict=True)]


def search_shape(queries: np.ndarray, k: int, candidates: int) -> tuple[np.ndarray, int]:
    """Queries as a contiguous float32 batch, and k capped at the candidates searched
    (exact scan and IVF alike)."""
    return np.ascontiguousarray(np.atleast_2d(queries), np.float32), min(k, candidates)


class VectorIndex:
    """Exact inner-product search over L2-normalised vectors, keyed by catalog file id."""

    def __init__(self, index: faiss.Index, dim: int):
        self.index = index
        self.dim = dim
        self._id_map: np.ndarray | None = None  # row -> file id, read on first split search
        self._sorted_ids: tuple[np.ndarray, np.ndarray] | None = None  # see approx_scores
        self.int8: int8_scan.Int8Scan | None = None  # see use_int8_scan
        self.int8_note = "not asked for"
        self.int8_build: threading.Thread | None = None  # the background build, once started
        self._int8_asks = 0
        self._int8_tried = -1  # the version a build last ran for
        self._rows_lock = threading.Lock()  # rows change (add, remove) or are read to quantise
        self._version = 0  # bumped by every change: a scan built before one is dropped
        self._path: Path | None = None  # the file mapped read-only (load)
        self._file: tuple[int, int] | None = None  # (fd, offset of the fp16 rows) in it

    @classmethod
    def build(cls, ids: np.ndarray, vectors: np.ndarray, dim: int) -> VectorIndex:
        # Exhaustive search over fp16 copies: half the memory and bandwidth of fp32 (100k
        # ViT-B-32 vectors: 12.7 -> 5.3 ms a query, 200 -> 100 MB); the catalog keeps fp32
        # and the searcher re-scores candidates exactly (see error_bound). 8-bit copies
        # scanned in 4.0 ms, but their error depends on the data's range: a few large
        # components (CLIP has such dimensions) make it too coarse to bound usefully.
        flat = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16,
                                          faiss.METRIC_INNER_PRODUCT)
        index = faiss.IndexIDMap2(flat)
        if len(ids):
            vectors = np.ascontiguousarray(vectors, np.float32)
            index.add_with_ids(vectors, ids.astype(np.int64))
        return cls(index, dim)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @staticmethod
    def error_bound(query: np.ndarray) -> float:
        """Largest difference between a score on the fp16 copies and the exact fp32 one, for
        unit vectors: fp16 rounds each component by at most 2^-11 of its size, so the score
        moves by at most 2^-11 * |q| * |x| (Cauchy-Schwarz), plus fp32 summation slack."""
        return float(np.linalg.norm(query)) * 2.0 ** -11 + 1e-5

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[Hits]:
        """The k best of each query by its score on the fp16 copies, with their ceiling
        (Hits); a single query, filtered or not, through the int8 scan where it is built
        (the fp16 copy's pages then stay out of memory: FAISS's filtered scan read them all
        back, +102 MB at 100k)."""
        queries, k = search_shape(queries, k, len(self) if allowed is None else len(allowed))
        if k <= 0:
            return [Hits.none() for _ in queries]
        scan = self.int8
        if len(queries) == 1 and scan is not None:
            within = None if allowed is None else np.sort(self._rows_of(allowed)[1])
            return [self._int8_search(scan, queries[0], k, within)]
        params = None
        if allowed is not None:
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed.astype(np.int64)))
        if len(queries) == 1 and allowed is None and len(self) >= SPLIT_MIN \
                and _scan_parts() > 1:
            found = [self._split_search(queries, k)]
        elif len(queries) == 1:
            # One query is scanned by one thread anyway; a second OpenMP thread only adds a
            # barrier that cost ~1.5 ms a query (and far more on a busy machine).
            with omp_threads(1):
                found = Hits.per_query(*self.index.search(queries, k, params=params))
        else:
            found = Hits.per_query(*self.index.search(queries, k, params=params))
        for hits, query in zip(found, queries, strict=True):
            hits.ceiling = float(hits.scores[-1]) + self.error_bound(query) \
                if len(hits.ids) == k else -np.inf
        return found

    def _int8_search(self, scan: int8_scan.Int8Scan, query: np.ndarray, k: int,
                     within: np.ndarray | None = None) -> Hits:
        """The fp16 scan's answer, from the fp16 rows of the int8 scan's candidates only
        (100k CLIP-like vectors, k = 36: 300-500 rows): the same top k, scores and
        ceiling; among the sorted rows `within` when given (a filter)."""
        rows = scan.candidates(query, k, within)
        if not len(rows):
            return Hits.none()
        scores = np.einsum("ij,j->i", self._fp16_rows(rows), np.asarray(query, np.float32))
        best = np.argsort(-scores, kind="stable")[:k]
        among = len(self) if within is None else len(within)
        ceiling = float(scores[best[-1]]) + self.error_bound(query) if k < among else -np.inf
        return Hits(self._ids()[rows[best]], scores[best], ceiling)

    def use_int8_scan(self, timed: bool = False, now: bool = False) -> None:
        """Score single queries with the int8 scan (store/int8_scan.py): for long-lived
        processes, asked before each query. Built in a background thread at the second ask,
        so a one-off query never pays for it (100k: ~1 s of CPU, +~70 MB resident once the
        fp16 copy's pages are left out); the fp16 scan answers until it is ready, or for
        good where its guard fails. `timed`: keep it only if measured faster (CPUs without
        int8 dot products). `now`: build it (or wait for the build) before returning."""
        if self.int8 is not None or len(self) < SPLIT_MIN:
            return
        self._int8_asks += 1
        if now:
            self._build_int8(timed)
        elif self._int8_asks == 2:
            self.int8_note = "building"
            self.int8_build = threading.Thread(target=self._build_int8, args=(timed,),
                                               daemon=True, name="clipsearch-int8-scan")
            self.int8_build.start()

    def _build_int8(self, timed: bool) -> None:
        with _int8_builds, self._rows_lock:  # one build at a time: each holds its codes
            if self.int8 is not None or self._int8_tried == self._version:
                return  # built, or refused, meanwhile
            self._int8_tried = version = self._version
            try:
                scan, self.int8_note = int8_scan.build(
                    self._rows16(), _scan_parts(),
                    (lambda q: self._split_search(q[None], 64)) if timed else None)
            except Exception as exc:  # noqa: BLE001 - the fp16 scan answers on
                scan, self.int8_note = None, f"int8 scan failed: {exc}"
            log.info("%s", self.int8_note)
            if scan is not None and version == self._version:
                self._file = _rows_file(self._path, self._rows16()) if self._path else None
                if self._file is not None:
                    weakref.finalize(self, os.close, self._file[0])
                self.int8 = scan
                if self._file is not None:
                    self._drop_fp16_pages()

    def _fp16_rows(self, rows: np.ndarray) -> np.ndarray:
        """Some rows of the fp16 copy, as float32 [len(rows), dim]. Once the int8 scan
        answers, read from the index file (a pread a row: 100 rows in ~0.2 ms) so that
        the copy's pages stay out of this process's memory."""
        file = self._file  # once: a concurrent add or remove sets it to None
        if file is None:
            return self._rows16()[rows].astype(np.float32)
        fd, offset = file
        width = self.dim * 2
        pread = os.pread  # ~200 calls a query: a list over Python ints, no attribute lookups
        buffer = b"".join([pread(fd, width, offset + r * width) for r in rows.tolist()])
        return np.frombuffer(buffer, np.float16).reshape(len(rows), self.dim).astype(
            np.float32)

    def _rows16(self) -> np.ndarray:
        """The fp16 copies, [n, dim], without a copy."""
        inner = faiss.downcast_index(self.index.index)
        codes = faiss.rev_swig_ptr(inner.codes.data(), inner.codes.size())
        return codes.view(np.float16).reshape(len(self), self.dim)

    def _drop_fp16_pages(self) -> None:
        """The int8 scan answers and rows are read from the file: leave the fp16 copy's
        pages (100k: 102 MB) out of this process's memory, where they are a read-only
        mapping of the index file, so that a page read again (a filtered or batched search
        still scans them) comes back from the file. Anywhere else (a FAISS that read the
        codes into memory) dropping them would turn them into zeros: they stay."""
        inner = faiss.downcast_index(self.index.index)
        start = int(inner.codes.data())
        page = mmap.PAGESIZE
        first = -(-start // page) * page  # whole pages inside the copy only
        end = (start + int(inner.codes.size())) // page * page
        if self._file is None or not file_mapped(first, end, self._file[0]):
            self.int8_note += "; the fp16 copy is not a mapping of the file: it stays"
            return
        if end > first:
            with contextlib.suppress(AttributeError, OSError):  # no madvise: pages stay
                ctypes.CDLL(None, use_errno=True).madvise(
                    ctypes.c_void_p(first), ctypes.c_size_t(end - first), MADV_DONTNEED)

    def _ids(self) -> np.ndarray:
        if self._id_map is None:
            self._id_map = faiss.vector_to_array(self.index.id_map)
        return self._id_map

    def _split_search(self, query: np.ndarray, k: int) -> Hits:
        """One query over a big index, its rows split in ranges scanned by parallel threads
        (FAISS scans a single query on one thread): 100k vectors 5.1 -> 3.4 ms on 2 cores,
        same results. Each range's top k holds every global top-k member of that range."""
        inner = faiss.downcast_index(self.index.index)
        id_map = self._ids()
        bounds = np.linspace(0, len(self), _scan_parts() + 1).astype(np.int64)

        def scan(lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
            faiss.omp_set_num_threads(1)  # this pool thread's own OpenMP setting
            sel = faiss.IDSelectorRange(int(lo), int(hi))
            scores, rows = inner.search(query, k, params=faiss.SearchParameters(sel=sel))
            return scores[0], rows[0]

        parts = list(_scan_pool().map(scan, bounds[:-1], bounds[1:]))
        scores = np.concatenate([p[0] for p in parts])
        rows = np.concatenate([p[1] for p in parts])
        keep = rows >= 0
        scores, rows = scores[keep], rows[keep]
        best = np.argsort(-scores, kind="stable")[:k]
        return Hits(id_map[rows[best]], scores[best])

    def approx_scores(self, ids: np.ndarray, query: np.ndarray) -> tuple[np.ndarray,
                                                                         np.ndarray]:
        """(the ids of `ids` this index holds, their scores on the fp16 copies), reading
        only their rows: a selective filter's few files without scanning the rest (FAISS
        with an id selector still visits every row). Scores are within error_bound."""
        ids, rows = self._rows_of(ids)
        # einsum, not BLAS: OpenBLAS's threaded matrix-vector product took 20 ms here on a
        # busy 2-core machine, einsum 0.1 ms.
        return ids, np.einsum("ij,j->i", self._fp16_rows(rows), np.asarray(query, np.float32))

    def _rows_of(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the ids of `ids` this index holds, their rows), through the ids sorted once."""
        ids = np.asarray(ids, np.int64)
        if len(self) == 0 or not len(ids):
            return np.empty(0, np.int64), np.empty(0, np.int64)
        if self._sorted_ids is None:
            id_map = self._ids()
            order = np.argsort(id_map, kind="stable")
            self._sorted_ids = (id_map[order], order)
        sorted_ids, order = self._sorted_ids
        at = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
        found = sorted_ids[at] == ids
        return ids[found], order[at[found]]

    def sample(self, n: int) -> np.ndarray:
        """Up to `n` stored vectors (the fp16 copies, decoded), evenly spread over the rows:
        enough to measure a score distribution without reading every vector."""
        total = len(self)
        if total == 0:
            return np.empty((0, self.dim), np.float32)
        rows = np.unique(np.linspace(0, total - 1, min(n, total)).astype(np.int64))
        # Through _fp16_rows: once the int8 scan answers they are read from the file. A
        # strided pass over the mapping would fault nearly all of it back in (the kernel maps
        # up to 16 neighbouring pages a fault): +98 MB for good in the first long-lived
        # process after an index run, whose first graded query measures the bars.
        return self._fp16_rows(rows)

    def save(self, path: Path, meta: dict) -> None:
        """Write atomically; raises OSError (disk full, read-only) leaving no temp behind."""
        save_atomic(self.index, path, meta)

    exact = True  # scores within error_bound of exact: the searcher proves its top k
    kind = "idmap2-sq-fp16-ip"
    params: dict = {}

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        with self._rows_lock:
            if len(ids):
                self.index.add_with_ids(np.ascontiguousarray(vectors, np.float32),
                                        np.asarray(ids, np.int64))
            self._changed()

    def remove(self, ids: np.ndarray) -> None:
        with self._rows_lock:
            if len(ids):
                self.index.remove_ids(faiss.IDSelectorBatch(np.asarray(ids, np.int64)))
            self._changed()

    def _changed(self) -> None:
        self._id_map = self._sorted_ids = self.int8 = self._file = None
        self._version += 1
        self._int8_asks = 0

    @classmethod
    def load(cls, path: Path, dim: int) -> VectorIndex:
        index = cls(faiss.read_index(str(path), MMAP_FLAGS), dim)
        index._path = path
        return index


def _rows_file(path: Path, rows16: np.ndarray) -> tuple[int, int] | None:
    """(an open descriptor of the index file, the offset of its fp16 rows), found by
    looking for the first rows' bytes near the start (FAISS's headers before them are a
    few hundred bytes) and checked on the last row; None if not found."""
    if not len(rows16):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    head = os.pread(fd, 1 << 16, 0)
    offset = head.find(rows16[:2].tobytes())
    last = offset + (len(rows16) - 1) * rows16.shape[1] * 2
    if offset < 0 or os.pread(fd, rows16.shape[1] * 2, last) != rows16[-1].tobytes():
        os.close(fd)
        return None
    return fd, offset


def index_path(folder: Path, model_id: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("_")
    return folder / f"{slug}.faiss"


INDEX_KIND = VectorIndex.kind  # cached files of another kind are rebuilt


def save_atomic(index: faiss.Index, path: Path, meta: dict) -> None:
    """Write a FAISS file and its sidecar atomically; raises OSError (disk full, read-only)
    leaving no temp behind."""
    tmp = _temp_file(path)
    tmp_meta = None
    try:
        try:
            faiss.write_index(index, str(tmp))
        except RuntimeError as exc:  # FAISS reports a failed fwrite (ENOSPC) this way
            raise OSError(f"cannot write {tmp}: {exc}") from exc
        _fsync(tmp)
        st = tmp.stat()
        meta = {**meta, "faiss_ino": st.st_ino, "faiss_size": st.st_size}
        tmp_meta = _temp_file(path.with_suffix(".json"))
        tmp_meta.write_text(json.dumps(meta))
        _fsync(tmp_meta)
        os.replace(tmp, path)
        os.replace(tmp_meta, path.with_suffix(".json"))
    finally:
        for leftover in (tmp, tmp_meta):
            if leftover is not None:
                leftover.unlink(missing_ok=True)


def sweep_temp_files(folder: Path) -> int:
    """Remove temp files of writers that no longer run (killed mid-save)."""
    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        match = re.fullmatch(r"\..+\.pid(\d+)\..+\.tmp", name)
        if match and not _alive(int(match.group(1))):
            try:
                os.unlink(folder / name)
                removed += 1
            except OSError:
                pass
    return removed


SPLIT_MIN = 20_000  # below this a single scan is too short for threads (or int8) to pay off
MADV_DONTNEED = 4  # Linux
# The flat codes mapped from the file (FAISS >= 1.10), not read into memory: their pages can
# leave the process and come back from the file. IO_FLAG_MMAP alone maps only on-disk
# inverted lists: FAISS 1.15 read an exact index's codes into anonymous memory with it.
MMAP_FLAGS = getattr(faiss, "IO_FLAG_MMAP_IFC", 0) | faiss.IO_FLAG_READ_ONLY


def file_mapped(start: int, end: int, fd: int) -> bool:
    """Whether every byte of [start, end) lies in read-only mappings of the file open as
    `fd` (/proc/self/maps; False where it cannot be read): only there do pages dropped with
    MADV_DONTNEED come back as the file's bytes, and not as zeros."""
    if end <= start:
        return True
    covered = start  # mappings are listed by address: each must go on where the last ended
    try:
        stat = os.fstat(fd)
        device = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}"
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split()
                low, high = (int(x, 16) for x in fields[0].split("-"))
                if high <= covered:
                    continue
                if low > covered or len(fields) < 6 or fields[1][1] != "-" \
                        or fields[3] != device or int(fields[4]) != stat.st_ino:
                    return False  # a gap, a writable page, memory of no file or another's
                covered = high
                if covered >= end:
                    return True
    except (OSError, ValueError, IndexError):
        pass
    return False


_int8_builds = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _scan_parts() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def _scan_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(_scan_parts(), thread_name_prefix="clipsearch-scan")
    return _pool


@contextmanager
def omp_threads(count: int) -> Iterator[None]:
    old = faiss.omp_get_max_threads()
    if old == count:
        yield
        return
    faiss.omp_set_num_threads(count)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(old)


def _temp_file(final: Path) -> Path:
    fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.pid{os.getpid()}.",
                                suffix=".tmp")
    os.close(fd)
    return Path(name)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
