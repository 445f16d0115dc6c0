"""`clipsearch models list|download|export|import|verify` with transformers-format CLIP
repositories (openai/clip-vit-large-patch14 as Stable Diffusion tools download it): the files
such a repository really has, sharded and fp16 weights, against a fake hub on 127.0.0.1."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
import torch

from clip_core.models.files import ensure_local
from clip_core.models.ref import parse_model
from tests.helpers import cli
from tests.test_model_store import FakeHub
from tests.test_sd_clip_download import HF_NAME, _files, _their_text, build_source, hf_cache

pytest.importorskip("transformers")

TEXTS = ["a red circle", "a photo of a dog"]


def _our_text(ref_name: str, models_dir: Path) -> np.ndarray:
    from clip_core.torch_backend.loading import load_model

    loaded = load_model(parse_model(ref_name), models_dir=models_dir)
    with torch.no_grad():
        return loaded.model.encode_text(loaded.tokenizer(TEXTS)).numpy()


def _cos_min(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return float((a * b).sum(-1).min())


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> dict:
    return build_source(tmp_path_factory)


@pytest.fixture
def env(tmp_path, monkeypatch) -> dict:
    models = tmp_path / "models"
    monkeypatch.setenv("CLIPSEARCH_MODELS", str(models))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return {"models": models, "hf_home": tmp_path / "hf-home"}


@pytest.fixture
def hub(monkeypatch):
    server = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # read at its import
    monkeypatch.delenv("CLIPSEARCH_OFFLINE", raising=False)
    yield server
    server.close()


def test_list_shows_a_cached_transformers_repository(source, env):
    hf_cache(env["hf_home"], _files(source, "sharded", tokenizer=False))
    listed = {i["model"]: i for i in json.loads(cli("models", "list", "--json").stdout)}
    info = listed["hf-hub:" + HF_NAME]
    assert info["source"] == "hf-cache" and info["available"] and info["embed_dim"] == 16
    assert info["size_bytes"] > 0 and info["location"].endswith(
        "models--openai--clip-vit-large-patch14/snapshots/"
        "32bd64288804d66eefd0ccbe215aa642df71cc41")


def test_download_fetches_the_files_the_repository_has(source, env, hub):
    """Sharded safetensors win over the .bin the repo also has; TF/Flax weights are never
    asked for; tokenizer and preprocessing files come along."""
    repo_files = _files(source, "sharded", tokenizer=True)
    for name, path in repo_files.items():
        hub.add(HF_NAME, name, path.read_bytes())
    for extra in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack"):
        hub.add(HF_NAME, extra, b"not wanted")
    out = cli("models", "download", HF_NAME, "--quiet", "--json")
    folder = env["models"] / "hf-hub" / HF_NAME
    assert json.loads(out.stdout)["folder"] == str(folder)
    fetched = {path.rsplit("/", 1)[1] for method, path, _ in hub.log if method == "GET"}
    assert fetched == set(repo_files)  # config, preprocessor, index, shards, tokenizer files
    assert not any("/cdn/" in p and p.endswith((".bin", ".h5", ".msgpack"))
                   for _, p, _ in hub.log)
    assert {p.name for p in folder.iterdir() if not p.name.startswith(".")} == set(repo_files)
    verified = json.loads(cli("models", "verify", "--json").stdout)
    assert [v["status"] for v in verified] == ["ok"]
    hub.close()  # what was fetched is used offline
    os.environ["HF_HUB_OFFLINE"] = "1"
    ensure_local(parse_model(HF_NAME))
    ours = _our_text(HF_NAME, env["models"])
    assert _cos_min(ours, _their_text(source, TEXTS)) > 0.9999


def test_download_takes_an_fp16_variant_when_that_is_all(source, env, hub, tmp_path):
    from safetensors.torch import save_file

    fp16 = tmp_path / "model.fp16.safetensors"
    save_file({k: v.half().contiguous() for k, v in source["model"].state_dict().items()},
              str(fp16))
    hub.add(HF_NAME, "config.json", _files(source, "safetensors", False)["config.json"]
            .read_bytes())
    hub.add(HF_NAME, "model.fp16.safetensors", fp16.read_bytes())
    cli("models", "download", "hf-hub:" + HF_NAME, "--quiet")
    folder = env["models"] / "hf-hub" / HF_NAME
    assert (folder / "model.fp16.safetensors").is_file()
    ours = _our_text(HF_NAME, env["models"])  # no tokenizer files: OpenAI's vocabulary
    assert _cos_min(ours, _their_text(source, TEXTS)) > 0.999  # fp16 weights


def test_export_import_verify_a_cached_repository(source, env, tmp_path, monkeypatch):
    """The air-gapped path: export the HF-cache copy here, import it on a machine that has no
    HF cache, verify, and get the same vectors."""
    hf_cache(env["hf_home"], _files(source, "sharded", tokenizer=False))
    bundle = tmp_path / "clip-l.clipsearch"
    cli("models", "export", HF_NAME, "-o", str(bundle))
    expected = set(_files(source, "sharded", tokenizer=False))
    manifest = json.loads(_member(bundle, "manifest.json"))
    assert {f["name"] for f in manifest["files"]} == expected  # index + shards, no tokenizer
    other = tmp_path / "other-machine"
    monkeypatch.setenv("CLIPSEARCH_MODELS", str(other / "models"))
    monkeypatch.setenv("HF_HOME", str(other / "hf-home"))  # empty: the store must serve it
    out = cli("models", "import", str(bundle), "--json")
    assert json.loads(out.stdout)["model"] == "hf-hub:" + HF_NAME
    verified = json.loads(cli("models", "verify", "--json").stdout)
    assert [v["status"] for v in verified] == ["ok"]
    ours = _our_text("hf-hub:" + HF_NAME, other / "models")
    assert _cos_min(ours, _their_text(source, TEXTS)) > 0.9999


def _member(bundle: Path, name: str) -> bytes:
    import tarfile

    with tarfile.open(bundle) as tar:
        handle = tar.extractfile(name)
        assert handle is not None
        return handle.read()


def test_download_refuses_a_repository_that_is_not_clip(env, hub):
    """A Stable Diffusion text encoder (or a typo naming another model): config.json says
    so, no weights are fetched and nothing stays in the store."""
    config = {"model_type": "clip_text_model", "architectures": ["CLIPTextModel"]}
    hub.add("sd/text-encoder", "config.json", json.dumps(config).encode())
    hub.add("sd/text-encoder", "model.safetensors", b"x" * 1000)
    result = cli("models", "download", "hf-hub:sd/text-encoder", "--quiet", ok=False)
    assert result.exit_code == 1
    assert "nothing was downloaded" in result.stderr and "clip_text_model" in result.stderr
    assert not any(p.endswith("model.safetensors") for m, p, _ in hub.log if m == "GET")
    assert not (env["models"] / "hf-hub" / "sd").exists()


def test_export_of_a_partial_download_says_what_is_missing(source, env):
    files = _files(source, "safetensors", tokenizer=True)
    del files["model.safetensors"]
    hf_cache(env["hf_home"], files)
    result = cli("models", "export", HF_NAME, "-o", str(env["models"].parent / "b.tar"),
                 ok=False)
    assert result.exit_code == 2
    assert "has config.json but no weights file" in result.stderr
    assert not (env["models"].parent / "b.tar").exists()
