"""Checking a catalog file, and salvaging what can be read from a damaged one.

Salvage copies every readable row into a fresh catalog (same schema, made by Catalog), from
SQLite's own `.recover` output when the sqlite3 command is installed, then from the damaged
file itself, read in small key ranges so one bad page costs only the rows on it. Rows that
no longer fit together (a file whose root or vector was lost) are dropped: the next index
run finds those files again, so nothing readable is lost for good.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import change_log
from .catalog import SCHEMA_VERSION, Catalog, CatalogError, _gc_embeddings

_CHUNK = 256
_MAGIC = b"SQLite format 3\x00"
_ROWID_TABLES = ("meta", "roots", "models", "files")


@dataclass
class Salvage:
    backup: Path
    kept: dict[str, int] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)


def check(path: Path) -> list[str]:
    """What is wrong with the catalog file; empty when it is sound."""
    if not path.is_file():
        return ["the catalog file is missing"]
    if path.stat().st_size == 0:
        return ["the catalog file is empty (0 bytes)"]
    try:
        cat = Catalog(path, readonly=True)
    except (CatalogError, sqlite3.DatabaseError) as exc:
        return [str(exc)]
    try:
        return cat.problems()
    except sqlite3.DatabaseError as exc:
        return [str(exc)]
    finally:
        cat.close()


def salvage(path: Path) -> Salvage:
    """Replace the damaged catalog at `path` by a fresh one holding every row that could be
    read; the damaged file (and its -wal/-shm) is kept beside it as a backup. The caller
    holds the library's writer lock."""
    work = Path(tempfile.mkdtemp(prefix=".salvage-", dir=path.parent))
    try:
        fresh = work / path.name
        new = Catalog(fresh)
        report = Salvage(backup=path.with_name(
            f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"))
        conn = new.conn
        conn.execute("PRAGMA foreign_keys=OFF")  # roots may arrive after their files
        conn.execute("PRAGMA synchronous=OFF")  # one fsync at the end, not one per chunk
        old_generation = new.generation
        conn.execute("DELETE FROM meta")
        copy = work / "damaged.db"  # read a copy: the original stays as it was, the backup
        for suffix in ("", "-wal"):
            if Path(f"{path}{suffix}").exists():
                shutil.copyfile(f"{path}{suffix}", f"{copy}{suffix}")
        _mend_header(copy)
        sources = [("row by row", copy)]
        recovered = _recover(copy, work)
        if recovered is not None:
            sources.insert(0, ("sqlite3 .recover", recovered))
        for name, source in sources:
            if _copy_all(conn, source):
                report.sources.append(name)
        _make_consistent(conn, old_generation)
        report.kept = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                       for t in ("roots", "models", "files", "embeddings")}
        problems = [r[0] for r in conn.execute("PRAGMA integrity_check") if r[0] != "ok"]
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # all of it in the file, on disk
        new.close()
        if problems:  # cannot happen to a fresh file; refuse rather than install it
            raise CatalogError(f"the salvaged catalog is not sound: {problems[:3]}")
        for suffix in ("", "-wal", "-shm"):
            old = Path(f"{path}{suffix}")
            if old.exists():
                os.replace(old, f"{report.backup}{suffix}")
        os.replace(fresh, path)
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _mend_header(path: Path) -> None:
    """Make a damaged copy openable: put back SQLite's 16-byte magic string (without it
    nothing at all can be read) and give a truncated file its missing pages back as zeros
    (else the schema names pages past the end and no table opens; zero pages read as lost)."""
    with open(path, "r+b") as f:
        head = f.read(100)
        if len(head) < 100:
            return
        f.seek(0)
        f.write(_MAGIC)
        page = struct.unpack(">H", head[16:18])[0]
        page = 65536 if page == 1 else page
        pages = struct.unpack(">I", head[28:32])[0]
        size = os.fstat(f.fileno()).st_size
        if page >= 512 and page & (page - 1) == 0 and size < pages * page <= 1 << 40:
            f.truncate(pages * page)


def _recover(path: Path, work: Path) -> Path | None:
    """SQLite's own recovery (`sqlite3 DB .recover`) into a scratch file, if installed."""
    exe = shutil.which("sqlite3")
    if exe is None:
        return None
    out = work / "recovered.db"
    try:
        sql = subprocess.run([exe, str(path), ".recover"], capture_output=True, timeout=600,
                             check=False).stdout
        subprocess.run([exe, str(out)], input=sql, capture_output=True, timeout=600,
                       check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out if out.is_file() else None


def _copy_all(conn: sqlite3.Connection, source: Path) -> bool:
    """Copy every readable row of `source` into conn's catalog; False if nothing opened."""
    try:
        conn.execute("ATTACH DATABASE ? AS src", (str(source),))
    except sqlite3.DatabaseError:
        return False
    try:
        try:
            names = {r[0] for r in conn.execute("SELECT name FROM src.sqlite_master")}
        except sqlite3.DatabaseError:
            return False
        for table in (*_ROWID_TABLES, "embeddings"):
            if table in names:
                _copy_table(conn, table)
        return True
    finally:
        conn.execute("DETACH DATABASE src")


def _copy_table(conn: sqlite3.Connection, table: str) -> None:
    names = [r[1] for r in conn.execute(f"PRAGMA main.table_info({table})")]
    try:  # a catalog of an older schema lacks newer columns: copy those it has
        have = {r[1] for r in conn.execute(f"PRAGMA src.table_info({table})")}
    except sqlite3.DatabaseError:
        have = set()
    cols = ", ".join([n for n in names if n in have] or names)
    try:
        conn.execute(f"SELECT {cols} FROM src.{table} LIMIT 0")
    except sqlite3.DatabaseError:
        return  # not our table (or its schema page is lost)
    # Keys with an index to seek by (a full scan would fail at the first bad page).
    key = "rowid" if table in _ROWID_TABLES else "content_hash"
    first = 0 if table in _ROWID_TABLES else ""
    _walk(conn, f"INSERT OR IGNORE INTO main.{table} ({cols}) SELECT {cols} FROM src.{table}",
          f"SELECT {key} FROM src.{table}", key, first)


def _walk(conn: sqlite3.Connection, insert: str, keys: str, key: str, lo: int | str) -> None:
    """Copy rows in key order, up to _CHUNK keys at a time. A range that fails is copied row
    by row; a seek that fails (a lost page on the way) skips further and further ahead."""
    attempt = 0
    while True:
        chunk, failed = [], False
        try:
            for (k,) in conn.execute(f"{keys} WHERE {key} > ? ORDER BY {key} LIMIT {_CHUNK}",
                                     (lo,)):
                chunk.append(k)
        except sqlite3.DatabaseError:
            failed = True  # the keys read before the bad page still count
        if chunk:
            attempt = 0
            _copy_range(conn, insert, key, chunk)
            lo = chunk[-1]
        elif failed:
            attempt += 1
            lo = _skip(lo, attempt)
            if lo is None:
                return
        else:
            return


def _copy_range(conn: sqlite3.Connection, insert: str, key: str, chunk: list) -> None:
    try:
        conn.execute(f"{insert} WHERE {key} >= ? AND {key} <= ?", (chunk[0], chunk[-1]))
    except sqlite3.DatabaseError:
        for one in chunk:
            with contextlib.suppress(sqlite3.DatabaseError):  # this row's page is lost
                conn.execute(f"{insert} WHERE {key} = ?", (one,))


def _skip(lo: int | str, attempt: int) -> int | str | None:
    """Where to seek next after `attempt` failed seeks past `lo` (None: give up): 1, 2, 4,
    ... keys on (rowids; hex hashes read as 32-bit numbers by their first 8 digits)."""
    if isinstance(lo, int):
        return lo + (1 << attempt) if attempt <= 40 else None
    try:
        at = int(lo[:8].ljust(8, "0"), 16) if lo else 0
    except ValueError:
        return None
    nxt = at + (1 << attempt)
    return f"{nxt:08x}" if nxt <= 0xFFFFFFFF else None


def _make_consistent(conn: sqlite3.Connection, old_generation: int) -> None:
    """Drop what no longer fits together; the next index run finds those files again."""
    conn.execute("DELETE FROM files WHERE root_id IS NOT NULL AND root_id NOT IN"
                 " (SELECT id FROM roots)")
    conn.execute("DELETE FROM files WHERE status NOT IN ('ok', 'error')")
    conn.execute("DELETE FROM embeddings WHERE model_id NOT IN (SELECT model_id FROM models)"
                 " OR length(vector) != 4 * (SELECT embed_dim FROM models m"
                 " WHERE m.model_id = embeddings.model_id)")
    conn.execute("DELETE FROM files WHERE status = 'ok' AND NOT EXISTS (SELECT 1 FROM"
                 " embeddings e WHERE e.content_hash = files.content_hash)")
    _gc_embeddings(conn)
    meta = dict(conn.execute("SELECT key, value FROM meta"))
    try:
        generation = int(meta.get("generation", 0)) + 1
    except ValueError:
        generation = 0
    generation = max(generation, old_generation) + 1
    for key, value in (("schema_version", str(SCHEMA_VERSION)), ("generation", str(generation)),
                       (change_log.FLOOR_KEY, str(generation))):  # no cache predates it
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))
