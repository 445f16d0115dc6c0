"""What the user asked for: a model reference parsed from `--model` / `--pretrained`.

A reference is data only (no torch): it says which architecture and which weights, and gives a
stable `model_id` that tags every vector made with it.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
RANDOM_WEIGHTS = "none"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")  # any weights file a folder may hold
# ORG/REPO as on the hub, optionally @REVISION (a branch, tag or commit in the HF cache).
_HUB_REPO = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w.-]+)?")

# Models that ship inside this repository (data/models/NAME): usable by bare name.
BUNDLED_MODELS_DIR = Path(__file__).resolve().parents[2] / "data" / "models"


@dataclass(frozen=True)
class KindNames:
    """How a kind of reference names itself, as data: `str.format` patterns over `name`,
    `pretrained`, `file` (the name of the weights file or folder) and `fingerprint` (of
    that file or folder's weights). Its files are clip_core.models.sources' business."""

    model_id: str
    display: str
    model: str  # to_spec()["model"]
    pretrained: str | None  # to_spec()["pretrained"]
    path: str | None = None  # the field holding the local path behind `file`/`fingerprint`
    random_weights: bool = False


_LOCAL_DIR = KindNames("{file}@{fingerprint}", LOCAL_DIR_PREFIX + "{name}",
                       LOCAL_DIR_PREFIX + "{name}", None, path="name")
# One row per kind `parse_model` produces. Local files are identified by name plus a short
# fingerprint of the weights, so a moved folder keeps its vectors while different weights
# never share an id.
KINDS: dict[str, KindNames] = {
    "openclip": KindNames("{name}/{pretrained}", "{name} (pretrained={pretrained})",
                          "{name}", "{pretrained}"),
    "random": KindNames("{name}/random", "{name} (pretrained=" + RANDOM_WEIGHTS + ")",
                        "{name}", RANDOM_WEIGHTS, random_weights=True),
    "file": KindNames("{name}:{file}@{fingerprint}", "{name} (weights {pretrained})",
                      "{name}", "{pretrained}", path="pretrained"),
    "hf-hub": KindNames(HF_HUB_PREFIX + "{name}", HF_HUB_PREFIX + "{name}",
                        HF_HUB_PREFIX + "{name}", None),
    "local-dir": _LOCAL_DIR,  # an open_clip bundle or a transformers CLIP folder
    "bundled": _LOCAL_DIR,  # a bundle in data/models, named by its folder: a local-dir
}


@dataclass(frozen=True)
class ModelRef:
    """`kind` is a key of KINDS: "openclip" (architecture + pretrained tag), "random"
    (architecture, random weights), "file" (architecture + local weights file), "hf-hub"
    (repo id), "local-dir" (an open_clip bundle or a transformers CLIP folder), "bundled"
    (a model shipped in data/models, given by its bare name)."""

    kind: str
    name: str  # architecture name, hub repo id, or absolute folder path
    pretrained: str | None = None  # tag or absolute file path
    # True when the user gave no --pretrained and the tag was chosen (default_pretrained).
    tag_defaulted: bool = field(default=False, compare=False, repr=False)

    def _format(self, pattern: str) -> str:
        return _looked((self, pattern), lambda: self._format_now(pattern))

    def _format_now(self, pattern: str) -> str:
        names = KINDS[self.kind]
        fields = {"name": self.name, "pretrained": self.pretrained}
        if names.path and ("{file}" in pattern or "{fingerprint}" in pattern):
            path = Path(str(getattr(self, names.path)))
            fields["file"] = path.name
            if "{fingerprint}" in pattern:
                fields["fingerprint"] = _fingerprint(path)
        return pattern.format(**fields)

    @property
    def model_id(self) -> str:
        """Stable identifier stored beside every vector made by this model."""
        return self._format(KINDS[self.kind].model_id)

    @property
    def display(self) -> str:
        return self._format(KINDS[self.kind].display)

    @property
    def random_weights(self) -> bool:
        return KINDS[self.kind].random_weights

    def to_spec(self) -> dict[str, str | None]:
        """The two strings that recreate this reference through `parse_model`."""
        names = KINDS[self.kind]
        pretrained = names.pretrained
        return {"model": self._format(names.model),
                "pretrained": None if pretrained is None else self._format(pretrained)}


def parse_model(model: str | None = None, pretrained: str | None = None) -> ModelRef:
    """Turn CLI/API strings into a ModelRef. No file is read beyond existence checks."""
    return _looked(("parse", model, pretrained), lambda: _parse_now(model, pretrained))


def _parse_now(model: str | None, pretrained: str | None) -> ModelRef:
    model = (model or DEFAULT_MODEL).strip()
    if model.startswith(HF_HUB_PREFIX):
        return ModelRef("hf-hub", model[len(HF_HUB_PREFIX) :].strip("/"))
    if model.startswith(LOCAL_DIR_PREFIX):
        return ModelRef("local-dir", _abs(model[len(LOCAL_DIR_PREFIX) :]))
    bundled = BUNDLED_MODELS_DIR / model
    if "/" not in model and bundled.is_dir():
        return ModelRef("bundled", str(bundled))
    if os.sep in model or model.startswith("."):
        path = Path(model).expanduser()
        if path.is_dir():
            return ModelRef("local-dir", _abs(model))
    if pretrained is None and _HUB_REPO.fullmatch(model):
        # "openai/clip-vit-large-patch14", as Stable Diffusion tools name it: a hub repo id
        # (open_clip architecture names never hold a "/"); the same model as hf-hub:ORG/REPO.
        return ModelRef("hf-hub", model)
    if pretrained is None:  # a sensible tag for this architecture (open_clip's table)
        from clip_core.models.open_clip_tables import default_pretrained

        tag = DEFAULT_PRETRAINED if model == DEFAULT_MODEL else default_pretrained(model)
        return ModelRef("openclip", model, tag or DEFAULT_PRETRAINED, tag_defaulted=True)
    tag = pretrained
    if tag.lower() == RANDOM_WEIGHTS:
        return ModelRef("random", model)
    if os.sep in tag or Path(tag).suffix in WEIGHT_SUFFIXES:
        return ModelRef("file", model, _abs(tag))
    return ModelRef("openclip", model, tag)


def split_revision(name: str) -> tuple[str, str | None]:
    """"ORG/REPO@REV" -> ("ORG/REPO", "REV"); no "@": (name, None)."""
    repo, _, revision = name.partition("@")
    return repo, revision or None


def _abs(path: str) -> str:
    return str(Path(path).expanduser().resolve())


T = TypeVar("T")
_FINGERPRINTS: dict[tuple, str] = {}  # (path, every file's name/size/mtime/inode) -> hash
_ONE_LOOK = threading.local()  # .seen, inside one_look(): what was parsed and formatted


@contextmanager
def one_look() -> Iterator[None]:
    """Inside this block (one query) this thread looks at each model's files once: a query
    parsed its model ~3 times and read `model_id` ~7 times, each a listdir and stats (12%
    of a busy server's GIL time). Nested blocks share the outermost's look."""
    if getattr(_ONE_LOOK, "seen", None) is not None:
        yield
        return
    _ONE_LOOK.seen = {}
    try:
        yield
    finally:
        _ONE_LOOK.seen = None


def _looked(key: tuple, look: Callable[[], T]) -> T:
    """`look()`, once per key inside one_look(); every time outside it."""
    seen = getattr(_ONE_LOOK, "seen", None)
    if seen is None:
        return look()
    if key not in seen:
        seen[key] = look()
    return seen[key]


def _fingerprint(path: Path) -> str:
    # Keyed by the path: refs parsed from different specs share files.
    return _looked(("fingerprint", str(path)), lambda: _fingerprint_now(path))


def _fingerprint_now(path: Path) -> str:
    """Hash of the weight files' names and sizes plus their first and last MiB: cheap on
    multi-GB files yet changes whenever the weights do. Remembered per process by each file's
    stat: `model_id` is read several times per query, and reading 2 MiB per file each time
    was most of a small model's query."""
    files: list[Path] = []
    if path.is_dir():
        files = sorted(
            p for p in path.iterdir()
            if p.suffix in (*WEIGHT_SUFFIXES, ".json")
        )
    elif path.exists():
        files = [path]
    if not files:
        return "missing"
    stats = [(file, file.stat()) for file in files]
    key = (str(path), *((f.name, st.st_size, st.st_mtime_ns, st.st_ino) for f, st in stats))
    known = _FINGERPRINTS.get(key)
    if known is not None:
        return known
    digest = hashlib.sha256()
    for file, st in stats:
        size = st.st_size
        digest.update(f"{file.name}:{size}".encode())
        with open(file, "rb") as handle:
            digest.update(handle.read(1 << 20))
            if size > 2 << 20:
                handle.seek(-(1 << 20), os.SEEK_END)
                digest.update(handle.read())
    _FINGERPRINTS[key] = digest.hexdigest()[:10]
    return _FINGERPRINTS[key]
