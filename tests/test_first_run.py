"""A first index run with a model compiles it for this CPU before any file is written (issue
12): its progress says so ("compiling", shown by the CLI's bar), a later run's does not; the
int8 tower the compile checked is handed to the run, encoding as the cached one does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from clip_core.compiled.cache import ONNX, find_compiled
from clip_core.compiled.compiler import compile_model
from clip_core.cpu import CpuFeatures
from clip_core.models.ref import parse_model
from clip_core.pixels.preprocess import preprocess_batch
from clip_core.pixels.probes import probe_images
from clipsearch import Library, Progress
from clipsearch.progress import ProgressBar
from tests.conftest import REPO, SHAPES_TINY
from tests.helpers import PAIRS, draw_photos
from tests.reliability_support import make_random_bundle


@pytest.mark.slow  # a compile (~5 s on the busy 2-core test machine)
def test_a_first_run_reports_the_compile_and_a_later_run_does_not(tmp_path):
    model = make_random_bundle(tmp_path / "bundle")
    photos = tmp_path / "p"
    draw_photos(photos, per_pair=1, seed=61)
    runs = []
    for name in ("first", "later"):
        seen: list[Progress] = []
        with Library(tmp_path / name, model=model, cache_dir=tmp_path / "cache") as lib:
            report = lib.index([photos], progress=seen.append)
        assert report.indexed == len(PAIRS)
        runs.append(seen)
    first, later = runs
    compiling = [p for p in first if p.stage == "compiling"]
    assert compiling, [(p.stage, p.done) for p in first]
    assert compiling[0].note == "compiling bundle for this CPU (once)"
    assert all(p.done == 0 for p in compiling)  # before any file is written
    assert first.index(compiling[-1]) < first.index(next(p for p in first if p.done))
    assert first[-1].stage == "indexing" and first[-1].done == len(PAIRS)
    assert [p.stage for p in later] == ["indexing"] * len(PAIRS)  # compiled: nothing to say


def test_the_bar_says_compiling_then_indexing(capsys):
    with ProgressBar() as bar:
        bar.update(Progress(0, 3, stage="compiling",
                            note="compiling ViT-B-32 for this CPU (once)"))
        bar.update(Progress(1, 3, "a.jpg"))
        bar.update(Progress(3, 3, "c.jpg"))
    shown = capsys.readouterr().err  # what the terminal gets (tqdm redraws on one line)
    at = shown.index("Compiling ViT-B-32 for this CPU (once):   0%")
    assert "\n" in shown[at:shown.index("Indexing")]  # the compile's lines come below it
    assert "Indexing: 100%" in shown[at:]
    assert "Compiling" not in shown[shown.index("Indexing"):]


def test_a_quiet_run_never_loads_the_bar():
    """--quiet and --json runs draw nothing, so tqdm's import (~16 ms before the first file)
    is left out of them; a drawn bar still works (above)."""
    code = ("import sys\n"
            "from clipsearch import Progress\n"
            "from clipsearch.progress import ProgressBar\n"
            "with ProgressBar(disable=True) as bar:\n"
            "    bar.update(Progress(1, 2, 'a.jpg'))\n"
            "assert 'tqdm' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr


VNNI = CpuFeatures("x86_64", frozenset({"avx2", "fma", "avx512f", "avx512_vnni"}))


@pytest.mark.slow  # two compiles of the tiny model
def test_the_checked_int8_tower_is_handed_on_and_encodes_as_the_cached_one(tmp_path):
    """Its session is built once: the run encodes with it instead of loading the file again
    (~0.3 CPU s of ViT-B-32 on a 2-core machine), and its vectors are the cached tower's."""
    bundle = tmp_path / "tiny"
    shutil.copytree(SHAPES_TINY, bundle)
    ref = parse_model(f"local-dir:{bundle}")
    # With dot-product flags (data) the kept int8 tower is not timed against torch.
    compiled, made = compile_model(ref, cache_dir=tmp_path / "cache", cpu=VNNI,
                                   keep_encoder=True)
    if compiled.backend != ONNX:  # int8 failed its check on the CPU at hand: nothing kept
        assert made is None
        return
    assert made is not None and made.model_id == ref.model_id and made.precision == "int8"
    cached = find_compiled(ref, cache_dir=tmp_path / "cache")
    assert cached is not None
    later = cached.image_encoder()
    pixels = preprocess_batch(probe_images(6, seed=9), cached.preprocess)
    try:
        assert np.array_equal(made.encode_pixels(pixels), later.encode_pixels(pixels))
    finally:
        made.close()
        later.close()
    again, none = compile_model(ref, cache_dir=tmp_path / "c2", cpu=VNNI)
    assert again.backend == ONNX and none is None  # not asked for: closed, not returned
