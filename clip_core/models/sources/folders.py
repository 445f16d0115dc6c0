"""Sources whose files sit together in one folder (an open_clip bundle or a transformers
CLIP folder): a hub repository, the user's own folder, a model shipped with clipsearch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

from clip_core.models import hf_layout
from clip_core.models.places import (
    CONFIG_NAME,
    SAFE_NAME,
    TOKENIZER_FILES,
    WEIGHT_NAMES,
    Located,
    cut_note,
    hub_expected,
    hub_repo_dir,
    hub_snapshots,
    is_openclip_bundle,
    is_transformers_clip,
    model_files,
)
from clip_core.models.ref import HF_HUB_PREFIX, WEIGHT_SUFFIXES, ModelRef, split_revision
from clip_core.models.sources.base import (
    ExportFiles,
    LoadPlan,
    Missing,
    ModelSource,
    OwnFiles,
    Problem,
    Unusable,
)


class _Folder(ModelSource):
    """A model whose files sit together in one folder, in either layout."""

    # Where "copy the missing file(s) into FOLDER" goes among the fixes.
    folder_fix_at: ClassVar[int] = 0

    def check_transformers(self, folder: Path) -> Problem | None:
        """A transformers CLIP folder that is incomplete (config without weights, weights
        without config, no tokenizer where one is needed, a cut `.incomplete` blob) or not a
        CLIPModel. Torch-free, milliseconds."""
        try:
            hf_layout.check_folder(folder)
        except hf_layout.MissingFiles as exc:
            fix = self.fix()
            fix.insert(self.folder_fix_at,
                       f"copy the missing file(s) into {folder} from the model's Hugging Face "
                       "repository (or another copy of it)")
            return Missing(exc.expected, [folder], fix, exc.detail + cut_note(folder))
        except ValueError as exc:
            return Unusable(f"Cannot use {self.ref.display}: {exc}")
        return None

    def folder_plan(self, folder: Path) -> LoadPlan | Problem:
        """Load a transformers folder by conversion, a bundle through open_clip."""
        if is_transformers_clip(folder):
            return LoadPlan(transformers_dir=folder)
        config = folder / CONFIG_NAME
        weights = [p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES]
        if not config.is_file() or not weights:
            return self.missing_here([CONFIG_NAME, " or ".join(WEIGHT_NAMES)], [folder])
        try:
            if "model_cfg" not in json.loads(config.read_text()):
                return Unusable(f"{config} has no 'model_cfg' key (open_clip bundle format)")
        except json.JSONDecodeError as exc:
            return Unusable(f"{config} is not valid JSON: {exc}")
        return LoadPlan(f"local-dir:{folder}")

    @staticmethod
    def bundle_text_config(folder: Path) -> dict:
        """An open_clip bundle's text_cfg ({} for a transformers folder: converted without
        open_clip's Hugging Face text towers)."""
        config = folder / CONFIG_NAME
        if not config.is_file():
            return {}
        return json.loads(config.read_text()).get("model_cfg", {}).get("text_cfg", {})


class HubSource(_Folder):
    """`hf-hub:ORG/REPO[@REV]` (or `ORG/REPO`): an open_clip bundle or a transformers CLIP
    repository, in clipsearch's store or the HF cache."""

    kind = "hf-hub"
    folder_fix_at = 1  # after a download

    @property
    def store_dir(self) -> Path:
        return self.models_dir / "hf-hub" / self.ref.name

    def locate(self) -> Located:
        """`partial` is the folder that holds part of one, for the error message."""
        located = Located()
        repo, revision = split_revision(self.ref.name)
        folders = [self.store_dir, *hub_snapshots(repo, revision)]
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

    def missing(self) -> Problem | None:
        located = self.locate()
        folder = located.bundle_dir or located.partial
        if folder is not None and not is_openclip_bundle(folder) and (
                located.bundle_dir is not None or not (folder / CONFIG_NAME).is_file()):
            problem = self.check_transformers(folder)  # what is missing
            if problem:
                return problem
        if located.bundle_dir is None:
            return self.missing_here(hub_expected(), located.searched,
                                     cut_note(folder).removeprefix("; ") if folder else None)
        return None

    def _bundle(self) -> Path | Missing:
        located = self.locate()
        if located.bundle_dir is None:  # missing() said what; this is a race
            return self.missing_here(hub_expected(), located.searched)
        return located.bundle_dir

    def weight_files(self) -> list[Path]:
        bundle = self.locate().bundle_dir
        return model_files(bundle) if bundle else []

    def load_plan(self) -> LoadPlan | Problem:
        bundle = self._bundle()
        if isinstance(bundle, Missing):
            return bundle
        if not (bundle / CONFIG_NAME).is_file():  # a transformers repository
            return LoadPlan(transformers_dir=bundle)
        return LoadPlan(f"local-dir:{bundle}")

    def export_files(self) -> ExportFiles | Problem:
        folder = self.missing() or self._bundle()
        if not isinstance(folder, Path):
            return folder
        if not is_openclip_bundle(folder):  # a transformers repository: the files it has
            return ExportFiles({p.name: p.resolve() for p in hf_layout.folder_files(folder)})
        weights = next(folder / n for n in WEIGHT_NAMES if (folder / n).is_file())
        names = [CONFIG_NAME, weights.name, *TOKENIZER_FILES]
        return ExportFiles({n: (folder / n).resolve() for n in names if (folder / n).is_file()})

    def text_config(self) -> dict | None:
        bundle = self.locate().bundle_dir
        return None if bundle is None else self.bundle_text_config(bundle)

    @classmethod
    def installed(cls, spec: dict, folder_name: str, models_dir: Path
                  ) -> tuple[Path, ModelRef] | None:
        model = str(spec.get("model") or "")
        repo = model[len(HF_HUB_PREFIX):]
        if not model.startswith(HF_HUB_PREFIX) or len(repo.split("/")) != 2 or not all(
                SAFE_NAME.match(p) for p in repo.split("/")):
            return None
        ref = ModelRef(cls.kind, repo)
        return cls(ref, models_dir).store_dir, ref


class LocalDirSource(OwnFiles, _Folder):
    """`local-dir:PATH` (or a path): an open_clip bundle or a transformers CLIP folder."""

    kind = "local-dir"

    @property
    def folder(self) -> Path:
        return Path(self.ref.name)

    def missing(self) -> Problem | None:
        folder = self.folder
        if not folder.is_dir():
            return self.missing_here([CONFIG_NAME, WEIGHT_NAMES[0]], [folder])
        if not (folder / CONFIG_NAME).is_file() and hf_layout.looks_like_transformers(folder):
            return self.check_transformers(folder)
        return None  # an incomplete bundle: folder_plan says what it lacks

    def weight_files(self) -> list[Path]:
        return model_files(self.folder) if self.folder.is_dir() else []

    def load_plan(self) -> LoadPlan | Problem:
        if not self.folder.is_dir():
            return self.missing_here([CONFIG_NAME, WEIGHT_NAMES[0]], [self.folder])
        return self.folder_plan(self.folder)

    def export_files(self) -> ExportFiles | Problem:
        folder = self.folder
        has_config = (folder / CONFIG_NAME).is_file() or (folder / "config.json").is_file()
        if not has_config or not any(p.suffix in WEIGHT_SUFFIXES for p in folder.iterdir()):
            return self.missing_here([f"{CONFIG_NAME} or config.json", "a weights file"],
                                     [folder])
        files = {p.name: p.resolve() for p in sorted(folder.iterdir())
                 if p.is_file() and SAFE_NAME.match(p.name)
                 and p.suffix not in (".h5", ".msgpack", ".onnx", ".part")}
        return ExportFiles(dict(files), folder.name)

    def preprocess_config(self) -> tuple[dict, dict] | None:
        config_path = self.folder / CONFIG_NAME
        if not config_path.is_file():
            return None  # e.g. a transformers folder: known after conversion
        config = json.loads(config_path.read_text())
        return config["model_cfg"]["vision_cfg"], config.get("preprocess_cfg", {})

    def text_config(self) -> dict | None:
        return self.bundle_text_config(self.folder)

    @classmethod
    def installed(cls, spec: dict, folder_name: str, models_dir: Path
                  ) -> tuple[Path, ModelRef] | None:
        if not SAFE_NAME.match(folder_name):
            return None
        folder = models_dir / "local-dir" / folder_name
        return folder, ModelRef(cls.kind, str(folder.resolve()))


class BundledSource(LocalDirSource):
    """A model shipped with clipsearch (data/models/NAME, e.g. shapes-tiny), given by its bare
    name: a local-dir bundle whose folder comes with the code."""

    kind = "bundled"

    @classmethod
    def installed(cls, spec: dict, folder_name: str, models_dir: Path
                  ) -> tuple[Path, ModelRef] | None:
        return None  # its export travels, and arrives, as a local-dir
