"""What `status` counts, kept exact by triggers so it never joins every file with its vector.

At 1M files a count joining `files` with `embeddings` (2 KB rows in a WITHOUT ROWID table)
reads the whole multi-GB catalog: 85 s. Rows of `meta` keyed 'tally:...' hold instead:
  'tally:files:<status>'  file rows per status ('ok', 'error')
  'tally:model:<id>'      files with status 'ok' whose content has a vector of that model
  'tally:unindexed'       files with status 'ok' whose content has no vector of any model
(in `meta`, not a table of their own: a new table moves every later page of the file, and
doctor's salvage of a damaged catalog is tested against the pages it can lose.)
SQLite triggers update it in the same transaction as every change. They are TEMP triggers,
created by every writable connection of this clipsearch (`arm`): stored in the file, their
SQL (5 KB) would spill the schema out of page 1 into pages a damaged disk can take, and
doctor's salvage could then read nothing (tests/test_damage.py). A writer without them (an
older clipsearch, the sqlite3 shell) changes rows without the counts; the key '@generation'
says at which generation the counts are exact, each of our transactions moves it with the
generation only if it was exact before, so after such a write the counts are simply not
used: `status` counts from the rows, and the next writable open counts them again.

Every clipsearch connection has recursive_triggers on (sqlite_utils' default, set again in
store/catalog.py): an `INSERT OR REPLACE` of a stored vector (write_batch) then fires the
delete trigger for the row it replaces and the insert trigger for the new one, so the counts
stay as they were; `INSERT OR IGNORE` (salvage) fires nothing for a row it skips.
"""

from __future__ import annotations

import sqlite3

_ADD = "ON CONFLICT(key) DO UPDATE SET value = CAST(value AS INTEGER) + excluded.value"
_INTO = "INSERT INTO meta(key, value) SELECT 'tally:' ||"
_OK_FILES = "(SELECT COUNT(*) FROM files WHERE content_hash = {h} AND status = 'ok')"


def _file(row: str, sign: str) -> str:
    """Statements adding (sign '+') or removing ('-') one file row's part of the counts."""
    return (
        f" {_INTO} 'files:' || {row}.status, {sign}1 WHERE 1 {_ADD};"
        f" {_INTO} 'model:' || model_id, {sign}1 FROM embeddings"
        f" WHERE content_hash = {row}.content_hash AND {row}.status = 'ok' {_ADD};"
        f" {_INTO} 'unindexed', {sign}1 WHERE {row}.status = 'ok'"
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
        f" {_INTO} 'model:' || {row}.model_id, {sign}c"
        f" FROM {files} WHERE c > 0 {_ADD};"
        f" {_INTO} 'unindexed', {other}c"
        f" FROM {files} WHERE c > 0 AND {first} {_ADD};"
    )


_NO_VECTOR = "NOT EXISTS (SELECT 1 FROM embeddings WHERE content_hash = {h}{extra})"
_TRIGGERS = [
    "CREATE TEMP TRIGGER IF NOT EXISTS tallies_file_insert AFTER INSERT ON main.files BEGIN"
    + _file("NEW", "+") + " END",
    "CREATE TEMP TRIGGER IF NOT EXISTS tallies_file_delete AFTER DELETE ON main.files BEGIN"
    + _file("OLD", "-") + " END",
    "CREATE TEMP TRIGGER IF NOT EXISTS tallies_file_update AFTER UPDATE OF content_hash,"
    " status ON main.files BEGIN" + _file("OLD", "-") + _file("NEW", "+") + " END",
    "CREATE TEMP TRIGGER IF NOT EXISTS tallies_vector_insert AFTER INSERT ON main.embeddings"
    " BEGIN" + _vector("NEW", "+", _NO_VECTOR.format(
        h="NEW.content_hash", extra=" AND model_id != NEW.model_id")) + " END",
    "CREATE TEMP TRIGGER IF NOT EXISTS tallies_vector_delete AFTER DELETE ON main.embeddings"
    " BEGIN" + _vector("OLD", "-", _NO_VECTOR.format(h="OLD.content_hash", extra="")) + " END",
    # Nothing re-keys a vector today; should anything do it, the counts stay exact.
    "CREATE TEMP TRIGGER IF NOT EXISTS tallies_vector_rekey AFTER UPDATE OF content_hash,"
    " model_id ON main.embeddings BEGIN"
    + _vector("OLD", "-", _NO_VECTOR.format(h="OLD.content_hash", extra=""))
    + _vector("NEW", "+", _NO_VECTOR.format(
        h="NEW.content_hash", extra=" AND model_id != NEW.model_id") +
        " AND NEW.content_hash IS NOT OLD.content_hash") + " END",
]
STAMP = "@generation"
_VALUE = "(SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'tally:{key}')"
_GENERATION = "(SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'generation')"
# True in a statement when the counts are exact at the catalog's generation.
EXACT = f"{_VALUE.format(key=STAMP)} IS {_GENERATION}"
# Run by every transaction of an armed connection before it bumps the generation.
ADVANCE = (f"UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'tally:{STAMP}'"
           f" AND CAST(value AS INTEGER) = {_GENERATION}")
_RANGE = "key >= 'tally:' AND key < 'tally;'"


def value(key: str) -> str:
    """SQL for one kept count ('files:ok', 'model:<id>'), NULL when absent."""
    return _VALUE.format(key=key.replace("'", "''"))


def present(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM meta WHERE key = ?",
                        (f"tally:{STAMP}",)).fetchone() is not None


def exact(conn: sqlite3.Connection) -> bool:
    return present(conn) and bool(conn.execute(f"SELECT {EXACT}").fetchone()[0])


def arm(conn: sqlite3.Connection) -> None:
    """Create this connection's triggers (TEMP: nothing is written to the file)."""
    for statement in _TRIGGERS:
        conn.execute(statement)


def install(conn: sqlite3.Connection) -> None:
    """Count every row into `meta`, inside the caller's write transaction (a full count:
    about half a minute at 1M files)."""
    conn.execute(f"DELETE FROM meta WHERE {_RANGE}")
    counted = {**_counted(conn), STAMP: int(conn.execute(f"SELECT {_GENERATION}")
                                            .fetchone()[0] or 0)}
    conn.executemany("INSERT INTO meta(key, value) VALUES ('tally:' || ?, ?)",
                     list(counted.items()))


def read(conn: sqlite3.Connection) -> dict[str, int] | None:
    """The counts, or None when they are not exact at this generation (or not there): one
    statement, so one snapshot."""
    if not present(conn):
        return None
    rows = conn.execute(f"SELECT substr(key, 7), CAST(value AS INTEGER) FROM meta"
                        f" WHERE {_RANGE} AND {EXACT}").fetchall()
    out = {k: int(n) for k, n in rows if n or k == STAMP}
    return out if out.pop(STAMP, None) is not None else None


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
    if kept is None or kept == counted:  # not exact here: not used either
        return None
    keys = sorted(set(kept) | set(counted))
    return ", ".join(f"{k} kept {kept.get(k, 0)} counted {counted.get(k, 0)}"
                     for k in keys if kept.get(k, 0) != counted.get(k, 0))
