"""One class per kind of model reference: where its files are and what to say when they are not.

A ModelSource (`source_for(ref, models_dir)`) owns, for its kind: locating the files, the
expected files and fix commands of a MissingModelError, the files behind the compile cache's
weights stamp, the files an export takes, and how torch_backend.loading builds it. Sources
raise nothing for missing or unusable files: they return `Missing` / `Unusable`, which
clip_core.models.files turns into the one MissingModelError (or ModelLoadError) raise.

Adding a model kind: a row in clip_core.models.ref.KINDS (its names), a subclass (in
architecture.py or folders.py) registered in SOURCES below (its files), and the rule in
`parse_model` that produces it.
"""

from __future__ import annotations

from pathlib import Path

from clip_core.models.ref import ModelRef
from clip_core.models.sources.architecture import (
    OpenClipSource,
    RandomSource,
    WeightsFileSource,
    bundle_config,
)
from clip_core.models.sources.base import (
    ExportFiles,
    LoadPlan,
    Missing,
    ModelSource,
    Problem,
    Unusable,
)
from clip_core.models.sources.folders import BundledSource, HubSource, LocalDirSource

__all__ = [
    "SOURCES", "BundledSource", "ExportFiles", "HubSource", "LoadPlan", "LocalDirSource",
    "Missing", "ModelSource", "OpenClipSource", "Problem", "RandomSource", "Unusable",
    "WeightsFileSource", "bundle_config", "source_for",
]

SOURCES: dict[str, type[ModelSource]] = {
    cls.kind: cls for cls in (OpenClipSource, RandomSource, WeightsFileSource, HubSource,
                              LocalDirSource, BundledSource)
}


def source_for(ref: ModelRef, models_dir: Path) -> ModelSource:
    return SOURCES[ref.kind](ref, models_dir)
