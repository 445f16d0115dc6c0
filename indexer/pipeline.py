"""An index run: crawl -> plan -> load (thread pool) -> encode + write (batches) -> sweep.

Every batch is one SQLite transaction, so a run killed at any instant leaves the catalog at
its last commit and the next run picks up from there. Ctrl-C (or SIGTERM) asks the run to
stop: it finishes the encoder call in progress, commits what is encoded, and returns a
report with `interrupted` set; a second Ctrl-C stops at once (still losing nothing
committed).
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from clip_core.encoders import ImageEncoder
from clip_core.pixels.decode import IMAGE_EXTENSIONS
from clip_core.pixels.preprocess import PreprocessSpec, same_preprocess
from store import Catalog, FileRecord, FileRow

from .crawl import Candidate, CrawlSkip, crawl
from .interrupt import StopRequest
from .plan import Plan, plan_root
from .stages import BatchWriter, Loaded, load_one

# Failures that may clear up without the file changing (permissions fixed, HEIF support
# installed): retried every run instead of being remembered as known errors.
RETRY_REASONS = frozenset({"unreadable", "heif-extra-missing", "internal-error"})


@dataclass
class Skipped:
    path: str
    reason: str
    message: str


@dataclass
class IndexReport:
    model_id: str
    indexed: int = 0  # newly embedded (committed)
    reused: int = 0  # moved/renamed/duplicate files whose stored vector was reused
    unchanged: int = 0
    removed: int = 0
    skipped: list[Skipped] = field(default_factory=list)  # failed in this run
    known_errors: int = 0  # failed before and unchanged since
    interrupted: bool = False
    seconds: float = 0.0
    todo: int = 0  # files this run had to read
    committed: int = 0  # file rows committed by this run (indexed + reused + failed)
    # Roots with no file in the library after the run, and what they hold (indexer.survey).
    empty_roots: list[dict] = field(default_factory=list)

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
    workers: int | None = None  # encoder workers of a Ray cluster run (None: this process)
    errors: int = 0  # files that failed so far in this run (committed as error rows)


@dataclass
class IndexSettings:
    batch_size: int = 32
    workers: int = max(1, min(4, os.cpu_count() or 1))
    prefetch: int = 192  # files decoded ahead of the encoder (and while the model loads)
    draft: bool = True  # reduced-size JPEG decoding (clip_core.pixels.decode)
    include_hidden: bool = False  # dot-files and -folders, @eaDir (indexer.crawl)
    follow_links: bool = False  # symlinks leading out of the root (indexer.crawl)
    cancel: object | None = None  # a threading.Event: set() it to stop like Ctrl-C
    # A Ray cluster to load and encode on (indexer.ray_executor): "auto", "ray://host:10001"
    # or "local"; None runs in this process. Needs the `cluster` extra.
    ray: str | None = None

    def check(self) -> None:
        for name in ("batch_size", "workers", "prefetch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"IndexSettings.{name} must be a whole number >= 1, "
                                 f"not {value!r}")
        if self.ray is not None and (not isinstance(self.ray, str) or not self.ray.strip()):
            raise ValueError(f"IndexSettings.ray must be a Ray address (auto, "
                             f"ray://host:10001, local), not {self.ray!r}")


@dataclass
class _Job:
    """What one index run works with, passed between its steps."""

    catalog: Catalog
    model_id: str
    get_encoder: Callable[[], ImageEncoder]
    settings: IndexSettings
    progress: Callable[[Progress], None] | None
    report: IndexReport
    preprocess_hint: PreprocessSpec | None
    # Builds the image encoder on a Ray worker (picklable; settings.ray runs only).
    worker_encoder: Callable[[], ImageEncoder] | None = None


def run_index(
    catalog: Catalog,
    root_ids: list[int],
    model_id: str,
    get_encoder: Callable[[], ImageEncoder],
    settings: IndexSettings | None = None,
    progress: Callable[[Progress], None] | None = None,
    preprocess_hint: PreprocessSpec | None = None,
    worker_encoder: Callable[[], ImageEncoder] | None = None,
) -> IndexReport:
    """Index `root_ids`. `preprocess_hint` (the model's preprocessing, read from its config)
    lets decoding start while `get_encoder` is still loading the model. `worker_encoder`
    (picklable) makes the same encoder on each Ray worker when `settings.ray` is set."""
    settings = settings or IndexSettings()
    settings.check()
    started = time.monotonic()
    report = IndexReport(model_id)
    try:
        _run(_Job(catalog, model_id, get_encoder, settings, progress, report, preprocess_hint,
                  worker_encoder), root_ids)
    except KeyboardInterrupt:
        report.interrupted = True  # a second Ctrl-C, or one outside the batch loop
    report.seconds = time.monotonic() - started
    return report


def _run(job: _Job, root_ids: list[int]) -> None:
    catalog, model_id, report = job.catalog, job.model_id, job.report
    roots = catalog.roots()
    known = catalog.hashes_with_vectors(model_id)
    plans: list[Plan] = []
    retried: dict[str, FileRow] = {}
    for root_id in root_ids:
        if "://" in roots[root_id]:
            continue  # an object-store root (s3://...) is filled by import-shards only
        others = frozenset(p for i, p in roots.items() if i != root_id)
        candidates: list[Candidate] = []
        skips: list[CrawlSkip] = []
        for item in crawl(roots[root_id], root_id, IMAGE_EXTENSIONS, skip_dirs=others,
                          include_hidden=job.settings.include_hidden,
                          follow_links=job.settings.follow_links):
            (skips if isinstance(item, CrawlSkip) else candidates).append(item)
        rows = catalog.files_in_root(root_id)
        retried.update((p, r) for p, r in rows.items()
                       if r.status == "error" and r.error_reason in RETRY_REASONS)
        plan = plan_root(candidates, rows, known, skips, retry=RETRY_REASONS)
        report.unchanged += plan.unchanged
        report.known_errors += plan.known_errors
        _record_crawl_errors(catalog, plan.errors, root_id, report)
        plans.append(plan)
    todo = [cand for plan in plans for cand in plan.todo]
    gone = [file_id for plan in plans for file_id in plan.gone]
    report.todo = len(todo)
    if todo:
        load_encode_write = _load_encode_write
        if job.settings.ray is not None:  # the same stages, scheduled by Ray (optional extra)
            from .ray_executor import load_encode_write
        vanished = load_encode_write(job, todo, known, retried)
        if report.interrupted:
            return  # the sweep waits for a complete run
        gone += [i for i in (catalog.file_id(p) for p in vanished) if i is not None]
    # Sweep last: a moved file's new row already references its vector, so the old
    # row's deletion cannot garbage-collect it.
    report.removed += catalog.delete_files(gone)
    catalog.collect_garbage()  # vectors of files whose content changed


def _record_crawl_errors(catalog: Catalog, skips: list[CrawlSkip], root_id: int,
                         report: IndexReport) -> None:
    if not skips:
        return
    records = [FileRecord(s.path, root_id, s.size, s.mtime_ns, None, "error",
                          error_reason=s.reason, error_message=s.message) for s in skips]
    catalog.write_batch(records, {}, "")
    report.skipped += [Skipped(s.path, s.reason, s.message) for s in skips]


def _load_encode_write(
    job: _Job, todo: list[Candidate], known: set[str], retried: dict[str, FileRow]
) -> list[str]:
    """Returns the paths that vanished before they could be read.

    The model loads in a background thread while the pool already decodes with the
    preprocessing read from the model's config (`preprocess_hint`): startup (importing torch,
    building the model) overlaps the first images' decoding instead of preceding it."""
    catalog, model_id, settings, report = job.catalog, job.model_id, job.settings, job.report
    get_encoder, progress, preprocess_hint = job.get_encoder, job.progress, job.preprocess_hint
    model_loader = ThreadPoolExecutor(1, thread_name_prefix="clipsearch-model")
    encoder_future = model_loader.submit(get_encoder)
    model_loader.shutdown(wait=False)
    encoder: ImageEncoder | None = None
    spec = preprocess_hint
    vanished: list[str] = []
    with StopRequest(settings.cancel) as stop:

        def wait_for_encoder() -> ImageEncoder:
            while True:  # poll, so Ctrl-C is honoured while the model loads
                try:
                    enc = encoder_future.result(timeout=0.1)
                except FutureTimeout:
                    if stop.requested:
                        raise KeyboardInterrupt from None
                    continue
                if enc.model_id != model_id:
                    raise ValueError(f"encoder makes {enc.model_id}, run expects {model_id}")
                return enc

        if spec is None:
            encoder = wait_for_encoder()
            spec = encoder.preprocess
        writer = BatchWriter(catalog, lambda px: encoder.encode_pixels(px), model_id,
                             settings.batch_size, should_stop=lambda: stop.requested)

        def has_vector(digest: str) -> bool:
            return digest in known or digest in writer.committed_hashes

        def tally(committed: list[tuple[FileRecord, bool]]) -> None:
            _tally(report, committed)

        done = 0
        pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="clipsearch-load")
        inflight: deque[tuple[Candidate, Future[Loaded]]] = deque()
        pending = iter(todo)

        def submit(cand: Candidate) -> tuple[Candidate, Future[Loaded]]:
            return cand, pool.submit(load_one, cand, spec, has_vector, _min_side(spec, settings))

        try:
            while not stop.requested:
                while len(inflight) < settings.prefetch:
                    cand = next(pending, None)
                    if cand is None:
                        break
                    inflight.append(submit(cand))
                if not inflight:
                    break
                loaded = _result(inflight[0][1], stop)
                if loaded is None:
                    break  # stop requested while a file was still loading
                if encoder is None:
                    encoder = wait_for_encoder()
                    writer.chunk = encoder.micro_batch
                    if not same_preprocess(encoder.preprocess, spec):
                        spec = encoder.preprocess  # the hint was wrong: redo with the truth
                        for _, future in inflight:
                            future.cancel()
                        inflight = deque(submit(cand) for cand, _ in inflight)
                        continue
                inflight.popleft()
                done += 1
                if loaded.record is None:
                    vanished.append(loaded.cand.path)
                elif _same_error(loaded.record, retried.get(loaded.cand.path)):
                    report.known_errors += 1  # retried, failed the same way: no rewrite
                else:
                    tally(writer.add(loaded))
                if progress:
                    progress(Progress(done, len(todo), loaded.cand.path,
                                      errors=len(report.skipped)))
            tally(writer.flush())  # after a stop request: only what is already encoded
        finally:
            # Drop queued work at once (Ctrl-C, error, or done); committed batches stay.
            for _, future in inflight:
                future.cancel()
            # After a stop, a read that does not progress (a hung network disk) must not
            # hold the run: its thread is left behind and its result ignored.
            pool.shutdown(wait=not (stop.requested or inflight), cancel_futures=True)
        report.interrupted = stop.requested
    return vanished


def _tally(report: IndexReport, committed: list[tuple[FileRecord, bool]]) -> None:
    """Count what a BatchWriter call committed into the report."""
    for record, embedded in committed:
        report.committed += 1
        if record.status == "error":
            report.skipped.append(Skipped(record.path, str(record.error_reason),
                                          str(record.error_message)))
        elif embedded:
            report.indexed += 1
        else:
            report.reused += 1


def _result(future: Future[Loaded], stop: StopRequest) -> Loaded | None:
    """The future's result, or None once a stop is requested: polled, since a signal handler
    that only sets a flag would not end a wait on a load that never finishes."""
    while True:
        try:
            return future.result(timeout=0.1)
        except FutureTimeout:
            if stop.requested:
                return None


def _min_side(spec: PreprocessSpec, settings: IndexSettings) -> int | None:
    """Decode JPEGs only as large as the model's input needs (DCT scaling)."""
    return spec.min_side if settings.draft else None


def _same_error(record: FileRecord, row: FileRow | None) -> bool:
    return (row is not None and record.status == "error"
            and record.error_reason == row.error_reason
            and (record.size, record.mtime_ns) == (row.size, row.mtime_ns))
