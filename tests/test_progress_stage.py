"""A first index run with a model compiles it for this CPU before any file is written: its
progress says so ("compiling", shown by the CLI's bar), a later run's does not (issue 12)."""

from __future__ import annotations

import pytest

from clipsearch import Library, Progress
from clipsearch.progress import ProgressBar
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
    assert "Indexing: 100%" in shown[at:]
    assert "Compiling" not in shown[shown.index("Indexing"):]
