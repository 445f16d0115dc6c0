"""The names inside a library folder (shared by the API, `doctor` and the CLI)."""

from __future__ import annotations

CATALOG_NAME = "catalog.db"  # SQLite: roots, files, embeddings, errors, settings
VECTORS_DIR = "vectors"  # FAISS caches, rebuilt from the catalog when missing or stale
TEXT_TOWERS_DIR = "text-towers"  # per-model text towers for torch-free queries
LOCK_NAME = "index.lock"  # the writer lock: one index run at a time
