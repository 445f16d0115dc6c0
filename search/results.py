"""Typed search results shared by the API, the CLI and JSON output."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class SearchResult:
    rank: int
    score: float | None  # cosine similarity in [-1, 1]; None in a listing by date (filters only)
    path: str
    file_id: int
    root: str | None = None
    width: int | None = None
    height: int | None = None
    taken_at: str | None = None
    grade: str | None = None  # strong / weak / none (search/grading.py); None: not graded
    # taken_at: the EXIF capture time (local clock), else the file's mtime (local time);
    # taken_at_source says which ('exif' or 'mtime'), taken_offset is EXIF's UTC offset.
    taken_at_source: str | None = None
    taken_offset: str | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    format: str | None = None  # the content's type (JPEG, PNG, HEIF...), None if not read yet

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LabelScore:
    label: str
    probability: float
    score: float  # cosine similarity

    def to_dict(self) -> dict:
        return asdict(self)
