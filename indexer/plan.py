"""Stage 2: compare the crawl with the catalog and decide what work a run has to do.

Only stat data is used here, so a run over an unchanged tree does no file reads at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from store import FileRow

from .crawl import Candidate


@dataclass
class Plan:
    todo: list[Candidate] = field(default_factory=list)  # new, changed, or lacking this model
    unchanged: int = 0
    known_errors: int = 0  # unchanged files that failed before: not retried until they change
    gone: list[int] = field(default_factory=list)  # catalog ids whose files disappeared


def plan_root(
    candidates: list[Candidate], rows: dict[str, FileRow], hashes_with_vectors: set[str]
) -> Plan:
    plan = Plan()
    seen: set[str] = set()
    for cand in candidates:
        seen.add(cand.path)
        row = rows.get(cand.path)
        same_stat = row is not None and row.size == cand.size and row.mtime_ns == cand.mtime_ns
        if same_stat and row.status == "error":
            plan.known_errors += 1
        elif same_stat and row.content_hash in hashes_with_vectors:
            plan.unchanged += 1
        else:
            plan.todo.append(cand)
    plan.gone = [row.id for path, row in rows.items() if path not in seen]
    return plan
