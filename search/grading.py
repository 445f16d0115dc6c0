"""Calibrated relevance grades: is a result a good match, or only the closest there is?

A raw cosine means nothing to a person and its scale differs per model, so a text query's
scores are compared with what a bank of neutral prompts ("a photo", "something", ...) scores
against the same library with the same model. A neutral prompt says nothing about what a
photo shows, so:

- strong: the result beats what the strongest neutral prompt scores on 90% of the library's
  photos (the top tenth is left out: a neutral prompt happens to align with a few photos);
- weak: it beats the neutral prompts' typical (median) score on this library;
- none: below that.

A query with no strong result is flagged "no good match". docs/search.md has the measured
figures and the limits.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

NEUTRAL_PROMPTS: tuple[str, ...] = (
    "a photo", "an image", "a picture", "something", "a photo of something", "a thing",
    "an object", "stuff", "a scene", "a snapshot",
)
SAMPLE_SIZE = 4096  # library vectors the bars are measured on (evenly spread)
STRONG_QUANTILE = 0.9  # measured: docs/search.md


@dataclass(frozen=True)
class Calibration:
    weak: float  # score above which a result is weak (neutral prompts' typical score)
    strong: float  # score above which a result is strong (their 90th percentile)

    def grade(self, score: float) -> str:
        if score > self.strong:
            return "strong"
        return "weak" if score > self.weak else "none"

    def to_dict(self) -> dict:
        return {"weak": round(self.weak, 6), "strong": round(self.strong, 6)}


def calibrate(neutral: np.ndarray, library: np.ndarray) -> Calibration:
    """Bars from neutral prompt vectors (P x d) and a sample of library vectors (N x d)."""
    scores = np.asarray(neutral, np.float32) @ np.asarray(library, np.float32).T
    strong = float(np.quantile(scores, STRONG_QUANTILE, axis=1).max())
    weak = float(np.median(scores, axis=1).max())
    return Calibration(weak=weak, strong=max(strong, weak))


METHOD = 1  # bump when the prompts or the bars change: cached bars are then measured again


def load_bars(path: Path, model_id: str, generation: int) -> Calibration | None:
    """Bars cached beside the FAISS file by an earlier process, if still for this catalog
    generation: a one-shot CLI query then skips embedding the ten neutral prompts."""
    try:
        data = json.loads(path.read_text())
        if (data.get("method"), data.get("model_id"), data.get("generation")) == \
                (METHOD, model_id, generation):
            return Calibration(weak=float(data["weak"]), strong=float(data["strong"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def save_bars(path: Path, model_id: str, generation: int, cal: Calibration) -> None:
    """Best effort (a read-only or full disk just measures again next time); written to a
    private temp file (swept by store.sweep_temp_files if killed) and renamed."""
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.pid{os.getpid()}.",
                                   suffix=".tmp")
        with os.fdopen(fd, "w") as out:
            json.dump({"method": METHOD, "model_id": model_id, "generation": generation,
                       "weak": cal.weak, "strong": cal.strong}, out)
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


class QueryResults(list):
    """The results (a list of SearchResult, best first) and the verdict on the query:
    `good_match` False when no result is strong (None: not graded, e.g. image terms),
    `calibration` the bars used, `reason` why the list is empty when it is."""

    good_match: bool | None = None
    calibration: Calibration | None = None
    reason: str | None = None

    def to_dict(self) -> dict:
        return {"good_match": self.good_match,
                "calibration": self.calibration.to_dict() if self.calibration else None,
                "reason": self.reason, "results": [r.to_dict() for r in self]}
