"""Where model weights are looked for on disk, and the one clear error when they are absent.

Nothing here touches the network: clipsearch downloads only when the user runs
`clipsearch models download`. Loading looks in three places, in order:
1. clipsearch's own model store (`CLIPSEARCH_MODELS`, default: the platform's user data folder);
2. the Hugging Face hub cache (`HF_HUB_CACHE`, `HF_HOME/hub`, `~/.cache/huggingface/hub`);
3. open_clip's URL cache (`~/.cache/clip`).
Each kind of model says where its files are and what is missing (clip_core.models.sources);
`raise_problem` below is the one place that turns that into MissingModelError.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from clip_core.models.open_clip_tables import architecture_configs, pretrained_cfg, pretrained_table
from clip_core.models.places import (
    CONFIG_NAME,
    WEIGHT_NAMES,
    Located,
    clip_url_cache_dir,
    default_models_dir,
    hf_cache_dir,
    hub_expected,
    hub_snapshot_files,
    hub_snapshots,
    is_openclip_bundle,
    is_transformers_clip,
    pretrained_files,
)
from clip_core.models.ref import ModelRef
from clip_core.models.sources import (
    HubSource,
    Missing,
    OpenClipSource,
    Problem,
    Unusable,
    source_for,
)
from clipsearch_errors import ModelError

T = TypeVar("T")

# Re-exported: the names callers have always imported from here.
__all__ = [
    "CONFIG_NAME", "WEIGHT_NAMES", "Located", "MissingModelError", "ModelLoadError",
    "architecture_configs", "check_known", "clip_url_cache_dir", "default_models_dir",
    "ensure_local", "fix_steps", "hf_cache_dir", "hub_expected", "hub_snapshot_files",
    "hub_snapshots", "is_openclip_bundle", "is_transformers_clip", "locate_hub_bundle",
    "locate_pretrained", "pretrained_cfg", "pretrained_files", "pretrained_table",
    "raise_problem", "require", "store_dir_for",
]


class ModelLoadError(ModelError, RuntimeError):
    """A model's files exist but cannot be used (bad config, unsafe pickle, wrong shapes), or
    its architecture name or pretrained tag is unknown."""


class MissingModelError(ModelError, RuntimeError):
    """Raised, within milliseconds, when a model's files are not on this machine."""

    def __init__(self, ref: ModelRef, expected: list[str], looked_in: list[Path], fix: list[str],
                 detail: str | None = None):
        self.ref = ref
        self.expected = expected
        self.looked_in = looked_in
        self.fix = fix
        self.detail = detail  # what was found instead (a partial download), when known
        lines = [
            f"Model {ref.display} is not available on this machine "
            "(clipsearch never downloads unless asked).",
            *([f"Found: {detail}"] if detail else []),
            "Expected file(s): " + ", ".join(expected),
            "Looked in:",
            *(f"  - {place}" for place in looked_in),
            "To fix it:",
            *(f"  - {step}" for step in fix),
        ]
        super().__init__("\n".join(lines))


def raise_problem(ref: ModelRef, problem: Problem | None) -> None:
    """The one raise site of MissingModelError: a source's `Missing` (or `Unusable`: the
    ModelLoadError of a name open_clip does not know, or files that cannot be used)."""
    if isinstance(problem, Missing):
        raise MissingModelError(ref, problem.expected, problem.looked_in, problem.fix,
                                problem.detail)
    if problem is not None:
        raise ModelLoadError(problem.message)


def require(ref: ModelRef, found: T | Problem) -> T:
    """`found` unless it is a problem, which is raised."""
    if isinstance(found, Missing | Unusable):
        raise_problem(ref, found)
    return found  # type: ignore[return-value]  # a problem always raised above


def store_dir_for(ref: ModelRef, models_dir: Path) -> Path:
    """Folder in clipsearch's store that holds this reference's files."""
    return source_for(ref, models_dir).store_dir


def locate_pretrained(ref: ModelRef, pretrained_cfg: dict, models_dir: Path) -> Located:
    """Find weights for an open_clip (architecture, tag) pair without any network access."""
    return OpenClipSource(ref, models_dir).locate(pretrained_cfg)


def locate_hub_bundle(ref: ModelRef, models_dir: Path) -> Located:
    """An `hf-hub:ORG/REPO` model: an open_clip bundle (config + weights in one folder) or a
    transformers CLIP repository, in clipsearch's store or the HF cache."""
    return HubSource(ref, models_dir).locate()


def fix_steps(ref: ModelRef, models_dir: Path) -> list[str]:
    return source_for(ref, models_dir).fix()


def check_known(ref: ModelRef) -> None:
    """Raise ModelLoadError for an architecture name or pretrained tag open_clip does not
    know, read from its config files without importing torch (in milliseconds, not after
    seconds of imports). The same lists as open_clip.list_models / list_pretrained_tags."""
    raise_problem(ref, source_for(ref, default_models_dir()).unknown())


def ensure_local(ref: ModelRef, models_dir: Path | None = None) -> None:
    """Raise MissingModelError when `ref`'s files are absent, without importing torch, so a
    missing model is reported in well under a second; unknown names and tags too."""
    source = source_for(ref, models_dir or default_models_dir())
    raise_problem(ref, source.unknown() or source.missing())
