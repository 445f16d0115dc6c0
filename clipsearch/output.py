"""Printing results for people (tables) and programs (JSON, NUL/line-separated paths).

Paths may hold any bytes. JSON escapes undecodable bytes as \\udcXX (json.loads + os.fsencode
give the exact name back); --paths writes the raw bytes.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from . import printable


def write_json(data: Any) -> None:
    text = json.dumps(data, ensure_ascii=False, indent=2)
    # Lone surrogates (undecodable file-name bytes) become the JSON escape \udcXX.
    sys.stdout.buffer.write(text.encode("utf-8", "backslashreplace") + b"\n")
    sys.stdout.flush()


def write_paths(paths: list[str], null: bool = False) -> None:
    end = b"\0" if null else b"\n"
    sys.stdout.buffer.write(b"".join(os.fsencode(p) + end for p in paths))
    sys.stdout.flush()


def human(path: str) -> str:
    return printable(path)


def format_size(num: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if num < 1024 or unit == "GB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1024
    return f"{num:.1f} TB"
