"""What every model source has: the data it returns, and the defaults a kind overrides."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from clip_core.models.places import CONFIG_NAME
from clip_core.models.ref import ModelRef


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

    def made_weights(self) -> str | None:
        """Weights this machine makes from a recipe (random weights): the name that says
        which, stamped into a compiled model's key in place of files' stats (the file is
        derived: made again, it holds the same bytes)."""
        return None

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


class OwnFiles(ModelSource):
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
