"""Stages 3-5 of an index run: load (read + header check + hash + decode + preprocess),
encode, write.

Each stage is a plain function or small class so it can be tested alone; `pipeline.py` wires
them together with a thread pool so decoding overlaps encoding.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from clip_core.encoders import MICRO_BATCH
from clip_core.pixels.decode import (
    DecodeError,
    NotRegularFileError,
    PhotoMeta,
    decode_image,
    open_regular,
    read_header,
)
from clip_core.pixels.preprocess import PreprocessSpec, preprocess
from clipsearch_errors import BadInputError
from store import Catalog, FileRecord

from .crawl import Candidate


@dataclass
class Loaded:
    cand: Candidate
    record: FileRecord | None  # None when the file vanished before it could be read
    pixels: np.ndarray | None = None  # set when the image needs encoding


# No photo file is near this (a 180 MP 16-bit RGBA TIFF is 1.4 GB); a sparse `truncate -s 1T
# x.png` would otherwise be read into memory and stop every run with a MemoryError.
MAX_FILE_BYTES = 2 << 30


class FileTooLargeError(BadInputError, OSError):
    """A file larger than MAX_FILE_BYTES: refused before it is read."""


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_file(path: str, attempts: int = 3) -> tuple[bytes, os.stat_result]:
    """Read once and stat the open handle, so the recorded size/mtime belong to the bytes
    that were hashed. A file rewritten while being read is read again; if it keeps changing,
    the stat from before the read is kept, so the next run sees a change and redoes it."""
    with open_regular(path) as handle:  # never blocks on a FIFO; fstat-checked type
        for _ in range(attempts):
            before = os.fstat(handle.fileno())
            if before.st_size > MAX_FILE_BYTES:
                raise FileTooLargeError(
                    f"file is {before.st_size / 1e9:.1f} GB, over the "
                    f"{MAX_FILE_BYTES / 1e9:.1f} GB limit for an image file (not read)")
            handle.seek(0)
            data = handle.read()
            after = os.fstat(handle.fileno())
            if (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns):
                break
        return data, before


def load_one(
    cand: Candidate,
    spec: PreprocessSpec,
    has_vector: Callable[[str], bool],
    min_side: int | None,
    read: Callable[[str], tuple[bytes, os.stat_result]] | None = None,
) -> Loaded:
    """`read`: read_file (looked up per call), or shards.read_object for an object on S3 or
    another store."""
    try:
        data, st = (read or read_file)(cand.path)
    except (FileNotFoundError, NotADirectoryError):
        return Loaded(cand, None)  # gone since the crawl: the sweep forgets it
    except NotRegularFileError as exc:  # swapped for a FIFO, device or folder since the crawl
        return Loaded(cand, _error(cand, None, "not-a-file", str(exc.strerror)))
    except FileTooLargeError as exc:
        return Loaded(cand, _error(cand, None, "too-large", str(exc)))
    except PermissionError:
        return Loaded(cand, _error(cand, None, "unreadable", "permission denied"))
    except OSError as exc:
        reason = "symlink-loop" if exc.errno == errno.ELOOP else "unreadable"
        return Loaded(cand, _error(cand, None, reason, f"cannot read: {exc.strerror or exc}"))
    try:
        # Only an image is hashed: a link to /etc/shadow followed by --follow-links must not
        # leave its SHA-256 in the catalog. Image.open on the header costs ~1 ms.
        header = read_header(data)
    except DecodeError as exc:
        return Loaded(cand, _error(cand, st, exc.reason, str(exc)))
    digest = content_hash(data)
    record = FileRecord(cand.path, cand.root_id, st.st_size, st.st_mtime_ns, digest, "ok")
    if has_vector(digest):
        # A moved, renamed or duplicated file: its vector is already stored, skip decoding.
        # Dimensions come from the header only (cheap) so the row stays complete.
        _describe(record, header.width, header.height, header.meta)
        return Loaded(cand, record)
    try:
        decoded = decode_image(io.BytesIO(data), min_side=min_side)
        pixels = preprocess(decoded.image, spec)
    except DecodeError as exc:
        return Loaded(cand, _error(cand, st, exc.reason, str(exc), digest))
    except MemoryError:
        raise
    except Exception as exc:  # a bug must cost one file (listed in status), not the run
        return Loaded(cand, _error(cand, st, "internal-error",
                                   f"{type(exc).__name__}: {exc}", digest))
    _describe(record, decoded.width, decoded.height, decoded.meta)
    return Loaded(cand, record, pixels)


def _describe(record: FileRecord, width: int, height: int, meta: PhotoMeta | None) -> None:
    """Size and photo metadata onto the file's row, from the one read of the file."""
    record.width, record.height = width, height
    if meta is not None:
        record.taken_at, record.taken_offset = meta.taken_at, meta.taken_offset
        record.camera_make, record.camera_model = meta.camera_make, meta.camera_model
        record.exif_orientation, record.format = meta.orientation, meta.format


def _error(
    cand: Candidate,
    st: os.stat_result | None,
    reason: str,
    message: str,
    digest: str | None = None,
) -> FileRecord:
    size = st.st_size if st else cand.size
    mtime = st.st_mtime_ns if st else cand.mtime_ns
    return FileRecord(cand.path, cand.root_id, size, mtime, digest, "error",
                      error_reason=reason, error_message=message)


class BatchWriter:
    """Collects loaded files, encodes their pixels in batches and commits each batch in one
    transaction: an interruption loses at most the batch in flight.

    `should_stop` is polled between encoder calls; when it fires mid-batch, the files whose
    pixels are already encoded (and those needing none) are still committed."""

    def __init__(
        self,
        catalog: Catalog,
        encode: Callable[[np.ndarray], np.ndarray],
        model_id: str,
        batch_size: int,
        should_stop: Callable[[], bool] = lambda: False,
        chunk: int = MICRO_BATCH,
    ):
        self.catalog = catalog
        self.encode = encode
        self.model_id = model_id
        self.batch_size = max(1, batch_size)
        self.should_stop = should_stop
        self.records: list[FileRecord] = []
        self.pixels: list[np.ndarray] = []
        self.pixel_of: list[int | None] = []  # index into pixels, per record
        self.committed_hashes: set[str] = set()
        # Encoder calls of `chunk` images (the encoder's fixed micro-batch): Ctrl-C is
        # polled between them, so a stop never waits for a whole batch.
        self.chunk = max(1, chunk)

    def add(self, loaded: Loaded) -> list[tuple[FileRecord, bool]]:
        """Queue one file; returns what this call committed (see flush)."""
        if loaded.record is None:
            return []
        self.records.append(loaded.record)
        if loaded.pixels is not None:
            self.pixel_of.append(len(self.pixels))
            self.pixels.append(loaded.pixels)
        else:
            self.pixel_of.append(None)
        if len(self.pixels) >= self.batch_size or len(self.records) >= 4 * self.batch_size:
            return self.flush()
        return []

    def flush(self) -> list[tuple[FileRecord, bool]]:
        """Encode and commit the queue; returns (record, newly embedded) per committed file."""
        if not self.records:
            return []
        embedded: list[np.ndarray] = []
        while len(embedded) < len(self.pixels) and not self.should_stop():
            chunk = np.stack(self.pixels[len(embedded) : len(embedded) + self.chunk])
            embedded.extend(self.encode(chunk))
        vectors: dict[str, np.ndarray] = {}
        done: list[tuple[FileRecord, bool]] = []
        for record, index in zip(self.records, self.pixel_of, strict=True):
            if index is None:
                done.append((record, False))
            elif index < len(embedded):
                vectors[str(record.content_hash)] = embedded[index]
                done.append((record, True))
        self.catalog.write_batch([r for r, _ in done], vectors, self.model_id)
        self.committed_hashes.update(vectors)
        self.records, self.pixels, self.pixel_of = [], [], []
        return done
