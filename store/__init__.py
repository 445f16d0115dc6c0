"""Storage: the SQLite catalog (source of truth) and FAISS indexes derived from it.

Knows nothing of models: vectors arrive as numpy arrays tagged with an opaque model id.
"""

from .ann_index import AnnIndex
from .catalog import (
    Catalog,
    CatalogDamagedError,
    CatalogError,
    FileRecord,
    FileRow,
    StorageError,
    is_damage,
)
from .index_cache import open_vector_index
from .lock import LibraryBusyError, WriterLock
from .paths import printable
from .vector_index import Hits, VectorIndex, sweep_temp_files

__all__ = [
    "AnnIndex", "Catalog", "CatalogDamagedError", "CatalogError", "FileRecord", "FileRow", "Hits",
    "LibraryBusyError", "StorageError", "VectorIndex", "WriterLock", "is_damage",
    "open_vector_index", "printable", "sweep_temp_files",
]
