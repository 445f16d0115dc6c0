"""A new user's first commands, mistakes included (issue 19): a failed command changes
nothing, and an index run that finds nothing says where it looked."""

from __future__ import annotations

import pytest

from clipsearch import IndexSettings, Library
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
        with pytest.raises(ValueError, match="batch_size"):
            lib.index([tmp_path / "p"], settings=IndexSettings(batch_size=0))
        assert lib.roots == []


def test_index_with_no_folders_is_a_usage_error_and_creates_nothing(tmp_path):
    result = cli("index", library=tmp_path / "lib", ok=False)
    assert result.exit_code == 2 and "clipsearch index FOLDER" in result.stderr
    assert not (tmp_path / "lib").exists()
    draw_photos(tmp_path / "p", per_pair=1, seed=5)
    cli("index", str(tmp_path / "p"), "--model", "shapes-tiny", "-q", library=tmp_path / "lib")
    cli("remove-root", str(tmp_path / "p"), library=tmp_path / "lib")
    result = cli("index", library=tmp_path / "lib", ok=False)
    assert result.exit_code == 2 and "has no folders yet" in result.stderr
    with Library(tmp_path / "lib") as lib, pytest.raises(ValueError, match="no folders"):
        lib.index()


def test_a_folder_without_photos_says_what_it_saw(tmp_path):
    """Used to print "Done in 0.0s: 0 indexed ..." and nothing else."""
    (tmp_path / "empty").mkdir()
    notes = tmp_path / "notes"
    (notes / "sub").mkdir(parents=True)
    (notes / ".thumbnails").mkdir()
    for name in ("a.txt", "sub/b.txt", "README", ".hidden.jpg", "@eaDir"):
        (notes / name).write_text("x")
    draw_photos(tmp_path / "photos", per_pair=1, seed=5)
    folders = [str(tmp_path / f) for f in ("empty", "notes", "photos")]
    result = cli("index", *folders, "--model", "shapes-tiny", "-q", library=tmp_path / "lib")
    assert f"Nothing to index in {tmp_path / 'empty'}: the folder is empty." in result.stderr
    assert (f"Nothing to index in {notes}: 3 files, none of them an image clipsearch reads "
            "(.txt 2, (no extension) 1); 3 hidden entries left out") in result.stderr
    assert "--include-hidden" in result.stderr and "photos:" not in result.stderr
    report = cli_json("index", "-q", library=tmp_path / "lib")
    assert [s["root"] for s in report["empty_roots"]] == folders[:2]
    assert report["empty_roots"][1]["unsupported"] == {".txt": 2, "": 1}
    hidden = cli_json("index", str(notes), "--include-hidden", "-q", library=tmp_path / "lib")
    assert hidden["indexed"] == 0 and hidden["skipped"][0]["path"].endswith(".hidden.jpg")
    assert hidden["empty_roots"] == []  # the broken .hidden.jpg is a file of that root now


def test_a_mistyped_model_gets_did_you_mean(tmp_path):
    """`query --model shapes-tny` only said "no vectors made by shapes-tny/laion2b_s34b_b79k"."""
    from clipsearch import ModelNotIndexedError

    draw_photos(tmp_path / "p", per_pair=1, seed=5)
    with Library(tmp_path / "lib", model="shapes-tiny") as lib:
        lib.index([tmp_path / "p"])
        model_id = lib.default_model.model_id
        for call in (lambda: lib.query("a cat", model="shapes-tny"),
                     lambda: lib.query_image(next((tmp_path / "p").iterdir()), model="shapes"),
                     lambda: lib.set_default_model("shapes-tiniest"),
                     lambda: lib.remove_model(model_id[:-2])):
            with pytest.raises(ModelNotIndexedError) as err:
                call()
            assert err.value.suggestions == [model_id] == err.value.available
            assert f"Did you mean {model_id}?" in str(err.value)
        with pytest.raises(ModelNotIndexedError) as err:
            lib.query("a cat", model="RN50", pretrained="openai")
        assert err.value.suggestions == [] and "Did you mean" not in str(err.value)
        assert f"It holds: {model_id}." in str(err.value)
    result = cli("query", "a", "cat", "--model", "shapes-tny", library=tmp_path / "lib",
                 ok=False)
    assert result.exit_code == 1 and f"Did you mean {model_id}?" in result.stderr
