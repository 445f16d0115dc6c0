"""What an app embedding `clipsearch` relies on: every exception it can meet has a name in
`clipsearch` (issue 19.14)."""

from __future__ import annotations

import errno

import pytest

import clipsearch
from clipsearch import Library
from store import WriterLock
from tests.helpers import draw_photos


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    base = tmp_path_factory.mktemp("contract")
    draw_photos(base / "p", per_pair=1, seed=31)
    with Library(base / "lib", model="shapes-tiny") as lib:
        lib.index([base / "p"])
    return base


def test_the_errors_an_app_meets_carry_clipsearch_names(library, tmp_path):
    """`query_image("/nope.jpg")` raised clip_core.images.DecodeError ("file no longer
    exists") after loading the model."""
    missing = tmp_path / "nope.jpg"
    (tmp_path / "notes.jpg").write_text("not a picture")
    with Library(library / "lib") as lib:
        for call in (lambda: lib.query_image(missing), lambda: lib.classify(missing, ["a"]),
                     lambda: clipsearch.classify(missing, ["a"], model="shapes-tiny")):
            with pytest.raises(FileNotFoundError) as err:
                call()
            assert err.value.errno == errno.ENOENT and err.value.filename == str(missing)
        assert not lib._encoders  # refused before any model loaded
        with pytest.raises(IsADirectoryError):
            lib.query_image(tmp_path)
        with pytest.raises(clipsearch.DecodeError, match="notes.jpg"):
            lib.query_image(tmp_path / "notes.jpg")
        with pytest.raises(clipsearch.ModelNotIndexedError):
            lib.query("a cat", model="RN50", pretrained="openai")
        lock = WriterLock(library / "lib" / "index.lock")
        lock.acquire()
        try:
            with pytest.raises(clipsearch.LibraryBusyError):
                lib.remove_root(library / "p")
        finally:
            lock.release()
    with pytest.raises(clipsearch.ModelLoadError):
        clipsearch.check_model("ViT-B-23")
    with pytest.raises(clipsearch.MissingModelError):
        clipsearch.check_model("ViT-B-32", "openai")
    with Library(library / "lib", readonly=True) as lib, \
            pytest.raises(clipsearch.StorageError):
        lib.index()
