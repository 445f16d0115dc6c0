"""What a root holds when an index run found nothing to index in it, so the user hears why
("3 files, none an image; 2 hidden") instead of "0 indexed". Walks like indexer.crawl (hidden
entries and @eaDir left out unless asked; symlinked folders are not entered) but only counts."""

from __future__ import annotations

import os
from collections import Counter

from .crawl import NAS_DIRS

MAX_ENTRIES = 100_000  # a huge tree without photos: stop counting, the gist is clear


def survey_root(root: str, extensions: frozenset[str], include_hidden: bool = False) -> dict:
    """{"root", "files", "images", "hidden", "unsupported": {".ext": count}, "truncated"}:
    files seen, of which images with a supported extension, hidden entries left out, and the
    other files by extension ("" for none)."""
    files = images = hidden = 0
    unsupported: Counter[str] = Counter()
    stack = [root]
    while stack and files + hidden < MAX_ENTRIES:
        try:
            with os.scandir(stack.pop()) as it:
                entries = list(it)
        except OSError:
            continue  # the crawl already reported it as an error row
        for entry in entries:
            if not include_hidden and (entry.name.startswith(".") or entry.name in NAS_DIRS):
                hidden += 1
            elif _is_dir(entry):
                if not entry.is_symlink():  # the crawl walked it and found no image either
                    stack.append(entry.path)
            else:
                files += 1
                ext = os.path.splitext(entry.name)[1].lower()
                if ext in extensions:
                    images += 1
                else:
                    unsupported[ext] += 1
    return {"root": root, "files": files, "images": images, "hidden": hidden,
            "unsupported": dict(unsupported.most_common()),
            "truncated": files + hidden >= MAX_ENTRIES}


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False
