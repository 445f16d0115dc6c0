"""An index run: crawl -> plan -> load (thread pool) -> encode + write (batches) -> sweep.

Every batch is one SQLite transaction, so a run killed at any instant leaves the catalog at
its last commit and the next run picks up from there. Ctrl-C (or SIGTERM) asks the run to
stop: it finishes the encoder call in progress, commits what is encoded, and returns a
report with `interrupted` set; a second Ctrl-C stops at once (still losing nothing
committed).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from clip_core.encoders import ImageEncoder
from clip_core.pixels.decode import IMAGE_EXTENSIONS
from clip_core.pixels.preprocess import PreprocessSpec
from store import Catalog, FileRecord, FileRow
from store.catalog import VectorLookup

from . import local_run, ray_executor
from .crawl import Candidate, CrawlSkip, crawl
from .job import IndexReport, IndexSettings, Job, Progress, Skipped
from .plan import Plan, merge_plan

# Failures that may clear up without the file changing (permissions fixed, HEIF support
# installed): retried every run instead of being remembered as known errors.
RETRY_REASONS = frozenset({"unreadable", "heif-extra-missing", "internal-error"})


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
        _run(Job(catalog, model_id, get_encoder, settings, progress, report, preprocess_hint,
                 worker_encoder), root_ids)
    except KeyboardInterrupt:
        report.interrupted = True  # a second Ctrl-C, or one outside the batch loop
    report.seconds = time.monotonic() - started
    return report


def _run(job: Job, root_ids: list[int]) -> None:
    known = job.catalog.vector_lookup(job.model_id)
    try:
        _run_roots(job, root_ids, known)
    finally:
        known.close()


def _run_roots(job: Job, root_ids: list[int], known: VectorLookup) -> None:
    catalog, model_id, report = job.catalog, job.model_id, job.report
    roots = catalog.roots()
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
        plan = merge_plan(candidates, catalog.plan_rows(root_id, model_id), skips,
                          retry=RETRY_REASONS)
        retried.update(plan.retried)
        report.unchanged += plan.unchanged
        report.known_errors += plan.known_errors
        _record_crawl_errors(catalog, plan.errors, root_id, report)
        plans.append(plan)
    todo = [cand for plan in plans for cand in plan.todo]
    gone = [file_id for plan in plans for file_id in plan.gone]
    report.todo = len(todo)
    if todo:
        # The same stages, in this process or scheduled by Ray (the optional extra).
        executor = ray_executor if job.settings.ray is not None else local_run
        vanished = executor.load_encode_write(job, todo, known, retried)
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
