"""Search: text or image queries embedded by clip_core, answered from the store."""

from .results import LabelScore, SearchResult
from .searcher import Searcher

__all__ = ["LabelScore", "SearchResult", "Searcher"]
