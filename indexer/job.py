"""What one index run works with, shared by the pipeline and the two ways it runs stages 3-4
(indexer.local_run in this process, indexer.ray_executor on a cluster): the settings, the
report, the progress a callback receives, and the job handed to an executor.

It imports neither executor, so both can import it without a circle.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from clip_core.encoders import ImageEncoder
from clip_core.pixels.preprocess import PreprocessSpec
from store import Catalog, FileRecord, FileRow


@dataclass
class Skipped:
    path: str
    reason: str
    message: str


@dataclass
class IndexReport:
    model_id: str
    indexed: int = 0  # newly embedded (committed)
    reused: int = 0  # moved/renamed/duplicate files whose stored vector was reused
    unchanged: int = 0
    removed: int = 0
    skipped: list[Skipped] = field(default_factory=list)  # failed in this run
    known_errors: int = 0  # failed before and unchanged since
    interrupted: bool = False
    seconds: float = 0.0
    todo: int = 0  # files this run had to read
    committed: int = 0  # file rows committed by this run (indexed + reused + failed)
    # Roots with no file in the library after the run, and what they hold (indexer.survey).
    empty_roots: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        data = {k: v for k, v in self.__dict__.items() if k != "skipped"}
        data["skipped"] = [s.__dict__ for s in self.skipped]
        return data


@dataclass
class Progress:
    """What a progress callback receives: `done` of `total` files needing work."""

    done: int
    total: int
    path: str | None = None
    workers: int | None = None  # encoder workers of a Ray cluster run (None: this process)
    errors: int = 0  # files that failed so far in this run (committed as error rows)
    # "indexing", or "compiling" while a first run compiles the model for this CPU (files
    # are decoded meanwhile; none is written yet): `note` then says what, for people.
    stage: str = "indexing"
    note: str | None = None


# Files decoded ahead when the image tower runs on torch: at its ~10 img/s (ViT-B-32 fp32, 2
# cores) the decoders keep any queue full, and 192 decoded files (~115 MB of pixels) only
# held memory beside torch and its weights (fp32 index of 200 phone photos: 968 -> 894 MB
# peak at 48; docs/benchmarks.md). Library.index lowers `prefetch` to it for such runs.
TORCH_PREFETCH = 48


@dataclass
class IndexSettings:
    batch_size: int = 32
    workers: int = max(1, min(4, os.cpu_count() or 1))
    prefetch: int = 192  # files decoded ahead of the encoder (and while the model loads)
    draft: bool = True  # reduced-size JPEG decoding (clip_core.pixels.decode)
    include_hidden: bool = False  # dot-files and -folders, @eaDir (indexer.crawl)
    follow_links: bool = False  # symlinks leading out of the root (indexer.crawl)
    cancel: object | None = None  # a threading.Event: set() it to stop like Ctrl-C
    # A Ray cluster to load and encode on (indexer.ray_executor): "auto", "ray://host:10001"
    # or "local"; None runs in this process. Needs the `cluster` extra.
    ray: str | None = None

    def check(self) -> None:
        for name in ("batch_size", "workers", "prefetch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"IndexSettings.{name} must be a whole number >= 1, "
                                 f"not {value!r}")
        if self.ray is not None and (not isinstance(self.ray, str) or not self.ray.strip()):
            raise ValueError(f"IndexSettings.ray must be a Ray address (auto, "
                             f"ray://host:10001, local), not {self.ray!r}")


@dataclass
class Job:
    """What one index run works with, passed between its steps."""

    catalog: Catalog
    model_id: str
    get_encoder: Callable[[], ImageEncoder]
    settings: IndexSettings
    progress: Callable[[Progress], None] | None
    report: IndexReport
    preprocess_hint: PreprocessSpec | None
    # Builds the image encoder on a Ray worker (picklable; settings.ray runs only).
    worker_encoder: Callable[[], ImageEncoder] | None = None


def tally(report: IndexReport, committed: list[tuple[FileRecord, bool]]) -> None:
    """Count what a BatchWriter call committed into the report."""
    for record, embedded in committed:
        report.committed += 1
        if record.status == "error":
            report.skipped.append(Skipped(record.path, str(record.error_reason),
                                          str(record.error_message)))
        elif embedded:
            report.indexed += 1
        else:
            report.reused += 1


def same_error(record: FileRecord, row: FileRow | None) -> bool:
    """A retried file failed exactly as its row says: nothing to rewrite."""
    return (row is not None and record.status == "error"
            and record.error_reason == row.error_reason
            and (record.size, record.mtime_ns) == (row.size, row.mtime_ns))
