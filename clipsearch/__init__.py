"""clipsearch: local, offline-first text-to-image search over photo folders.

Every exception a `Library` method documents can be caught by a name from here:

    from clipsearch import Library, ModelNotIndexedError
"""

from clip_core.images import DecodeError
from clip_core.model_files import MissingModelError, ModelLoadError
from indexer import IndexReport, IndexSettings, Progress
from search import LabelScore, SearchResult
from store import CatalogDamagedError, CatalogError, LibraryBusyError, StorageError

from .api import (
    Library,
    LibraryStatus,
    ModelNotIndexedError,
    check_model,
    classify,
    default_library_dir,
)
from .watch import watch, watch_roots

__all__ = [
    "CatalogDamagedError", "CatalogError", "DecodeError", "IndexReport", "IndexSettings",
    "LabelScore", "Library",
    "LibraryBusyError", "LibraryStatus", "MissingModelError", "ModelLoadError",
    "ModelNotIndexedError", "Progress", "SearchResult", "StorageError", "check_model",
    "classify", "default_library_dir", "watch", "watch_roots",
]
__version__ = "0.1.0"
