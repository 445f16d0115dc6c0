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
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
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
        got = [None if index is None else embedded[index] if index < len(embedded) else STOPPED
               for index in self.pixel_of]
        done = self._commit(self.records, got)
        self.records, self.pixels, self.pixel_of = [], [], []
        return done

    def _commit(self, records: list[FileRecord], got: list) -> list[tuple[FileRecord, bool]]:
        """One transaction: each record with its vector, or None (it needed none); a record
        whose vector is STOPPED (not encoded before a stop) is left for the next run."""
        vectors: dict[str, np.ndarray] = {}
        done: list[tuple[FileRecord, bool]] = []
        for record, vector in zip(records, got, strict=True):
            if vector is None:
                done.append((record, False))
            elif vector is not STOPPED:
                vectors[str(record.content_hash)] = vector
                done.append((record, True))
        self.catalog.write_batch([r for r, _ in done], vectors, self.model_id)
        self.committed_hashes.update(vectors)
        return done

    def close(self) -> None:
        """Nothing runs on after the writer (StreamingWriter's lanes stop here)."""


STOPPED = object()  # in place of a vector that a stop left unencoded


class StreamingWriter(BatchWriter):
    """BatchWriter for a LaneEncoder (clip_core.encoders): the encoder's `lanes` threads take
    the images one by one, so no lane waits for the others at the end of a call or for the
    catalog write, and the run's last images are encoded as they come instead of a batch
    after. Batches are committed in file order, one transaction each, as BatchWriter's; each
    image is encoded alone (the encoder's calls of one image), so its vector is the one
    BatchWriter would store.

    Images go to the lanes `chunk` at a time (or all at once before a wait): where decoding
    is the slower stage, the lanes then run in bursts, not one image each time a decoder
    hands one over (measured: bursts kept the phone set as fast as BatchWriter's, one by one
    was ~10% slower; docs/benchmarks.md). Up to two batches are in hand: the lanes encode the
    second while the first is waited for and written. A stop (`should_stop`) lets the images
    in the lanes finish, starts no other, and commits every file whose vector is there (and
    those needing none)."""

    def __init__(
        self,
        catalog: Catalog,
        encode: Callable[[np.ndarray], np.ndarray],
        model_id: str,
        batch_size: int,
        lanes: int,
        should_stop: Callable[[], bool] = lambda: False,
        chunk: int = MICRO_BATCH,
    ):
        super().__init__(catalog, encode, model_id, batch_size, should_stop, chunk)
        self.lane_pool = ThreadPoolExecutor(max(1, lanes), thread_name_prefix="clipsearch-lane")
        # Per record: None (no image to encode), its image's vector to come, or its pixels
        # still held for the next chunk.
        self.futures: list[Future[np.ndarray] | np.ndarray | None] = []
        self.held = 0

    def add(self, loaded: Loaded) -> list[tuple[FileRecord, bool]]:
        if loaded.record is None:
            return []
        self.records.append(loaded.record)
        self.futures.append(loaded.pixels)
        self.held += loaded.pixels is not None
        if self.held >= self.chunk:
            self._release()
        if len(self.records) < 2 * self.batch_size:
            return []
        self._release()
        if not _wait_all(self.futures[: self.batch_size], self.should_stop):
            return []  # stopping: flush() commits what is encoded
        return self._commit_head(self.batch_size)

    def flush(self) -> list[tuple[FileRecord, bool]]:
        if not self.records:
            return []
        self._release()
        if not _wait_all(self.futures, self.should_stop):
            for future in self.futures:
                if isinstance(future, Future):
                    future.cancel()  # not started: left for the next run
            wait([f for f in self.futures if isinstance(f, Future)])  # the lanes' images end
        return self._commit_head(len(self.records))

    def close(self) -> None:
        self.lane_pool.shutdown(wait=True, cancel_futures=True)

    def _release(self) -> None:
        """Hand every held image to the lanes, in file order."""
        if self.held:
            self.futures = [self.lane_pool.submit(self._one, f)
                            if isinstance(f, np.ndarray) else f for f in self.futures]
            self.held = 0

    def _one(self, pixels: np.ndarray) -> np.ndarray:
        if self.should_stop():
            return STOPPED  # type: ignore[return-value]  # a stop came before its turn
        return self.encode(pixels[None])[0]

    def _commit_head(self, count: int) -> list[tuple[FileRecord, bool]]:
        got = [None if f is None else f.result() if f.done() and not f.cancelled() else STOPPED
               for f in self.futures[:count]]
        done = self._commit(self.records[:count], got)
        del self.records[:count], self.futures[:count]
        return done


def _wait_all(futures: list, should_stop: Callable[[], bool],
              poll_s: float = 0.1) -> bool:
    """Wait for every future (None: nothing to wait for; every image released to the lanes);
    False as soon as a stop is asked for. An encoder error is raised here."""
    pending = [f for f in futures if f is not None and not f.done()]
    while pending:
        if should_stop():
            return False
        pending = list(wait(pending, timeout=poll_s, return_when=FIRST_EXCEPTION).not_done)
    for future in futures:
        if future is not None:
            future.result()  # raises the encoder's error, if any
    return True
