"""Stage 2: compare the crawl with the catalog and decide what work a run has to do.

Only stat data is used here, so a run over an unchanged tree does no file reads at all.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from store import FileRow

from .crawl import Candidate, CrawlSkip


@dataclass
class Plan:
    todo: list[Candidate] = field(default_factory=list)  # new, changed, or lacking this model
    unchanged: int = 0
    known_errors: int = 0  # unchanged files that failed before: not retried until they change
    gone: list[int] = field(default_factory=list)  # catalog ids whose files disappeared
    errors: list[CrawlSkip] = field(default_factory=list)  # new or changed crawl failures


def plan_root(
    candidates: list[Candidate],
    rows: dict[str, FileRow],
    hashes_with_vectors: set[str],
    skips: Sequence[CrawlSkip] = (),
    retry: frozenset[str] = frozenset(),
) -> Plan:
    """`skips`: what the crawl could not use; `retry`: error reasons worth another try even
    when the file's stat is unchanged (a permission fix changes no mtime)."""
    plan = Plan()
    seen: set[str] = set()
    for skip in skips:
        seen.add(skip.path)
        row = rows.get(skip.path)
        if (row is not None and row.status == "error" and row.error_reason == skip.reason
                and row.size == skip.size and row.mtime_ns == skip.mtime_ns):
            plan.known_errors += 1
        else:
            plan.errors.append(skip)
    # Rows under a folder that could not be listed are kept: unreadable is not deleted.
    unlisted = tuple(s.path.rstrip(os.sep) + os.sep for s in skips if s.folder)
    for cand in candidates:
        seen.add(cand.path)
        row = rows.get(cand.path)
        same_stat = row is not None and row.size == cand.size and row.mtime_ns == cand.mtime_ns
        if same_stat and row.status == "error" and row.error_reason not in retry:
            plan.known_errors += 1
        # meta_missing: indexed before photo metadata was stored; redoing it finds the
        # vector by hash and reads only the header, so it costs a read, never an embedding.
        elif same_stat and row.content_hash in hashes_with_vectors and not row.meta_missing:
            plan.unchanged += 1
        else:
            plan.todo.append(cand)
    plan.gone = [row.id for path, row in rows.items()
                 if path not in seen and not (unlisted and path.startswith(unlisted))]
    return plan
