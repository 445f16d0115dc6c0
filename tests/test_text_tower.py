"""The numpy text tower must reproduce open_clip's encode_text, and run without torch."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clip_core.text import tower as text_tower
from clip_core.text.tokenizer import ClipTokenizer
from clip_core.text.tower import HEADER_KEY, NumpyTextTower, UnsupportedTextTower, _erf
from clip_core.torch_backend.text_export import export_text_tower

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

REPO = Path(__file__).resolve().parent.parent
TEXTS = [
    "a cat",
    "",
    "A photo of a DOG on the beach, at sunset!!",
    "日本語 🐱 café &amp; naïve",
    " ".join(["word"] * 200),  # fills the whole context
    "a cat",
]
TINY_VISION = {"image_size": 64, "patch_size": 16, "width": 128, "layers": 1}
TINY_TEXT = {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2}


def _torch_ref(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.encode_text(torch.from_numpy(tokens), normalize=True).float().numpy()


def _assert_close(ours: np.ndarray, ref: np.ndarray, atol: float = 1e-4) -> None:
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert np.abs(ours - ref).max() <= atol
    assert (ours * ref).sum(axis=1).min() > 0.9999


def _onnx_twin(path: Path, numpy_out: np.ndarray, tokens: np.ndarray) -> None:
    """The onnxruntime path (long-lived processes) computes the same function."""
    tower = NumpyTextTower.load(path, release_pages=False)
    assert tower.use_onnxruntime()
    np.testing.assert_allclose(tower.encode_tokens(tokens), numpy_out, atol=1e-5)


def _roundtrip(model, tmp_path: Path) -> NumpyTextTower:
    path = tmp_path / "text.safetensors"
    export_text_tower(model, path)
    return NumpyTextTower.load(path)


def _tiny(tmp_seed: int = 0, custom: bool = False, quick_gelu: bool = False, **text_kw):
    torch.manual_seed(tmp_seed)
    cls = open_clip.model.CustomTextCLIP if custom else open_clip.model.CLIP
    text_cfg = {**TINY_TEXT, **text_kw}
    model = cls(embed_dim=64, vision_cfg=TINY_VISION, text_cfg=text_cfg, quick_gelu=quick_gelu)
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def _torch_single_thread():
    # Tiny text batches: torch's thread pool only thrashes on a shared 2-core machine.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def b32():
    torch.manual_seed(0)
    return open_clip.create_model("ViT-B-32", pretrained=None).eval()


@pytest.fixture(scope="module")
def b32_file(b32, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tower") / "b32_text.safetensors"
    export_text_tower(b32, path, tokenizer=open_clip.get_tokenizer("ViT-B-32"))
    return path


@pytest.fixture(scope="module")
def tok77() -> ClipTokenizer:
    return ClipTokenizer()


def test_vit_b32_matches_torch(b32, b32_file, tok77):
    tower = NumpyTextTower.load(b32_file)
    assert tower.header["act"] == "gelu" and tower.header["layers"] == 12
    tokens = tok77(TEXTS)
    ours = tower.encode_tokens(tokens)
    _assert_close(ours, _torch_ref(b32, tokens))
    _onnx_twin(b32_file, ours, tokens)
    # Batching (padding to the longest end token) changes nothing.
    single = np.concatenate([tower.encode_tokens(tokens[i : i + 1]) for i in range(len(TEXTS))])
    np.testing.assert_allclose(single, ours, atol=1e-6)


@pytest.mark.parametrize("kind", ["dynamic", "unsigned", "blocks"])
def test_vit_b32_int8_blocks_stay_within_cosine_0999_of_fp32(kind, b32_file, tok77,
                                                               monkeypatch):
    """The long-lived processes' int8 text tower of each kind, on texts it was not checked
    on, one text's vector the same alone as in a batch; and the guard that keeps fp32."""
    fp32 = NumpyTextTower.load(b32_file).encode_tokens(tok77(TEXTS))
    tower = NumpyTextTower.load(b32_file, release_pages=False)
    assert tower.use_onnxruntime(int8=True, kinds=(kind,))
    tokens = tok77(TEXTS)
    ours = tower.encode_tokens(tokens)
    # Kept exactly where it passed its guard on the probe texts ("dynamic" might not on a
    # CPU whose int8 sums saturate; clip_core.cpu.text_int8_kinds does not try it there).
    assert tower.int8_tried == {kind: tower.int8_agreement}
    kept = tower.int8_agreement >= text_tower.INT8_MIN_COS
    assert tower.kind == (f"int8-{kind}" if kept else "fp32")
    cos = (ours * fp32).sum(axis=1)
    if kept:
        assert cos.min() >= 0.999 and cos.max() < 0.999999  # close, and really int8
    single = np.concatenate([tower.encode_tokens(tokens[i : i + 1]) for i in range(len(TEXTS))])
    if kept:  # an int8 text's vector is its own, bit for bit, alone or in a batch
        assert np.array_equal(single, ours)
    else:  # fp32 sums may run in another order for another batch
        np.testing.assert_allclose(single, ours, atol=1e-5)
    monkeypatch.setattr(text_tower, "INT8_MIN_COS", 1.01)  # a bar no int8 tower passes
    guarded = NumpyTextTower.load(b32_file, release_pages=False)
    assert guarded.use_onnxruntime(int8=True, kinds=(kind,)) and guarded.precision == "fp32"
    np.testing.assert_allclose(guarded.encode_tokens(tokens), fp32, atol=1e-5)


def test_the_first_int8_kind_that_passes_its_guard_is_kept(b32_file, tok77, monkeypatch):
    """Kinds are tried in the order given; the first at or over the bar is kept, and none
    after it is built; under a bar none reaches, each was tried and fp32 runs."""
    monkeypatch.setattr(text_tower, "INT8_MIN_COS", 1.01)
    none = NumpyTextTower.load(b32_file, release_pages=False)
    assert none.use_onnxruntime(int8=True, kinds=("dynamic", "blocks"))
    assert none.kind == "fp32" and list(none.int8_tried) == ["dynamic", "blocks"]
    agreement = none.int8_tried
    report = NumpyTextTower.load(b32_file, release_pages=False)
    assert report.int8_agreements(("dynamic", "blocks")) == agreement  # the same sums
    assert report.kind == "numpy"  # and keeps none of them
    for bar in sorted(set(agreement.values())):  # each kind's own agreement as the bar
        monkeypatch.setattr(text_tower, "INT8_MIN_COS", bar)
        tower = NumpyTextTower.load(b32_file, release_pages=False)
        assert tower.use_onnxruntime(int8=True, kinds=("dynamic", "blocks"))
        first = next(k for k in ("dynamic", "blocks") if agreement[k] >= bar)
        assert tower.kind == f"int8-{first}", (bar, agreement)
        assert list(tower.int8_tried) == ["dynamic", "blocks"][: 1 + (first == "blocks")]
        assert tower.int8_tried == {k: agreement[k] for k in tower.int8_tried}  # same sums
    # The per-run activation scale of "dynamic" makes each text run alone
    tokens = tok77(TEXTS)
    monkeypatch.setattr(text_tower, "INT8_MIN_COS", -1.0)
    dynamic = NumpyTextTower.load(b32_file, release_pages=False)
    assert dynamic.use_onnxruntime(int8=True, kinds=("dynamic",))
    runs: list[int] = []
    real_run = dynamic._onnx.run
    monkeypatch.setattr(dynamic._onnx, "run", lambda x, pool, prefixed: (
        runs.append(len(x)), real_run(x, pool, prefixed))[1])
    dynamic.encode_tokens(tokens)
    assert runs == [1] * len(TEXTS)


def test_the_fastest_runner_that_agrees_is_kept(b32_file, tok77, monkeypatch):
    """use_fastest: every kind that passes its guard (and fp32, when asked), timed in turns,
    the fastest kept; a runner chosen before is built alone while it still passes; none
    passing: fp32, with nothing to time."""
    kinds = ("dynamic", "blocks")
    tower = NumpyTextTower.load(b32_file, release_pages=False)
    seconds = tower.use_fastest(kinds, with_fp32=True)
    agreed = [k for k in kinds if tower.int8_tried[k] >= text_tower.INT8_MIN_COS]
    assert list(tower.int8_tried) == list(kinds) and set(seconds) == {*agreed, "fp32"}
    assert tower.runner == min(seconds, key=seconds.get) and tower.runner_seconds == seconds
    fp32 = NumpyTextTower.load(b32_file).encode_tokens(tok77(TEXTS))
    assert (tower.encode_tokens(tok77(TEXTS)) * fp32).sum(axis=1).min() >= 0.999
    for known in (*agreed, "fp32"):
        again = NumpyTextTower.load(b32_file, release_pages=False)
        assert again.use_fastest(kinds, known=known) == {} and again.runner == known
        assert list(again.int8_tried) == ([known] if known != "fp32" else [])
    int8_only = NumpyTextTower.load(b32_file, release_pages=False)
    if len(agreed) == 2:
        assert set(int8_only.use_fastest(kinds, with_fp32=False)) == set(agreed)
        assert int8_only.runner in agreed
    monkeypatch.setattr(text_tower, "INT8_MIN_COS", 1.01)  # a bar no int8 tower passes
    fallen = NumpyTextTower.load(b32_file, release_pages=False)
    assert fallen.use_fastest(kinds, known="blocks") == {} and fallen.runner == "fp32"
    assert list(fallen.int8_tried) == ["blocks", "dynamic"]  # the known one first
    np.testing.assert_allclose(fallen.encode_tokens(tok77(TEXTS)), fp32, atol=1e-5)


def test_onnxruntime_runs_the_rows_after_the_start_tokens_state(b32_file, tok77,
                                                                 monkeypatch):
    """Every text begins with the start token, whose row never depends on the rest: its
    keys and values are computed once and a query runs only the rows after it. The same
    function as numpy's fp32 blocks; texts that cannot (a lone row after the start, token
    rows that begin otherwise) run whole, each decided alone, so none depends on its batch."""
    tokens = tok77(TEXTS)
    other = tokens[:2].copy()
    other[:, 0] = 320  # rows that do not begin with the start token
    tokens = np.vstack([tokens, other])
    reference = NumpyTextTower.load(b32_file).encode_tokens(tokens)
    tower = NumpyTextTower.load(b32_file, release_pages=False)
    assert tower.use_onnxruntime()
    token, keys, values = tower.start_state()
    layers, heads = tower.header["layers"], tower.heads
    width = tower.token_embedding.shape[1]
    assert token == tok77.sot_token_id
    assert keys.shape == values.shape == (layers, heads, 1, width // heads)
    runs: list[tuple[int, int, bool]] = []
    real_run = tower._onnx.run
    monkeypatch.setattr(tower._onnx, "run", lambda x, pool, prefixed: (
        runs.append((len(x), x.shape[1], prefixed)), real_run(x, pool, prefixed))[1])
    ours = tower.encode_tokens(tokens)
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    ends = tokens.argmax(axis=1)
    after = (tokens[:, 0] == token) & (ends >= 2)
    assert sorted(n for n, _, prefixed in runs if prefixed) == [int(after.sum())]
    assert sum(n for n, _, prefixed in runs if not prefixed) == int((~after).sum()) == 3
    assert {length for _, length, prefixed in runs if prefixed} == {int(ends[after].max())}
    runs.clear()
    single = np.concatenate([tower.encode_tokens(tokens[i : i + 1]) for i in range(len(tokens))])
    np.testing.assert_allclose(single, ours, atol=1e-6)
    assert [prefixed for _, _, prefixed in runs] == after.tolist()


def _resident_mb(buf) -> float:
    """Resident MB of the mapping that starts at `buf` (from /proc/self/smaps)."""
    start = np.frombuffer(buf, np.uint8, count=1).ctypes.data
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            inside = int(head.split("-")[0], 16) == start
        elif inside and head == "Rss:":
            return int(line.split()[1]) / 1024
    raise AssertionError("mapping not found")


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux /proc only")
def test_int8_tower_leaves_the_fp32_pages_out_of_the_process(b32_file, tok77, monkeypatch):
    """A long-lived process with the int8 blocks keeps no fp32 matrices resident (the
    agreement check pages all of them in: ~150 MB for ViT-B-32), and answers the same."""
    # The pages are tested here, not the guard (its own test above): int8 on any CPU.
    monkeypatch.setattr(text_tower, "INT8_MIN_COS", -1.0)
    file_mb = b32_file.stat().st_size / 2**20
    tokens = tok77(TEXTS)
    tower = NumpyTextTower.load(b32_file, release_pages=False)
    assert tower.use_onnxruntime(int8=True) and tower.precision == "int8"
    ours = tower.encode_tokens(tokens)
    assert _resident_mb(tower._whole_mapping) < 0.1 * file_mb
    monkeypatch.setattr(NumpyTextTower, "_release_fp32_pages", lambda self: None)
    kept = NumpyTextTower.load(b32_file, release_pages=False)
    assert kept.use_onnxruntime(int8=True)
    assert _resident_mb(kept._whole_mapping) > 0.5 * file_mb  # what the release saves
    assert np.array_equal(kept.encode_tokens(tokens), ours)


@pytest.mark.parametrize(
    "kind, kw",
    [
        ("clip", {}),
        ("quick_gelu", {"quick_gelu": True}),
        ("gelu_tanh", {"act_kwargs": {"approximate": "tanh"}}),
        ("custom_text_clip", {"custom": True}),
        ("layer_scale_eps", {"custom": True, "ls_init_value": 0.5, "norm_kwargs": {"eps": 1e-6}}),
        ("no_projection", {"custom": True, "proj_type": "none"}),
    ],
)
def test_tiny_configs_match_torch(kind, kw, tmp_path):
    model = _tiny(**kw)
    tower = _roundtrip(model, tmp_path)
    tokens = ClipTokenizer(context_length=16)(TEXTS)
    ours = tower.encode_tokens(tokens)
    _assert_close(ours, _torch_ref(model, tokens))
    _onnx_twin(tmp_path / "text.safetensors", ours, tokens)


def test_many_texts_of_mixed_length_match_torch(tmp_path):
    # More texts than one chunk, in an order unsorted by length, to exercise the regrouping.
    model = _tiny(tmp_seed=1)
    tower = _roundtrip(model, tmp_path)
    texts = [" ".join(["cat"] * ((i * 7) % 20)) for i in range(70)]
    tokens = ClipTokenizer(context_length=16)(texts)
    _assert_close(tower.encode_tokens(tokens), _torch_ref(model, tokens))


@pytest.mark.parametrize(
    "kw",
    [
        {"pool_type": "last"},
        {"pool_type": "eos"},
        {"no_causal_mask": True},
        {"proj_bias": True},
        {"embed_cls": True},
        {"qk_norm": True},
        {"vocab_size": 32000},
    ],
)
def test_unsupported_towers_raise(kw, tmp_path):
    with pytest.raises(UnsupportedTextTower):
        export_text_tower(_tiny(custom=True, **kw), tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_file_is_valid_safetensors(tmp_path):
    from safetensors import safe_open

    model = _tiny()
    path = tmp_path / "text.safetensors"
    export_text_tower(model, path)
    with safe_open(str(path), framework="numpy") as f:
        assert HEADER_KEY in f.metadata()
        emb = f.get_tensor("token_embedding")
        assert f.get_tensor("resblocks.1.mlp.c_proj.bias").shape == (64,)
    np.testing.assert_array_equal(emb, model.token_embedding.weight.detach().numpy())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text.safetensors",  # no temp left
                                                          "text.safetensors.sha256"]


def test_load_rejects_other_files(tmp_path):
    from safetensors.numpy import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, str(plain))
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00hello world")
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    for path in (plain, garbage, empty):
        with pytest.raises(ValueError):
            NumpyTextTower.load(path)


def test_foreign_tokenizer_rejected(tmp_path):
    def other_tokenizer(texts):  # e.g. a SigLIP / HF tokenizer
        return np.ones((len(texts), 16), dtype=np.int64)

    with pytest.raises(UnsupportedTextTower, match="tokenizer"):
        export_text_tower(_tiny(), tmp_path / "x.safetensors", tokenizer=other_tokenizer)


def test_encode_tokens_shapes(b32_file):
    tower = NumpyTextTower.load(b32_file)
    assert tower.encode_tokens(np.zeros((0, 77), np.int64)).shape == (0, 512)
    with pytest.raises(ValueError):
        tower.encode_tokens(np.zeros((1, 16), np.int64))


def test_erf_accuracy():
    x = np.linspace(-6, 6, 20001, dtype=np.float32)
    ref = np.array([math.erf(v) for v in x.astype(np.float64)])
    assert np.abs(_erf(x) - ref).max() < 5e-7


def test_query_path_runs_without_torch(b32, b32_file, tok77, tmp_path):
    expected = _torch_ref(b32, tok77(["a cat", "two dogs"]))
    np.save(tmp_path / "expected.npy", expected)
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from clip_core.text.tower import NumpyTextTower\n"
        "from clip_core.text.tokenizer import ClipTokenizer\n"
        f"tower = NumpyTextTower.load({str(b32_file)!r})\n"
        "emb = tower.encode_tokens(ClipTokenizer()(['a cat', 'two dogs']))\n"
        f"ref = np.load({str(tmp_path / 'expected.npy')!r})\n"
        "assert np.abs(emb - ref).max() < 1e-4, np.abs(emb - ref).max()\n"
        "bad = [m for m in ('torch', 'open_clip', 'safetensors') if m in sys.modules]\n"
        "assert not bad, bad\n"
        # VmHWM, not ru_maxrss: the latter keeps this (torch-laden) parent's peak across exec.
        "import os\n"
        "if os.path.exists('/proc/self/status'):\n"
        "    hwm = [ln for ln in open('/proc/self/status') if ln.startswith('VmHWM')]\n"
        "    peak_mb = int(hwm[0].split()[1]) / 1024\n"
        "    assert peak_mb < 160, peak_mb  # block pages released: ~70 MB; all kept: ~210\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


def test_one_shot_tower_runs_blas_on_one_thread_and_restores_it(tmp_path):
    """The CLI's tower (release_pages) runs numpy's BLAS on one thread (threadpoolctl finds the
    loaded library, whatever its file is called); the process's setting comes back after."""
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads() -> set[int]:
        """numpy's BLAS: the one in numpy's wheel where that is how numpy came (another
        package's BLAS loaded later, scipy's say, is not numpy's to limit), else every one."""
        blas = [lib for lib in threadpool_info() if lib["user_api"] == "blas"]
        wheel = str(Path(np.__file__).parent.parent)
        own = [lib for lib in blas if lib["filepath"].startswith(wheel + "/numpy")]
        return {lib["num_threads"] for lib in own or blas}

    tower = _roundtrip(_tiny(), tmp_path)
    assert tower.single_thread
    seen: list[set[int]] = []
    real_chunk = tower._encode_chunk

    def chunk(*args):
        seen.append(blas_threads())
        return real_chunk(*args)

    tower._encode_chunk = chunk
    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        assert before  # numpy's BLAS is there to control
        tower.encode_tokens(np.zeros((3, tower.context_length), np.int64))
        assert seen and all(threads == {1} for threads in seen)
        assert blas_threads() == before


def _write_like_before(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, str]) -> None:
    """The hand-written writer this project used before the safetensors package wrote tower
    files (tensors in export order, compact JSON, spaces to 8 bytes): libraries hold such files."""
    import hashlib
    import json
    import struct

    from clip_core.text import file_check

    codes = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}
    header: dict = {"__metadata__": meta}
    offset = 0
    for name, arr in arrays.items():
        header[name] = {"dtype": codes[arr.dtype], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    data = struct.pack("<Q", len(blob)) + blob + b"".join(
        np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes() for a in arrays.values())
    path.write_bytes(data)
    file_check.record(path, hashlib.sha256(data).hexdigest(), len(data))


def test_tower_files_of_the_old_writer_still_load_and_agree(tmp_path):
    from safetensors import safe_open

    model = _tiny(tmp_seed=3)
    new = tmp_path / "new.safetensors"
    export_text_tower(model, new)
    with safe_open(str(new), framework="numpy") as f:  # the same tensors, in export order
        meta = f.metadata()
        arrays = {name: f.get_tensor(name) for name in ["token_embedding", "positional_embedding",
                                                        *sorted(set(f.keys()) - {
                                                            "token_embedding",
                                                            "positional_embedding"})]}
    old = tmp_path / "old.safetensors"
    _write_like_before(old, arrays, meta)
    assert old.read_bytes() != new.read_bytes()  # another layout of the same format
    tokens = np.asarray(ClipTokenizer(context_length=16)(["a red circle", "two small squares"]))
    np.testing.assert_array_equal(NumpyTextTower.load(old).encode_tokens(tokens),
                                  NumpyTextTower.load(new).encode_tokens(tokens))


def test_tower_file_is_the_safetensors_packages_own_output(tmp_path):
    """The safetensors package writes the file (its layout, its header), not code of ours."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    path = tmp_path / "text.safetensors"
    export_text_tower(_tiny(), path)
    with safe_open(str(path), framework="numpy") as f:
        meta, arrays = f.metadata(), {name: f.get_tensor(name) for name in list(f.keys())}
    save_file(arrays, str(tmp_path / "by-safetensors.safetensors"), meta)
    assert path.read_bytes() == (tmp_path / "by-safetensors.safetensors").read_bytes()

