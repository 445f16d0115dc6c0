"""The model files on this machine: list, download, export, import, verify and compile them,
as `clipsearch models` does. A facade over clip_core's model store (clip_core/weights/store.py)
and its per-machine compilation (clip_core/compiled/), so apps and the CLI need no clip_core.

    from clipsearch import ModelStore

    store = ModelStore()                    # CLIPSEARCH_MODELS, else the user data folder
    [m.model for m in store.list_models() if m.available]
    store.download("ViT-B-32")              # the only call that uses the network
    store.export_bundle("shapes-tiny", "/media/usb/shapes-tiny.tar")
    ModelStore("/srv/models").import_bundle("/media/usb/shapes-tiny.tar")
    [r.status for r in store.verify()]      # 'ok', 'corrupt', 'missing', 'unverified', ...
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from clip_core.models.files import default_models_dir
from clip_core.models.ref import parse_model
from clipsearch_errors import MissingExtraError

if TYPE_CHECKING:
    from clip_core.weights.download import DownloadResult
    from clip_core.weights.store import BundleResult, ModelInfo, VerifyResult


def _store():
    # Imported on use: ~0.2 s that `import clipsearch` (a cold query) does not need.
    from clip_core.weights import store

    return store


@dataclass
class CompileResult:
    """A model compiled for this machine's CPU: `meta` is its compiled.json (the image
    tower's backend and why, int8-vs-fp32 agreement, measured speeds)."""

    model_id: str
    display: str  # the model as people name it: ViT-B-32 (pretrained=laion2b_s34b_b79k)
    folder: Path
    meta: dict
    reused: bool  # a current compilation was already there


class ModelStore:
    """A model store folder (default: CLIPSEARCH_MODELS, else the platform's user data
    folder). `offline=True` makes `download` refuse before opening any connection (so do the
    CLIPSEARCH_OFFLINE and HF_HUB_OFFLINE variables). Models are named as `--model` /
    `--pretrained` name them (docs/models.md).

        store = ModelStore("/srv/models", offline=True)
        store.folder  # -> PosixPath('/srv/models')
    """

    def __init__(self, folder: str | os.PathLike | None = None, *, offline: bool = False):
        self.folder = Path(folder).expanduser() if folder else default_models_dir()
        self.offline = offline

    def list_models(self, include_all: bool = False) -> list[ModelInfo]:
        """Models clipsearch knows (the common open_clip tags, or every one with
        `include_all`) and every model on this machine, with size and location.

            [(m.model, m.pretrained, m.location) for m in store.list_models() if m.available]
        """
        return _store().list_models(self.folder, include_all)

    def download(self, model: str, pretrained: str | None = None, *, revision: str = "main",
                 endpoint: str | None = None, progress: bool = False) -> DownloadResult:
        """Fetch a model into the store: resumable, sha256-checked. Raises ModelError (an
        unknown name or tag), StoreError (offline mode, a broken transfer, a checksum that
        differs: rerun to resume).

            result = store.download("ViT-B-32", "laion2b_s34b_b79k")
            result.ref.model_id, result.folder, result.downloaded_bytes
        """
        from clip_core.weights.download import download  # huggingface_hub: imported on use

        ref = parse_model(model, pretrained)
        return download(ref, self.folder, offline=self.offline, endpoint=endpoint,
                        revision=revision, progress=progress)

    def export_bundle(self, model: str, out: str | os.PathLike | IO[bytes],
                      pretrained: str | None = None, *, force: bool = False) -> BundleResult:
        """Write a model's local files into one tar for an air-gapped machine: `out` is a
        path (an existing file is replaced only with `force`) or a binary stream. Raises
        ModelError (not on this machine), StoreError (the file exists, a damaged file).

            store.export_bundle("shapes-tiny", "shapes-tiny.tar").files  # name, size, sha256
        """
        ref = parse_model(model, pretrained)
        target = out if hasattr(out, "write") else Path(out)  # type: ignore[arg-type]
        return _store().export_bundle(ref, target, self.folder, force=force)

    def import_bundle(self, bundle: str | os.PathLike) -> BundleResult:
        """Check every header and checksum of a bundle, then install it atomically; nothing
        is installed from a bundle that fails. Raises StoreError (a malformed, unsafe or
        corrupt bundle, not enough space).

            result = store.import_bundle("shapes-tiny.tar")
            result.model_id, result.spec  # spec: the --model / --pretrained to use it with
        """
        return _store().import_bundle(Path(bundle), self.folder)

    def verify(self) -> list[VerifyResult]:
        """Re-hash every stored model against its manifest (reads only).

            bad = [r.folder for r in store.verify() if not r.ok]
        """
        return _store().verify_store(self.folder)

    def compile(self, model: str, pretrained: str | None = None, *,
                force: bool = False) -> CompileResult:
        """Prepare a model for torch-free CPU indexing (an int8 or fp32 ONNX image tower
        checked against fp32 here, and the text tower); a current compilation is reused
        unless `force`. The first index run does this by itself. Raises MissingExtraError
        (no onnxruntime/onnx), ModelError.

            done = store.compile("shapes-tiny")
            done.meta["image"]["backend"], done.reused
        """
        from clip_core.compiled.cache import compile_supported, find_compiled

        if not compile_supported():
            raise MissingExtraError("compiling needs onnxruntime and onnx "
                                    "(pip install onnxruntime onnx)")
        ref = parse_model(model, pretrained)
        found = None if force else find_compiled(ref, self.folder)
        if found is None:
            from clip_core.compiled.compiler import compile_model

            compiled = compile_model(ref, models_dir=self.folder, force=force)[0]
        else:
            compiled = found
        return CompileResult(ref.model_id, ref.display, compiled.folder, compiled.meta,
                             reused=found is not None)
