"""The seed's scenario: a Stable Diffusion user's `openai/clip-vit-large-patch14` download in the
Hugging Face cache (blobs + snapshots symlinks + refs/main, as huggingface_hub writes them),
with or without its tokenizer files, used by its Hugging Face name. Small random CLIPModels
built with transformers, with OpenAI's text vocabulary (49408 ids, start/end 49406/49407,
context 77) so the bundled-tokenizer fallback is really exercised; vectors must equal
transformers' own outputs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

# Before huggingface_hub is first imported (open_clip pulls it in): no network, ever.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
import torch

from clip_core.models.files import MissingModelError, ModelLoadError, ensure_local
from clip_core.models.ref import parse_model
from clipsearch import Library
from clipsearch import classify as classify_image
from tests.helpers import cli, draw_photos
from tests.test_hf_clip import _standard_merges, _write_bpe

pytest.importorskip("transformers")  # a dev/test dependency only

HF_NAME = "openai/clip-vit-large-patch14"
COMMIT = "32bd64288804d66eefd0ccbe215aa642df71cc41"
TOKENIZER = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
             "special_tokens_map.json")
LABELS = ["a red circle", "a blue square", "a dog on a sofa"]
IMAGE = 32


def _features(out) -> torch.Tensor:
    # transformers < 5 returns a tensor, 5.x an output object with the projected pooler_output.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> dict:
    return build_source(tmp_path_factory)


def build_source(tmp_path_factory) -> dict:
    """One random CLIPModel saved every way a download may hold it: safetensors, shards, .bin;
    plus the tokenizer files and the transformers model and tokenizer to compare with."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    bpe = tmp_path_factory.mktemp("bpe")
    _write_bpe(bpe, _standard_merges())
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77,
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=1),
        vision_config=dict(image_size=IMAGE, patch_size=16, hidden_size=32,
                           intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
        projection_dim=16,
    )
    model = CLIPModel(config).eval()
    with torch.no_grad():  # default init leaves LayerNorms at 1/0, which would hide swaps
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    root = tmp_path_factory.mktemp("sources")
    folders = {}
    for kind, kwargs in (("safetensors", {}), ("sharded", {"max_shard_size": "1MB"}),
                         ("bin", {})):
        folder = folders[kind] = root / kind
        model.save_pretrained(folder, **kwargs)
        if kind == "bin":  # transformers 5 writes no .bin; older downloads hold one
            (folder / "model.safetensors").unlink()
            torch.save(model.state_dict(), folder / "pytorch_model.bin")
        CLIPImageProcessor(size={"shortest_edge": IMAGE},
                           crop_size={"height": IMAGE, "width": IMAGE}).save_pretrained(folder)
    tok = CLIPTokenizer.from_pretrained(bpe, model_max_length=77)
    tokdir = root / "tokenizer"
    tok.save_pretrained(tokdir)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(bpe / name, tokdir / name)
    assert len(list(folders["sharded"].glob("model-*.safetensors"))) > 1
    assert (folders["bin"] / "pytorch_model.bin").is_file()
    return {"model": model, "tok": tok, "folders": folders, "tokdir": tokdir}


def _files(source: dict, weights: str, tokenizer: bool) -> dict[str, Path]:
    files = {p.name: p for p in source["folders"][weights].iterdir()}
    if tokenizer:
        tokdir = source["tokdir"]
        files.update({n: tokdir / n for n in TOKENIZER if (tokdir / n).is_file()})
    return files


def hf_cache(hf_home: Path, files: dict[str, Path], repo: str = HF_NAME,
             hub: Path | None = None) -> Path:
    """Files laid out as huggingface_hub stores them: content in blobs/<sha256>, relative
    symlinks in snapshots/<commit>/, the branch in refs/main. Returns the snapshot folder."""
    repo_dir = (hub or hf_home / "hub") / ("models--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / COMMIT
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)
    for name, src in files.items():
        data = src.read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob.name))
    return snapshot


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return home


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)


@torch.no_grad()
def _their_text(source: dict, texts: list[str]) -> np.ndarray:
    ids = source["tok"](texts, padding="max_length", max_length=77, truncation=True,
                        return_tensors="pt")
    return _features(source["model"].get_text_features(**ids)).numpy()


@torch.no_grad()
def _their_images(source: dict, pixels: np.ndarray) -> np.ndarray:
    return _features(source["model"].get_image_features(
        pixel_values=torch.from_numpy(pixels))).numpy()


def _pixels(lib: Library, model: str, paths: list[Path]) -> np.ndarray:
    from clip_core.pixels.decode import decode_image
    from clip_core.pixels.preprocess import preprocess

    spec = lib.image_encoder(lib.model_ref(model)).preprocess
    return np.stack([preprocess(decode_image(p).image, spec) for p in paths])


def _stored(lib: Library, model: str) -> dict[str, np.ndarray]:
    ids, vectors = lib.catalog.vectors(parse_model(model).model_id)
    paths = dict(lib.catalog.conn.execute("SELECT id, path FROM files").fetchall())
    return {paths[int(i)]: v for i, v in zip(ids, vectors, strict=True)}


# (weights, tokenizer files present, how the user names the model)
LAYOUTS = [
    ("safetensors", False, HF_NAME),  # the seed's very failure: no tokenizer files
    ("safetensors", True, "hf-hub:" + HF_NAME),
    ("sharded", False, "hf-hub:" + HF_NAME),
    ("bin", True, HF_NAME),
    ("safetensors", False, "local-dir:"),  # the snapshot folder named directly
]


@pytest.mark.parametrize(("weights", "tokenizer", "name"), LAYOUTS)
def test_hf_name_indexes_queries_classifies_like_transformers(source, hf_home, tmp_path,
                                                              weights, tokenizer, name):
    snapshot = hf_cache(hf_home, _files(source, weights, tokenizer))
    name = f"local-dir:{snapshot}" if name == "local-dir:" else name
    photos = draw_photos(tmp_path / "photos", per_pair=1)
    # low_memory: the fp32 text tower (a long-lived app may take an int8 one, within 0.999)
    with Library(tmp_path / "lib", model=name, precision="fp32", low_memory=True) as lib:
        report = lib.index([tmp_path / "photos"])
        assert report.indexed == len(photos) and not report.skipped
        stored = _stored(lib, name)
        paths = sorted(stored)
        ours = np.stack([stored[p] for p in paths])
        theirs = _their_images(source, _pixels(lib, name, [Path(p) for p in paths]))
        assert _cos(ours, theirs).min() > 0.9999
        text = lib.embed_text(LABELS, model=name)
        assert _cos(text, _their_text(source, LABELS)).min() > 0.9999
        hits = lib.query("a red circle", limit=3)
        assert len(hits) == 3
        # classify: the same probabilities as transformers' logits_per_image softmax
        scores = {s.label: s.probability for s in lib.classify(paths[0], LABELS, model=name)}
        img, txt = theirs[:1], _their_text(source, LABELS)
        logits = source["model"].logit_scale.exp().item() * _cos(img[:, None], txt[None])[0]
        expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        np.testing.assert_allclose([scores[label] for label in LABELS], expected, atol=1e-4)


def test_seed_scenario_through_the_cli(source, hf_home, tmp_path, caplog):
    """classify, index (compiled CPU path) and query by the Hugging Face name, from a download
    that stopped before the tokenizer files: no traceback, one note, transformers' vectors."""
    hf_cache(hf_home, _files(source, "safetensors", tokenizer=False))
    draw_photos(tmp_path / "photos", per_pair=1)
    photo = sorted((tmp_path / "photos").rglob("*.*"))[0]
    out = cli("classify", str(photo), *LABELS, "--model", "hf-hub:" + HF_NAME, "--json",
              "--library", str(tmp_path / "nolib"))
    assert sorted(s["label"] for s in json.loads(out.stdout)) == sorted(LABELS)
    notes = [r.getMessage() for r in caplog.records if "no tokenizer files" in r.getMessage()]
    assert notes and "bundled with open_clip" in notes[0]
    lib = tmp_path / "lib"
    out = cli("index", str(tmp_path / "photos"), "--model", HF_NAME, library=lib)
    assert "Traceback" not in out.output and not _fell_back_to_torch(caplog)
    hits = json.loads(cli("query", "a red circle", "--json", library=lib).stdout)
    assert len(hits) > 0
    with Library(lib, low_memory=True) as opened:  # the numpy text tower, bundled tokenizer
        assert opened.default_model.model_id == "hf-hub:" + HF_NAME
        text = opened.embed_text(LABELS)
    assert _cos(text, _their_text(source, LABELS)).min() > 0.9999


# -- partial downloads: one clear message, an exit code, a typed exception --------------------

def _broken(kind: str, source: dict, hf_home: Path, tmp_path: Path) -> str:
    """A partial download of the kind named; returns the --model value that reaches it."""
    files = _files(source, "safetensors", tokenizer=True)
    if kind == "config-without-weights":  # the transfer was cut: a .incomplete blob stays
        data = files.pop("model.safetensors").read_bytes()
        snapshot = hf_cache(hf_home, files)
        blobs = snapshot.parent.parent / "blobs"
        (blobs / (hashlib.sha256(data).hexdigest() + ".incomplete")).write_bytes(data[:1000])
        return HF_NAME
    if kind == "weights-without-config":
        hf_cache(hf_home, {"model.safetensors": files["model.safetensors"]})
        return "hf-hub:" + HF_NAME
    # a text vocabulary that is not OpenAI's, and no tokenizer files: nothing can stand in
    folder = tmp_path / "foreign"
    folder.mkdir()
    for name in ("model.safetensors", "preprocessor_config.json"):
        shutil.copy(files[name], folder / name)
    cfg = json.loads(files["config.json"].read_text())
    cfg["text_config"]["vocab_size"] = 32000
    (folder / "config.json").write_text(json.dumps(cfg))
    return f"local-dir:{folder}"


BROKEN = {
    "config-without-weights": ("no weights file", ".incomplete"),
    "weights-without-config": ("config.json", "only model.safetensors"),
    "foreign-vocab-without-tokenizer": ("merges.txt + vocab.json, or tokenizer.json",
                                        "not OpenAI CLIP's vocabulary"),
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_partial_download_is_one_clear_message(source, hf_home, tmp_path, kind, caplog):
    model = _broken(kind, source, hf_home, tmp_path)
    photos = tmp_path / "photos"
    draw_photos(photos, per_pair=1)
    photo = str(sorted(photos.rglob("*.*"))[0])
    lib = tmp_path / "lib"
    Library(lib).close()  # `query` on a folder holding no library stops before any model
    for args in (("classify", photo, "a dog", "a cat", "--model", model,
                  "--library", str(tmp_path / "nolib")),
                 ("index", str(photos), "--model", model, "--library", str(lib)),
                 ("query", "a dog", "--model", model, "--library", str(lib))):
        result = cli(*args, ok=False)
        assert result.exit_code == 2, (args, result.output)
        err = result.stderr
        assert err.startswith("Error: Model ") and "Traceback" not in result.output, err
        assert "copy the missing file(s) into " in err
        for needle in BROKEN[kind]:
            assert needle in err, (args, err)
        assert not _fell_back_to_torch(caplog), args
    with pytest.raises(MissingModelError, match="Found: "):
        classify_image(photo, ["a dog"], model=model)
    with Library(tmp_path / "lib2", model=model) as opened, pytest.raises(MissingModelError):
        opened.index([photos])


def test_not_a_clip_model_is_a_load_error(source, hf_home):
    files = _files(source, "safetensors", tokenizer=True)
    text_only = hf_home.parent / "textonly.json"  # a Stable Diffusion text_encoder config
    text_only.write_text(json.dumps({"model_type": "clip_text_model",
                                     "architectures": ["CLIPTextModel"]}))
    files["config.json"] = text_only
    hf_cache(hf_home, files)
    with pytest.raises(ModelLoadError, match="not a CLIP model"):
        ensure_local(parse_model(HF_NAME))


def test_refs_main_picks_the_snapshot_and_hf_hub_cache_is_honoured(source, tmp_path,
                                                                   monkeypatch):
    """HF_HUB_CACHE wins over HF_HOME; refs/main names the snapshot to use even when an older
    (here: broken) snapshot is newer on disk."""
    from clip_core.models.files import locate_hub_bundle

    cache = tmp_path / "elsewhere"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "unused"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    good = hf_cache(tmp_path, _files(source, "safetensors", tokenizer=True), hub=cache)
    repo = good.parent.parent
    stale = repo / "snapshots" / ("f" * 40)
    stale.mkdir()
    (stale / "config.json").write_text("{}")  # newest on disk, but not what refs/main says
    os.utime(stale, (2e9, 2e9))
    located = locate_hub_bundle(parse_model(HF_NAME), tmp_path / "models")
    assert located.bundle_dir == repo / "snapshots" / COMMIT
    ensure_local(parse_model(HF_NAME))


def _fell_back_to_torch(caplog) -> bool:
    # Warnings reach pytest's log capture, not the CliRunner's stderr.
    return any("with torch" in r.getMessage() for r in caplog.records)


def test_weights_that_do_not_fit_the_config_are_one_message(source, hf_home, tmp_path, caplog):
    """Found only when the weights are read (after torch is imported): still one message and
    exit 2, and index does not fall back to torch to fail again."""
    files = _files(source, "safetensors", tokenizer=False)
    cfg = json.loads(files["config.json"].read_text())
    cfg["vision_config"]["num_hidden_layers"] = 1  # the weights have 2
    wrong = tmp_path / "config.json"
    wrong.write_text(json.dumps(cfg))
    snapshot = hf_cache(hf_home, files)
    photos = tmp_path / "photos"
    draw_photos(photos, per_pair=1)
    photo = str(sorted(photos.rglob("*.*"))[0])
    # A library indexed while the download was whole, its text tower gone: query must load.
    queried = tmp_path / "queried"
    cli("index", str(photos), "--model", HF_NAME, "--precision", "fp32", library=queried)
    shutil.rmtree(queried / "text-towers")
    (snapshot / "config.json").unlink()
    (snapshot / "config.json").symlink_to(wrong)
    for args in (("classify", photo, "a dog", "a cat", "--library", str(tmp_path / "nolib")),
                 ("index", str(photos), "--library", str(tmp_path / "lib")),
                 ("query", "a dog", "--library", str(queried))):
        result = cli(*args, "--model", HF_NAME, ok=False)
        assert result.exit_code == 2, (args, result.output)
        # (a first index run's progress bar says "Compiling ... for this CPU (once)" first)
        said = [line for line in result.stderr.splitlines()
                if line.strip() and "this CPU (once)" not in line]
        assert said[0].startswith("Error: Could not convert transformers CLIP folder"), said
        assert "does not match" in result.stderr and "Traceback" not in result.output
        assert not _fell_back_to_torch(caplog), args
    with Library(tmp_path / "lib2", model=HF_NAME) as opened, pytest.raises(ModelLoadError):
        opened.index([photos])


def test_a_revision_picks_its_own_snapshot(source, hf_home):
    """ORG/REPO@REV uses refs/REV (or the commit REV) only: never another snapshot."""
    good = hf_cache(hf_home, _files(source, "safetensors", tokenizer=False))
    repo = good.parent.parent
    other = repo / "snapshots" / ("b" * 40)
    other.mkdir()
    (other / "config.json").symlink_to(good / "config.json")  # cut before the weights
    (repo / "refs" / "v2").write_text("b" * 40)
    for name in (HF_NAME, f"{HF_NAME}@main", f"hf-hub:{HF_NAME}@{COMMIT}"):
        ensure_local(parse_model(name))
    with pytest.raises(MissingModelError, match="no weights file"):
        ensure_local(parse_model(f"{HF_NAME}@v2"))
    with pytest.raises(MissingModelError):
        ensure_local(parse_model(f"{HF_NAME}@{'c' * 40}"))
    assert parse_model(f"{HF_NAME}@v2").model_id == f"hf-hub:{HF_NAME}@v2"


def test_a_transformers_repository_loads_without_importing_transformers(source, hf_home):
    """The conversion needs only torch and open_clip: importing transformers (seconds) for an
    hf-hub name would be wasted on this path."""
    import subprocess
    import sys

    hf_cache(hf_home, _files(source, "safetensors", tokenizer=False))
    code = ("import sys; from clip_core.torch_backend.loading import load_model; "
            "from clip_core.models.ref import parse_model; "
            f"load_model(parse_model({HF_NAME!r})); print('transformers' in sys.modules)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
