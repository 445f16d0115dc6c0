"""The torch fallback's memory (issue 12 item 3): pages of libraries dropped without changing
what they hold, the tower's file unmapped when the index run's Library closes (no garbage
collection needed), and fewer files decoded ahead when the image tower runs on torch."""

from __future__ import annotations

import gc
import hashlib
import mmap
import sys
from pathlib import Path

import pytest

from clip_core.compiled.load import runs_on_torch
from clip_core.models.ref import parse_model
from clip_core.torch_backend.memory import drop_library_pages
from clipsearch import IndexSettings, Library
from indexer.job import TORCH_PREFETCH
from tests.helpers import draw_photos
from tests.vit_bundles import write_bundle

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/smaps")


def _resident_kb(path: Path) -> int:
    """Resident kB of this process's mappings of `path`."""
    total, current = 0, False
    with open("/proc/self/smaps", encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5 and ":" in parts[3]:
                current = len(parts) > 5 and parts[5] == str(path)
            elif current and parts[0] == "Rss:":
                total += int(parts[1])
    return total


@linux_only
def test_read_only_library_pages_are_dropped_and_read_back_unchanged(tmp_path):
    lib = tmp_path / "libmarker_t14.so"
    data = bytes(range(256)) * (8 * 4096)  # 8 MB
    lib.write_bytes(data)
    with open(lib, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        assert hashlib.sha256(mapped).digest() == hashlib.sha256(data).digest()  # paged in
        assert _resident_kb(lib) > 7 * 1024
        assert drop_library_pages(("/nothing-maps-this/",)) == 0
        assert drop_library_pages(("libmarker_t14",)) > 7e6
        assert _resident_kb(lib) < 1024
        assert hashlib.sha256(mapped).digest() == hashlib.sha256(data).digest()
    finally:
        mapped.close()


@linux_only
def test_a_written_private_mapping_is_left_alone(tmp_path):
    """A copy-on-write mapping with a page written (relocated data in a library) must keep
    it: dropping would bring back the file's bytes."""
    lib = tmp_path / "libmarker_t14w.so"
    lib.write_bytes(b"\0" * (4 * 4096))
    with open(lib, "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    try:
        mapped[5] = 7
        assert drop_library_pages(("libmarker_t14w",)) == 0
        assert mapped[5] == 7
    finally:
        mapped.close()


def test_torch_runs_decode_fewer_files_ahead(tmp_path):
    """A torch precision says before anything loads that the tower runs on torch; the
    compiled path keeps the full queue, and a smaller prefetch of the caller's stays."""
    ref = parse_model("shapes-tiny")
    assert runs_on_torch(ref, device="cpu", precision="fp32")
    assert runs_on_torch(ref, device="cpu", precision="bf16")
    with Library(tmp_path / "torch", model="shapes-tiny", precision="fp32",
                 device="cpu") as lib:
        assert lib._index_settings(ref, None).prefetch == TORCH_PREFETCH
        assert lib._index_settings(ref, IndexSettings(prefetch=5)).prefetch == 5
        mine = IndexSettings(prefetch=500)
        assert lib._index_settings(ref, mine).prefetch == TORCH_PREFETCH
        assert mine.prefetch == 500  # the caller's object is not changed
    from clip_core.compiled.cache import compile_supported

    if compile_supported():  # onnxruntime here: an uncompiled model is compiled, not torch
        with Library(tmp_path / "auto", model="shapes-tiny") as lib:
            assert not runs_on_torch(ref, cache_dir=lib.cache_dir)
            assert lib._index_settings(ref, None).prefetch == IndexSettings().prefetch


@pytest.mark.slow
@linux_only
def test_the_torch_towers_file_is_unmapped_when_the_library_closes(tmp_path):
    """Without a garbage collection: the CLI exits without one, and the tower's pages (ViT-B-32:
    335 MB) were still resident at exit, where torch's CUDA libraries fault theirs back in."""
    bundle = write_bundle(tmp_path / "vit", seed=3)
    weights = bundle / "open_clip_model.safetensors"
    draw_photos(tmp_path / "photos", per_pair=1)
    gc.collect()
    gc.disable()
    try:
        with Library(tmp_path / "lib", model=str(bundle), precision="fp32",
                     device="cpu") as lib:
            report = lib.index([tmp_path / "photos"])
            assert report.indexed > 0
            enc = lib.image_encoder(lib.default_model)
            assert type(enc.loaded.model).__module__ == "clip_core.compiled.vit_torch"
            assert str(weights) in Path("/proc/self/maps").read_text()
            del enc
        assert str(weights) not in Path("/proc/self/maps").read_text()
    finally:
        gc.enable()
