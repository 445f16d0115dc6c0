"""Photo filters (date, orientation, size, camera, file type) as one SQLite query over the
catalog.

The ids it returns become the vector search's id selector, so a filter applies inside the
search (the exact top-k of the photos it keeps), never to a top-k found without it.
A photo's date is its EXIF capture time when the file has one, else its file mtime (local
time). A file's type is its content's (Pillow's format, stored at index time); a row indexed
before that was stored (until the next index run fills it) falls back to its extension.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass, field
from datetime import date

from clipsearch_errors import UsageError

ORIENTATIONS = ("landscape", "portrait", "square")
# --type NAME -> file name extensions (lower case)
TYPES: dict[str, tuple[str, ...]] = {
    "jpeg": (".jpg", ".jpeg", ".jpe"), "png": (".png",), "heic": (".heic", ".heif"),
    "webp": (".webp",), "gif": (".gif",), "tiff": (".tif", ".tiff"), "bmp": (".bmp",),
    "avif": (".avif",),
}
TYPES["jpg"] = TYPES["jpeg"]
TYPES["tif"] = TYPES["tiff"]
TYPES["heif"] = TYPES["heic"]
# --type NAME -> the content formats (Pillow's names) it means; MPO: a JPEG with extra frames
FORMATS: dict[str, tuple[str, ...]] = {
    "jpeg": ("JPEG", "MPO"), "png": ("PNG",), "heic": ("HEIF",), "webp": ("WEBP",),
    "gif": ("GIF",), "tiff": ("TIFF",), "bmp": ("BMP",), "avif": ("AVIF",),
}
FORMATS.update(jpg=FORMATS["jpeg"], tif=FORMATS["tiff"], heif=FORMATS["heic"])
MTIME_SQL = "strftime('%Y-%m-%dT%H:%M:%S', mtime_ns / 1000000000, 'unixepoch', 'localtime')"
DATE_SQL = f"COALESCE(taken_at, {MTIME_SQL})"
# No time zone is this far from UTC (the widest ever, local mean times, within 16 hours):
# an mtime further than this from a day's start in UTC is before or after it everywhere.
_ZONE_REACH_NS = 2 * 86400 * 10**9


@dataclass(frozen=True)
class Filters:
    """What photos to keep. Dates: `2023`, `2023-06` or `2023-06-14`; `after` keeps photos
    from the start of that period on, `before` those before its start.

        Filters(after="2023-06", before="2024", orientation="portrait", min_size="1000x800",
                types=("jpeg",), camera="pixel")

    camera: a case-insensitive substring of the camera's make, its model, or both as
    "make model" (so "google pixel" finds make Google, model Pixel 7).
    """

    after: str | None = None
    before: str | None = None
    orientation: str | None = None
    min_size: str | None = None  # WxH
    types: tuple[str, ...] = field(default_factory=tuple)
    camera: str | None = None

    def __post_init__(self) -> None:
        start, end = (_start_of(self.after, "after"), _start_of(self.before, "before"))
        if start and end and start >= end:
            raise UsageError(f"impossible date range: after {self.after} and before "
                             f"{self.before} leave no day")
        if self.orientation is not None and self.orientation not in ORIENTATIONS:
            raise UsageError(f"orientation is one of {', '.join(ORIENTATIONS)}, not "
                             f"{self.orientation!r}")
        if self.min_size is not None:
            _size(self.min_size)
        if isinstance(self.types, str):
            raise TypeError("types is a list of names: ('jpeg',), not one string")
        if self.camera is not None and not str(self.camera).strip():
            raise UsageError("camera takes some text of the make or model, like 'pixel'")
        unknown = [t for t in self.types if t.lower() not in TYPES]
        if unknown:
            raise UsageError(f"unknown file type {unknown[0]!r}: one of "
                             f"{', '.join(sorted(TYPES))}")

    @property
    def empty(self) -> bool:
        return not (self.after or self.before or self.orientation or self.min_size
                    or self.types or self.camera)

    def where(self) -> tuple[list[str], list]:
        """SQL conditions on `files` (ANDed) and their parameters."""
        clauses: list[str] = []
        params: list = []
        for day, on_or_after in ((_start_of(self.after, "after"), True),
                                 (_start_of(self.before, "before"), False)):
            if day is not None:
                clause, args = _date_clause(day, on_or_after)
                clauses.append(clause)
                params += args
        if self.orientation == "landscape":
            clauses.append("width > height")
        elif self.orientation == "portrait":
            clauses.append("height > width")
        elif self.orientation == "square":
            clauses.append("width = height")
        if self.min_size:
            w, h = _size(self.min_size)
            clauses.append("width >= ? AND height >= ?")
            params += [w, h]
        if self.types:
            formats = sorted({f for t in self.types for f in FORMATS[t.lower()]})
            suffixes = sorted({s for t in self.types for s in TYPES[t.lower()]})
            clauses.append(f"(format IN ({','.join('?' * len(formats))}) OR (format IS NULL AND ("
                           + " OR ".join("lower(path) LIKE ?" for _ in suffixes) + ")))")
            params += formats + [f"%{s}" for s in suffixes]
        if self.camera:
            # LIKE is case-insensitive (ASCII); the text's own % and _ are escaped.
            text = str(self.camera).strip()
            like = "%" + re.sub(r"([\\%_])", r"\\\1", text) + "%"
            clauses.append("(camera_make LIKE ? ESCAPE '\\' OR camera_model LIKE ? ESCAPE '\\'"
                           " OR camera_make || ' ' || camera_model LIKE ? ESCAPE '\\')")
            params += [like] * 3
        return clauses, params


def _date_clause(day: date, on_or_after: bool) -> tuple[str, list]:
    """A photo's date (DATE_SQL) on or after `day`, or before it, as SQL that converts a
    file's mtime to local time only within two days of `day`: DATE_SQL alone did so for
    every row (a 100k-photo date filter spent ~90 ms of ~110 there). The same rows as
    `DATE_SQL >= day` (or `<`) in any time zone, DST changes at midnight included."""
    start = calendar.timegm(day.timetuple()) * 10**9  # the day's start, read as UTC
    low, high = start - _ZONE_REACH_NS, start + _ZONE_REACH_NS
    iso, op = day.isoformat(), ">=" if on_or_after else "<"
    early, late = ("0", "1") if on_or_after else ("1", "0")
    return (f"(CASE WHEN taken_at IS NOT NULL THEN taken_at {op} ?"
            f" WHEN mtime_ns < ? THEN {early} WHEN mtime_ns >= ? THEN {late}"
            f" ELSE {MTIME_SQL} {op} ? END)", [iso, low, high, iso])


def _start_of(text: str | None, what: str) -> date | None:
    """The first day of `2023`, `2023-06` or `2023-06-14`."""
    if text is None:
        return None
    match = re.fullmatch(r"(\d{4})(?:-(\d{1,2})(?:-(\d{1,2}))?)?", str(text).strip())
    try:
        if not match:
            raise ValueError
        year, month, day = (int(g) if g else 1 for g in match.groups())
        return date(year, month, day)
    except ValueError:
        raise UsageError(f"--{what} takes a date like 2023, 2023-06 or 2023-06-14, not "
                         f"{text!r}") from None


def _size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)[xX](\d+)", str(text).strip())
    if not match:
        raise UsageError(f"min size is WIDTHxHEIGHT, like 1920x1080, not {text!r}")
    return int(match.group(1)), int(match.group(2))
