"""The default model and `status` stay true after roots and models are removed."""

from __future__ import annotations

from pathlib import Path

from clipsearch import Library
from clipsearch.shapes import write_corpus
from tests.helpers import cli, cli_json
from tests.reliability_support import MODEL, make_random_bundle


def test_default_passes_to_a_model_with_vectors_or_to_none(tmp_path):
    library = tmp_path / "lib"
    other = make_random_bundle(tmp_path / "bundle")
    dogs, shapes = tmp_path / "dogs", tmp_path / "shapes"
    write_corpus(dogs, per_pair=1, seed=5, size=64)
    write_corpus(shapes, per_pair=1, seed=6, size=64)
    (dogs / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    n = len(list(dogs.glob("*.png")))
    cli("index", str(dogs), "--model", other, "-q", library=library)
    cli("index", str(shapes), "--model", MODEL, "-q", library=library)
    shapes_id = cli_json("default-model", MODEL, library=library)["id"]
    other_id = next(m for m in cli_json("status", library=library)["models"] if m != shapes_id)

    # The only folder with the default's vectors goes: the other model takes over.
    cli("remove-root", str(shapes), library=library)
    status = cli_json("status", library=library)
    assert status["default_model"]["id"] == other_id and status["models"] == {other_id: n}
    assert shapes_id not in cli("status", library=library).stdout
    assert len(cli_json("query", "a dog", library=library)) == 10

    # status --errors: the errors under their own heading, after the models.
    text = cli("status", "--errors", library=library).stdout.splitlines()
    assert text.index("Errors:") > text.index("Models:")
    assert f"Files: {n + 1} ({n} indexed, 1 error)" in text

    # The last model goes: no default, files to index again, and a query says so.
    cli("remove-model", other_id, library=library)
    status = cli_json("status", library=library)
    assert status["default_model"] is None and status["models"] == {}
    assert (status["indexed"], status["unindexed"]) == (0, n)
    text = cli("status", library=library).stdout
    assert "Default model: none yet (`clipsearch index` uses ViT-B-32" in text
    assert f"Files: {n + 1} (0 indexed, {n} to index (clipsearch index), 1 error)" in text
    result = cli("query", "a dog", library=library)
    assert "Nothing indexed yet" in result.stderr and "missing" not in result.stderr
    assert cli("default-model", library=library).stdout.startswith("none yet")
    with Library(library) as lib:
        assert lib.query("a dog") == []
    report = cli_json("index", "--model", MODEL, "-q", library=library)
    assert report["indexed"] + report["reused"] == n
    assert cli_json("status", library=library)["default_model"]["id"] == shapes_id


def test_status_of_a_new_library_and_one_vector(tmp_path):
    library = tmp_path / "lib"
    Library(library).close()  # made, never indexed
    text = cli("status", library=library).stdout
    assert "Default model: none yet (`clipsearch index` uses ViT-B-32" in text
    assert cli_json("status", library=library)["default_model"] is None
    one = tmp_path / "one"
    write_corpus(one, per_pair=1, seed=7, size=64)
    for extra in sorted(one.glob("*.png"))[1:]:
        extra.unlink()
    cli("index", str(one), "--model", MODEL, "-q", library=library)
    text = cli("status", library=library).stdout
    assert ": 1 vector\n" in text and "Files: 1 (1 indexed, 0 errors)" in text
    assert Path(library / "catalog.db").is_file()
