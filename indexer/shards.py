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
from store.catalog import META_COLUMNS, PlanRow, VectorLookup

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
    """Pickled rows -> a pyarrow table."""
    rows = [pickle.loads(blob) for blob in batch["loaded"]]
    rows = [(record, vector) for _, record, vector in rows if record is not None]
    return shard_table(root, [r for r, _ in rows], [v for _, v in rows], model_id, model_spec)


def shard_table(root: str, records: list[FileRecord], vectors: list[np.ndarray | None],
                model_id: str, model_spec: str) -> object:
    """The shard's pyarrow table of these rows (paths as raw bytes: any name survives)."""
    import pyarrow as pa

    vectors = [None if v is None else np.asarray(v, np.float32).tolist() for v in vectors]
    return pa.table({
        "root": pa.array([os.fsencode(root)] * len(records), pa.binary()),
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
        "model_id": pa.array([model_id] * len(records), pa.string()),
        "model_spec": pa.array([model_spec] * len(records), pa.string()),
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
        _import_table(catalog, table.drop_columns(["vector"]).to_pylist(),
                      _vectors(table.column("vector")), report, batch_size)
    return report


def _vectors(column: object) -> list[np.ndarray | None]:
    """Each row's vector, a view into one float32 array (None for an error row): a shard's
    512 floats a row never become Python objects (to_pylist made them: 5x the import's
    time at 200k rows, docs/scale.md)."""
    import pyarrow.compute as pc

    lengths = pc.list_value_length(column).fill_null(0).to_numpy()
    flat = pc.list_flatten(column).to_numpy().astype(np.float32, copy=False)
    ends = np.cumsum(lengths)
    valid = pc.is_valid(column).to_numpy()
    return [flat[end - n:end] if ok else None
            for n, end, ok in zip(lengths, ends, valid, strict=True)]


def _import_table(catalog: Catalog, rows: list[dict], row_vectors: list[np.ndarray | None],
                  report: ShardImport, batch_size: int) -> None:
    found = _stored_rows(catalog, rows)
    lookups: dict[str, VectorLookup] = {}  # opened only for a row whose vector was missing

    def has_vector(model_id: str, digest: str) -> bool:
        """Asked at write time: an earlier batch of this shard may have stored it."""
        if model_id not in lookups:
            lookups[model_id] = catalog.vector_lookup(model_id)
        return digest in lookups[model_id]

    try:
        for start in range(0, len(rows), batch_size):
            records: list[FileRecord] = []
            vectors: dict[str, np.ndarray] = {}
            model_id = ""
            for row, match, vector in zip(rows[start:start + batch_size],
                                          found[start:start + batch_size],
                                          row_vectors[start:start + batch_size], strict=True):
                model_id = row["model_id"]
                if match is None:
                    report.stale += 1  # changed or gone since it was embedded: the next run
                    continue
                root_id, known = match
                if known is not None and _stored_as(row, known, has_vector):
                    report.unchanged += 1
                    continue
                records.append(_record(row, root_id))
                if vector is not None:
                    vectors[row["content_hash"]] = vector
            if vectors:
                catalog.register_model(model_id, json.loads(rows[start]["model_spec"]),
                                       len(next(iter(vectors.values()))))
            if records:  # one transaction per batch, as an index run
                catalog.write_batch(records, vectors, model_id)
                report.imported += len(records)
            report.model_id = report.model_id or model_id or None
    finally:
        for lookup in lookups.values():
            lookup.close()


def _stored_rows(catalog: Catalog, rows: list[dict]
                 ) -> list[tuple[int, PlanRow | None] | None]:
    """Per shard row: None when its file changed or is gone since it was embedded, else
    (its root's id, the catalog's row of its path as it was before the shard wrote anything,
    or None). Per root and model, the stored rows between the shard's first and last path
    are streamed in path byte order (Catalog.plan_rows) and merged with the shard's rows
    sorted the same way: no Python object per row of the root, whose other rows are never
    read (a shard is a stretch of one crawl)."""
    out: list[tuple[int, PlanRow | None] | None] = [None] * len(rows)
    root_ids: dict[bytes, int] = {}
    groups: dict[tuple[int, str], list[tuple[bytes, int]]] = {}
    for i, row in enumerate(rows):
        if _same_on_disk(row):
            if row["root"] not in root_ids:
                root_ids[row["root"]] = catalog.add_root(os.fsdecode(row["root"]))
            key = (root_ids[row["root"]], row["model_id"])
            groups.setdefault(key, []).append((row["path"], i))
    for (root_id, model_id), members in groups.items():
        members.sort()
        stored = catalog.plan_rows(root_id, model_id, first=members[0][0], last=members[-1][0])
        known = next(stored, None)
        for path, i in members:
            while known is not None and known.path < path:
                known = next(stored, None)
            out[i] = (root_id, known if known is not None and known.path == path else None)
        stored.close()  # its statement ends here, before the batches write
    return out


def _record(row: dict, root_id: int) -> FileRecord:
    return FileRecord(os.fsdecode(row["path"]), root_id, row["size"], row["mtime_ns"],
                      row["content_hash"], row["status"], row["width"], row["height"],
                      row["taken_at"], row["error_reason"], row["error_message"],
                      **{name: row.get(name) for name in META_COLUMNS})


def _same_on_disk(row: dict) -> bool:
    """Whether the file (or object) still has the size and mtime it was embedded with."""
    path = os.fsdecode(row["path"])
    try:
        st = stat_object(path) if is_uri(path) else os.stat(path)
    except OSError:
        return False
    return st is not None and (st.st_size, st.st_mtime_ns) == (row["size"], row["mtime_ns"])


def _stored_as(row: dict, known: PlanRow, has_vector: Callable[[str, str], bool]) -> bool:
    """The shard's row is already in the catalog: the same state, its vector (an error row
    has none), and its photo metadata unless the shard has none to add."""
    return ((known.size, known.mtime_ns, known.content_hash, known.status, known.error_reason)
            == (row["size"], row["mtime_ns"], row["content_hash"], row["status"],
                row["error_reason"])
            and (row["status"] == "error" or known.has_vector
                 or has_vector(row["model_id"], row["content_hash"]))
            and not (known.meta_missing and row.get("format")))
