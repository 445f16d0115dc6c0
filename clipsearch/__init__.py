"""clipsearch: local, offline-first text-to-image search over photo folders.

Every exception a `Library` method documents can be caught by a name from here, one by
one or by its category (clipsearch_errors: ClipsearchError, UsageError, ModelError,
StorageError, LibraryBusyError, BadInputError):

    from clipsearch import ClipsearchError, Library, ModelNotIndexedError
"""

from clip_core.crowd import CROWD as crowd  # count concurrent requests: clip_core/crowd.py
from clip_core.models.files import MissingModelError, ModelLoadError
from clip_core.pixels.decode import DecodeError
from clipsearch_errors import (
    BadInputError,
    ClipsearchError,
    LibraryBusyError,
    MissingExtraError,
    ModelError,
    StorageError,
    StoreError,
    UsageError,
)
from indexer import IndexReport, IndexSettings, Progress
from search import (
    DuplicateGroup,
    Filters,
    LabelScore,
    Query,
    QueryResults,
    QuerySyntaxError,
    SearchResult,
)
from store import CatalogDamagedError, CatalogError, printable

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
from .models import ModelStore
from .watch import watch, watch_roots

__all__ = [
    "BadInputError", "ClipsearchError", "ModelError", "StoreError", "UsageError",  # errors
    "ModelStore", "printable",
    "CatalogDamagedError", "CatalogError", "DecodeError", "DuplicateGroup", "Filters",
    "IndexReport", "IndexSettings", "LabelScore", "Library", "LibraryBusyError",
    "LibrarySettings", "LibraryStatus", "MissingExtraError", "MissingModelError", "ModelLoadError",
    "ModelNotIndexedError", "Progress", "Query", "QueryResults", "QuerySyntaxError",
    "SearchResult", "StorageError", "check_model", "classify", "crowd", "default_library_dir",
    "embed_shards", "watch", "watch_roots",
]
__version__ = "0.1.0"
