"""Where model weights are looked for on disk, and the one clear error when they are absent.

Nothing here touches the network: clipsearch downloads only when the user runs
`clipsearch models download`. Loading looks in three places, in order:
1. clipsearch's own model store (`CLIPSEARCH_MODELS`, default: the platform's user data folder);
2. the Hugging Face hub cache (`HF_HUB_CACHE`, `HF_HOME/hub`, `~/.cache/huggingface/hub`);
3. open_clip's URL cache (`~/.cache/clip`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from clip_core.models.open_clip_tables import architecture_configs, pretrained_cfg, pretrained_table
from clip_core.models.ref import ModelRef, split_revision
from clipsearch_errors import ModelError

WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
CONFIG_NAME = "open_clip_config.json"


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


def store_dir_for(ref: ModelRef, models_dir: Path) -> Path:
    """Folder in clipsearch's store that holds this reference's files."""
    if ref.kind == "hf-hub":
        return models_dir / "hf-hub" / ref.name
    return models_dir / ref.name / str(ref.pretrained)


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


def locate_pretrained(ref: ModelRef, pretrained_cfg: dict, models_dir: Path) -> Located:
    """Find weights for an open_clip (architecture, tag) pair without any network access."""
    located = Located()
    own = store_dir_for(ref, models_dir)
    located.searched.append(own)
    for name in (*WEIGHT_NAMES, "open_clip_model.bin", "model.pt"):
        if (own / name).is_file():
            located.weights = own / name
            return located
    hub = pretrained_cfg.get("hf_hub", "")
    if hub:
        # open_clip's convention: "org/repo/" means the default file names, else "org/repo/file".
        repo_id, filename = os.path.split(hub)
        names = (filename,) if filename else WEIGHT_NAMES
        files, places = hub_snapshot_files(repo_id, names)
        located.searched.extend(places)
        if files:
            located.weights = files[0]
            return located
    url = pretrained_cfg.get("url", "")
    if url:
        cached = clip_url_cache_dir() / os.path.basename(url)
        located.searched.append(clip_url_cache_dir())
        if cached.is_file():
            located.weights = cached
    return located


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


def locate_hub_bundle(ref: ModelRef, models_dir: Path) -> Located:
    """An `hf-hub:ORG/REPO` model: an open_clip bundle (config + weights in one folder) or a
    transformers CLIP repository, in clipsearch's store or the HF cache. `partial` is the
    folder that holds part of one, for the error message."""
    from clip_core.models import hf_layout

    located = Located()
    repo, revision = split_revision(ref.name)
    folders = [store_dir_for(ref, models_dir), *hub_snapshots(repo, revision)]
    located.searched = [folders[0], hub_repo_dir(repo) / "snapshots"]
    for folder in folders:
        if is_openclip_bundle(folder) or is_transformers_clip(folder):
            located.bundle_dir = folder
            return located
        if located.partial is None and folder.is_dir() and (
                hf_layout.looks_like_transformers(folder) or (folder / CONFIG_NAME).is_file()):
            located.partial = folder
    if located.partial is None and len(folders) > 1:
        located.partial = folders[1]  # a snapshot with nothing usable (cut blobs?)
    return located


def hub_expected() -> list[str]:
    return [f"{CONFIG_NAME} + {WEIGHT_NAMES[0]} (open_clip bundle)",
            "or config.json + model.safetensors (transformers CLIP repository)"]


def check_transformers_folder(ref: ModelRef, folder: Path, models_dir: Path) -> None:
    """MissingModelError / ModelLoadError for a transformers CLIP folder that is incomplete
    (config without weights, weights without config, no tokenizer where one is needed, a cut
    `.incomplete` blob) or not a CLIPModel. Torch-free, milliseconds."""
    from clip_core.models import hf_layout

    try:
        hf_layout.check_folder(folder)
    except hf_layout.MissingFiles as exc:
        fix = fix_steps(ref, models_dir)
        # Finishing this very folder is a fix too: after a download (hf-hub), before the
        # generic advice (local-dir).
        fix.insert(1 if ref.kind == "hf-hub" else 0,
                   f"copy the missing file(s) into {folder} from the model's Hugging Face "
                   "repository (or another copy of it)")
        raise MissingModelError(ref, exc.expected, [folder], fix,
                                exc.detail + _cut_note(folder)) from None
    except ValueError as exc:
        raise ModelLoadError(f"Cannot use {ref.display}: {exc}") from None


def _cut_note(folder: Path) -> str:
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


def fix_steps(ref: ModelRef, models_dir: Path) -> list[str]:
    spec = ref.to_spec()
    if ref.kind in ("local-dir", "file"):  # the user's own files: nothing to download
        return [
            f"check the path {ref.name if ref.kind == 'local-dir' else ref.pretrained} (a "
            f"folder needs {CONFIG_NAME} or a transformers config.json, and a weights file)",
            "from the machine that has the model: `clipsearch models export MODEL -o "
            "model.clipsearch` there, copy the file here, then `clipsearch models import "
            "model.clipsearch` (it prints the --model to use)",
        ]
    cmd = f"clipsearch models download {spec['model']}"
    if spec.get("pretrained"):
        cmd += f" --pretrained {spec['pretrained']}"
    return [
        f"on a machine with internet: `{cmd}`",
        "air-gapped: on a connected machine run `clipsearch models export "
        f"{spec['model']}{' --pretrained ' + spec['pretrained'] if spec.get('pretrained') else ''}"
        " -o model.clipsearch`, copy the file here, then `clipsearch models import "
        "model.clipsearch`",
        f"or put the expected file(s) into {store_dir_for(ref, models_dir)}",
        "or point --model at files you already have: `--model local-dir:PATH` (an open_clip "
        "bundle or a Hugging Face transformers CLIP folder) or `--pretrained FILE`",
    ]


def check_known(ref: ModelRef) -> None:
    """Raise ModelLoadError for an architecture name or pretrained tag open_clip does not
    know, read from its config files without importing torch (in milliseconds, not after
    seconds of imports). The same lists as open_clip.list_models / list_pretrained_tags."""
    known = architecture_configs()
    if ref.kind not in ("openclip", "random", "file") or not known:
        return  # bundles carry their own config; no open_clip: the loader will say so
    if ref.name not in known:
        close = [m for m in sorted(known) if ref.name.lower() in m.lower()][:8]
        hint = f" Similar: {', '.join(close)}." if close else ""
        raise ModelLoadError(f"Unknown open_clip architecture {ref.name!r}.{hint} "
                             "`clipsearch models list` shows them all.")
    if ref.kind == "openclip" and not pretrained_cfg(ref.name, str(ref.pretrained)):
        tags = list(pretrained_table().get(ref.name, {}))
        if ref.tag_defaulted:  # the user typed no tag: do not name the one we tried
            raise ModelLoadError(f"{ref.name} has no pretrained weights in open_clip: pass "
                                 "--pretrained FILE (your weights) or --pretrained none "
                                 "(random weights, for tests).")
        raise ModelLoadError(f"Unknown pretrained tag {ref.pretrained!r} for {ref.name}. "
                             f"Known tags: {', '.join(tags) or 'none'}; or pass a weights "
                             "file path.")


def ensure_local(ref: ModelRef, models_dir: Path | None = None) -> None:
    """Raise MissingModelError when `ref`'s files are absent, without importing torch, so a
    missing model is reported in well under a second; unknown names and tags too."""
    models_dir = models_dir or default_models_dir()
    check_known(ref)
    if ref.kind == "openclip":
        cfg = pretrained_cfg(ref.name, str(ref.pretrained))
        located = locate_pretrained(ref, cfg, models_dir) if cfg else Located(weights=Path())
        if located.weights is None:
            raise MissingModelError(ref, pretrained_files(cfg), located.searched,
                                    fix_steps(ref, models_dir))
    elif ref.kind == "hf-hub":
        located = locate_hub_bundle(ref, models_dir)
        folder = located.bundle_dir or located.partial
        if folder is not None and not is_openclip_bundle(folder) and (
                located.bundle_dir is not None or not (folder / CONFIG_NAME).is_file()):
            check_transformers_folder(ref, folder, models_dir)  # raises what is missing
        if located.bundle_dir is None:
            raise MissingModelError(ref, hub_expected(), located.searched,
                                    fix_steps(ref, models_dir),
                                    _cut_note(folder).removeprefix("; ") if folder else None)
    elif ref.kind == "local-dir" and not Path(ref.name).is_dir():
        raise MissingModelError(ref, [CONFIG_NAME, WEIGHT_NAMES[0]], [Path(ref.name)],
                                fix_steps(ref, models_dir))
    elif ref.kind == "local-dir" and not (Path(ref.name) / CONFIG_NAME).is_file():
        from clip_core.models.hf_layout import looks_like_transformers

        if looks_like_transformers(Path(ref.name)):
            check_transformers_folder(ref, Path(ref.name), models_dir)
    elif ref.kind == "file" and not Path(str(ref.pretrained)).is_file():
        raise MissingModelError(ref, [str(ref.pretrained)], [Path(str(ref.pretrained)).parent],
                                fix_steps(ref, models_dir))
