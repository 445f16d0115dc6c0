"""The SQLite catalog: the library's source of truth.

It holds roots, one row per file, and every embedding (as float32 BLOBs keyed by content hash
and model id). The FAISS files beside it are caches rebuilt from here (store/vector_index.py),
so a crash can never leave the two disagreeing. Each write transaction bumps `generation`;
a FAISS file made at another generation is stale and gets rebuilt.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import urllib.parse
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from clipsearch_errors import StorageError

from . import change_log, tallies
from .paths import folder_range, text_factory, to_db


def _import_sqlite_utils():
    """sqlite_utils imports pandas whenever it is installed (~250 ms and ~100 MB with pyarrow)
    only to map `pd.Timestamp` columns, which the catalog never stores: a cold `clipsearch
    query` on a machine with pandas (a data-science venv, Ray's `cluster` extra) should not
    pay for it. An app that already imported pandas keeps sqlite_utils' full behaviour."""
    if "pandas" in sys.modules:
        import sqlite_utils
    else:
        sys.modules["pandas"] = None  # `import pandas` raises ImportError for this import
        try:
            import sqlite_utils
        finally:
            del sys.modules["pandas"]
    return sqlite_utils


sqlite_utils = _import_sqlite_utils()

SCHEMA_VERSION = 2
# Schema 2 (issue 14.2): photo metadata. A row of schema 1 has them NULL, `format` included
# (every decoded image has one), which marks it for a header-only refresh (PlanRow.meta_missing).
META_COLUMNS = {"taken_offset": str, "camera_make": str, "camera_model": str,
                "exif_orientation": int, "format": str}


@dataclass
class FileRow:
    id: int
    path: str
    root_id: int | None
    size: int
    mtime_ns: int
    content_hash: str | None
    status: str
    error_reason: str | None = None


class PlanRow(NamedTuple):
    """What planning needs of a file row (indexer/plan.py), streamed in path byte order."""

    path: bytes  # as stored: SQLite orders TEXT by these bytes
    id: int
    size: int
    mtime_ns: int
    content_hash: str | None
    status: str
    error_reason: str | None
    has_vector: bool  # its content has a vector of the model
    meta_missing: bool = False  # indexed before schema 2 stored photo metadata

    @property
    def done(self) -> bool:
        """Nothing to redo: a vector of the model, and its photo metadata stored."""
        return self.has_vector and not self.meta_missing


@dataclass
class FileRecord:
    """A file's state after the indexer looked at it."""

    path: str
    root_id: int | None
    size: int
    mtime_ns: int
    content_hash: str | None
    status: str  # "ok" or "error"
    width: int | None = None
    height: int | None = None
    taken_at: str | None = None
    error_reason: str | None = None
    error_message: str | None = None
    taken_offset: str | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    exif_orientation: int | None = None
    format: str | None = None


class CatalogError(StorageError):
    """The catalog cannot be used as it is (written by a newer clipsearch, not there).
    StorageError itself (clipsearch_errors): the disk refused a write (full, read-only, I/O
    error); committed work is intact."""


class CatalogDamagedError(CatalogError):
    """The catalog file is not a sound SQLite database (flipped bytes, truncated, emptied).
    `clipsearch doctor --repair` salvages what it can."""

    def __init__(self, path: Path, detail: str):
        self.path = Path(path)
        super().__init__(
            f"the library catalog {self.path} is damaged ({detail}). "
            f"Run `clipsearch doctor --repair --library {self.path.parent}` to salvage what "
            "it can (the damaged file is kept as a backup).")


# SQLITE_CORRUPT and SQLITE_NOTADB: the file's bytes are wrong, not the SQL or the disk.
_SQLITE_DAMAGE = {11, 26}


def is_damage(exc: BaseException) -> bool:
    """Whether a sqlite3 error means the database file itself is damaged."""
    return (isinstance(exc, sqlite3.DatabaseError)
            and getattr(exc, "sqlite_errorcode", 0) & 0xFF in _SQLITE_DAMAGE)


# SQLite primary result codes that mean "the medium said no", not "the SQL is wrong".
_SQLITE_STORAGE = {8: "is read-only", 10: "had an I/O error", 13: "is full",
                   14: "cannot be opened for writing"}


class Catalog:
    def __init__(self, path: Path, *, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        self._armed = False  # this connection keeps the tallies (store/tallies.py)
        try:
            self.conn = _connect(self.path, readonly)
            self.db = sqlite_utils.Database(self.conn)
            if not readonly:
                self._migrate()
        except sqlite3.DatabaseError as exc:
            if is_damage(exc):
                raise CatalogDamagedError(self.path, str(exc)) from None
            raise

    # -- schema --------------------------------------------------------------------------
    def _migrate(self) -> None:
        db = self.db
        if "meta" in db.table_names():
            self._check_version()
            if not self.readonly and int(self.get_meta("schema_version") or 0) < 2:
                self._add_meta_columns()
            if not self.readonly and not change_log.present(self.conn):
                with self.transaction():  # one-time: libraries made before the change log
                    change_log.install(self.conn)
            if not self.readonly:
                if tallies.present(self.conn):
                    self._arm()
                if not tallies.exact(self.conn):
                    self._install_tallies()
            # Beyond that one-time upgrade (writable opens only), opening an existing
            # library writes nothing (readers stay readers).
            return
        with self.transaction():
            if "meta" not in db.table_names():  # re-checked under the write lock
                db["meta"].create({"key": str, "value": str}, pk="key")
                db["roots"].create({"id": int, "path": str, "added_at": str}, pk="id")
                db["roots"].create_index(["path"], unique=True)
                db["files"].create(
                    {
                        "id": int, "path": str, "root_id": int, "size": int, "mtime_ns": int,
                        "content_hash": str, "width": int, "height": int, "taken_at": str,
                        "status": str, "error_reason": str, "error_message": str,
                        "indexed_at": str, **META_COLUMNS,
                    },
                    pk="id", not_null={"path", "status"},
                    foreign_keys=[("root_id", "roots", "id")],
                )
                db["files"].create_index(["path"], unique=True)
                db["files"].create_index(["content_hash"])
                db["files"].create_index(["root_id"])
                db["models"].create(
                    {"model_id": str, "spec": str, "embed_dim": int, "added_at": str},
                    pk="model_id",
                )
                self.conn.execute(
                    "CREATE TABLE embeddings (content_hash TEXT NOT NULL, model_id TEXT NOT NULL,"
                    " vector BLOB NOT NULL, PRIMARY KEY (content_hash, model_id)) WITHOUT ROWID"
                )
                self._set_meta("schema_version", str(SCHEMA_VERSION))
                self._set_meta("generation", "0")
                change_log.install(self.conn)
                tallies.install(self.conn)
                self._arm()
        self._check_version()

    def _arm(self) -> None:
        tallies.arm(self.conn)
        self._armed = True

    def _install_tallies(self) -> None:
        """A full count of every row (about half a minute at 1M files): once for a library
        made before the tallies, again after a writer without them changed it. Another
        process counting right now holds the write lock past busy_timeout: go on without
        (counts come from the rows until then)."""
        try:
            with self.transaction():
                if not tallies.exact(self.conn):  # re-checked under the write lock
                    tallies.install(self.conn)
                    self._arm()
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF not in (5, 6):  # BUSY, LOCKED
                raise

    def _add_meta_columns(self) -> None:
        """Schema 1 -> 2: ALTER TABLE ADD COLUMN rewrites no row, so every file row and
        vector stays; the next index run fills the new columns (header-only, no embedding)."""
        with self.transaction():
            have = {c.name for c in self.db["files"].columns}
            for name, kind in META_COLUMNS.items():
                if name not in have:  # re-checked under the write lock
                    self.db["files"].add_column(name, kind)
            self._set_meta("schema_version", str(SCHEMA_VERSION))

    def _check_version(self) -> None:
        version = int(self.get_meta("schema_version") or 0)
        if version > SCHEMA_VERSION:
            raise CatalogError(
                f"{self.path} was written by a newer clipsearch (schema {version}); upgrade"
            )

    # -- transactions --------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic write; bumps the generation so derived FAISS files know they are stale.

        Disk full / read-only / I/O failures surface as StorageError; the transaction is rolled
        back (SQLite may already have done so, hence the in_transaction check)."""
        if self.readonly:
            raise StorageError(f"the library at {self.path.parent} is read-only (opened for "
                               "queries only); indexing needs a writable folder")
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                if self._armed:  # the counts stay exact with this generation if they were
                    self.conn.execute(tallies.ADVANCE)
                self.conn.execute(
                    "UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'"
                )
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:
                    self.conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            raise self._storage_error(exc) from exc

    def _storage_error(self, exc: sqlite3.OperationalError) -> Exception:
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code not in _SQLITE_STORAGE:
            return exc
        what = _SQLITE_STORAGE[code]
        hint = " Free some space and run the same command again;" if code == 13 else ""
        return StorageError(
            f"cannot write the library catalog {self.path}: the disk {what} ({exc}).{hint}"
            " everything committed before this point is kept."
        )

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A consistent read: every SELECT inside sees one committed state (WAL snapshot)."""
        if self.conn.in_transaction:
            yield self.conn
            return
        self.conn.execute("BEGIN")
        try:
            yield self.conn
        finally:
            self.conn.execute("COMMIT")

    def close(self) -> None:
        if isinstance(self.conn, _Closed):
            return
        self.conn.close()
        self.conn = _Closed(self.path.parent)  # later use: a clear error, not sqlite's

    # -- meta ----------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction():
            self._set_meta(key, value)

    def clear_meta(self, key: str) -> None:
        with self.transaction() as conn:
            conn.execute("DELETE FROM meta WHERE key = ?", (key,))

    @property
    def generation(self) -> int:
        return int(self.get_meta("generation") or 0)

    # -- roots ---------------------------------------------------------------------------
    def add_root(self, path: str) -> int:
        existing = self.root_id(path)
        if existing is not None:
            return existing
        with self.transaction() as conn:
            cur = conn.execute(
                "INSERT INTO roots(path, added_at) VALUES (CAST(? AS TEXT), ?)",
                (to_db(path), _now()),
            )
            return int(cur.lastrowid)

    def root_id(self, path: str) -> int | None:
        row = self.conn.execute(
            "SELECT id FROM roots WHERE path = CAST(? AS TEXT)", (to_db(path),)
        ).fetchone()
        return int(row[0]) if row else None

    def roots(self) -> dict[int, str]:
        return {int(i): p for i, p in self.conn.execute("SELECT id, path FROM roots ORDER BY id")}

    def remove_root(self, path: str) -> int:
        """Forget a root and its files; returns how many files left the library."""
        root_id = self.root_id(path)
        if root_id is None:
            return 0
        with self.transaction() as conn:
            removed = conn.execute("DELETE FROM files WHERE root_id = ?", (root_id,)).rowcount
            conn.execute("DELETE FROM roots WHERE id = ?", (root_id,))
            _gc_embeddings(conn)
        return removed

    # -- models --------------------------------------------------------------------------
    def register_model(self, model_id: str, spec: dict, embed_dim: int) -> None:
        if self.conn.execute("SELECT 1 FROM models WHERE model_id = ?", (model_id,)).fetchone():
            return
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO models(model_id, spec, embed_dim, added_at) VALUES (?, ?, ?, ?)",
                (model_id, json.dumps(spec), embed_dim, _now()),
            )

    def models(self) -> dict[str, dict]:
        out = {}
        for model_id, spec, dim in self.conn.execute(
            "SELECT model_id, spec, embed_dim FROM models ORDER BY added_at"
        ):
            out[model_id] = {"spec": json.loads(spec), "embed_dim": dim}
        return out

    def remove_model(self, model_id: str) -> int:
        with self.transaction() as conn:
            n = conn.execute("DELETE FROM embeddings WHERE model_id = ?", (model_id,)).rowcount
            conn.execute("DELETE FROM models WHERE model_id = ?", (model_id,))
        return n

    def model_counts(self) -> dict[str, int]:
        """How many catalogued files each model has a vector for."""
        kept = self._tallies()
        if kept is not None:
            return {k[6:]: n for k, n in kept.items() if k.startswith("model:")}
        return {
            m: int(n)
            for m, n in self.conn.execute(
                "SELECT e.model_id, COUNT(*) FROM files f JOIN embeddings e "
                "ON e.content_hash = f.content_hash WHERE f.status = 'ok' GROUP BY e.model_id"
            )
        }

    # -- files ---------------------------------------------------------------------------
    def plan_rows(self, root_id: int, model_id: str, chunk: int = 10_000, *,
                  first: bytes | None = None, last: bytes | None = None
                  ) -> Iterator[PlanRow]:
        """The root's file rows in path byte order, streamed: planning a 1M-file root holds
        no row object per file nor a set of every content hash. `first`..`last` (stored
        bytes, both included): only that stretch of the root, read through the path index
        (a shard's import asks for its own paths' stretch, not the whole root)."""
        meta_missing = "status = 'ok' AND format IS NULL" if self._has("format") else "0"
        has_vector = ("EXISTS (SELECT 1 FROM embeddings e"
                      " WHERE e.content_hash = files.content_hash AND e.model_id = :model)")
        if tallies.present(self.conn):
            # When the tallies say every ok file has a vector of the model (the usual case),
            # an ok row needs no lookup into the multi-GB vector table: one per row at 1M
            # reads it all. Evaluated once, in the statement's own snapshot.
            every = (f"{tallies.EXACT} AND (SELECT CAST(value AS INTEGER) FROM meta WHERE"
                     f" key = 'tally:model:' || :model) IS {tallies.value('files:ok')}")
            has_vector = f"CASE WHEN status = 'ok' AND {every} THEN 1 ELSE {has_vector} END"
        where = "root_id = :root"
        if first is not None:  # `+`: SQLite must not sort the whole root by its root_id index
            where = ("+root_id = :root AND path >= CAST(:first AS TEXT)"
                     " AND path <= CAST(:last AS TEXT)")
        cur = self.conn.execute(
            "SELECT CAST(path AS BLOB), id, size, mtime_ns, content_hash, status, error_reason,"
            f" {has_vector}, {meta_missing} FROM files WHERE {where} ORDER BY path",
            {"model": model_id, "root": root_id, "first": first, "last": last})
        while rows := cur.fetchmany(chunk):
            for r in rows:
                yield PlanRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], bool(r[7]), bool(r[8]))

    def vector_lookup(self, model_id: str) -> VectorLookup:
        """`digest in lookup`: whether committed content has a vector of `model_id`, asked
        per file instead of a set of every hash (1M hashes: ~100 MB of str)."""
        return VectorLookup(self.path, model_id)

    def _has(self, column: str) -> bool:
        """Whether `files` has the column: a read-only open of a schema-1 library is not
        migrated (readers write nothing), so its queries must do without the new ones."""
        if not hasattr(self, "_file_columns"):
            self._file_columns = {r[1] for r in self.conn.execute("PRAGMA table_info(files)")}
        return column in self._file_columns

    def _meta_select(self) -> str:
        return ", ".join(f"f.{c}" if self._has(c) else f"NULL AS {c}"
                         for c in META_COLUMNS)

    def root_has_files(self, root_id: int) -> bool:
        """Any file row (indexed or failed) under the root: one index lookup."""
        return self.conn.execute("SELECT 1 FROM files WHERE root_id = ? LIMIT 1",
                                 (root_id,)).fetchone() is not None

    def files_sharing_content(self, model_id: str) -> list[list[int]]:
        """Ids of indexed files with identical bytes (one content hash, a vector of
        `model_id`), a list per hash: exact copies, for duplicate finding."""
        groups: dict[str, list[int]] = {}
        for content_hash, file_id in self.conn.execute(
            "SELECT f.content_hash, f.id FROM files f JOIN embeddings e"
            " ON e.content_hash = f.content_hash AND e.model_id = ?"
            " WHERE f.status = 'ok' AND f.content_hash IN (SELECT content_hash FROM files"
            " WHERE status = 'ok' GROUP BY content_hash HAVING COUNT(*) > 1)"
            " ORDER BY f.content_hash, f.id", (model_id,),
        ):
            groups.setdefault(content_hash, []).append(int(file_id))
        return list(groups.values())

    def write_batch(
        self,
        records: Iterable[FileRecord],
        vectors: dict[str, np.ndarray],
        model_id: str,
    ) -> None:
        """Insert/refresh files and their new vectors in one transaction."""
        now = _now()
        with self.transaction() as conn:
            conn.executemany(
                "INSERT OR REPLACE INTO embeddings(content_hash, model_id, vector) "
                "VALUES (?, ?, ?)",
                [(h, model_id, np.asarray(v, np.float32).tobytes()) for h, v in vectors.items()],
            )
            conn.executemany(
                "INSERT INTO files(path, root_id, size, mtime_ns, content_hash, width, height,"
                " taken_at, status, error_reason, error_message, indexed_at, taken_offset,"
                " camera_make, camera_model, exif_orientation, format) "
                "VALUES (CAST(? AS TEXT), ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(path) DO UPDATE SET root_id = excluded.root_id,"
                " size = excluded.size, mtime_ns = excluded.mtime_ns,"
                " content_hash = excluded.content_hash, width = excluded.width,"
                " height = excluded.height, taken_at = excluded.taken_at,"
                " status = excluded.status, error_reason = excluded.error_reason,"
                " error_message = excluded.error_message, indexed_at = excluded.indexed_at,"
                " taken_offset = excluded.taken_offset, camera_make = excluded.camera_make,"
                " camera_model = excluded.camera_model, format = excluded.format,"
                " exif_orientation = excluded.exif_orientation",
                [
                    (to_db(r.path), r.root_id, r.size, r.mtime_ns, r.content_hash, r.width,
                     r.height, r.taken_at, r.status, r.error_reason, r.error_message, now,
                     r.taken_offset, r.camera_make, r.camera_model, r.exif_orientation,
                     r.format)
                    for r in records
                ],
            )

    def collect_garbage(self) -> None:
        """Drop vectors no file refers to (a changed file leaves its old vector behind)."""
        if self.conn.execute(_ORPHANS.replace("DELETE", "SELECT 1", 1) + " LIMIT 1").fetchone():
            with self.transaction() as conn:
                _gc_embeddings(conn)

    def delete_files(self, file_ids: Iterable[int]) -> int:
        ids = [(int(i),) for i in file_ids]
        if not ids:
            return 0
        with self.transaction() as conn:
            conn.executemany("DELETE FROM files WHERE id = ?", ids)
            _gc_embeddings(conn)
        return len(ids)

    def file_rows(self, file_ids: Iterable[int], vector_of: str | None = None
                  ) -> dict[int, dict]:
        """The given files' rows by id. `vector_of` (a model id): only indexed files with a
        vector of it, each row with that exact fp32 vector under "vector": a search's few
        contenders in one statement instead of vectors_for_files and then the rows (a warm
        query at 100k: ~0.3 ms)."""
        ids = [int(i) for i in file_ids]
        vector, join, indexed, lead = "", "", "", ()
        if vector_of is not None:
            vector, indexed, lead = ", e.vector", "f.status = 'ok' AND ", (vector_of,)
            join = (" JOIN embeddings e ON e.content_hash = f.content_hash"
                    " AND e.model_id = ?")
        out: dict[int, dict] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            cur = self.conn.execute(
                "SELECT f.id, f.path, r.path AS root, f.size, f.mtime_ns, f.content_hash,"
                f" f.width, f.height, f.taken_at, {self._meta_select()}{vector} FROM files f"
                f"{join} LEFT JOIN roots r"
                f" ON r.id = f.root_id WHERE {indexed}f.id IN ({marks})",
                (*lead, *chunk),
            )
            names = [d[0] for d in cur.description]
            for row in cur:
                found = dict(zip(names, row, strict=True))
                if vector:
                    found["vector"] = np.frombuffer(found["vector"], dtype=np.float32)
                out[int(row[0])] = found
        return out

    def file_id(self, path: str) -> int | None:
        row = self.conn.execute(
            "SELECT id FROM files WHERE path = CAST(? AS TEXT)", (to_db(path),)
        ).fetchone()
        return int(row[0]) if row else None

    def ids_in_folder(self, folder: str) -> np.ndarray:
        lo, hi = folder_range(folder)
        rows = self.conn.execute(
            "SELECT id FROM files WHERE path >= CAST(? AS TEXT) AND path < CAST(? AS TEXT)",
            (lo, hi),
        ).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def filtered_ids(self, clauses: list[str], params: list, folder: str | None = None, *,
                     by_date: str | None = None, limit: int = -1,
                     offset: int = 0) -> np.ndarray:
        """Ids of indexed files meeting every SQL condition in `clauses` (on `files`) and
        inside `folder`; with `by_date` (an SQL date expression) newest first, then by id,
        paged by `limit` / `offset`: the id selector of a filtered search, or a listing."""
        where, args = ["status = 'ok'", *clauses], list(params)
        if folder is not None:
            lo, hi = folder_range(folder)
            where.append("path >= CAST(? AS TEXT) AND path < CAST(? AS TEXT)")
            args += [lo, hi]
        order = f" ORDER BY {by_date} DESC, id" if by_date else ""
        whole = not by_date and limit < 0 and offset == 0
        try:
            if whole:  # a search's id selector: every match, in id order
                # As one string: 100k ids came back in 16 ms instead of 37 as rows
                (text,) = self.conn.execute(
                    f"SELECT group_concat(id) FROM files WHERE {' AND '.join(where)}",
                    args).fetchone()
                return np.sort(np.fromstring(text or "", dtype=np.int64, sep=","))
            rows = self.conn.execute(
                f"SELECT id FROM files WHERE {' AND '.join(where)}{order} LIMIT ? OFFSET ?",
                [*args, limit, offset]).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such column" not in str(exc):
                raise
            raise CatalogError(f"{self.path} predates photo metadata (camera, content type): "
                               "run `clipsearch index` once to upgrade it") from None
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def vectors(self, model_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(file ids, vectors) of every indexed file for one model, ordered by file id."""
        cur = self.conn.execute(
            "SELECT f.id, e.vector FROM files f JOIN embeddings e"
            " ON e.content_hash = f.content_hash AND e.model_id = ?"
            " WHERE f.status = 'ok' ORDER BY f.id",
            (model_id,),
        )
        ids: list[int] = []
        blobs: list[bytes] = []
        for file_id, blob in cur:
            ids.append(file_id)
            blobs.append(blob)
        if not ids:
            return np.empty(0, np.int64), np.empty((0, 0), np.float32)
        vectors = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), -1)
        return np.asarray(ids, np.int64), vectors

    def vector_count(self, model_id: str) -> int:
        return int(self.conn.execute(
            "SELECT COUNT(*) FROM files f JOIN embeddings e ON e.content_hash = f.content_hash"
            " AND e.model_id = ? WHERE f.status = 'ok'", (model_id,)).fetchone()[0])

    def iter_vectors(self, model_id: str, chunk: int = 50_000, *, stored_order: bool = False
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(file ids, vectors) of every indexed file for one model, `chunk` rows at a time
        in file id order: a scale-sized library's vectors without holding them all twice.
        `stored_order`: in the vectors' own (content hash) order instead, reading the
        vector table front to back rather than one random page per file (1M files: ~6x
        faster, docs/scale.md); for callers that do not care about the order.

        The pass reads through the memory map (pread costs ~1.5x the CPU time here), whose
        pages then stay resident in this process: a warm app that built the index at 100k
        held 973 MB instead of 546 (docs/benchmarks.md). Setting the map's limit to 0 and
        back afterwards unmaps the file and maps it anew, with no page in."""
        sql = ("SELECT f.id, e.vector FROM embeddings e CROSS JOIN files f"  # CROSS: e first
               " ON f.content_hash = e.content_hash WHERE e.model_id = ? AND f.status = 'ok'"
               if stored_order else
               "SELECT f.id, e.vector FROM files f JOIN embeddings e"
               " ON e.content_hash = f.content_hash AND e.model_id = ?"
               " WHERE f.status = 'ok' ORDER BY f.id")
        cur = self.conn.execute(sql, (model_id,))
        while rows := cur.fetchmany(chunk):
            ids = np.fromiter((r[0] for r in rows), np.int64, count=len(rows))
            yield ids, np.frombuffer(b"".join(r[1] for r in rows),
                                     dtype=np.float32).reshape(len(rows), -1)
        mapped = self.conn.execute("PRAGMA mmap_size").fetchone()[0]
        self.conn.execute("PRAGMA mmap_size=0")
        self.conn.execute(f"PRAGMA mmap_size={int(mapped)}")

    def vectors_for_files(self, model_id: str, file_ids: list[int]) -> dict[int, np.ndarray]:
        """Exact fp32 vectors of a few files (to re-score candidates from the FAISS cache)."""
        out: dict[int, np.ndarray] = {}
        for start in range(0, len(file_ids), 500):
            chunk = [int(i) for i in file_ids[start : start + 500]]
            marks = ",".join("?" * len(chunk))
            for file_id, blob in self.conn.execute(
                "SELECT f.id, e.vector FROM files f JOIN embeddings e"
                " ON e.content_hash = f.content_hash AND e.model_id = ?"
                f" WHERE f.status = 'ok' AND f.id IN ({marks})",
                (model_id, *chunk),
            ):
                out[int(file_id)] = np.frombuffer(blob, dtype=np.float32)
        return out

    # -- reporting -----------------------------------------------------------------------
    def _tallies(self) -> dict[str, int] | None:
        """The trigger-kept counts (store/tallies.py); None where they are not exact (a
        read-only open of an older library, a write by a clipsearch without them): counted
        from the rows instead."""
        return tallies.read(self.conn)

    def counts(self) -> dict[str, int]:
        kept = self._tallies()
        if kept is not None:
            return {k[6:]: n for k, n in kept.items() if k.startswith("files:")}
        rows = self.conn.execute("SELECT status, COUNT(*) FROM files GROUP BY status")
        return {status: int(n) for status, n in rows}

    def count_without_vectors(self) -> int:
        """Files read fine but with no vector of any model (every model was removed): the
        next index run embeds them again."""
        kept = self._tallies()
        if kept is not None:
            return kept.get("unindexed", 0)
        return int(self.conn.execute(
            "SELECT COUNT(*) FROM files f WHERE f.status = 'ok' AND NOT EXISTS"
            " (SELECT 1 FROM embeddings e WHERE e.content_hash = f.content_hash)").fetchone()[0])

    def problems(self) -> list[str]:
        """Consistency check for tests and support: empty when the catalog is sound."""
        out = [r[0] for r in self.conn.execute("PRAGMA integrity_check") if r[0] != "ok"]
        out += [f"foreign key: {r}" for r in self.conn.execute("PRAGMA foreign_key_check")]
        orphans = self.conn.execute(_ORPHANS.replace("DELETE", "SELECT COUNT(*)", 1)).fetchone()
        if orphans[0]:
            out.append(f"{orphans[0]} vectors no file refers to")
        bad = self.conn.execute(
            "SELECT COUNT(*) FROM files f WHERE f.status = 'ok' AND NOT EXISTS"
            " (SELECT 1 FROM embeddings e WHERE e.content_hash = f.content_hash)").fetchone()
        if bad[0]:
            out.append(f"{bad[0]} indexed files without any vector")
        if tallies.present(self.conn) and (wrong := tallies.disagreement(self.conn)):
            out.append(f"status counts disagree with the rows: {wrong}")
        return out

    def errors(self) -> list[dict]:
        cur = self.conn.execute(
            "SELECT path, error_reason, error_message, indexed_at FROM files"
            " WHERE status = 'error' ORDER BY path"
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]


_ORPHANS = ("DELETE FROM embeddings WHERE content_hash NOT IN"
            " (SELECT content_hash FROM files WHERE content_hash IS NOT NULL)")


def _gc_embeddings(conn: sqlite3.Connection) -> None:
    """Drop vectors no file refers to any more (after deletes; moves keep theirs), and the
    models left without any vector: a library holds a model only while it has its vectors
    (so a default model, a query and `status` never name one that has none)."""
    conn.execute(_ORPHANS)
    conn.execute("DELETE FROM models WHERE NOT EXISTS"
                 " (SELECT 1 FROM embeddings e WHERE e.model_id = models.model_id)")


MMAP_BYTES = 1 << 30
WRITER_CACHE_KB = 128 * 1024


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    if readonly:
        conn = _connect_readonly(path)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before the next step (a FAISS cache stamped with this
        # generation) can be, so even a power cut cannot make a generation number repeat.
        conn.execute("PRAGMA synchronous=FULL")
        # A writer's page cache (SQLite's default: 2 MB). Adding 10k files to a 1M library
        # touches ~30k random pages (vector rows keyed by hash, the hash index); with 2 MB
        # they were spilled and read again: 4.0 -> 2.3 s of CPU with 128 MB (docs/scale.md).
        # Only pages actually touched are held.
        conn.execute(f"PRAGMA cache_size=-{WRITER_CACHE_KB}")
    conn.text_factory = text_factory
    # A REPLACE's implicit delete must fire the delete triggers (store/tallies.py keeps
    # status's counts exact with them); sqlite_utils turns it on too.
    conn.execute("PRAGMA recursive_triggers=ON")
    conn.execute("PRAGMA busy_timeout=10000")
    conn.execute("PRAGMA foreign_keys=ON")
    # Reads through a memory map instead of a pread per page: re-scoring a query's ~40
    # candidates read their vectors in 0.17 ms instead of 0.67 ms (100k library).
    conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
    return conn


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """Open for reading, also on read-only media (where WAL's -shm file cannot be made)."""
    if not path.is_file():
        raise CatalogError(f"no clipsearch catalog at {path}")
    try:
        conn = _open_uri(path, "mode=ro")
        conn.execute("SELECT 1 FROM meta LIMIT 1")
        return conn
    except sqlite3.OperationalError:
        pass
    wal = Path(f"{path}-wal")
    if not (wal.exists() and wal.stat().st_size > 0):
        # No pending WAL: the main file is complete, and immutable is safe because nothing
        # can write to read-only media either.
        return _open_uri(path, "immutable=1")
    # Commits still in a WAL that SQLite cannot attach here (no -shm, read-only disk):
    # immutable would silently drop them, so read a private copy that replays them.
    tmp = Path(tempfile.mkdtemp(prefix="clipsearch-ro-"))
    shutil.copy2(path, tmp / path.name)
    shutil.copy2(wal, tmp / wal.name)
    conn = sqlite3.connect(tmp / path.name, isolation_level=None, check_same_thread=False,
                           factory=_CopyConnection)
    conn.execute("SELECT 1 FROM meta LIMIT 1")  # replays the WAL into the copy
    weakref.finalize(conn, shutil.rmtree, tmp, True)  # removed with the connection
    return conn


class VectorLookup:
    """A content-hash membership test on a connection of its own (the index run's loader
    threads ask while its writer commits on the catalog's): it sees committed rows only."""

    def __init__(self, path: Path, model_id: str):
        self.model_id = model_id
        self.conn: sqlite3.Connection | None = _open_uri(path, "mode=ro")
        self._lock = threading.Lock()

    def __contains__(self, digest: object) -> bool:
        with self._lock:
            if self.conn is None:
                return False  # a loader left behind by a stopped run: its result is dropped
            return self.conn.execute(
                "SELECT 1 FROM embeddings WHERE content_hash = ? AND model_id = ?",
                (digest, self.model_id)).fetchone() is not None

    def __iter__(self) -> Iterator[str]:
        """Every hash (a Ray run ships them to its workers as a set)."""
        with self._lock:
            assert self.conn is not None, "used after close"
            rows = self.conn.execute("SELECT content_hash FROM embeddings WHERE model_id = ?",
                                     (self.model_id,)).fetchall()
        return (h for (h,) in rows)

    def close(self) -> None:
        """Waits for a question in flight: loader threads of a stopped or failed run may
        still be asking (closing under them would crash SQLite)."""
        with self._lock:
            if self.conn is not None:
                self.conn.close()
                self.conn = None


class _CopyConnection(sqlite3.Connection):
    """A connection to a private copy (subclassed only so it can be weakly referenced)."""


def _open_uri(path: Path, params: str) -> sqlite3.Connection:
    # Quote the path: '?', '#' and '%' are legal in folder names but special in URIs.
    uri = f"file:{urllib.parse.quote(str(path.absolute()))}?{params}"
    return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())


class _Closed:
    """Stands in for the connection of a closed catalog."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __getattr__(self, name: str):
        raise StorageError(f"the library at {self.folder} was closed; open it again")
