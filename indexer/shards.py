"""Embedding a folder on a Ray cluster into Parquet shards, and importing shards into a
library: for photos on shared storage that the driver should not stream.

`embed_shards` runs the Ray path's stages (ray_executor.embedded_dataset: load_one, then the
encoder) and the workers write the shards themselves (Ray Data `write_parquet`, to a folder
or an object-store URI such as s3://bucket/prefix). One row per file: the file's state as a
local run would record it, its vector or its error reason. `import_shards` adds them to a
catalog idempotently: a row already there unchanged is skipped, a shard that cannot be read
(half-written) is ignored and named, and a file whose size or mtime no longer matches the
shard (or that is gone) is left for the next index run, which sees it as new or changed.

Photos may also be on an object store (ROOT an s3://bucket/prefix URI, anything pyarrow's
FileSystem.from_uri opens): the driver lists them and the tasks read them through pyarrow,
with the credentials and endpoint of the usual environment variables. Their catalog path is
the full URI; a local index run leaves such a root alone (import-shards fills it).
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from clip_core.encoders import ImageEncoder
from clip_core.pixels.decode import IMAGE_EXTENSIONS
from clip_core.pixels.preprocess import PreprocessSpec
from store import Catalog, FileRecord
from store.catalog import META_COLUMNS

from .crawl import Candidate, crawl
from .job import IndexSettings
from .ray_executor import connected, embedded_dataset, require_ray

SHARD_SUFFIX = ".parquet"


@dataclass
class ShardImport:
    model_id: str | None = None
    imported: int = 0  # file rows written (embedded or error rows)
    unchanged: int = 0  # already in the library exactly as in the shard
    stale: int = 0  # changed or gone since it was embedded: left for the next index run
    ignored: list[str] = field(default_factory=list)  # shards that could not be read

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def embed_shards(root: str, out: str, address: str, model_id: str, model_spec: dict,
                 spec: PreprocessSpec, worker_encoder: Callable[[], ImageEncoder],
                 settings: IndexSettings) -> int:
    """Embed every image file under `root` into Parquet shards under `out`; returns how many
    files the shards describe. Hidden files and links follow `settings` as an index run."""
    require_ray()
    if is_uri(root):
        candidates, read = object_candidates(root, settings.include_hidden), read_object
    else:
        candidates, read = [c for c in crawl(root, 0, IMAGE_EXTENSIONS,
                                             include_hidden=settings.include_hidden,
                                             follow_links=settings.follow_links)
                            if isinstance(c, Candidate)], None
    if not candidates:
        return 0
    with connected(address):
        ds, _ = embedded_dataset(candidates, set(), spec, worker_encoder, model_id, settings,
                                 read)
        ds = ds.map_batches(_columns, batch_format="numpy",
                            fn_kwargs={"root": root, "model_id": model_id,
                                       "model_spec": json.dumps(model_spec)})
        ds.write_parquet(out)
    return len(candidates)


def is_uri(path: str) -> bool:
    return "://" in path


_FILESYSTEMS: dict[str, object] = {}  # per process: one client per scheme and bucket


def _filesystem(uri: str) -> tuple[object, str]:
    """(pyarrow filesystem, path in it) for a URI; the client is made once per process."""
    from pyarrow import fs

    scheme, rest = uri.split("://", 1)
    key = f"{scheme}://{rest.split('/', 1)[0]}"
    if key not in _FILESYSTEMS:
        _FILESYSTEMS[key] = fs.FileSystem.from_uri(key)[0]
    return _FILESYSTEMS[key], rest


def object_candidates(root: str, include_hidden: bool = False) -> list[Candidate]:
    """The image objects under a URI, sorted, each named by its full URI."""
    from pyarrow import fs

    filesystem, base = _filesystem(root.rstrip("/"))
    scheme = root.split("://", 1)[0]
    infos = filesystem.get_file_info(fs.FileSelector(base, recursive=True))
    out = []
    for info in sorted(infos, key=lambda i: i.path):
        inside = info.path[len(base):].split("/")
        if (info.type != fs.FileType.File
                or os.path.splitext(info.path)[1].lower() not in IMAGE_EXTENSIONS
                or (not include_hidden and any(p.startswith(".") for p in inside))):
            continue
        out.append(Candidate(f"{scheme}://{info.path}", 0, info.size, info.mtime_ns))
    return out


class ObjectStat(NamedTuple):
    """What stages.load_one reads of a stat result, for an object."""
    st_size: int
    st_mtime_ns: int


def stat_object(uri: str) -> ObjectStat | None:
    """The object's size and mtime, None when it is gone."""
    from pyarrow import fs

    filesystem, path = _filesystem(uri)
    info = filesystem.get_file_info(path)
    if info.type != fs.FileType.File:
        return None
    return ObjectStat(info.size, info.mtime_ns)


def read_object(uri: str) -> tuple[bytes, ObjectStat]:
    """stages.read_file for an object: its bytes and the stat they belong to (an object is
    replaced whole, never rewritten in place). FileNotFoundError when it is gone."""
    from .stages import MAX_FILE_BYTES, FileTooLargeError

    st = stat_object(uri)
    if st is None:
        raise FileNotFoundError(uri)
    if st.st_size > MAX_FILE_BYTES:
        raise FileTooLargeError(f"object is {st.st_size / 1e9:.1f} GB, over the "
                                f"{MAX_FILE_BYTES / 1e9:.1f} GB limit for an image (not read)")
    filesystem, path = _filesystem(uri)
    with filesystem.open_input_file(path) as handle:
        return handle.read(), st


def _columns(batch: dict[str, np.ndarray], root: str, model_id: str,
             model_spec: str) -> object:
    """Pickled rows -> a pyarrow table (paths as raw bytes: any file name survives)."""
    import pyarrow as pa

    rows = [pickle.loads(blob) for blob in batch["loaded"]]
    rows = [(cand, record, vector) for cand, record, vector in rows if record is not None]
    records = [record for _, record, _ in rows]
    vectors = [None if v is None else np.asarray(v, np.float32).tolist() for *_, v in rows]
    return pa.table({
        "root": pa.array([os.fsencode(root)] * len(rows), pa.binary()),
        "path": pa.array([os.fsencode(r.path) for r in records], pa.binary()),
        "size": pa.array([r.size for r in records], pa.int64()),
        "mtime_ns": pa.array([r.mtime_ns for r in records], pa.int64()),
        "content_hash": pa.array([r.content_hash for r in records], pa.string()),
        "status": pa.array([r.status for r in records], pa.string()),
        "width": pa.array([r.width for r in records], pa.int64()),
        "height": pa.array([r.height for r in records], pa.int64()),
        "taken_at": pa.array([r.taken_at for r in records], pa.string()),
        "error_reason": pa.array([r.error_reason for r in records], pa.string()),
        "error_message": pa.array([r.error_message for r in records], pa.string()),
        # photo metadata (catalog schema 2); shards written before it lack these columns
        **{name: pa.array([getattr(r, name) for r in records],
                          pa.int64() if kind is int else pa.string())
           for name, kind in META_COLUMNS.items()},
        "model_id": pa.array([model_id] * len(rows), pa.string()),
        "model_spec": pa.array([model_spec] * len(rows), pa.string()),
        "vector": pa.array(vectors, pa.list_(pa.float32())),
    })


def shard_files(folder: str) -> tuple[object, list[str]]:
    """(pyarrow filesystem, the shard paths in it, sorted) for a folder or a URI."""
    from pyarrow import fs

    filesystem, base = fs.FileSystem.from_uri(folder) if is_uri(folder) else (
        fs.LocalFileSystem(), os.path.abspath(folder))
    infos = filesystem.get_file_info(fs.FileSelector(base, recursive=True))
    return filesystem, sorted(i.path for i in infos
                              if i.type == fs.FileType.File and i.path.endswith(SHARD_SUFFIX))


def import_shards(catalog: Catalog, folder: str, batch_size: int = 256) -> ShardImport:
    """Add the shards under `folder` to `catalog` (the caller holds the writer lock)."""
    import pyarrow.parquet as pq

    report = ShardImport()
    filesystem, paths = shard_files(folder)
    for shard in paths:
        try:
            table = pq.read_table(shard, filesystem=filesystem)
        except (OSError, ValueError):  # pyarrow.ArrowInvalid is a ValueError: cut short
            report.ignored.append(shard)
            continue
        _import_table(catalog, table.to_pylist(), report, batch_size)
    return report


class _Library:
    """What the import compares with, read once per shard (not per row)."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self.root_ids: dict[str, int] = {}
        self.rows: dict[int, dict] = {}
        self.hashes: dict[str, set[str]] = {}

    def root_id(self, root: str) -> int:
        if root not in self.root_ids:
            self.root_ids[root] = self.catalog.add_root(root)
            self.rows[self.root_ids[root]] = self.catalog.files_in_root(self.root_ids[root])
        return self.root_ids[root]

    def has_vector(self, model_id: str, digest: str) -> bool:
        if model_id not in self.hashes:
            self.hashes[model_id] = self.catalog.hashes_with_vectors(model_id)
        return digest in self.hashes[model_id]


def _import_table(catalog: Catalog, rows: list[dict], report: ShardImport,
                  batch_size: int) -> None:
    library = _Library(catalog)
    for start in range(0, len(rows), batch_size):
        records: list[FileRecord] = []
        vectors: dict[str, np.ndarray] = {}
        model_id = ""
        for row in rows[start:start + batch_size]:
            model_id = row["model_id"]
            record = _current_record(library, row, report)
            if record is None:
                continue
            records.append(record)
            if row["vector"] is not None:
                vectors[str(record.content_hash)] = np.asarray(row["vector"], np.float32)
        if vectors:
            catalog.register_model(model_id, json.loads(rows[start]["model_spec"]),
                                   len(next(iter(vectors.values()))))
        if records:  # one transaction per batch, as an index run
            catalog.write_batch(records, vectors, model_id)
            report.imported += len(records)
        report.model_id = report.model_id or model_id or None


def _current_record(library: _Library, row: dict, report: ShardImport) -> FileRecord | None:
    """The row as a FileRecord if it still describes the file and is not already stored."""
    path, root = os.fsdecode(row["path"]), os.fsdecode(row["root"])
    try:
        st = stat_object(path) if is_uri(path) else os.stat(path)
    except OSError:
        st = None
    if st is None:
        report.stale += 1
        return None
    if (st.st_size, st.st_mtime_ns) != (row["size"], row["mtime_ns"]):
        report.stale += 1  # changed since it was embedded: the next index run redoes it
        return None
    root_id = library.root_id(root)
    known = library.rows[root_id].get(path)
    if (known is not None and (known.size, known.mtime_ns, known.content_hash, known.status,
                               known.error_reason)
            == (row["size"], row["mtime_ns"], row["content_hash"], row["status"],
                row["error_reason"])
            and (row["status"] == "error"
                 or library.has_vector(row["model_id"], row["content_hash"]))
            and not (known.meta_missing and row.get("format"))):
        report.unchanged += 1
        return None
    return FileRecord(path, root_id, row["size"], row["mtime_ns"], row["content_hash"],
                      row["status"], row["width"], row["height"], row["taken_at"],
                      row["error_reason"], row["error_message"],
                      **{name: row.get(name) for name in META_COLUMNS})
