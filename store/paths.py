"""File paths as SQLite text, losslessly.

Photo libraries contain names that are not valid UTF-8. Python decodes those with
surrogateescape, which sqlite3 refuses to encode, so paths are written as their raw bytes cast
to TEXT and read back through a surrogateescape text factory: every name round-trips exactly,
and TEXT comparison (memcmp) keeps prefix queries on folders correct.
"""

from __future__ import annotations

import os


def to_db(path: str) -> bytes:
    """Bind with `CAST(? AS TEXT)`."""
    return os.fsencode(path)


def text_factory(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def folder_range(folder: str) -> tuple[bytes, bytes]:
    """Half-open byte range [lo, hi) holding every path strictly inside `folder`."""
    prefix = os.fsencode(folder.rstrip(os.sep) + os.sep)
    return prefix, prefix[:-1] + bytes([prefix[-1] + 1])


def printable(path: str) -> str:
    """For human output only: undecodable bytes shown as \\xNN, control characters escaped."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)
