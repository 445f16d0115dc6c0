"""The model store: list, download (against a fake hub on 127.0.0.1), export/import, verify,
offline refusal, and the fast, clear failure when a model is missing."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from clip_core.models import files as model_files
from clip_core.models.files import MissingModelError, ensure_local, locate_pretrained, store_dir_for
from clip_core.models.open_clip_tables import pretrained_cfg
from clip_core.models.ref import ModelRef, parse_model
from clip_core.weights import download as model_download
from clip_core.weights import store as model_store
from clipsearch.cli import main

REPO = Path(__file__).resolve().parent.parent
CLIPSEARCH = REPO / ".venv" / "bin" / "clipsearch"
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 16, "width": 64, "layers": 1,
                   "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2,
                 "layers": 1},
}
PREPROCESS_CFG = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                  "interpolation": "bicubic", "resize_mode": "shortest"}
B32_REPO = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"  # open_clip's hf_hub for the default tag


# -- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """A small random-weight open_clip model as a `local-dir:` bundle (~3 MB, fp16)."""
    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = CLIP(**TINY_CFG)
    folder = tmp_path_factory.mktemp("tiny") / "tiny-clip"
    folder.mkdir()
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    config = {"model_cfg": TINY_CFG, "preprocess_cfg": PREPROCESS_CFG}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return folder


class FakeHub:
    """Mimics the hub's file routes: HEAD/GET /{repo}/resolve/{rev}/{file}. Weights behave like
    LFS files (302 to /cdn/{sha} with X-Linked-Etag/X-Linked-Size = sha256/size, Range support);
    other files answer 200 with a git-style (sha1) ETag."""

    commit = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self) -> None:
        self.files: dict[tuple[str, str], bytes] = {}
        self.drop_after: dict[str, int] = {}  # file name -> bytes sent before each hang-up
        self.wrong_sha: set[str] = set()  # file names whose advertised sha256 is wrong
        self.log: list[tuple[str, str, str | None]] = []  # method, path, Range
        self.auth: list[tuple[str, str | None]] = []  # host and path, Authorization
        self.gated: set[str] = set()  # repos that answer 401 (no token, or a wrong one)
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub.serve(self, body=False)

            def do_GET(self) -> None:
                hub.serve(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # The hub's CDN is another host (huggingface_hub stops at a redirect off the hub and
        # keeps the token on the hub): the same server, named differently.
        self.cdn = f"http://localhost:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def add(self, repo: str, name: str, data: bytes) -> None:
        self.files[(repo, name)] = data

    def _sha(self, name: str, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        return hashlib.sha256(b"evil").hexdigest() if name in self.wrong_sha else sha

    def serve(self, req: BaseHTTPRequestHandler, body: bool) -> None:
        self.log.append((req.command, req.path, req.headers.get("Range")))
        self.auth.append((f"{req.headers.get('Host')}{req.path}", req.headers.get("Authorization")))
        if req.path.startswith("/cdn/"):
            return self._serve_cdn(req, body)
        match = re.fullmatch(r"/(.+)/resolve/([^/]+)/(.+)", req.path)
        if match and match[1] in self.gated:
            req.send_response(401)
            req.send_header("Content-Length", "0")
            return req.end_headers()
        data = self.files.get((match[1], match[3])) if match else None
        if data is None:
            req.send_response(404)
            req.send_header("Content-Length", "0")
            return req.end_headers()
        name = match[3]
        if name.endswith((".safetensors", ".bin")):
            sha = self._sha(name, data)
            req.send_response(302)
            req.send_header("Location", f"{self.cdn}/cdn/{match[1]}/{name}")
            req.send_header("X-Linked-Etag", f'"{sha}"')
            req.send_header("ETag", f'"{sha}"')
            req.send_header("X-Linked-Size", str(len(data)))
            req.send_header("X-Repo-Commit", self.commit)
            req.send_header("Content-Length", "0")
            return req.end_headers()
        req.send_response(200)
        req.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
        req.send_header("X-Repo-Commit", self.commit)
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        if body:
            req.wfile.write(data)

    def _serve_cdn(self, req: BaseHTTPRequestHandler, body: bool) -> None:
        repo, name = req.path[len("/cdn/"):].rsplit("/", 1)
        data = self.files[(repo, name)]
        start = 0
        if req.headers.get("Range"):
            start = int(re.fullmatch(r"bytes=(\d+)-", req.headers["Range"])[1])
            req.send_response(206)
            req.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            req.send_response(200)
        req.send_header("Content-Length", str(len(data) - start))
        req.end_headers()
        if not body:
            return
        cut = self.drop_after.get(name)  # until the test lifts it: a retry is cut again
        req.wfile.write(data[start:cut] if cut is not None else data[start:])
        if cut is not None:
            req.wfile.flush()
            req.close_connection = True

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub(monkeypatch, tiny_bundle):
    server = FakeHub()
    for name in ("open_clip_config.json", "open_clip_model.safetensors"):
        server.add("test-org/tiny-clip", name, (tiny_bundle / name).read_bytes())
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # conftest sets it; downloads need it off
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)  # read at its import
    monkeypatch.delenv("CLIPSEARCH_OFFLINE", raising=False)
    yield server
    server.close()


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "models"
    monkeypatch.setenv("CLIPSEARCH_MODELS", str(folder))
    return folder


def run_cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def embed(folder_ref: ModelRef, models_dir: Path):
    """Image and text embeddings of fixed inputs: equal weights give equal numbers."""
    import torch

    from clip_core.torch_backend.loading import load_model

    loaded = load_model(folder_ref, models_dir=models_dir)
    torch.manual_seed(1)
    pixels = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        return (loaded.model.encode_image(pixels),
                loaded.model.encode_text(loaded.tokenizer(["a red circle", "a blue star"])))


def assert_same_embeddings(a, b) -> None:
    import torch

    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


# -- open_clip's tables without importing it ---------------------------------------------------

def test_light_tables_match_open_clip():
    import open_clip
    from open_clip.pretrained import _PRETRAINED

    assert model_files.pretrained_table() == _PRETRAINED
    configs = model_files.architecture_configs()
    assert sorted(configs) == sorted(open_clip.list_models())
    assert configs["ViT-B-32"] == open_clip.get_model_config("ViT-B-32")
    assert pretrained_cfg("ViT-B-32", "laion2b-s34b-b79k") == \
        open_clip.pretrained.get_pretrained_cfg("ViT-B-32", "laion2b_s34b_b79k")


def test_light_tables_do_not_import_torch():
    code = ("import sys; from clip_core.models import files as m; m.pretrained_table(); "
            "m.architecture_configs(); from clip_core.weights import store as model_store; "
            "model_store.list_models(); print('torch' in sys.modules, 'open_clip' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout
    assert out.split() == ["False", "False"]


def test_approx_param_count_matches_real_models():
    import torch
    from open_clip.model import CLIP

    for cfg in (TINY_CFG, model_files.architecture_configs()["ViT-B-32"]):
        with torch.device("meta"):
            real = sum(p.numel() for p in CLIP(**cfg).parameters())
        assert abs(model_store.approx_param_count(cfg) - real) / real < 0.002
    assert model_store.approx_param_count(model_files.architecture_configs()["RN50"]) is None


# -- list --------------------------------------------------------------------------------------

def test_list_shows_common_models_sizes_and_local_copies(store, tiny_bundle, monkeypatch):
    assert all(pretrained_cfg(a, t) for a, t in model_store.COMMON)
    monkeypatch.setattr(model_store, "BUNDLED_MODELS_DIR", tiny_bundle.parent)
    ref = ModelRef("openclip", "ViT-B-32", "openai")
    own = store_dir_for(ref, store)
    own.mkdir(parents=True)
    (own / "open_clip_pytorch_model.bin").write_bytes(b"x" * 1000)
    code, out, _ = run_cli("models", "list", "--json")
    assert code == 0
    rows = {(r["model"], r["pretrained"]): r for r in json.loads(out)}
    default = rows[("ViT-B-32", "laion2b_s34b_b79k")]
    assert default["embed_dim"] == 512 and not default["available"]
    assert default["size_approx"] and 590e6 < default["size_bytes"] < 620e6  # 151M fp32
    local = rows[("ViT-B-32", "openai")]
    assert local["available"] and local["location"] == str(own / "open_clip_pytorch_model.bin")
    assert local["size_bytes"] == 1000 and not local["size_approx"]
    assert ("RN50", "yfcc15m") not in rows  # neither common nor local
    bundled = rows[("tiny-clip", None)]
    assert bundled["source"] == "bundled" and bundled["embed_dim"] == 32
    assert bundled["size_bytes"] == (tiny_bundle / "open_clip_model.safetensors").stat().st_size
    code, out, _ = run_cli("models", "list", "--all", "--json")
    assert ("RN50", "yfcc15m") in {(r["model"], r["pretrained"]) for r in json.loads(out)}
    code, out, _ = run_cli("models", "list")
    assert code == 0 and "laion2b_s34b_b79k" in out and str(own) in out


# -- download ----------------------------------------------------------------------------------

def test_download_hub_bundle_then_load_offline(hub, store, tiny_bundle, monkeypatch):
    code, _, err = run_cli("models", "download", "hf-hub:test-org/tiny-clip", "-q")
    assert code == 0, err
    folder = store / "hf-hub" / "test-org" / "tiny-clip"
    manifest = model_store.read_manifest(folder)
    weights = (tiny_bundle / "open_clip_model.safetensors").read_bytes()
    files = {f["name"]: f for f in manifest["files"]}
    assert files["open_clip_model.safetensors"] == {
        "name": "open_clip_model.safetensors", "size": len(weights),
        "sha256": hashlib.sha256(weights).hexdigest()}
    assert manifest["source"]["repos"]["test-org/tiny-clip"] == FakeHub.commit
    assert manifest["spec"] == {"model": "hf-hub:test-org/tiny-clip", "pretrained": None}
    assert not (folder / model_store.PARTIAL_DIR).exists()
    # Files after the first come from the commit the first one resolved to.
    assert any(f"/resolve/{FakeHub.commit}/" in path for _, path, _ in hub.log)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_same_embeddings(embed(parse_model("hf-hub:test-org/tiny-clip"), store),
                           embed(parse_model(f"local-dir:{tiny_bundle}"), store))


def test_download_pretrained_tag_goes_to_its_hub_repo(hub, store, tiny_bundle):
    data = (tiny_bundle / "open_clip_model.safetensors").read_bytes()
    hub.add(B32_REPO, "open_clip_model.safetensors", data)
    # openai's mirror has only the .bin: the safetensors 404 falls back to it.
    repo, _ = model_store.hub_repo(pretrained_cfg("ViT-B-32", "openai"))
    hub.add(repo, "open_clip_pytorch_model.bin", b"pickled weights")
    model_download.download(parse_model("ViT-B-32", None), store, progress=False)
    model_download.download(parse_model("ViT-B-32", "openai"), store, progress=False)
    for tag, name in (("laion2b_s34b_b79k", "open_clip_model.safetensors"),
                      ("openai", "open_clip_pytorch_model.bin")):
        ref = ModelRef("openclip", "ViT-B-32", tag)
        located = locate_pretrained(ref, pretrained_cfg("ViT-B-32", tag), store)
        assert located.weights == store_dir_for(ref, store) / name
        ensure_local(ref, store)  # no MissingModelError any more
    # A second run finds the verified file in place and fetches nothing.
    before = len([entry for entry in hub.log if entry[0] == "GET"])
    result = model_download.download(parse_model("ViT-B-32", None), store, progress=False)
    assert result.downloaded_bytes == 0
    assert len([entry for entry in hub.log if entry[0] == "GET"]) == before


def test_hub_bundle_brings_its_tokenizer_files(hub, store, tiny_bundle):
    config = {"model_cfg": {**TINY_CFG, "text_cfg": {**TINY_CFG["text_cfg"],
                                                     "hf_tokenizer_name": "test-org/tok"}}}
    hub.add("test-org/tok-clip", "open_clip_config.json", json.dumps(config).encode())
    hub.add("test-org/tok-clip", "open_clip_model.safetensors",
            (tiny_bundle / "open_clip_model.safetensors").read_bytes())
    hub.add("test-org/tok", "tokenizer.json", b"{}")
    hub.add("test-org/tok", "tokenizer_config.json", b"{}")
    result = model_download.download(parse_model("hf-hub:test-org/tok-clip"), store,
                                  progress=False)
    # open_clip reads a local-dir bundle's tokenizer from the bundle folder itself.
    assert {f["name"] for f in result.files} == {
        "open_clip_config.json", "open_clip_model.safetensors", "tokenizer.json",
        "tokenizer_config.json"}


def test_dropped_connection_resumes_with_range(hub, store, tiny_bundle, monkeypatch):
    weights = (tiny_bundle / "open_clip_model.safetensors").read_bytes()
    # huggingface_hub writes what arrived in chunks (10 MB): smaller ones for a 3 MB file, and a
    # cut on a chunk's end, so the partial file holds exactly what was sent.
    monkeypatch.setattr("huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE", 1 << 16)
    cut = 16 << 16
    assert cut < len(weights)
    hub.drop_after["open_clip_model.safetensors"] = cut
    code, _, err = run_cli("models", "download", "hf-hub:test-org/tiny-clip", "-q")
    assert code == 1 and "run the same command again to resume" in err
    assert "Trying to resume" not in err  # huggingface_hub's own retries (it made 5) stay quiet
    folder = store / "hf-hub" / "test-org" / "tiny-clip"
    part = folder / model_store.PARTIAL_DIR / "open_clip_model.safetensors.part"
    assert part.stat().st_size == cut
    assert not (folder / "open_clip_model.safetensors").exists()
    code, _, _ = run_cli("models", "verify")
    assert code == 0  # a partial download is not corruption
    del hub.drop_after["open_clip_model.safetensors"]  # the connection is back
    result = model_download.download(parse_model("hf-hub:test-org/tiny-clip"), store,
                                  progress=False)
    assert result.downloaded_bytes == len(weights) - cut + len(
        (tiny_bundle / "open_clip_config.json").read_bytes())
    assert ("GET", "/cdn/test-org/tiny-clip/open_clip_model.safetensors",
            f"bytes={cut}-") in hub.log
    assert (folder / "open_clip_model.safetensors").read_bytes() == weights
    assert not part.exists()


def test_checksum_mismatch_rejects_the_file(hub, store):
    hub.wrong_sha.add("open_clip_model.safetensors")
    code, _, err = run_cli("models", "download", "hf-hub:test-org/tiny-clip", "-q")
    assert code == 1 and "sha256" in err and "rejected" in err
    folder = store / "hf-hub" / "test-org" / "tiny-clip"
    assert not (folder / "open_clip_model.safetensors").exists()
    assert not list(folder.rglob("*.part"))
    with pytest.raises(MissingModelError):
        ensure_local(parse_model("hf-hub:test-org/tiny-clip"), store)


def test_the_token_reaches_the_hub_and_not_the_cdn(hub, store, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_for_the_hub")
    code, _, err = run_cli("models", "download", "hf-hub:test-org/tiny-clip", "-q")
    assert code == 0, err
    hub_requests = [auth for where, auth in hub.auth if "/resolve/" in where]
    cdn_requests = [auth for where, auth in hub.auth if where.startswith("localhost:")]
    assert hub_requests and set(hub_requests) == {"Bearer hf_secret_for_the_hub"}
    assert cdn_requests and set(cdn_requests) == {None}


def test_a_gated_repository_says_what_to_do(hub, store):
    hub.gated.add("test-org/tiny-clip")
    code, _, err = run_cli("models", "download", "hf-hub:test-org/tiny-clip", "-q")
    assert code == 1 and "Traceback" not in err
    assert "HTTP 401: the repository is gated or private; accept its terms on the hub and set " \
        "HF_TOKEN." in err
    assert not store.exists() or not any(store.rglob("*.safetensors"))


def test_no_connection_is_one_clear_message(hub, store, monkeypatch):
    import socket

    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    code, _, err = run_cli("models", "download", "hf-hub:test-org/tiny-clip", "-q")
    assert code == 1 and "Traceback" not in err
    assert f"Could not reach http://127.0.0.1:{port}" in err
    assert "clipsearch models import" in err


def test_an_unknown_file_is_named(hub, store):
    with pytest.raises(model_store.DownloadError,
                       match="None of open_clip_config.json, config.json found in "
                             "test-org/absent at http://127.0.0.1:"):
        model_download.download(parse_model("hf-hub:test-org/absent"), store, progress=False)


def test_a_full_disk_is_one_clear_message(hub, store, tiny_bundle):
    """The part file of the weights is /dev/full (every write fails with ENOSPC)."""
    weights = (tiny_bundle / "open_clip_model.safetensors").read_bytes()
    folder = store / "hf-hub" / "test-org" / "tiny-clip"
    part = folder / model_store.PARTIAL_DIR / "open_clip_model.safetensors.part"
    part.parent.mkdir(parents=True)
    part.symlink_to("/dev/full")
    sha = hashlib.sha256(weights).hexdigest()
    part.with_name(part.name + ".json").write_text(json.dumps({
        "url": f"{hub.cdn}/cdn/test-org/tiny-clip/open_clip_model.safetensors", "etag": sha,
        "size": len(weights)}))
    code, _, err = run_cli("models", "download", "hf-hub:test-org/tiny-clip", "-q")
    assert code == 1 and "Traceback" not in err
    assert "The disk is full: open_clip_model.safetensors stopped after 0 of " in err
    assert "Free some space and run the same command again to resume." in err


@pytest.mark.parametrize("how", ["flag", "CLIPSEARCH_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_download_refuses_before_any_request(hub, store, monkeypatch, how):
    args = ["models", "download", "hf-hub:test-org/tiny-clip", "-q"]
    if how == "flag":
        args.insert(1, "--offline")
    else:
        monkeypatch.setenv(how, "1")
    start = time.perf_counter()
    code, _, err = run_cli(*args)
    assert code == 1 and "offline" in err and "clipsearch models import" in err
    assert time.perf_counter() - start < 1
    assert hub.log == [] and not store.exists()


def test_nothing_to_download_for_local_folders(hub, store, tiny_bundle):
    code, _, err = run_cli("models", "download", f"local-dir:{tiny_bundle}")
    assert code == 1 and "Nothing to download" in err and hub.log == []


# -- export / import / verify -------------------------------------------------------------------

def test_export_import_round_trip_gives_same_embeddings(hub, store, tiny_bundle, tmp_path,
                                                        monkeypatch):
    model_download.download(parse_model("hf-hub:test-org/tiny-clip"), store, progress=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bundle = tmp_path / "tiny.clipsearch"
    code, _, err = run_cli("models", "export", "hf-hub:test-org/tiny-clip", "-o", str(bundle))
    assert code == 0, err
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))
    assert sorted(names) == ["files/open_clip_config.json", "files/open_clip_model.safetensors",
                             "manifest.json"]
    assert manifest["model_id"] == "hf-hub:test-org/tiny-clip"
    assert {"clipsearch_version", "created", "spec", "files"} <= set(manifest)
    fresh = tmp_path / "fresh-store"
    code, _, err = run_cli("models", "--models-dir", str(fresh), "import", str(bundle))
    assert code == 0 and "--model hf-hub:test-org/tiny-clip" in err
    assert not [p for p in fresh.iterdir() if p.name.startswith(".")]  # no temp folder left
    assert_same_embeddings(embed(parse_model("hf-hub:test-org/tiny-clip"), fresh),
                           embed(parse_model("hf-hub:test-org/tiny-clip"), store))
    code, out, _ = run_cli("models", "--models-dir", str(fresh), "verify", "--json")
    assert code == 0 and [r["status"] for r in json.loads(out)] == ["ok"]
    listed = {i.model: i for i in model_store.list_models(fresh)}
    assert listed["hf-hub:test-org/tiny-clip"].available
    assert listed["hf-hub:test-org/tiny-clip"].embed_dim == 32


def test_local_dir_round_trip_keeps_model_id(store, tiny_bundle, tmp_path):
    ref = parse_model(f"local-dir:{tiny_bundle}")
    bundle = tmp_path / "b.tar"
    model_store.export_bundle(ref, bundle, store)
    result = model_store.import_bundle(bundle, tmp_path / "other")
    assert result.path == tmp_path / "other" / "local-dir" / tiny_bundle.name
    assert result.model_id == ref.model_id  # vectors made before the move stay usable
    assert result.spec == {"model": f"local-dir:{result.path.resolve()}", "pretrained": None}
    assert_same_embeddings(embed(parse_model(result.spec["model"]), store), embed(ref, store))


def test_pretrained_tag_round_trip_without_network(store, tmp_path):
    ref = ModelRef("openclip", "ViT-B-32", "laion2b_s34b_b79k")
    with pytest.raises(MissingModelError):
        model_store.export_bundle(ref, tmp_path / "x.tar", store)
    # A copy in the HF cache (where open_clip itself downloads) is a valid export source.
    snap = Path(os.environ["HF_HOME"]) / "hub" / ("models--" + B32_REPO.replace("/", "--"))
    (snap / "snapshots" / "abc").mkdir(parents=True, exist_ok=True)
    (snap / "snapshots" / "abc" / "open_clip_model.safetensors").write_bytes(b"w" * 4096)
    try:
        model_store.export_bundle(ref, tmp_path / "b32.tar", store)
    finally:
        import shutil

        shutil.rmtree(snap)
    fresh = tmp_path / "fresh"
    result = model_store.import_bundle(tmp_path / "b32.tar", fresh)
    assert result.spec == {"model": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}
    ensure_local(ref, fresh)
    weights = locate_pretrained(ref, pretrained_cfg("ViT-B-32", "laion2b_s34b_b79k"), fresh)
    assert weights.weights.read_bytes() == b"w" * 4096
    config = json.loads((result.path / "open_clip_config.json").read_text())
    assert config["model_cfg"]["embed_dim"] == 512
    # A loose weights file travels as a folder bundle and arrives as `local-dir:`.
    loose = tmp_path / "my weights.safetensors"
    loose.write_bytes(b"v" * 100)
    model_store.export_bundle(parse_model("ViT-B-32", str(loose)), tmp_path / "f.tar", store)
    result = model_store.import_bundle(tmp_path / "f.tar", fresh)
    assert result.path == fresh / "local-dir" / "ViT-B-32-my_weights"
    assert sorted(p.name for p in result.path.iterdir()) == [
        ".clipsearch", "open_clip_config.json", "open_clip_model.safetensors"]


def _tar(path: Path, entries: list[tuple[str, bytes | None]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("entry", ["files/../../evil.txt", "../evil.txt", "/tmp/evil.txt",
                                   "files/.hidden", "link"])
def test_import_refuses_unsafe_entries(tmp_path, entry):
    manifest = json.dumps({"format": "clipsearch-model", "version": 1, "kind": "hf-hub",
                           "spec": {"model": "hf-hub:a/b"}, "files": []}).encode()
    bundle = _tar(tmp_path / "bad.tar", [("manifest.json", manifest),
                                         (entry, None if entry == "link" else b"pwned")])
    fresh = tmp_path / "store"
    code, _, err = run_cli("models", "--models-dir", str(fresh), "import", str(bundle))
    assert code == 1 and "Refusing" in err
    assert not list(tmp_path.rglob("evil.txt")) and list(fresh.iterdir()) == []


def test_import_refuses_corrupt_bundle_and_keeps_installed_copy(store, tiny_bundle, tmp_path):
    ref = parse_model(f"local-dir:{tiny_bundle}")
    good = tmp_path / "good.tar"
    model_store.export_bundle(ref, good, store)
    installed = model_store.import_bundle(good, store).path
    entries = []
    with tarfile.open(good) as tar:
        for member in tar:
            data = tar.extractfile(member).read()
            if member.name.endswith(".safetensors"):
                data = data[:-1] + bytes([data[-1] ^ 1])
            entries.append((member.name, data))
    bad = _tar(tmp_path / "bad.tar", entries)
    with pytest.raises(model_store.BundleError, match="corrupt"):
        model_store.import_bundle(bad, store)
    assert model_store.verify_store(store)[0].status == "ok"
    assert (installed / "open_clip_model.safetensors").read_bytes() == \
        (tiny_bundle / "open_clip_model.safetensors").read_bytes()


def test_verify_reports_corrupt_and_missing_files(store, tiny_bundle, tmp_path):
    model_store.export_bundle(parse_model(f"local-dir:{tiny_bundle}"), tmp_path / "b.tar")
    folder = model_store.import_bundle(tmp_path / "b.tar").path
    assert run_cli("models", "verify")[0] == 0
    weights = folder / "open_clip_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF
    weights.write_bytes(bytes(data))
    code, out, _ = run_cli("models", "verify", "--json")
    report = json.loads(out)
    assert code == 1 and report[0]["status"] == "corrupt"
    assert {"name": "open_clip_model.safetensors", "status": "corrupt"} in report[0]["files"]
    with pytest.raises(model_store.ChecksumError):  # a corrupt copy must not travel
        model_store.export_bundle(parse_model(f"local-dir:{folder}"), tmp_path / "c.tar")
    (folder / "open_clip_config.json").unlink()
    code, out, _ = run_cli("models", "verify")
    assert code == 1 and "missing: open_clip_config.json" in out


def test_models_path(store):
    assert run_cli("models", "path")[1].strip() == str(store)
    assert json.loads(run_cli("models", "path", "--json")[1]) == {"path": str(store)}


def test_verify_lists_an_interrupted_first_download(store):
    """A download stopped before any file was complete left only .partial/NAME.part, which
    verify did not see at all."""
    partial = store / "ViT-L-14" / "openai" / ".partial"
    partial.mkdir(parents=True)
    (partial / "open_clip_model.safetensors.part").write_bytes(b"x" * 100)
    code, out, _ = run_cli("models", "verify")
    assert code == 1 and out.startswith("partial")
    assert "partial download: open_clip_model.safetensors.part" in out


# -- the clear, fast failure -------------------------------------------------------------------

@pytest.mark.parametrize("command", ["classify", "query"])
def test_missing_model_fails_fast_with_one_clear_message(tmp_path, command):
    from PIL import Image

    image = tmp_path / "red.png"
    Image.new("RGB", (32, 32), "red").save(image)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "CLIPSEARCH_"))}
    env.update(CLIPSEARCH_LIBRARY=str(tmp_path / "library"),
               CLIPSEARCH_MODELS=str(tmp_path / "models"), HF_HOME=str(tmp_path / "hf"))
    args = ["classify", str(image), "a", "b"] if command == "classify" else ["query", "a cat"]
    if command == "query":  # a query needs a library (without one, that is the error)
        from clipsearch import Library

        Library(tmp_path / "library").close()
    start = time.perf_counter()
    proc = subprocess.run([str(CLIPSEARCH), *args, "--model", "ViT-B-32", "--pretrained",
                           "laion2b_s34b_b79k"], capture_output=True, text=True, env=env,
                          timeout=60)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    err = proc.stderr
    assert "ViT-B-32 (pretrained=laion2b_s34b_b79k) is not available" in err
    assert "open_clip_model.safetensors" in err and "open_clip_pytorch_model.bin" in err
    assert str(tmp_path / "models" / "ViT-B-32" / "laion2b_s34b_b79k") in err
    assert str(tmp_path / "hf" / "hub" / f"models--{B32_REPO.replace('/', '--')}") in err
    assert "clipsearch models download ViT-B-32 --pretrained laion2b_s34b_b79k" in err
    assert "clipsearch models import" in err
    assert elapsed < 5, f"took {elapsed:.1f}s"


@pytest.mark.parametrize(("model", "pretrained", "message"), [
    ("NotAModel-99", "none", "Unknown open_clip architecture 'NotAModel-99'"),
    ("vit-b-32", "none", "Similar: ViT-B-32"),
    ("ViT-B-32", "notatag", "Unknown pretrained tag 'notatag' for ViT-B-32. Known tags: openai"),
])
def test_unknown_names_and_tags_fail_before_importing_torch(tmp_path, model, pretrained,
                                                             message):
    """They were reported only after torch's import and a 'Preparing ...' compile message."""
    env = {**os.environ, "CLIPSEARCH_MODELS": str(tmp_path / "models")}
    code = ("import sys\nfrom clip_core.models.files import ModelLoadError, ensure_local\n"
            "from clip_core.models.ref import parse_model\n"
            f"try:\n    ensure_local(parse_model({model!r}, {pretrained!r}))\n"
            "except ModelLoadError as exc:\n    print(exc)\n"
            "print('torch' in sys.modules, 'open_clip' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=60, check=True).stdout
    assert message in out and out.strip().endswith("False False"), out
    photos = tmp_path / "p"
    photos.mkdir()
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(photos / "red.png")
    code, _, err = run_cli("index", str(photos), "--library", str(tmp_path / "lib"),
                           "--model", model, "--pretrained", pretrained)
    assert code == 2 and message in err and "Preparing" not in err, err


def test_compiling_a_missing_model_says_so_first(store, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("CLIPSEARCH_CACHE", str(tmp_path / "cache"))
    code, _, err = run_cli("models", "compile", "ViT-B-32", "--pretrained", "openai")
    assert code == 2 and "is not available on this machine" in err
    assert "Preparing" not in err and not (tmp_path / "cache").exists()


def test_a_download_that_finds_nothing_leaves_no_empty_folders(hub, store):
    with pytest.raises(model_store.DownloadError, match="found in test-org/absent"):
        model_download.download(parse_model("hf-hub:test-org/absent"), store, progress=False)
    assert not store.exists() or not any(store.rglob("*"))  # verify would list nothing
    (store / "keep").mkdir(parents=True)  # folders that were there before stay
    with pytest.raises(model_store.DownloadError):
        model_download.download(parse_model("hf-hub:test-org/absent"), store, progress=False)
    assert [p.name for p in store.iterdir()] == ["keep"]
