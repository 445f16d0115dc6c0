"""Indexing: crawl -> plan -> load -> encode -> write. Uses clip_core and store."""

from .job import IndexReport, IndexSettings, Progress, Skipped
from .pipeline import run_index

__all__ = ["IndexReport", "IndexSettings", "Progress", "Skipped", "run_index"]
