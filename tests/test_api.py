"""The public Python API a photo app embeds: everything the CLI does, without the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from clipsearch import Library, MissingModelError, Progress, SearchResult
from indexer import IndexSettings
from tests.helpers import PAIRS, draw_photos, pair_of


def test_library_api_round_trip(tmp_path):
    photos = tmp_path / "photos"
    draw_photos(photos, per_pair=1, seed=55)
    events: list[Progress] = []
    with Library.open(tmp_path / "lib", model="shapes-tiny") as lib:
        root = lib.add_root(photos)
        assert lib.roots == [root]
        report = lib.index(progress=events.append)
        assert report.indexed == len(PAIRS) and not report.interrupted
        assert events[-1].done == events[-1].total == len(PAIRS)
        assert [e.done for e in events] == sorted(e.done for e in events)

        results = lib.query("a green star", limit=3)
        assert all(isinstance(r, SearchResult) for r in results)
        assert pair_of(results[0].path) == ("green", "star")
        assert results[0].width == 96 and results[0].root == root

        similar = lib.query_image(results[0].path, limit=2)
        assert results[0].path not in {r.path for r in similar}  # the probe itself is left out
        assert lib.query_image(results[0].path, limit=1, include_self=True)[0].path == \
            results[0].path

        labels = lib.classify(results[0].path, ["a green star", "a black square"])
        assert labels[0].label == "a green star" and labels[0].probability > 0.5

        vecs = lib.embed_text(["a red circle", "a red circle"])
        assert vecs.shape[0] == 2 and np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)

        st = lib.status()
        assert st.files == len(PAIRS) and st.errors == 0
        assert lib.remove_root(photos) == len(PAIRS)
        assert lib.query("a green star") == []


def test_library_remembers_its_default_model_once_it_made_vectors(tmp_path):
    """A model that is missing (or a typo) used to become the default for good."""
    draw_photos(tmp_path / "p", per_pair=1)
    with Library(tmp_path / "lib", model="ViT-B-32", pretrained="openai") as lib, \
            pytest.raises(MissingModelError):
        lib.index([tmp_path / "p"])
    with Library(tmp_path / "lib", model="shapes-tiny") as lib:
        model_id = lib.default_model.model_id
        assert lib.roots == []  # the failed run added nothing (issue 19.4)
        lib.index([tmp_path / "p"])
    with Library(tmp_path / "lib") as lib:
        assert lib.default_model.model_id == model_id
        assert "red-circle" in lib.query("a red circle", limit=1)[0].path


def test_missing_model_raises_typed_error_fast(tmp_path):
    draw_photos(tmp_path / "p", per_pair=1)
    with Library(tmp_path / "lib", model="ViT-B-32", pretrained="openai") as lib, \
            pytest.raises(MissingModelError) as err:
        lib.index([tmp_path / "p"])
    assert "ViT-B-32" in str(err.value) and err.value.looked_in


def test_query_on_an_empty_library_loads_no_model(tmp_path):
    """A fresh library answers 'nothing yet' without building a model, but still reports a
    model whose files are missing."""
    with Library(tmp_path / "lib", model="shapes-tiny") as lib:
        assert lib.query("a cat") == [] and not lib._encoders
    with Library(tmp_path / "lib2", model="ViT-B-32", pretrained="laion2b_s34b_b79k") as lib, \
            pytest.raises(MissingModelError):
        lib.query("a cat")


def test_bad_arguments_are_refused_with_clear_errors(tmp_path):
    """Found by QA: a negative limit sliced the ranking (-1 gave 13 of 48 results), a string
    of labels was classified letter by letter, a symlinked root was indexed twice."""
    photos = tmp_path / "photos"
    draw_photos(photos, per_pair=1, seed=56)
    (tmp_path / "link").symlink_to(photos)
    with Library(tmp_path / "lib", model="shapes-tiny") as lib:
        lib.index([photos])
        assert lib.add_root(tmp_path / "link") == str(photos)  # the same folder: one root
        assert lib.roots == [str(photos)] and lib.index().unchanged == len(PAIRS)
        for limit in (0, -1, 2.5, None, True):
            with pytest.raises(ValueError, match="limit must be a whole number >= 1"):
                lib.query("a red circle", limit=limit)
        one = lib.query("a red circle", limit=1)[0]
        with pytest.raises(ValueError, match="limit"):
            lib.query_image(one.path, limit=-3)
        with pytest.raises(TypeError, match="not one string"):
            lib.classify(one.path, "a red circle")
        with pytest.raises(LookupError, match="is not a root of this library"):
            lib.remove_root(tmp_path / "elsewhere")
        with pytest.raises(ValueError, match="IndexSettings.workers must be"):
            lib.index(settings=IndexSettings(workers=-2))
        assert len(lib.query("a red circle", limit=100)) == len(PAIRS)


def test_a_library_opened_without_a_model_follows_its_first_index(tmp_path):
    """QA: a long-lived Library() kept ViT-B-32 as its default after index(model=...), and
    its queries failed until it was reopened."""
    draw_photos(tmp_path / "p", per_pair=1, seed=57)
    with Library(tmp_path / "lib") as lib:
        lib.index([tmp_path / "p"], model="shapes-tiny")
        assert lib.default_model.model_id.startswith("shapes-tiny@")
        assert "red-circle" in lib.query("a red circle", limit=1)[0].path
        assert lib.status().default_model["id"] == lib.default_model.model_id


def test_default_model_must_have_vectors_and_ids_stand_for_their_spec(tmp_path):
    from clipsearch.api import ModelNotIndexedError

    draw_photos(tmp_path / "p", per_pair=1, seed=58)
    with Library(tmp_path / "lib", model="shapes-tiny") as lib:
        lib.index([tmp_path / "p"])
        model_id = lib.default_model.model_id
        for model, pretrained in (("ViT-B-99", None), ("ViT-L-14", "openai")):
            with pytest.raises(ModelNotIndexedError, match="cannot be the default"):
                lib.set_default_model(model, pretrained)
        assert lib.default_model.model_id == model_id
        assert lib.set_default_model(model_id).model_id == model_id  # an id from status
        assert lib.query("a red circle", model=model_id)[0].path == \
            lib.query("a red circle")[0].path


def test_texts_are_checked_before_any_model_loads(tmp_path):
    draw_photos(tmp_path / "p", per_pair=1, seed=59)
    with Library(tmp_path / "lib", model="shapes-tiny") as lib:
        lib.index([tmp_path / "p"])
        with pytest.raises(TypeError, match="not one string"):
            lib.embed_text("a red circle")  # was 12 vectors, one per letter
        for blank in ("", "   ", "\t\n"):
            with pytest.raises(ValueError, match="the query text is empty"):
                lib.query(blank)
        one = lib.query("a red circle", limit=1)[0].path
        with pytest.raises(ValueError, match="must not be blank"):
            lib.classify(one, ["a red circle", "  "])


def test_a_closed_library_says_so_and_bad_images_are_named(tmp_path):
    from clip_core.pixels.decode import DecodeError
    from store import StorageError

    draw_photos(tmp_path / "p", per_pair=1, seed=60)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    lib = Library(tmp_path / "lib", model="shapes-tiny")
    lib.index([tmp_path / "p"])
    with pytest.raises(DecodeError, match=f"{bad}: content is not"):
        lib.classify(bad, ["a red circle", "a blue star"])
    one = lib.query("a red circle", limit=1)[0].path
    (tmp_path / "alias.png").symlink_to(one)
    assert one not in {r.path for r in lib.query_image(tmp_path / "alias.png", limit=5)}
    lib.close()
    lib.close()  # twice is fine
    with pytest.raises(StorageError, match="was closed; open it again"):
        lib.query("a red circle")
