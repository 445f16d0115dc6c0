"""Numeric proof that a transformers-format CLIP folder, converted by
clip_core.torch_backend.hf_clip, gives the same embeddings and token ids as transformers itself
(tiny random models, no network)."""

from __future__ import annotations

import gzip
import html
import io
import json
import os
import pickle
import shutil
from pathlib import Path

# Before huggingface_hub is first imported (open_clip pulls it in): no network, ever.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import ftfy
import pytest
import torch
from open_clip.tokenizer import SimpleTokenizer, default_bpe
from safetensors.torch import save_file

from clip_core.models.places import is_transformers_clip
from clip_core.torch_backend import hf_clip

pytest.importorskip("transformers")  # a dev/test dependency only

EOT = 49407
CTX = 77
IMAGE = 32

TRICKY = [
    "a photo of a CAT!!",
    "  Lots   of\twhite\nspace   ",
    "Café naïve résumé ÜBER straße",
    "東京タワーの夜景",
    "pizza 🍕 and 🐶🐱 emoji",
    "It's 3:45pm... what's up?! (e-mail: foo@bar.com) #tag [x] {y}",
    "don't WON'T I'M 123456 0.5 1,000",
    "İstanbul ÀÉÎÕÜ",
    "",
    "a very long caption, " * 30,  # > 77 tokens: truncation must keep the end token
    "jekyll and a horrendous diffuser",
]
# Texts where transformers' fast tokenizer (NFC + lowercase only) differs from OpenAI CLIP's
# cleaning (ftfy.fix_text + double html.unescape), which open_clip and we reproduce.
CLEANING_DIFFERS = [
    "“curly quotes” and ‘single’",
    "AT&amp;T &lt;3",
    "ﬁne ﬂower ligatures",
    "ＦＵＬＬ width！",
    "Ã©tÃ© mojibake",
]


def _features(out) -> torch.Tensor:
    # transformers < 5 returns a tensor, 5.x an output object with the projected pooler_output.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _write_bpe(folder: Path, merges: list[str]) -> None:
    """vocab.json + merges.txt as OpenAI's hub folders ship them, derived like SimpleTokenizer."""
    gz = gzip.compress(("#version: 0.2\n" + "\n".join(merges) + "\n").encode())
    enc = dict(SimpleTokenizer(bpe_path=io.BytesIO(gz)).encoder)
    enc["<|startoftext|>"] = enc.pop("<start_of_text>")
    enc["<|endoftext|>"] = enc.pop("<end_of_text>")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(enc, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", "utf-8")


def _standard_merges() -> list[str]:
    with gzip.open(default_bpe(), "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    return lines[1 : 49152 - 256 - 2 + 1]


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bpe")
    _write_bpe(folder, _standard_merges())
    return folder


def _make_folder(folder: Path, bpe: Path, act: str, eos: int, shard: bool):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    torch.manual_seed(0)
    config = CLIPConfig(
        # widths, heads and projection_dim all differ so a missed transpose cannot hide;
        # intermediate 160/48 is not an integer mlp_ratio.
        text_config=dict(
            vocab_size=49408, hidden_size=48, intermediate_size=160, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=CTX, hidden_act=act,
            eos_token_id=eos,
        ),
        vision_config=dict(
            image_size=IMAGE, patch_size=8, hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=2, hidden_act=act,
        ),
        projection_dim=24,
    )
    model = CLIPModel(config).eval()
    with torch.no_grad():  # default init leaves LayerNorms at 1/0, which would hide swaps
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(folder, **({"max_shard_size": "2MB"} if shard else {}))
    tok = CLIPTokenizer.from_pretrained(bpe, model_max_length=CTX)
    tok.save_pretrained(folder)  # tokenizer.json + tokenizer_config.json
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(bpe / name, folder / name)
    CLIPImageProcessor(
        size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE}
    ).save_pretrained(folder)
    return model, tok


# (hidden_act, eos_token_id, sharded): eos 2 is the legacy argmax pooling of OpenAI's configs.
VARIANTS = {"quick_gelu": ("quick_gelu", 2, False), "gelu": ("gelu", EOT, True)}


_BUILT: dict[str, dict] = {}


def _built(variant: str, tmp_path_factory, bpe_dir: Path) -> dict:
    if variant not in _BUILT:
        act, eos, shard = VARIANTS[variant]
        folder = tmp_path_factory.mktemp(f"hf_{variant}")
        model, tok = _make_folder(folder, bpe_dir, act, eos, shard)
        conv = hf_clip.load_hf_clip(folder)
        _BUILT[variant] = {
            "act": act, "folder": folder, "model": model, "tok": tok, "conv": conv,
            "ours": hf_clip.build_model(conv), "our_tok": hf_clip.make_tokenizer(conv),
        }
    return _BUILT[variant]


@pytest.fixture(scope="module", params=list(VARIANTS))
def hf(request, tmp_path_factory, bpe_dir):
    """Each model variant: for the numeric comparisons."""
    yield _built(request.param, tmp_path_factory, bpe_dir)
    _BUILT.pop(request.param, None)


@pytest.fixture(scope="module")
def hf1(tmp_path_factory, bpe_dir):
    """One variant: for checks that do not depend on the architecture."""
    yield _built("quick_gelu", tmp_path_factory, bpe_dir)
    _BUILT.pop("quick_gelu", None)


def _assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    na, nb = torch.nn.functional.normalize(a, dim=-1), torch.nn.functional.normalize(b, dim=-1)
    torch.testing.assert_close(na, nb, atol=1e-4, rtol=0)
    assert (na * nb).sum(-1).min() > 0.9999


def _ids_to_eot(row: list[int]) -> list[int]:
    return row[: row.index(EOT) + 1]


def _assert_same_ids(texts: list[str], ours: torch.Tensor, theirs: torch.Tensor) -> None:
    # HF pads with the end token, open_clip with 0: compare up to and including the end token.
    for text, a, b in zip(texts, ours.tolist(), theirs.tolist(), strict=True):
        assert _ids_to_eot(a) == _ids_to_eot(b), text


def _hf_ids(tok, texts: list[str]) -> dict:
    return tok(texts, padding="max_length", max_length=CTX, truncation=True, return_tensors="pt")


def test_detect_and_configs(hf):
    conv = hf["conv"]
    assert is_transformers_clip(hf["folder"])
    cfg = conv.model_cfg
    assert cfg["quick_gelu"] is (hf["act"] == "quick_gelu")
    assert cfg["embed_dim"] == 24
    assert cfg["vision_cfg"] | {"mlp_ratio": 2.0} == {
        "image_size": IMAGE, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32,
        "mlp_ratio": 2.0,
    }
    assert cfg["text_cfg"]["heads"] == 4 and cfg["text_cfg"]["context_length"] == CTX
    assert "pool_type" not in cfg["text_cfg"]  # eos 2 and 49407 both pool at argmax
    assert conv.context_length == CTX
    assert conv.preprocess_cfg["size"] == IMAGE
    assert conv.preprocess_cfg["interpolation"] == "bicubic"
    assert conv.preprocess_cfg["resize_mode"] == "shortest"
    assert conv.preprocess_cfg["mean"] == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert not hf["ours"].training


@torch.no_grad()
def test_image_features_match(hf):
    torch.manual_seed(1)
    pixels = torch.randn(5, 3, IMAGE, IMAGE)
    ref = _features(hf["model"].get_image_features(pixel_values=pixels))
    _assert_close(hf["ours"].encode_image(pixels), ref)


@torch.no_grad()
def test_text_tokens_and_features_match(hf):
    hf_in = _hf_ids(hf["tok"], TRICKY)
    ours = hf["our_tok"](TRICKY)
    assert ours.shape == (len(TRICKY), CTX) and ours.dtype == torch.long
    _assert_same_ids(TRICKY, ours, hf_in["input_ids"])
    long_row = ours[TRICKY.index("a very long caption, " * 30)]
    assert long_row[-1] == EOT and (long_row == EOT).sum() == 1
    ref = _features(hf["model"].get_text_features(**hf_in))
    _assert_close(hf["ours"].encode_text(ours), ref)


def test_known_cleaning_differences(hf1):
    # Our tokenizer is OpenAI CLIP's: ftfy + html unescape happen before BPE. transformers' fast
    # tokenizer skips both, so it only agrees once the text is cleaned the same way first.
    cleaned = [ftfy.fix_text(html.unescape(html.unescape(t))) for t in CLEANING_DIFFERS]
    theirs = _hf_ids(hf1["tok"], cleaned)["input_ids"]
    _assert_same_ids(CLEANING_DIFFERS, hf1["our_tok"](CLEANING_DIFFERS), theirs)


def _copy(src: Path, dst: Path, skip: set[str]) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        if f.name not in skip:
            shutil.copy(f, dst / f.name)
    return dst


def test_tokenizer_json_only(hf1, tmp_path):
    folder = _copy(hf1["folder"], tmp_path / "m", {"vocab.json", "merges.txt"})
    conv = hf_clip.load_hf_clip(folder)
    assert set(hf_clip.hf_tokenizer_files(folder)) == {"tokenizer.json", "tokenizer_config.json"}
    assert torch.equal(hf_clip.make_tokenizer(conv)(TRICKY), hf1["our_tok"](TRICKY))


def test_non_standard_merges(hf1, tmp_path):
    from transformers import CLIPTokenizer

    merges = _standard_merges()
    i, j = merges.index("rend ous</w>"), merges.index("jeky ll</w>")
    merges[i], merges[j] = merges[j], merges[i]  # swaps the ids of 'rendous</w>', 'jekyll</w>'
    assert not hf_clip.is_standard_clip_bpe(merges)
    folder = _copy(hf1["folder"], tmp_path / "m", {"vocab.json", "merges.txt", "tokenizer.json"})
    _write_bpe(folder, merges)
    ours = hf_clip.make_tokenizer(hf_clip.load_hf_clip(folder))(TRICKY)
    theirs = _hf_ids(CLIPTokenizer.from_pretrained(folder, model_max_length=CTX), TRICKY)
    _assert_same_ids(TRICKY, ours, theirs["input_ids"])
    row = TRICKY.index("jekyll and a horrendous diffuser")
    assert not torch.equal(ours[row], hf1["our_tok"](TRICKY[row])[0])  # the swap took effect


def test_bin_weights_load_the_same(hf1, tmp_path):
    folder = _copy(hf1["folder"], tmp_path / "m", set())
    for f in list(folder.glob("model*.safetensors*")):
        f.unlink()
    torch.save(hf1["model"].state_dict(), folder / "pytorch_model.bin")
    conv = hf_clip.load_hf_clip(folder)
    assert conv.state_dict.keys() == hf1["conv"].state_dict.keys()
    for k, v in conv.state_dict.items():
        assert torch.equal(v, hf1["conv"].state_dict[k]), k


def test_rejects_non_clip_config(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    for cfg in (
        {"model_type": "bert", "architectures": ["BertModel"]},
        # A Stable Diffusion text_encoder folder: text tower only.
        {"model_type": "clip_text_model", "architectures": ["CLIPTextModel"]},
    ):
        (tmp_path / "config.json").write_text(json.dumps(cfg))
        assert not is_transformers_clip(tmp_path)
        with pytest.raises(ValueError, match=r"config\.json: not a CLIP model"):
            hf_clip.load_hf_clip(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read JSON"):
        hf_clip.load_hf_clip(tmp_path)


def test_rejects_missing_and_extra_tensors(hf1, tmp_path):
    folder = _copy(hf1["folder"], tmp_path / "m", set())
    for f in list(folder.glob("model*.safetensors*")):
        f.unlink()
    sd = {k: v.contiguous() for k, v in hf1["model"].state_dict().items()}
    ln = sd.pop("vision_model.post_layernorm.weight")
    save_file(sd, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model\.safetensors: not a complete.*post_layernorm"):
        hf_clip.load_hf_clip(folder)
    sd["vision_model.post_layernorm.weight"] = ln
    sd["visual_projection.bias"] = torch.zeros(24)
    save_file(sd, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"unexpected tensors.*visual_projection\.bias"):
        hf_clip.load_hf_clip(folder)
    del sd["visual_projection.bias"]
    sd["visual_projection.weight"] = torch.zeros(24, 63)
    save_file(sd, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"does not match .*config\.json.*visual\.proj"):
        hf_clip.load_hf_clip(folder)


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))  # would create the marker file if unpickled


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("fmt", ["torch_zip", "raw_pickle"])
def test_refuses_malicious_pickle(hf1, tmp_path, fmt):
    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(hf1["folder"] / "config.json", folder / "config.json")
    marker = tmp_path / "pwned"
    payload = {"text_model.embeddings.token_embedding.weight": _Payload(marker)}
    if fmt == "torch_zip":
        torch.save(payload, folder / "pytorch_model.bin")
    else:
        (folder / "pytorch_model.bin").write_bytes(pickle.dumps(payload))
    assert is_transformers_clip(folder)
    with pytest.raises(ValueError, match=r"pytorch_model\.bin: refused"):
        hf_clip.load_hf_clip(folder)
    assert not marker.exists()


def test_safetensors_preferred_over_bin(hf1, tmp_path):
    folder = _copy(hf1["folder"], tmp_path / "m", set())
    (folder / "pytorch_model.bin").write_bytes(b"never read")  # read, it would raise
    conv = hf_clip.load_hf_clip(folder)
    for k, v in conv.state_dict.items():
        assert torch.equal(v, hf1["conv"].state_dict[k]), k


# The text part of openai/clip-vit-large-patch14's own config.json: transformers' legacy
# start/end ids 0/2 (the real tokens are 49406/49407), text_config_dict beside text_config.
OPENAI_L14_CONFIG = {
    "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 768,
    "text_config": {"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
                    "vocab_size": 49408, "max_position_embeddings": 77,
                    "hidden_act": "quick_gelu", "hidden_size": 768},
    "text_config_dict": {"hidden_size": 768, "intermediate_size": 3072,
                         "num_attention_heads": 12, "num_hidden_layers": 12,
                         "projection_dim": 768},
}


@pytest.mark.parametrize(("change", "openai"), [
    ({}, True),
    ({"bos_token_id": 49406, "eos_token_id": 49407}, True),  # transformers' current defaults
    ({"vocab_size": 32000}, False),
    ({"max_position_embeddings": 64}, False),
    ({"eos_token_id": 1}, False),
])
def test_openai_vocabulary_is_recognised_from_the_config(change, openai):
    cfg = json.loads(json.dumps(OPENAI_L14_CONFIG))
    cfg["text_config"].update(change)
    assert hf_clip.is_openai_vocab(cfg) is openai
    cfg["text_config_dict"].update(change)  # transformers lets text_config_dict win
    assert hf_clip.is_openai_vocab(cfg) is openai


def test_missing_tokenizer_files_fall_back_to_the_bundled_bpe(hf1, tmp_path, caplog):
    """The seed's failure: a folder without any tokenizer file, OpenAI's vocabulary (here the
    legacy end id 2). The ids equal those made from the folder's own files."""
    folder = _copy(hf1["folder"], tmp_path / "m", set(hf_clip.TOKENIZER_FILES))
    assert hf_clip.hf_tokenizer_files(folder) == {}
    conv = hf_clip.load_hf_clip(folder)
    assert conv.openai_vocab
    assert torch.equal(hf_clip.make_tokenizer(conv)(TRICKY), hf1["our_tok"](TRICKY))
    assert any("bundled with open_clip" in r.getMessage() for r in caplog.records)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["text_config"]["max_position_embeddings"] = 64  # not OpenAI's: nothing stands in
    (folder / "config.json").write_text(json.dumps(cfg))
    sd = {k: v.contiguous() for k, v in hf1["model"].state_dict().items()}
    sd["text_model.embeddings.position_embedding.weight"] = sd[
        "text_model.embeddings.position_embedding.weight"][:64].contiguous()
    sd.pop("text_model.embeddings.position_ids", None)
    save_file(sd, str(folder / "model.safetensors"))  # weights to match the 64 positions
    conv = hf_clip.load_hf_clip(folder)
    assert not conv.openai_vocab
    with pytest.raises(ValueError, match=r"no tokenizer files \(merges\.txt \+ vocab\.json, or "
                                         r"tokenizer\.json\)"):
        hf_clip.make_tokenizer(conv)
