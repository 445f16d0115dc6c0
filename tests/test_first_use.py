"""A new user's first commands, mistakes included (issue 19): a failed command changes
nothing, and an index run that finds nothing says where it looked."""

from __future__ import annotations

import pytest

from clipsearch import Library
from tests.helpers import cli, cli_json, draw_photos

BAD_MODELS = [["--model", "ViT-B-23"],  # no such architecture
              ["--model", "ViT-B-32", "--pretrained", "openai"]]  # not on this machine


@pytest.mark.parametrize("model", BAD_MODELS)
def test_a_failed_index_creates_no_library(tmp_path, model):
    draw_photos(tmp_path / "p", per_pair=1, seed=5)
    result = cli("index", str(tmp_path / "p"), *model, "-q", library=tmp_path / "lib",
                 ok=False)
    assert result.exit_code == 2 and model[1] in result.stderr, result.stderr
    assert not (tmp_path / "lib").exists()


@pytest.mark.parametrize("model", BAD_MODELS)
def test_a_failed_index_leaves_an_existing_library_as_it_was(tmp_path, model):
    library = tmp_path / "lib"
    draw_photos(tmp_path / "p", per_pair=1, seed=5)
    (tmp_path / "empty").mkdir()  # no photos: the model never loads, and still is checked
    cli("index", str(tmp_path / "p"), "--model", "shapes-tiny", "-q", library=library)
    before = cli_json("status", library=library)
    for folder in ("p", "empty"):
        result = cli("index", str(tmp_path / folder), *model, "-q", library=library, ok=False)
        assert result.exit_code == 2 and model[1] in result.stderr, result.stderr
    assert cli_json("status", library=library) == before


def test_the_api_checks_model_and_folders_before_adding_roots(tmp_path):
    draw_photos(tmp_path / "p", per_pair=1, seed=5)
    with Library(tmp_path / "lib", model="shapes-tiny") as lib:
        with pytest.raises(NotADirectoryError):
            lib.index([tmp_path / "p", tmp_path / "nope"])
        assert lib.roots == []
        with pytest.raises(RuntimeError, match="ViT-B-23"):  # ModelLoadError
            lib.index([tmp_path / "p"], model="ViT-B-23")
        assert lib.roots == []
