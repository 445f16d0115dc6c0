"""Stage 2: compare the crawl with the catalog and decide what work a run has to do.

Only stat data is used here, so a run over an unchanged tree does no file reads at all. The
catalog's rows arrive as a stream in path byte order (Catalog.plan_rows) and are merged with
the sorted crawl: a 1M-file root is planned without holding a Python object per row.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from store import FileRow
from store.catalog import PlanRow

from .crawl import Candidate, CrawlSkip


@dataclass
class Plan:
    todo: list[Candidate] = field(default_factory=list)  # new, changed, or lacking this model
    unchanged: int = 0
    known_errors: int = 0  # unchanged files that failed before: not retried until they change
    gone: list[int] = field(default_factory=list)  # catalog ids whose files disappeared
    errors: list[CrawlSkip] = field(default_factory=list)  # new or changed crawl failures
    retried: dict[str, FileRow] = field(default_factory=dict)  # todo rows failed for `retry`


def merge_plan(
    candidates: list[Candidate],
    rows: Iterable[PlanRow],
    skips: Sequence[CrawlSkip] = (),
    retry: frozenset[str] = frozenset(),
) -> Plan:
    """`rows`: the root's catalog rows in path byte order (SQLite's order of the stored
    bytes); `skips`: what the crawl could not use; `retry`: error reasons worth another try
    even when the file's stat is unchanged (a permission fix changes no mtime)."""
    plan = Plan()
    # Rows under a folder that could not be listed are kept: unreadable is not deleted.
    unlisted = tuple(os.fsencode(s.path.rstrip(os.sep) + os.sep) for s in skips if s.folder)
    # Sorted copies of the lists (references only); keys are made again while merging
    # rather than held beside a million entries.
    entries = heapq.merge(sorted(skips, key=_key), sorted(candidates, key=_key), key=_key)
    stream: Iterator[PlanRow] = iter(rows)
    row = next(stream, None)
    match: PlanRow | None = None
    for entry in entries:
        key = _key(entry)
        if match is None or match.path != key:  # the same path twice: the same row
            while row is not None and row.path < key:
                if not (unlisted and row.path.startswith(unlisted)):
                    plan.gone.append(row.id)
                row = next(stream, None)
            match = row if row is not None and row.path == key else None
            if match is not None:
                row = next(stream, None)
        if isinstance(entry, CrawlSkip):
            _plan_skip(plan, entry, match)
        else:
            _plan_candidate(plan, entry, match, retry)
    while row is not None:
        if not (unlisted and row.path.startswith(unlisted)):
            plan.gone.append(row.id)
        row = next(stream, None)
    return plan


def _key(entry: Candidate | CrawlSkip) -> bytes:
    return os.fsencode(entry.path)  # the stored bytes: SQLite's order, not str's


def _plan_skip(plan: Plan, skip: CrawlSkip, row: PlanRow | None) -> None:
    if (row is not None and row.status == "error" and row.error_reason == skip.reason
            and row.size == skip.size and row.mtime_ns == skip.mtime_ns):
        plan.known_errors += 1
    else:
        plan.errors.append(skip)


def _plan_candidate(plan: Plan, cand: Candidate, row: PlanRow | None,
                    retry: frozenset[str]) -> None:
    same_stat = row is not None and row.size == cand.size and row.mtime_ns == cand.mtime_ns
    if same_stat and row.status == "error" and row.error_reason not in retry:
        plan.known_errors += 1
    # row.done: its content has a vector of the model and, if indexed before photo metadata
    # was stored, it was refreshed since (else redoing it reads only the header).
    elif same_stat and row.done:
        plan.unchanged += 1
    else:
        plan.todo.append(cand)
        if row is not None and row.status == "error" and row.error_reason in retry:
            plan.retried[cand.path] = FileRow(row.id, cand.path, cand.root_id, row.size,
                                              row.mtime_ns, row.content_hash, row.status,
                                              row.error_reason)
