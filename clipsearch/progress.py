"""A tqdm progress bar fed by the API's progress callback."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tqdm import tqdm

    from . import Progress


class ProgressBar:
    def __init__(self, disable: bool = False):
        self.disable = disable
        self.bar: tqdm | None = None

    def update(self, progress: Progress) -> None:
        if self.disable:
            return
        # A first run with a model compiles it for this CPU (seconds) before any file is
        # written: the bar says so rather than sit at 0.
        note = progress.note if progress.stage != "indexing" and progress.note else None
        desc = note[:1].upper() + note[1:] if note else "Indexing"
        if self.bar is None:
            # Imported here: a --quiet or --json run never draws, and tqdm's import (~16 ms,
            # importlib.metadata for its version) would precede the run's first file.
            from tqdm import tqdm

            self.bar = tqdm(total=progress.total, unit="img", desc=desc, dynamic_ncols=True)
            if note:  # the compile's own lines (stderr) then start on a line of their own
                sys.stderr.write("\n")
        elif self.bar.desc.rstrip(": ") != desc:
            self.bar.set_description(desc, refresh=False)
            if not note:  # the rate and time left count from the first file, not the compile
                self.bar.reset(total=progress.total)
        if progress.workers is not None:  # a Ray run: the rate shown is the cluster's
            self.bar.set_postfix_str(f"{progress.workers} workers", refresh=False)
        self.bar.update(progress.done - self.bar.n)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
