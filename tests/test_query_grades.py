"""An honest "no good match" (issue 14.3): calibrated grades on held-out libraries drawn with
seeds and sizes shapes-tiny never trained on, holding only blue and green shapes."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from clipsearch import Library, Query
from clipsearch.shapes import COLOURS, SHAPES, draw
from search.grading import Calibration, calibrate
from tests.helpers import cli, cli_json

HELD = ("blue", "green")
SEEDS = (101, 202, 303)
TEMPLATES = ("a {c} {s}", "a photo of a {c} {s}", "{c} {s}")


def _blue_green_library(root: Path, seed: int) -> Path:
    rng = random.Random(seed)
    photos = root / f"photos-{seed}"
    photos.mkdir(parents=True)
    for colour in HELD:
        for shape in SHAPES:
            for i in range(4):
                size = rng.choice([96, (140, 100), (100, 130)])
                draw(colour, shape, size=size, rng=rng).save(photos / f"{colour}-{shape}-{i}.png")
    with Library(root / f"lib-{seed}", model="shapes-tiny") as lib:
        lib.index([photos])
    return root / f"lib-{seed}"


@pytest.fixture(scope="module")
def libraries(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("grades")
    return [_blue_green_library(root, seed) for seed in SEEDS]


def test_missing_colours_are_flagged_and_held_ones_are_strong(libraries):
    flagged, absent, strong, present = 0, 0, 0, 0
    for library in libraries:
        with Library(library) as lib:
            for colour in COLOURS:
                for shape in SHAPES:
                    for template in TEMPLATES:
                        results = lib.query(template.format(c=colour, s=shape), limit=5)
                        if colour in HELD:
                            present += 1
                            strong += results[0].grade == "strong" and bool(results.good_match)
                        else:
                            absent += 1
                            flagged += results.good_match is False
    assert flagged / absent >= 0.9, f"flagged {flagged}/{absent}"
    assert strong / present >= 0.95, f"strong {strong}/{present}"


def test_grades_follow_the_bars():
    neutral = np.eye(4, dtype=np.float32)[:2]
    library = np.eye(4, dtype=np.float32)[[0, 1, 2, 3] * 5]
    cal = calibrate(neutral, library)
    assert cal.weak <= cal.strong
    assert cal == Calibration(weak=0.0, strong=1.0)
    assert [cal.grade(s) for s in (1.01, 0.5, -0.1)] == ["strong", "weak", "none"]


def test_cli_says_no_good_match_and_cuts(libraries):
    library = libraries[0]
    missing = cli("query", "a", "red", "circle", "-n", "3", library=library)
    first, *rows = missing.stderr.splitlines()
    assert first.startswith("No good match")
    assert len(missing.stdout.splitlines()) == 3  # the closest photos anyway
    held = cli("query", "a blue circle", "-n", "3", library=library)
    assert "No good match" not in held.stderr
    assert held.stdout.splitlines()[0].split()[2] == "strong"

    graded = cli_json("query", "a blue circle", "-n", "20", library=library)
    assert {r["grade"] for r in graded} <= {"strong", "weak", "none"}
    assert graded[0]["grade"] == "strong" and graded[-1]["grade"] != "strong"
    strong = cli_json("query", "a blue circle", "-n", "20", "--strong-only", library=library)
    assert strong == [{**r, "rank": i + 1} for i, r in
                      enumerate(x for x in graded if x["grade"] == "strong")]
    cut = cli_json("query", "a blue circle", "-n", "20", "--min-score", "0.5",
                   library=library)
    assert cut and all(r["score"] >= 0.5 for r in cut)
    assert cut == [r for r in graded if r["score"] >= 0.5]
    none = cli("query", "a red circle", "--strong-only", library=library)
    assert none.stdout == "" and "no result is graded strong" in none.stderr


def test_api_flags_and_reasons(libraries):
    with Library(libraries[0]) as lib:
        red = lib.query("a red square", limit=3)
        assert red.good_match is False and len(red) == 3
        assert red.to_dict()["good_match"] is False
        empty = lib.query("a red square", strong_only=True)
        assert empty == [] and empty.reason == "no result is graded strong"
        assert lib.query("a green star", min_score=1.01).reason == \
            "no result scores 1.01 or more"
        star = lib.query("a green star", limit=1)[0]
        with pytest.raises(ValueError, match="strong-only needs a graded query"):
            lib.query(Query.file_id(star.file_id), strong_only=True)


def test_bars_are_cached_per_generation_beside_the_vectors(libraries, tmp_path):
    """A one-shot CLI query reuses the bars an earlier process measured, as long as the
    catalog has not changed; a damaged cache file is measured again."""
    import json
    import shutil

    library = tmp_path / "lib"
    shutil.copytree(libraries[1], library)
    with Library(library) as lib:
        measured = lib.calibration()
        generation = lib.catalog.generation
    (cached,) = (library / "vectors").glob("*.grades.json")
    data = json.loads(cached.read_text())
    assert data["generation"] == generation and (cached.stat().st_mode & 0o777) == 0o600
    data["strong"] = 0.123  # a stand-in only this file can have produced
    cached.write_text(json.dumps(data))
    with Library(library) as lib:
        assert lib.calibration().strong == 0.123
    cached.write_text("{not json")
    with Library(library) as lib:
        assert lib.calibration() == measured
    cached.write_text(json.dumps(data))  # the stand-in again
    more = tmp_path / "more"
    more.mkdir()
    draw("green", "star", size=96, rng=random.Random(3)).save(more / "green-star-x.png")
    with Library(library) as lib:
        lib.index([more])  # a new generation: the stand-in no longer applies
        assert lib.calibration().strong != 0.123
    assert json.loads(cached.read_text())["generation"] > generation
