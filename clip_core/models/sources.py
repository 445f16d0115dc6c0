"""One class per kind of model reference: where its files are and what to say when they are not.

A ModelSource (`source_for(ref, models_dir)`) owns, for its kind: locating the files, the
expected files and fix commands of a MissingModelError, the files behind the compile cache's
weights stamp, the files an export takes, and how torch_backend.loading builds it. Sources
raise nothing for missing or unusable files: they return `Missing` / `Unusable`, which
clip_core.models.files turns into the one MissingModelError (or ModelLoadError) raise.

Adding a model kind: a row in clip_core.models.ref.KINDS (its names), a subclass here
registered in SOURCES (its files), and the rule in `parse_model` that produces it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from clip_core.models import hf_layout
from clip_core.models.open_clip_tables import architecture_configs, pretrained_cfg, pretrained_table
from clip_core.models.places import (
    CONFIG_NAME,
    SAFE_NAME,
    TOKENIZER_FILES,
    WEIGHT_NAMES,
    Located,
    clip_url_cache_dir,
    cut_note,
    hub_expected,
    hub_repo_dir,
    hub_snapshot_files,
    hub_snapshots,
    is_openclip_bundle,
    is_transformers_clip,
    model_files,
    pretrained_files,
    store_name,
)
from clip_core.models.ref import HF_HUB_PREFIX, WEIGHT_SUFFIXES, ModelRef, split_revision


@dataclass
class Missing:
    """A MissingModelError's content: the model's files are not (all) on this machine."""

    expected: list[str]
    looked_in: list[Path]
    fix: list[str]
    detail: str | None = None  # what was found instead, when known


@dataclass
class Unusable:
    """A ModelLoadError's message: a name open_clip does not know, or files that are there
    but cannot be used."""

    message: str


Problem = Missing | Unusable


@dataclass
class LoadPlan:
    """What torch_backend.loading hands open_clip (`name`, `pretrained`), or the
    transformers folder it converts instead."""

    name: str = ""
    pretrained: str | None = None
    transformers_dir: Path | None = None
    seed: int | None = None  # random weights: the same ones in every process
    quick_gelu: bool = False  # OpenAI-style weights, trained with QuickGELU


@dataclass
class ExportFiles:
    """{bundle name: file or generated content}, and the folder name a local-dir install
    gets on arrival (None: installed under the reference's own store folder)."""

    files: dict[str, Path | bytes]
    folder_name: str | None = None


class ModelSource:
    """The files behind one ModelRef. Subclasses set `kind` and override what differs."""

    kind: ClassVar[str]
    # Random weights: nothing to find, stamp or export.
    no_files: ClassVar[str | None] = None

    def __init__(self, ref: ModelRef, models_dir: Path):
        self.ref = ref
        self.models_dir = models_dir

    @property
    def store_dir(self) -> Path:
        """Folder in clipsearch's store that holds this reference's files."""
        return self.models_dir / self.ref.name / str(self.ref.pretrained)

    def fix(self) -> list[str]:
        """The fix commands of a MissingModelError, in the order tried."""
        spec = self.ref.to_spec()
        pretrained = f" --pretrained {spec['pretrained']}" if spec.get("pretrained") else ""
        return [
            f"on a machine with internet: `clipsearch models download {spec['model']}"
            f"{pretrained}`",
            "air-gapped: on a connected machine run `clipsearch models export "
            f"{spec['model']}{pretrained} -o model.clipsearch`, copy the file here, then "
            "`clipsearch models import model.clipsearch`",
            f"or put the expected file(s) into {self.store_dir}",
            "or point --model at files you already have: `--model local-dir:PATH` (an open_clip "
            "bundle or a Hugging Face transformers CLIP folder) or `--pretrained FILE`",
        ]

    def missing_here(self, expected: list[str], looked_in: list[Path],
                     detail: str | None = None) -> Missing:
        return Missing(expected, looked_in, self.fix(), detail)

    def unknown(self) -> Unusable | None:
        """An architecture name or tag open_clip does not know (bundles carry their own)."""
        return None

    def missing(self) -> Problem | None:
        """What keeps the model from loading, found without torch in milliseconds."""
        return None

    def weight_files(self) -> list[Path]:
        """The files whose stat stamps a compiled model (a change recompiles)."""
        return []

    def export_files(self) -> ExportFiles | Problem:
        return Unusable(self.no_files or f"Nothing to export for {self.ref.display}.")

    def load_plan(self) -> LoadPlan | Problem:
        return LoadPlan(self.ref.name)

    def tokenizer_dir(self, hf_name: str) -> Path | Missing | None:
        """The stored copy of a Hugging Face tokenizer (`clipsearch models download` puts it
        beside the weights); None where the model's own files hold its tokenizer."""
        return None

    def preprocess_config(self) -> tuple[dict, dict] | None:
        """(vision_cfg, preprocess overrides) as open_clip will read them; None where only
        building the model tells."""
        return None

    def text_config(self) -> dict | None:
        """open_clip's text_cfg; None when unknown until the files are found."""
        return {}

    @classmethod
    def installed(cls, spec: dict, folder_name: str, models_dir: Path
                  ) -> tuple[Path, ModelRef] | None:
        """Where `models import` puts a bundle of this kind (its manifest's spec and
        folder_name, checked: no unsafe names), and the reference it then answers to; None
        for kinds that never arrive in a bundle."""
        return None


# -- an open_clip architecture, with a tag, random weights or a weights file -----------------

class _Architecture(ModelSource):
    def unknown(self) -> Unusable | None:
        """Names open_clip does not know, read from its config files without importing torch
        (the same lists as open_clip.list_models / list_pretrained_tags)."""
        known = architecture_configs()
        if not known or self.ref.name in known:
            return None  # no open_clip: the loader will say so
        close = [m for m in sorted(known) if self.ref.name.lower() in m.lower()][:8]
        hint = f" Similar: {', '.join(close)}." if close else ""
        return Unusable(f"Unknown open_clip architecture {self.ref.name!r}.{hint} "
                        "`clipsearch models list` shows them all.")

    def _arch(self) -> dict | None:
        return architecture_configs().get(self.ref.name)

    def preprocess_config(self) -> tuple[dict, dict] | None:
        arch = self._arch()
        return None if arch is None else (arch["vision_cfg"], arch.get("preprocess_cfg", {}))

    def text_config(self) -> dict | None:
        return (self._arch() or {}).get("text_cfg", {})

    def tokenizer_dir(self, hf_name: str) -> Path | Missing | None:
        # Any pretrained tag of the architecture shares the tokenizer.
        own = self.store_dir / "tokenizer"
        arch_dir = self.models_dir / self.ref.name
        found = [d for d in [own, *sorted(arch_dir.glob("*/tokenizer"))]
                 if (d / "tokenizer_config.json").is_file()]
        if found:
            return found[0]
        return self.missing_here([f"tokenizer files of {hf_name} (tokenizer.json, "
                                  "tokenizer_config.json, ...)"],
                                 [own, arch_dir / "*" / "tokenizer"])


class OpenClipSource(_Architecture):
    """An open_clip architecture + pretrained tag: weights in the store, the HF cache or
    open_clip's URL cache."""

    kind = "openclip"

    def _cfg(self) -> dict:
        return pretrained_cfg(self.ref.name, str(self.ref.pretrained))

    def unknown(self) -> Unusable | None:
        problem = super().unknown()
        if problem or not architecture_configs() or self._cfg():
            return problem
        ref = self.ref
        if ref.tag_defaulted:  # the user typed no tag: do not name the one we tried
            return Unusable(f"{ref.name} has no pretrained weights in open_clip: pass "
                            "--pretrained FILE (your weights) or --pretrained none "
                            "(random weights, for tests).")
        tags = list(pretrained_table().get(ref.name, {}))
        return Unusable(f"Unknown pretrained tag {ref.pretrained!r} for {ref.name}. "
                        f"Known tags: {', '.join(tags) or 'none'}; or pass a weights "
                        "file path.")

    def locate(self, cfg: dict | None = None) -> Located:
        """Find weights for the (architecture, tag) pair without any network access."""
        cfg = self._cfg() if cfg is None else cfg
        located = Located()
        own = self.store_dir
        located.searched.append(own)
        for name in (*WEIGHT_NAMES, "open_clip_model.bin", "model.pt"):
            if (own / name).is_file():
                located.weights = own / name
                return located
        hub = cfg.get("hf_hub", "")
        if hub:
            # open_clip's convention: "org/repo/" means the default file names, else
            # "org/repo/file".
            repo_id, filename = os.path.split(hub)
            files, places = hub_snapshot_files(repo_id, (filename,) if filename else WEIGHT_NAMES)
            located.searched.extend(places)
            if files:
                located.weights = files[0]
                return located
        url = cfg.get("url", "")
        if url:
            cached = clip_url_cache_dir() / os.path.basename(url)
            located.searched.append(clip_url_cache_dir())
            if cached.is_file():
                located.weights = cached
        return located

    def _weights(self) -> Path | Missing:
        cfg = self._cfg()
        located = self.locate(cfg)
        if located.weights is None:
            return self.missing_here(pretrained_files(cfg), located.searched)
        return located.weights

    def missing(self) -> Problem | None:
        if not self._cfg():
            return None  # open_clip's tables unreadable here: its loader will say what
        found = self._weights()
        return found if isinstance(found, Missing) else None

    def weight_files(self) -> list[Path]:
        weights = self.locate().weights
        return [weights] if weights else []

    def load_plan(self) -> LoadPlan | Problem:
        weights = self._weights()
        if isinstance(weights, Missing):
            return weights
        return LoadPlan(self.ref.name, str(weights), quick_gelu=bool(self._cfg().get("quick_gelu")))

    def preprocess_config(self) -> tuple[dict, dict] | None:
        found = super().preprocess_config()
        return found and (found[0], {**found[1], **self._cfg()})

    @classmethod
    def installed(cls, spec: dict, folder_name: str, models_dir: Path
                  ) -> tuple[Path, ModelRef] | None:
        model, pretrained = str(spec.get("model") or ""), str(spec.get("pretrained"))
        if not (SAFE_NAME.match(model) and SAFE_NAME.match(pretrained)):
            return None
        ref = ModelRef(cls.kind, model, pretrained)
        return cls(ref, models_dir).store_dir, ref

    def export_files(self) -> ExportFiles | Problem:
        weights = self._weights()
        if isinstance(weights, Missing):
            return weights
        own = self.store_dir
        if weights.parent == own:
            name = weights.name
        elif weights.parent == clip_url_cache_dir():
            name = "model.pt"
        else:
            name = store_name(weights.name)
        files: dict[str, Path | bytes] = {name: weights.resolve()}
        arch_cfg = self._arch()
        if (own / CONFIG_NAME).is_file():
            files[CONFIG_NAME] = (own / CONFIG_NAME).resolve()
        elif arch_cfg:  # makes the bundle self-describing, and usable as `local-dir:` too
            files[CONFIG_NAME] = bundle_config(arch_cfg, self._cfg())
        tok = (arch_cfg or {}).get("text_cfg", {}).get("hf_tokenizer_name")
        if tok:
            tok_dir = own / "tokenizer"
            found = ([p for p in tok_dir.iterdir() if p.is_file()] if tok_dir.is_dir()
                     else hub_snapshot_files(tok, (*TOKENIZER_FILES, "config.json"))[0])
            files.update({f"tokenizer/{p.name}": p.resolve() for p in found})
        return ExportFiles(files)


class RandomSource(_Architecture):
    """An architecture with random weights (`--pretrained none`), for tests and benchmarks."""

    kind = "random"
    no_files = "Random weights (--pretrained none) have no files to export."

    def load_plan(self) -> LoadPlan | Problem:
        return LoadPlan(self.ref.name, seed=0)  # same weights everywhere: indexes stay usable


class _OwnFiles(ModelSource):
    """Files the user points at: nothing to download, so the fixes say where to look."""

    def _path(self) -> str:
        return self.ref.name

    def fix(self) -> list[str]:
        return [
            f"check the path {self._path()} (a folder needs {CONFIG_NAME} or a transformers "
            "config.json, and a weights file)",
            "from the machine that has the model: `clipsearch models export MODEL -o "
            "model.clipsearch` there, copy the file here, then `clipsearch models import "
            "model.clipsearch` (it prints the --model to use)",
        ]


class WeightsFileSource(_OwnFiles, _Architecture):
    """An open_clip architecture + a local weights file (`--pretrained FILE`)."""

    kind = "file"

    def _path(self) -> str:
        return str(self.ref.pretrained)

    def missing(self) -> Problem | None:
        weights = Path(self._path())
        if weights.is_file():
            return None
        return self.missing_here([str(weights)], [weights.parent])

    def weight_files(self) -> list[Path]:
        return [Path(self._path())]

    def load_plan(self) -> LoadPlan | Problem:
        return self.missing() or LoadPlan(self.ref.name, self._path())

    def export_files(self) -> ExportFiles | Problem:
        problem = self.missing()
        if problem:
            return problem
        weights = Path(self._path())
        arch_cfg = architecture_configs()[self.ref.name]  # unknown() passed
        from clip_core.pixels.preprocess import OPENAI_MEAN, OPENAI_STD  # open_clip's defaults

        # Travels as a folder bundle (architecture config + weights): `local-dir:` on arrival.
        name = store_name(weights.name if weights.suffix == ".safetensors" else "x.bin")
        preprocess = {"mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic",
                      "resize_mode": "shortest"}
        return ExportFiles({name: weights.resolve(),
                            CONFIG_NAME: bundle_config(arch_cfg, preprocess)},
                           re.sub(r"[^A-Za-z0-9._+@=-]", "_", f"{self.ref.name}-{weights.stem}"))


# -- a folder: an open_clip bundle or a transformers CLIP folder ------------------------------

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


class LocalDirSource(_OwnFiles, _Folder):
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


SOURCES: dict[str, type[ModelSource]] = {
    cls.kind: cls for cls in (OpenClipSource, RandomSource, WeightsFileSource, HubSource,
                              LocalDirSource, BundledSource)
}


def source_for(ref: ModelRef, models_dir: Path) -> ModelSource:
    return SOURCES[ref.kind](ref, models_dir)


def bundle_config(arch_cfg: dict, cfg: dict) -> bytes:
    """An open_clip_config.json for an architecture's weights exported as a folder bundle."""
    model_cfg = dict(arch_cfg)
    if cfg.get("quick_gelu"):
        model_cfg["quick_gelu"] = True
    preprocess = {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg}
    return json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess}, indent=2).encode()
