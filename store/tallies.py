"""What `status` counts, kept exact by triggers so it never joins every file with its vector.

At 1M files a count joining `files` with `embeddings` (2 KB rows in a WITHOUT ROWID table)
reads the whole multi-GB catalog: 85 s. The table `tallies(key, n)` holds instead:
  'files:<status>'  file rows per status ('ok', 'error')
  'model:<id>'      files with status 'ok' whose content has a vector of that model
  'unindexed'       files with status 'ok' whose content has no vector of any model
SQLite triggers update it in the same transaction as every change, from whichever writer
(an older clipsearch too, like store/change_log.py), so it can never disagree with the rows.

Every clipsearch connection has recursive_triggers on (sqlite_utils' default, set again in
store/catalog.py): an `INSERT OR REPLACE` of a stored vector (write_batch) then fires the
delete trigger for the row it replaces and the insert trigger for the new one, so the counts
stay as they were; `INSERT OR IGNORE` (salvage) fires nothing for a row it skips.
"""

from __future__ import annotations

import sqlite3

TABLE = "tallies"
_ADD = "ON CONFLICT(key) DO UPDATE SET n = n + excluded.n"
_OK_FILES = "(SELECT COUNT(*) FROM files WHERE content_hash = {h} AND status = 'ok')"


def _file(row: str, sign: str) -> str:
    """Statements adding (sign '+') or removing ('-') one file row's part of the counts."""
    return (
        f" INSERT INTO tallies(key, n) SELECT 'files:' || {row}.status, {sign}1 WHERE 1 {_ADD};"
        f" INSERT INTO tallies(key, n) SELECT 'model:' || model_id, {sign}1 FROM embeddings"
        f" WHERE content_hash = {row}.content_hash AND {row}.status = 'ok' {_ADD};"
        f" INSERT INTO tallies(key, n) SELECT 'unindexed', {sign}1 WHERE {row}.status = 'ok'"
        f" AND NOT EXISTS (SELECT 1 FROM embeddings WHERE content_hash = {row}.content_hash)"
        f" {_ADD};"
    )


def _vector(row: str, sign: str, first: str) -> str:
    """One vector's part: its model gains (loses) the ok files with its content; those
    leave (join) 'unindexed' when `first` (no other vector of the content exists) holds.
    The files are counted once per statement (a subquery in FROM), not per use."""
    files = "(SELECT COUNT(*) AS c FROM files WHERE content_hash = {h} AND status = 'ok')" \
        .format(h=f"{row}.content_hash")
    other = "-" if sign == "+" else "+"
    return (
        f" INSERT INTO tallies(key, n) SELECT 'model:' || {row}.model_id, {sign}c"
        f" FROM {files} WHERE c > 0 {_ADD};"
        f" INSERT INTO tallies(key, n) SELECT 'unindexed', {other}c"
        f" FROM {files} WHERE c > 0 AND {first} {_ADD};"
    )


_NO_VECTOR = "NOT EXISTS (SELECT 1 FROM embeddings WHERE content_hash = {h}{extra})"
_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS tallies (key TEXT PRIMARY KEY, n INTEGER NOT NULL)",
    "CREATE TRIGGER IF NOT EXISTS tallies_file_insert AFTER INSERT ON files BEGIN"
    + _file("NEW", "+") + " END",
    "CREATE TRIGGER IF NOT EXISTS tallies_file_delete AFTER DELETE ON files BEGIN"
    + _file("OLD", "-") + " END",
    "CREATE TRIGGER IF NOT EXISTS tallies_file_update AFTER UPDATE OF content_hash, status"
    " ON files BEGIN" + _file("OLD", "-") + _file("NEW", "+") + " END",
    "CREATE TRIGGER IF NOT EXISTS tallies_vector_insert AFTER INSERT ON embeddings BEGIN"
    + _vector("NEW", "+", _NO_VECTOR.format(
        h="NEW.content_hash", extra=" AND model_id != NEW.model_id")) + " END",
    "CREATE TRIGGER IF NOT EXISTS tallies_vector_delete AFTER DELETE ON embeddings BEGIN"
    + _vector("OLD", "-", _NO_VECTOR.format(h="OLD.content_hash", extra="")) + " END",
    # Nothing re-keys a vector today; should anything do it, the counts stay exact.
    "CREATE TRIGGER IF NOT EXISTS tallies_vector_rekey AFTER UPDATE OF content_hash, model_id"
    " ON embeddings BEGIN"
    + _vector("OLD", "-", _NO_VECTOR.format(h="OLD.content_hash", extra=""))
    + _vector("NEW", "+", _NO_VECTOR.format(
        h="NEW.content_hash", extra=" AND model_id != NEW.model_id") +
        " AND NEW.content_hash IS NOT OLD.content_hash") + " END",
]
_LAST_TRIGGER = "tallies_vector_rekey"


def present(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = ?",
                        (_LAST_TRIGGER,)).fetchone() is not None


def install(conn: sqlite3.Connection) -> None:
    """Create the table and its triggers and fill it from the rows, inside the caller's write
    transaction (one-time: a full count, about a minute at 1M files)."""
    for statement in _SCHEMA:
        conn.execute(statement)
    conn.execute("DELETE FROM tallies")
    conn.executemany("INSERT INTO tallies(key, n) VALUES (?, ?)", list(_counted(conn).items()))


def read(conn: sqlite3.Connection) -> dict[str, int]:
    return {k: int(n) for k, n in conn.execute("SELECT key, n FROM tallies WHERE n != 0")}


def _counted(conn: sqlite3.Connection) -> dict[str, int]:
    """The counts from the rows themselves (the joins `status` used to run)."""
    out = {f"files:{s}": int(n) for s, n in
           conn.execute("SELECT status, COUNT(*) FROM files GROUP BY status")}
    # Per vector, the ok files with its content: embeddings in key order, files by index.
    for model_id, n in conn.execute(
            "SELECT e.model_id, SUM(" + _OK_FILES.format(h="e.content_hash") + ")"
            " FROM embeddings e GROUP BY e.model_id"):
        out[f"model:{model_id}"] = int(n or 0)
    # Ok files less those whose content has a vector: distinct keys in order, not a lookup
    # into the vectors per file.
    with_vector = conn.execute(
        "SELECT SUM(" + _OK_FILES.format(h="v.content_hash") + ")"
        " FROM (SELECT DISTINCT content_hash FROM embeddings) v").fetchone()[0]
    out["unindexed"] = out.get("files:ok", 0) - int(with_vector or 0)
    return {k: n for k, n in out.items() if n}


def disagreement(conn: sqlite3.Connection) -> str | None:
    """None when the kept counts equal a full count from the rows (doctor, tests)."""
    kept, counted = read(conn), _counted(conn)
    if kept == counted:
        return None
    keys = sorted(set(kept) | set(counted))
    return ", ".join(f"{k} kept {kept.get(k, 0)} counted {counted.get(k, 0)}"
                     for k in keys if kept.get(k, 0) != counted.get(k, 0))
