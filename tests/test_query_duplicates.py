"""Duplicate photos (issue 14.4) on generated sets: re-encodes, resizes, 5% crops and small
rotations of one picture group together with exact copies; other pictures of the same
colour, shape and background with the shape elsewhere do not."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from clipsearch import Library
from search.duplicates import (
    DEFAULT_THRESHOLD,
    PIXEL_THRESHOLD,
    candidate_pairs,
    thumbnail_signature,
)
from tests.duplicate_sets import VARIANTS, group_of, write_sets
from tests.helpers import cli, cli_json

GROUPS = 12


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("dups")
    photos = root / "photos"
    write_sets(photos, groups=GROUPS, seed=1414)
    (photos / "copies").mkdir()
    shutil.copy(photos / "g0-orig.png", photos / "copies" / "g0-copy.png")  # same bytes
    for n, path in enumerate(sorted(photos.rglob("*.*"))):
        os.utime(path, ns=(10**18 + n, 10**18 + n))
    os.utime(photos / "g0-q85.jpg", ns=(2 * 10**18, 2 * 10**18))  # the newest full-size one
    with Library(root / "lib", model="shapes-tiny") as lib:
        lib.index([photos])
    return root / "lib", photos


def test_copies_group_and_other_pictures_do_not(library):
    lib_path, photos = library
    with Library(lib_path) as lib:
        groups = lib.duplicates()
    found = sorted(sorted(Path(m.path).name for m in g.members) for g in groups)
    expected = sorted(sorted([f"g{g}-orig.png"] + [n.name for n in photos.glob(f"g{g}-*")
                                                   if "orig" not in n.name]
                             + (["g0-copy.png"] if g == 0 else []))
                      for g in range(GROUPS))
    assert found == expected
    assert all(group_of(m.path).startswith("g") for g in groups for m in g.members)
    # Largest group first (the one with the exact copy), best member first: most pixels,
    # then newest (q85 was made the newest of the 240x180 ones).
    assert len(groups[0].members) == len(VARIANTS) + 2
    assert Path(groups[0].members[0].path).name == "g0-q85.jpg"
    for group in groups:
        pixels = [m.width * m.height for m in group.members]
        assert pixels[0] == max(pixels) and group.members[0].score == 1.0
        assert not group.exact


def test_exact_copies_group_whatever_the_threshold(library):
    lib_path, _ = library
    with Library(lib_path) as lib:
        groups = lib.duplicates(threshold=1.0)
        assert [sorted(Path(m.path).name for m in g.members) for g in groups] == \
            [["g0-copy.png", "g0-orig.png"]]
        assert groups[0].exact
        with pytest.raises(ValueError, match="threshold"):
            lib.duplicates(threshold=1.5)


def test_thresholds_sit_in_the_measured_gaps(library):
    """The defaults come from these distributions (docs/search.md): every copy pair is a
    vector candidate, and the pixel check tells copies from other pictures."""
    lib_path, _ = library
    with Library(lib_path) as lib:
        ids, vectors = lib.catalog.vectors(lib.default_model.model_id)
        rows = lib.catalog.file_rows(ids.tolist())
    paths = [rows[i]["path"] for i in ids.tolist()]
    sigs = np.array([thumbnail_signature(p) for p in paths])
    copy_vec, copy_pix, other_pix = [], [], []
    for a in range(len(paths)):
        for b in range(a + 1, len(paths)):
            ga, gb = group_of(paths[a]), group_of(paths[b])
            if ga == gb:
                copy_vec.append(float(vectors[a] @ vectors[b]))
                copy_pix.append(float(sigs[a] @ sigs[b]))
            elif ga[1:] == gb[1:]:  # g3 and o3: same colour, shape and background
                other_pix.append(float(sigs[a] @ sigs[b]))
    assert min(copy_vec) > DEFAULT_THRESHOLD
    assert min(copy_pix) > PIXEL_THRESHOLD > max(other_pix)
    # The range search finds exactly the pairs a brute-force comparison finds.
    a, b, s = candidate_pairs(vectors, DEFAULT_THRESHOLD)
    sims = vectors @ vectors.T
    brute = {(i, j) for i, j in zip(*np.nonzero(sims > DEFAULT_THRESHOLD), strict=True)
             if i < j}
    assert set(zip(a.tolist(), b.tolist(), strict=True)) == brute
    assert np.allclose(s, sims[a, b], atol=1e-5)


@pytest.mark.parametrize("tile, workers", [((7, 13), 2), ((64, 32), 3), ((1, 1), 1)])
def test_candidate_tiles_find_every_pair_once_across_their_edges(tile, workers):
    """Tiles cut bursts of near-copies at every edge (rows, columns, the diagonal): the
    pairs are still exactly a brute-force comparison's, each once, with its score."""
    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(150, 16)).astype(np.float32)
    for start, size in ((0, 9), (30, 20), (140, 10)):  # bursts across tile edges
        vectors[start:start + size] = vectors[start] + rng.normal(0, 0.05, (size, 16))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    a, b, s = candidate_pairs(vectors, DEFAULT_THRESHOLD, tile=tile, workers=workers)
    sims = vectors @ vectors.T
    brute = {(i, j) for i, j in zip(*np.nonzero(sims > DEFAULT_THRESHOLD), strict=True)
             if i < j}
    assert len(brute) > 200
    pairs = list(zip(a.tolist(), b.tolist(), strict=True))
    assert len(pairs) == len(set(pairs)) and set(pairs) == brute
    assert a.dtype == b.dtype == np.int64 and np.allclose(s, sims[a, b], atol=1e-5)


def test_cli_lists_the_same_groups(library, tmp_path):
    lib_path, _ = library
    with Library(lib_path) as lib:
        expected = [g.to_dict() for g in lib.duplicates()]
    assert cli_json("duplicates", library=lib_path) == expected
    table = cli("duplicates", library=lib_path).stdout.splitlines()
    assert table[0] == f"Group 1: {len(VARIANTS) + 2} photos, near-duplicates"
    assert table[1].split()[0] == "best" and table[1].endswith("g0-q85.jpg")
    bad = cli("duplicates", "--threshold", "2", library=lib_path, ok=False)
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    empty = cli("duplicates", "--threshold", "1", library=lib_path)
    assert "exact copies" in empty.stdout
