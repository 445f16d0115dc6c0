"""Which files' vectors changed since a generation: lets a FAISS cache be brought up to date
by adding and removing those files instead of rebuilt from every vector (docs/scale.md).

SQLite triggers write the log, so every writer (this version, an older clipsearch, salvage)
records its changes in the same transaction as the change itself: the log can never miss a
committed change nor hold an uncommitted one. A row (generation, file_id) says the file's
row or vector changed in the transaction that left `generation` (triggers run before the
transaction bumps it). `meta.changes_floor` is the oldest generation from which the log is
complete; a cache older than that is rebuilt.
"""

from __future__ import annotations

import sqlite3

import numpy as np

# COALESCE: salvage (store/salvage.py) copies rows before a meta row may exist.
_GEN = "COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'generation'), 0)"
_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS vector_changes (generation INTEGER NOT NULL,"
    " file_id INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS vector_changes_generation ON vector_changes(generation)",
    "CREATE TRIGGER IF NOT EXISTS vector_changes_file_insert AFTER INSERT ON files BEGIN"
    f" INSERT INTO vector_changes VALUES ({_GEN}, NEW.id); END",
    "CREATE TRIGGER IF NOT EXISTS vector_changes_file_update AFTER UPDATE OF content_hash,"
    f" status ON files BEGIN INSERT INTO vector_changes VALUES ({_GEN}, NEW.id); END",
    "CREATE TRIGGER IF NOT EXISTS vector_changes_file_delete AFTER DELETE ON files BEGIN"
    f" INSERT INTO vector_changes VALUES ({_GEN}, OLD.id); END",
    "CREATE TRIGGER IF NOT EXISTS vector_changes_vector_insert AFTER INSERT ON embeddings"
    f" BEGIN INSERT INTO vector_changes SELECT {_GEN}, id FROM files"
    " WHERE content_hash = NEW.content_hash; END",
    "CREATE TRIGGER IF NOT EXISTS vector_changes_vector_delete AFTER DELETE ON embeddings"
    f" BEGIN INSERT INTO vector_changes SELECT {_GEN}, id FROM files"
    " WHERE content_hash = OLD.content_hash; END",
]
FLOOR_KEY = "changes_floor"


def present(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'trigger'"
                        " AND name = 'vector_changes_vector_delete'").fetchone() is not None


def install(conn: sqlite3.Connection) -> None:
    """Create the log and its triggers (inside the caller's write transaction); the log is
    complete from the current generation on."""
    for statement in _SCHEMA:
        conn.execute(statement)
    conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)",
                 (FLOOR_KEY, str(_generation(conn))))


def changed_since(conn: sqlite3.Connection, generation: int) -> np.ndarray | None:
    """Ids of files whose row or vector changed after `generation` (sorted, unique), or
    None when the log does not reach back that far (no log, or pruned): rebuild then.
    Call inside the snapshot that read the catalog's generation."""
    floor = conn.execute("SELECT value FROM meta WHERE key = ?", (FLOOR_KEY,)).fetchone()
    if floor is None or int(floor[0]) > generation or not present(conn):
        return None
    rows = conn.execute("SELECT DISTINCT file_id FROM vector_changes WHERE generation >= ?"
                        " ORDER BY file_id", (generation,)).fetchall()
    return np.fromiter((r[0] for r in rows), np.int64, count=len(rows))


def prune(conn: sqlite3.Connection, before: int) -> None:
    """Forget changes older than `before` (every cache on disk is at least that new). No
    file or vector changes, so the generation is not bumped and no cache goes stale."""
    if not present(conn):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("DELETE FROM vector_changes WHERE generation < ?", (before,))
        conn.execute("UPDATE meta SET value = ? WHERE key = ? AND CAST(value AS INTEGER) < ?",
                     (str(before), FLOOR_KEY, before))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _generation(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
    return int(row[0]) if row else 0
