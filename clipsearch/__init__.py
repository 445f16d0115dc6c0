"""clipsearch: local, offline-first text-to-image search over photo folders.

Every exception a `Library` method documents can be caught by a name from here:

    from clipsearch import Library, ModelNotIndexedError
"""

from clip_core.models.files import MissingModelError, ModelLoadError
from clip_core.pixels.decode import DecodeError
from indexer import IndexReport, IndexSettings, Progress
from indexer.ray_executor import MissingExtraError
from search import (
    DuplicateGroup,
    Filters,
    LabelScore,
    Query,
    QueryResults,
    QuerySyntaxError,
    SearchResult,
)
from store import CatalogDamagedError, CatalogError, LibraryBusyError, StorageError

from .api import (
    Library,
    LibrarySettings,
    LibraryStatus,
    ModelNotIndexedError,
    check_model,
    classify,
    default_library_dir,
    embed_shards,
)
from .watch import watch, watch_roots

__all__ = [
    "CatalogDamagedError", "CatalogError", "DecodeError", "DuplicateGroup", "Filters",
    "IndexReport", "IndexSettings", "LabelScore", "Library", "LibraryBusyError",
    "LibrarySettings", "LibraryStatus", "MissingExtraError", "MissingModelError", "ModelLoadError",
    "ModelNotIndexedError", "Progress", "Query", "QueryResults", "QuerySyntaxError",
    "SearchResult", "StorageError", "check_model", "classify", "default_library_dir",
    "embed_shards", "watch", "watch_roots",
]
__version__ = "0.1.0"
