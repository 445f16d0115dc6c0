"""Storage: the SQLite catalog (source of truth) and FAISS indexes derived from it.

Knows nothing of models: vectors arrive as numpy arrays tagged with an opaque model id.
"""

from .catalog import Catalog, CatalogError, FileRecord, FileRow, StorageError
from .lock import LibraryBusyError, WriterLock
from .paths import printable
from .vector_index import Hits, VectorIndex, open_vector_index, sweep_temp_files

__all__ = [
    "Catalog", "CatalogError", "FileRecord", "FileRow", "Hits", "LibraryBusyError",
    "StorageError", "VectorIndex", "WriterLock", "open_vector_index", "printable",
    "sweep_temp_files",
]
