"""Stages 3-5 of an index run: load (read + hash + decode + preprocess), encode, write.

Each stage is a plain function or small class so it can be tested alone; `pipeline.py` wires
them together with a thread pool so decoding overlaps encoding.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from clip_core.images import DecodeError, decode_image
from clip_core.preprocess import PreprocessSpec, preprocess
from store import Catalog, FileRecord

from .crawl import Candidate


@dataclass
class Loaded:
    cand: Candidate
    record: FileRecord | None  # None when the file vanished before it could be read
    pixels: np.ndarray | None = None  # set when the image needs encoding


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_file(path: str) -> tuple[bytes, os.stat_result]:
    """Read once and stat the open handle, so the recorded size/mtime belong to the bytes
    that were hashed (a file rewritten later is seen as changed by the next run)."""
    with open(path, "rb") as handle:
        st = os.fstat(handle.fileno())
        return handle.read(), st


def load_one(
    cand: Candidate,
    spec: PreprocessSpec,
    has_vector: Callable[[str], bool],
    min_side: int | None,
) -> Loaded:
    try:
        data, st = read_file(cand.path)
    except FileNotFoundError:
        return Loaded(cand, None)
    except IsADirectoryError:
        return Loaded(cand, _error(cand, None, "not-a-file", "is a directory"))
    except OSError as exc:
        return Loaded(cand, _error(cand, None, "unreadable", f"cannot read: {exc.strerror}"))
    digest = content_hash(data)
    record = FileRecord(cand.path, cand.root_id, st.st_size, st.st_mtime_ns, digest, "ok")
    if has_vector(digest):
        # A moved, renamed or duplicated file: its vector is already stored, skip decoding.
        # Dimensions come from the header only (cheap) so the row stays complete.
        _fill_header_info(record, data)
        return Loaded(cand, record)
    try:
        decoded = decode_image(io.BytesIO(data), min_side=min_side)
        pixels = preprocess(decoded.image, spec)
    except DecodeError as exc:
        return Loaded(cand, _error(cand, st, exc.reason, str(exc), digest))
    record.width, record.height, record.taken_at = decoded.width, decoded.height, decoded.taken_at
    return Loaded(cand, record, pixels)


def _fill_header_info(record: FileRecord, data: bytes) -> None:
    try:
        decoded = decode_image(io.BytesIO(data), min_side=1)
        record.width, record.height, record.taken_at = (
            decoded.width, decoded.height, decoded.taken_at)
    except DecodeError:
        pass


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
    transaction: an interruption loses at most the batch in flight."""

    def __init__(
        self,
        catalog: Catalog,
        encode: Callable[[np.ndarray], np.ndarray],
        model_id: str,
        batch_size: int,
    ):
        self.catalog = catalog
        self.encode = encode
        self.model_id = model_id
        self.batch_size = batch_size
        self.records: list[FileRecord] = []
        self.pixels: list[np.ndarray] = []
        self.pixel_hashes: list[str] = []
        self.committed_hashes: set[str] = set()

    def add(self, loaded: Loaded) -> int:
        """Queue one file; returns how many files were committed by this call."""
        if loaded.record is None:
            return 0
        self.records.append(loaded.record)
        if loaded.pixels is not None:
            self.pixels.append(loaded.pixels)
            self.pixel_hashes.append(str(loaded.record.content_hash))
        if len(self.pixels) >= self.batch_size or len(self.records) >= 4 * self.batch_size:
            return self.flush()
        return 0

    def flush(self) -> int:
        if not self.records:
            return 0
        vectors: dict[str, np.ndarray] = {}
        if self.pixels:
            embedded = self.encode(np.stack(self.pixels))
            vectors = dict(zip(self.pixel_hashes, embedded, strict=True))
        self.catalog.write_batch(self.records, vectors, self.model_id)
        self.committed_hashes.update(vectors)
        done = len(self.records)
        self.records, self.pixels, self.pixel_hashes = [], [], []
        return done
