"""clipsearch: local, offline-first text-to-image search over photo folders."""

from clip_core.model_files import MissingModelError
from indexer import IndexReport, IndexSettings, Progress
from search import LabelScore, SearchResult

from .api import Library, LibraryStatus, ModelNotIndexedError, classify, default_library_dir

__all__ = [
    "IndexReport", "IndexSettings", "LabelScore", "Library", "LibraryStatus",
    "MissingModelError", "ModelNotIndexedError", "Progress", "SearchResult", "classify",
    "default_library_dir",
]
__version__ = "0.1.0"
