"""clipsearch.ModelStore: the public facade `clipsearch models` goes through (issue 11 item
5), used here as an app would, on the bundled shapes-tiny model's real files."""

from __future__ import annotations

import pytest

from clipsearch import BadInputError, ModelError, ModelStore, StoreError


@pytest.fixture
def places(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("CLIPSEARCH_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path


def test_export_import_verify_list_as_an_app(places):
    here = ModelStore(places / "here")
    bundle = here.export_bundle("shapes-tiny", places / "shapes.tar")
    assert bundle.path == places / "shapes.tar" and bundle.files
    with pytest.raises(StoreError, match="already exists"):
        here.export_bundle("shapes-tiny", places / "shapes.tar")

    there = ModelStore(places / "there")
    installed = there.import_bundle(places / "shapes.tar")
    assert installed.path.is_relative_to(there.folder)
    assert [r.status for r in there.verify()] == ["ok"]
    listed = {(m.model, m.location) for m in there.list_models() if m.source == "store"}
    assert listed == {(installed.spec["model"], str(installed.path))}, listed

    weights = max(installed.path.rglob("*.safetensors"), key=lambda p: p.stat().st_size)
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")  # one byte off
    assert [r.status for r in there.verify()] == ["corrupt"]

    (places / "junk.tar").write_bytes(b"not a tar at all")
    with pytest.raises(BadInputError):  # a BundleError: also a StoreError
        there.import_bundle(places / "junk.tar")


def test_download_refuses_offline_and_unknown_names_before_the_network(places):
    with pytest.raises(StoreError, match="offline mode is on"):
        ModelStore(places / "m", offline=True).download("ViT-B-32")
    with pytest.raises(ModelError, match="Unknown open_clip architecture"):
        ModelStore(places / "m").download("ViT-B-23")
    assert not (places / "m").exists()  # nothing made for a refused download
