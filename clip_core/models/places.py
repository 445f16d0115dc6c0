"""The places a model's files may be on this machine, and the file names found there.

Nothing here touches the network or knows a model kind (clip_core.models.sources does):
clipsearch's own model store (`CLIPSEARCH_MODELS`), the Hugging Face hub cache and
open_clip's URL cache, searched through the helpers below.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from clip_core.models.ref import WEIGHT_SUFFIXES

WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
CONFIG_NAME = "open_clip_config.json"
# Files a Hugging Face tokenizer may need; absent ones are skipped (404).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
    "merges.txt", "vocab.txt", "spiece.model", "sentencepiece.bpe.model",
)
# A file or folder name clipsearch writes into its store or a bundle: no hidden names.
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+@=-]*$")


def default_models_dir() -> Path:
    env = os.environ.get("CLIPSEARCH_MODELS")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("clipsearch", appauthor=False)) / "models"


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def clip_url_cache_dir() -> Path:
    return Path.home() / ".cache" / "clip"


@dataclass
class Located:
    """What was found: a weights file for an architecture, or a whole local-dir bundle."""

    weights: Path | None = None
    bundle_dir: Path | None = None
    searched: list[Path] = field(default_factory=list)
    partial: Path | None = None  # a folder holding part of the model (for the message)


def hub_repo_dir(repo_id: str) -> Path:
    return hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def hub_snapshots(repo_id: str, revision: str | None = None) -> list[Path]:
    """Snapshot folders of a repo in the HF cache, best first: the one `refs/<revision>`
    names (or the commit `revision` itself), then, unless a revision was asked for, the
    others, newest first."""
    repo_dir = hub_repo_dir(repo_id)
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return []
    found = sorted((p for p in snapshots.iterdir() if p.is_dir()),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    try:
        commit = (repo_dir / "refs" / (revision or "main")).read_text(encoding="utf-8").strip()
    except (OSError, ValueError):
        commit = revision or ""  # no such ref: maybe a commit hash
    best = [p for p in found if p.name == commit]
    return best if revision else best + [p for p in found if p.name != commit]


def incomplete_blobs(snapshot: Path) -> list[Path]:
    """huggingface_hub's `.incomplete` files beside a snapshot: a download that was cut."""
    blobs = snapshot.parent.parent / "blobs"
    if snapshot.parent.name != "snapshots" or not blobs.is_dir():
        return []
    return sorted(blobs.glob("*.incomplete"))


def hub_snapshot_files(repo_id: str, filenames: tuple[str, ...]) -> tuple[list[Path], list[Path]]:
    """Files of a hub repo already in the HF cache (the first snapshot that has any, refs/main
    first), and the folders looked in."""
    found: list[Path] = []
    for snap in hub_snapshots(repo_id):
        found.extend(snap / name for name in filenames if (snap / name).is_file())
        if found:
            break
    return found, [hub_repo_dir(repo_id) / "snapshots"]


def is_openclip_bundle(folder: Path) -> bool:
    return (folder / CONFIG_NAME).is_file() and any((folder / n).is_file() for n in WEIGHT_NAMES)


def is_transformers_clip(folder: Path) -> bool:
    """config.json + weights in transformers' layout (completeness is ensure_local's check)."""
    from clip_core.models import hf_layout

    try:
        return ((folder / hf_layout.CONFIG_FILE).is_file() and bool(hf_layout.weight_files(folder))
                and hf_layout.is_clip_config(hf_layout.read_json(folder / hf_layout.CONFIG_FILE)))
    except ValueError:
        return False


def model_files(folder: Path) -> list[Path]:
    """The config and weights of a bundle folder: editing its README compiles nothing."""
    return sorted(p for p in folder.iterdir()
                  if p.name == CONFIG_NAME or p.name.endswith(WEIGHT_SUFFIXES))


def cut_note(folder: Path) -> str:
    """"; an interrupted download left ..." when the folder's snapshot has cut blobs."""
    cut = incomplete_blobs(folder)
    if not cut:
        return ""
    sizes = ", ".join(f"{p.name[:12]}... {p.stat().st_size} bytes" for p in cut[:3])
    return (f"; an interrupted download left {len(cut)} .incomplete file(s) in "
            f"{cut[0].parent} ({sizes}): finish the download, the cut file is not usable")


def pretrained_files(pretrained_cfg: dict) -> list[str]:
    hub = pretrained_cfg.get("hf_hub", "")
    if hub and not hub.endswith("/"):
        return [os.path.basename(hub)]
    if hub:
        return list(WEIGHT_NAMES)
    return [os.path.basename(pretrained_cfg.get("url", "")) or "weights file"]


def hub_expected() -> list[str]:
    return [f"{CONFIG_NAME} + {WEIGHT_NAMES[0]} (open_clip bundle)",
            "or config.json + model.safetensors (transformers CLIP repository)"]


def store_name(remote_name: str) -> str:
    """Store names are the ones clipsearch looks for (an open_clip weights name for any
    other weights file)."""
    if remote_name in (CONFIG_NAME, *WEIGHT_NAMES, *TOKENIZER_FILES):
        return remote_name
    return ("open_clip_model.safetensors" if remote_name.endswith(".safetensors")
            else "open_clip_pytorch_model.bin")
