"""An index run: crawl -> plan -> load (thread pool) -> encode + write (batches) -> sweep."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from clip_core.images import IMAGE_EXTENSIONS
from clip_core.preprocess import PreprocessSpec
from store import Catalog

from .crawl import Candidate, CrawlSkip, crawl
from .plan import Plan, plan_root
from .stages import BatchWriter, Loaded, load_one


@dataclass
class Skipped:
    path: str
    reason: str
    message: str


@dataclass
class IndexReport:
    model_id: str
    indexed: int = 0  # newly embedded
    reused: int = 0  # moved/renamed/duplicate files whose stored vector was reused
    unchanged: int = 0
    removed: int = 0
    skipped: list[Skipped] = field(default_factory=list)  # failed in this run
    known_errors: int = 0  # failed before and unchanged since
    interrupted: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict:
        data = {k: v for k, v in self.__dict__.items() if k != "skipped"}
        data["skipped"] = [s.__dict__ for s in self.skipped]
        return data


@dataclass
class Progress:
    """What a progress callback receives: `done` of `total` files needing work."""

    done: int
    total: int
    path: str | None = None


@dataclass
class IndexSettings:
    batch_size: int = 32
    workers: int = max(1, min(4, os.cpu_count() or 1))
    prefetch: int = 64  # files decoded ahead of the encoder
    draft: bool = True  # reduced-size JPEG decoding (clip_core.images)


class Encoder(Protocol):
    """What the pipeline needs from clip_core.ClipEncoder; loaded only when there is work."""

    @property
    def model_id(self) -> str: ...

    @property
    def preprocess(self) -> PreprocessSpec: ...

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray: ...


def run_index(
    catalog: Catalog,
    root_ids: list[int],
    model_id: str,
    get_encoder: Callable[[], Encoder],
    settings: IndexSettings | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> IndexReport:
    settings = settings or IndexSettings()
    started = time.monotonic()
    report = IndexReport(model_id)
    roots = catalog.roots()
    known = catalog.hashes_with_vectors(model_id)
    plans: list[Plan] = []
    for root_id in root_ids:
        others = frozenset(p for i, p in roots.items() if i != root_id)
        candidates: list[Candidate] = []
        for item in crawl(roots[root_id], root_id, IMAGE_EXTENSIONS, skip_dirs=others):
            if isinstance(item, CrawlSkip):
                report.skipped.append(Skipped(item.path, item.reason, item.message))
            else:
                candidates.append(item)
        plan = plan_root(candidates, catalog.files_in_root(root_id), known)
        report.unchanged += plan.unchanged
        report.known_errors += plan.known_errors
        plans.append(plan)
    todo = [cand for plan in plans for cand in plan.todo]
    gone = [file_id for plan in plans for file_id in plan.gone]
    try:
        if todo:
            _load_encode_write(catalog, todo, known, model_id, get_encoder, settings, progress,
                               report)
        # Sweep last: a moved file's new row already references its vector, so the old
        # row's deletion cannot garbage-collect it.
        report.removed += catalog.delete_files(gone)
    except KeyboardInterrupt:
        report.interrupted = True
    report.seconds = time.monotonic() - started
    return report


def _load_encode_write(
    catalog: Catalog,
    todo: list[Candidate],
    known: set[str],
    model_id: str,
    get_encoder: Callable[[], Encoder],
    settings: IndexSettings,
    progress: Callable[[Progress], None] | None,
    report: IndexReport,
) -> None:
    encoder = get_encoder()
    if encoder.model_id != model_id:
        raise ValueError(f"encoder makes {encoder.model_id}, run expects {model_id}")
    spec = encoder.preprocess
    size = spec.size if isinstance(spec.size, int) else min(spec.size)
    min_side = size if settings.draft else None
    writer = BatchWriter(catalog, encoder.encode_pixels, model_id, settings.batch_size)

    def has_vector(digest: str) -> bool:
        return digest in known or digest in writer.committed_hashes

    vanished: list[str] = []
    done = 0
    pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="clipsearch-load")
    inflight: deque[Future[Loaded]] = deque()
    pending = iter(todo)
    try:
        while True:
            while len(inflight) < settings.prefetch:
                cand = next(pending, None)
                if cand is None:
                    break
                inflight.append(pool.submit(load_one, cand, spec, has_vector, min_side))
            if not inflight:
                break
            loaded = inflight.popleft().result()
            record = loaded.record
            if record is None:
                vanished.append(loaded.cand.path)
            elif record.status == "error":
                report.skipped.append(
                    Skipped(record.path, str(record.error_reason), str(record.error_message)))
            elif loaded.pixels is None:
                report.reused += 1
            else:
                report.indexed += 1
            done += 1
            writer.add(loaded)
            if progress:
                progress(Progress(done, len(todo), loaded.cand.path))
        writer.flush()
    except BaseException:
        # Ctrl-C or a fatal error: drop queued work at once; committed batches stay.
        for future in inflight:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        committed = done - len(writer.records)
        report.indexed = min(report.indexed, committed)
        raise
    pool.shutdown(wait=True)
    ids = [i for i in (catalog.file_id(p) for p in vanished) if i is not None]
    report.removed += catalog.delete_files(ids)
