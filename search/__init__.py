"""Search: text or image queries embedded by clip_core, answered from the store."""

from .results import LabelScore, SearchResult
from .searcher import Searcher
from .text_embedder import TextEmbedder

__all__ = ["LabelScore", "SearchResult", "Searcher", "TextEmbedder"]
