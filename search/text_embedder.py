"""Query texts -> vectors, without torch when possible.

The first text query of a model runs the torch text tower and exports it (clip_core.text.tower)
into the library's cache; later queries, in any process, load that file memory-mapped and run
it in numpy with the torch-free tokenizer: a cold `clipsearch query` then never imports torch.
Towers that numpy cannot reproduce exactly stay on torch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from clip_core.models.ref import ModelRef
    from clip_core.torch_backend.encoder import ClipEncoder

log = logging.getLogger(__name__)


def _forced_runner() -> str | None:
    """CLIPSEARCH_TEXT_RUNNER: a runner for long-lived processes' text tower, untimed and
    unrecorded (a comparison, or a doubt): "dynamic", "unsigned", "blocks" (each still
    checked against fp32, which runs where it fails) or "fp32"; "flags": the first kind in
    the CPU's order that agrees, as before runners were timed (the test suite's setting, so
    that its rankings do not move with a timing). Unset: timed once and recorded."""
    from clip_core.text.tower_onnx import KINDS

    value = os.environ.get("CLIPSEARCH_TEXT_RUNNER", "").strip().lower()
    if not value:
        return None
    if value != "flags" and value not in KINDS:
        log.warning("CLIPSEARCH_TEXT_RUNNER=%s is none of %s or flags: ignored", value, KINDS)
        return None
    return value


def tower_path(folder: Path, model_id: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id).strip("_")
    return folder / f"{slug}.text.safetensors"


class TextEmbedder:
    def __init__(
        self,
        model_id: str,
        cache_folder: Path,
        torch_encoder: Callable[[], ClipEncoder],
        writable: bool = True,
        low_memory: bool = False,
        without_torch: Callable[[TextEmbedder], None] | None = None,
        runner_records: Path | None = None,
    ):
        self.model_id = model_id
        self.path = tower_path(cache_folder, model_id)
        self.torch_encoder = torch_encoder
        self.writable = writable
        # Asked once, when the tower is not here at the first use: put it in place without
        # torch where the caller can (a Library: its compiled model's, or its weights file's).
        self._without_torch = without_torch
        # low_memory: a one-shot query process releases weight pages block by block (RSS
        # ~100 MB); a long-lived app keeps them mapped and uses BLAS threads (~2x faster).
        self.low_memory = low_memory
        # where the runner timed for a tower on this machine is recorded (the user's cache)
        self.runner_records = runner_records
        self._fast: tuple[Any, Any] | None = None

    def _numpy_tower(self) -> tuple[Any, Any] | None:
        if self._without_torch is not None:
            make, self._without_torch = self._without_torch, None
            if self.writable and not self.path.is_file():
                make(self)
        if self._fast is None and self.path.is_file():
            from clip_core.text.file_check import DamagedFile
            from clip_core.text.tokenizer import ClipTokenizer
            from clip_core.text.tower import NumpyTextTower

            try:
                tower = NumpyTextTower.load(self.path, release_pages=self.low_memory)
            except DamagedFile as exc:
                self._discard(exc)
                return None
            except (OSError, ValueError) as exc:  # corrupt or old cache: torch path rebuilds
                log.warning("ignoring text tower cache %s: %s", self.path, exc)
                return None
            if not self.low_memory:
                self._choose_runner(tower)
            self._fast = (tower, ClipTokenizer(context_length=tower.context_length))
        return self._fast

    def _choose_runner(self, tower: Any) -> None:
        """A long-lived process runs the tower on onnxruntime: the runner recorded for this
        tower on this machine, else the fastest int8 kind that agrees with fp32 (and fp32
        too where int8 is not surely faster), timed here and recorded for every later
        process (clip_core.text.runner_record). With nowhere to record (no cache folder,
        no checksum), the first kind in the CPU's order that agrees (timed against fp32 only
        where int8 is not surely faster), as each process takes."""
        from clip_core.cpu import CpuFeatures, text_int8_kinds, text_int8_timed
        from clip_core.text import file_check, runner_record

        cpu = CpuFeatures.here()
        kinds = text_int8_kinds(cpu)
        forced = _forced_runner()
        if forced is not None and forced != "flags":
            tower.use_onnxruntime(int8=forced != "fp32", kinds=(forced,))
            return

        def by_flags() -> None:
            tower.use_onnxruntime(int8=True, timed=text_int8_timed(cpu), kinds=kinds)

        here = runner_record.machine(cpu)
        folder, digest = self.runner_records, file_check.digest(self.path)
        if forced == "flags" or folder is None or digest is None:
            by_flags()
            return
        known = runner_record.recorded(folder, digest, here)
        with contextlib.ExitStack() as stack:
            if known is None:  # another process may be timing it now: its choice, then
                if not stack.enter_context(runner_record.choosing(folder)):
                    by_flags()
                    return
                known = runner_record.recorded(folder, digest, here)
            # timed unless `known` still agrees; fp32 only where int8 is not surely faster
            seconds = tower.use_fastest(kinds, known=known, with_fp32=text_int8_timed(cpu))
            if seconds:
                runner_record.remember(folder, digest, here, tower.runner, seconds,
                                       self.model_id)
                log.info("text tower of %s runs %s here (ms a query: %s)", self.model_id,
                         tower.runner, {k: round(v * 1e3, 2) for k, v in seconds.items()})

    def logit_scale(self) -> float | None:
        """The model's zero-shot temperature from the cached tower (None: not cached, or
        exported before it was recorded)."""
        fast = self._numpy_tower()
        return fast[0].logit_scale if fast is not None else None

    @property
    def cached(self) -> bool:
        """The tower is cached here and matches its checksum (a damaged one is removed)."""
        if not self.path.is_file():
            return False
        from clip_core.text.file_check import DamagedFile, verify

        try:
            verify(self.path)
            return True
        except DamagedFile as exc:
            self._discard(exc)
            return False

    def _discard(self, why: Exception) -> None:
        """A damaged tower: say so in one line and remove it (this library's link only, never
        the file it was linked from), so the next index run or query rebuilds it."""
        from clip_core.text.file_check import NoChecksum, remove

        if self.writable:
            remove(self.path)
        if isinstance(why, NoChecksum):  # older than checksums: quietly made anew
            log.info("text tower of %s has no checksum (%s); rebuilding it", self.model_id, why)
        else:
            log.warning("text tower of %s damaged (%s); rebuilding it", self.model_id, why)

    def export_from(self, encoder: ClipEncoder) -> None:
        """Cache the text tower of an already loaded encoder (the index run loads the whole
        model anyway: exporting there makes the first query as fast as every later one)."""
        if self.writable and not self.cached:
            self._export(encoder)

    def export_from_weights_file(self, ref: ModelRef, models_dir: Path | None) -> bool:
        """Cache the text tower read straight from the model's safetensors file, as the
        compile does: torch's index path then builds only the image tower (ViT-B-32: 1.4 GB
        less at peak than the whole model plus its state dict). False where the file cannot
        be read that way (random weights, other layouts): export_from the whole model then."""
        from clip_core.compiled.weights_file import open_weights_file, write_text_tower

        source = open_weights_file(ref, models_dir)
        if source is None:
            return False
        try:
            write_text_tower(source, self.path)
        except OSError as exc:  # read-only or full disk: queries still work through torch
            log.info("could not cache text tower: %s", exc)
        finally:
            source.release_pages()
        return True

    def adopt(self, exported: Path) -> None:
        """Take a text tower exported elsewhere (a compiled model's): hard-linked when on the
        same disk (the file is never rewritten in place), else copied; atomic either way."""
        if not self.writable or self.cached:
            return
        from clip_core.text import file_check

        try:  # one damaged shared copy must not spread into every library linked to it
            file_check.verify(exported)
        except file_check.NoChecksum as exc:  # compiled before checksums: not linked, kept
            log.info("compiled text tower of %s not used: %s", self.model_id, exc)
            return
        except (file_check.DamagedFile, OSError) as exc:
            log.warning("compiled text tower of %s damaged (%s); rebuilding it", self.model_id,
                        exc)
            with contextlib.suppress(OSError):  # its compiled model then has none
                file_check.remove(exported)
            return
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temp.unlink(missing_ok=True)
            try:
                os.link(exported, temp)
                linked = True
            except OSError:
                shutil.copyfile(exported, temp)
                linked = False
            os.replace(temp, self.path)
            file_check.copy_record(exported, self.path)
            if linked:
                file_check.linked(exported)
        except OSError as exc:  # read-only or full disk: queries fall back to torch
            temp.unlink(missing_ok=True)
            log.info("could not cache text tower: %s", exc)

    @property
    def precision(self) -> str:
        """What runs the tower now: "int8" / "fp32" (onnxruntime), "numpy", or "torch"
        (not exported, or not loaded yet)."""
        return self._fast[0].precision if self._fast is not None else "torch"

    @property
    def kind(self) -> str:
        """precision, and which int8 kind: "int8-dynamic", "int8-unsigned", "int8-blocks",
        "fp32", "numpy", "torch" (clip_core.text.tower_onnx)."""
        return self._fast[0].kind if self._fast is not None else "torch"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        fast = self._numpy_tower()
        if fast is not None:
            tower, tokenizer = fast
            return tower.encode_tokens(tokenizer(list(texts)))
        encoder = self.torch_encoder()
        vectors = encoder.encode_texts(list(texts))
        if self.writable:
            self._export(encoder)
        return vectors

    def _export(self, encoder: ClipEncoder) -> None:
        from clip_core.text.tower import UnsupportedTextTower
        from clip_core.torch_backend.text_export import export_text_tower

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            export_text_tower(encoder.loaded.model, self.path,
                              tokenizer=encoder.loaded.tokenizer)
        except UnsupportedTextTower as exc:
            log.info("text tower of %s stays on torch: %s", self.model_id, exc)
        except OSError as exc:  # read-only or full disk: queries still work through torch
            log.info("could not cache text tower: %s", exc)
