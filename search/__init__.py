"""Search: text or image queries embedded by clip_core, answered from the store."""

from .duplicates import DuplicateGroup, DuplicateMember
from .filters import Filters
from .grading import Calibration, QueryResults
from .query import Query, QuerySyntaxError
from .results import LabelScore, SearchResult
from .searcher import Searcher
from .text_embedder import TextEmbedder

__all__ = ["Calibration", "DuplicateGroup", "DuplicateMember", "Filters", "LabelScore", "Query",
           "QueryResults", "QuerySyntaxError", "SearchResult", "Searcher", "TextEmbedder"]
