"""Runs the real `clipsearch` CLI with one hostile event injected between crawl and load.

    python -m tests.stall_helper HOOK MARKER clipsearch-args...

HOOK "fifo-after-crawl": once a root is crawled, every listed file in a folder named "to-fifo"
  is replaced by a FIFO (swapped after the crawl; nothing ever writes to them).
HOOK "stuck-read": reading a file whose name contains "stuck" blocks in a real system call
  that never returns (opening a FIFO without a writer), like a read from a hung network disk.
MARKER: a file this process creates when the hook has fired, so the test knows when to act.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import indexer.pipeline
import indexer.stages
from clipsearch.cli import main


def _fifo_after_crawl(marker: Path) -> None:
    real_crawl = indexer.pipeline.crawl

    def crawl(*args, **kwargs):
        items = list(real_crawl(*args, **kwargs))
        for item in items:
            if (isinstance(item, indexer.pipeline.Candidate)
                    and os.path.basename(os.path.dirname(item.path)) == "to-fifo"):
                os.unlink(item.path)
                os.mkfifo(item.path)
        marker.touch()
        yield from items

    indexer.pipeline.crawl = crawl


def _stuck_read(marker: Path) -> None:
    real_read = indexer.stages.read_file
    never = marker.with_name(marker.name + ".fifo")
    os.mkfifo(never)

    def read_file(path: str, *args, **kwargs):
        if "stuck" in os.path.basename(path):
            marker.touch()
            with open(never, "rb"):  # blocks until a writer comes: never
                pass
        return real_read(path, *args, **kwargs)

    indexer.stages.read_file = read_file


if __name__ == "__main__":
    hook, marker, argv = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    {"fifo-after-crawl": _fifo_after_crawl, "stuck-read": _stuck_read}[hook](marker)
    main(argv, prog_name="clipsearch")
