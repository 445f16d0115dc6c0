"""`Library`'s options as one dataclass (`LibrarySettings`), with the keyword form kept: apps,
the CLI and clipsearch/server open libraries both ways and get the same library."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

import clipsearch
from clipsearch import Library, LibrarySettings


def _options(lib: Library) -> tuple:
    return (lib.default_model.model_id, lib.device, lib.precision, lib.models_dir,
            lib.cache_dir, lib.readonly, lib.low_memory)


def test_settings_and_keywords_open_the_same_library(tmp_path):
    fields = {"model": "shapes-tiny", "precision": "fp32", "low_memory": True,
              "models_dir": tmp_path / "models", "cache_dir": tmp_path / "cache"}
    with Library(tmp_path / "a", **fields) as by_keywords, \
            Library(tmp_path / "b", settings=LibrarySettings(**fields)) as by_settings:
        assert _options(by_keywords) == _options(by_settings)
        assert by_settings.settings == by_keywords.settings == LibrarySettings(**fields)
        assert by_settings.low_memory and by_settings.precision == "fp32"
        with Library(tmp_path / "c", settings=by_settings.settings) as again:  # passed on
            assert _options(again) == _options(by_settings)


def test_a_keyword_overrides_the_settings_and_leaves_them_unchanged(tmp_path):
    shared = LibrarySettings(model="shapes-tiny", precision="fp32")
    with Library(tmp_path / "lib", settings=shared, precision="int8") as lib:
        assert lib.precision == "int8" and lib.default_model.model_id.startswith("shapes-tiny")
    assert shared.precision == "fp32"
    with pytest.raises(dataclasses.FrozenInstanceError):
        shared.precision = "bf16"  # type: ignore[misc]


def test_settings_refuse_what_the_keywords_refuse(tmp_path):
    with pytest.raises(FileNotFoundError, match="no clipsearch library"):
        Library(tmp_path / "missing", settings=LibrarySettings(create=False))
    assert not (tmp_path / "missing").exists()
    with pytest.raises(TypeError, match="modle"):  # a misspelt option is no silent default
        Library(tmp_path / "lib", modle="shapes-tiny")
    assert not (tmp_path / "lib").exists()


def test_library_settings_is_public_and_documented():
    assert "LibrarySettings" in clipsearch.__all__
    doc = inspect.getdoc(LibrarySettings) or ""
    assert "Library(" in doc and "settings=" in doc  # an example of its use
    documented = set(doc.replace("`", " ").replace(",", " ").replace(":", " ").split())
    missing = {f.name for f in dataclasses.fields(LibrarySettings)} - documented
    assert not missing, f"fields without a word in the docstring: {missing}"
