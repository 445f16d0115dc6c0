"""Use a Hugging Face transformers-format CLIP folder (e.g. openai/clip-vit-large-patch14 left on
disk by Stable Diffusion tools) as an open_clip model, offline and without transformers.

The folder's weights are renamed to open_clip's layout (q/k/v fused into in_proj, projections
transposed), checked tensor by tensor, and loaded into ``open_clip.model.CLIP``. Its BPE files
are checked against open_clip's bundled OpenAI vocabulary so open_clip's tokenizer can be used.
"""

from __future__ import annotations

import gzip
import io
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from clip_core.models.hf_layout import (  # noqa: F401  (re-exported: the names callers know)
    BIN_FILE,
    BIN_INDEX,
    CONFIG_FILE,
    PREPROCESSOR_FILE,
    SAFETENSORS_FILE,
    SAFETENSORS_INDEX,
    TOKENIZER_FILES,
    TOKENIZER_NEEDED,
    is_openai_vocab,
)
from clip_core.models.hf_layout import is_clip_config as _is_clip_config
from clip_core.models.hf_layout import read_json as _read_json
from clip_core.models.hf_layout import weight_files as _weight_files

log = logging.getLogger(__name__)

# open_clip's own layer norm eps; anything else is passed through norm_kwargs.
_DEFAULT_EPS = 1e-5
# transformers' CLIPTextConfig / CLIPVisionConfig defaults, used when config.json omits a field.
_TEXT_DEFAULTS = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": _DEFAULT_EPS,
    "eos_token_id": 49407,
}
_VISION_DEFAULTS = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": _DEFAULT_EPS,
}
_ACTS = {"quick_gelu": True, "gelu": False}  # hidden_act -> open_clip quick_gelu flag
# PIL resample codes in preprocessor_config.json; open_clip knows only these two.
_RESAMPLE = {2: "bilinear", 3: "bicubic"}
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# HF special token names -> open_clip SimpleTokenizer names (same ids in the OpenAI vocab).
_SPECIAL_NAMES = {"<|startoftext|>": "<start_of_text>", "<|endoftext|>": "<end_of_text>"}
# SimpleTokenizer keeps exactly this many merges (49408 ids = 512 byte tokens + merges + 2).
_N_MERGES = 49152 - 256 - 2


def expected_files() -> str:
    """Human-readable list of what a transformers CLIP folder must hold, for error messages."""
    return (
        "a transformers-format CLIP folder (e.g. openai/clip-vit-large-patch14) must contain:\n"
        f"  {CONFIG_FILE} (model_type 'clip' / architectures ['CLIPModel'])\n"
        f"  weights: {SAFETENSORS_FILE} (preferred), {BIN_FILE}, their fp16 variants, or a "
        f"sharded {SAFETENSORS_INDEX} / {BIN_INDEX} with its shards\n"
        "  tokenizer: merges.txt (+ vocab.json) or tokenizer.json (optional when the text "
        "config is OpenAI CLIP's vocabulary)\n"
        f"  optional: {PREPROCESSOR_FILE}, tokenizer_config.json, special_tokens_map.json"
    )


@dataclass
class ConvertedClip:
    model_cfg: dict  # kwargs for open_clip.model.CLIP
    preprocess_cfg: dict  # open_clip PreprocessCfg fields
    state_dict: dict[str, torch.Tensor]  # open_clip key names
    context_length: int
    source: Path | None = None  # the folder, so the tokenizer can read tokenizer.json
    # The text config is OpenAI CLIP's vocabulary: open_clip's BPE can stand in for missing
    # tokenizer files.
    openai_vocab: bool = False


# --- folder inspection -------------------------------------------------------------------------


def hf_tokenizer_files(path: Path) -> dict[str, Path]:
    """The tokenizer files present in the folder, by file name."""
    path = Path(path)
    return {name: path / name for name in TOKENIZER_FILES if (path / name).is_file()}


# --- weights -----------------------------------------------------------------------------------


def _load_file(file: Path) -> dict[str, torch.Tensor]:
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(file), device="cpu")
        else:
            # weights_only: a .bin is a pickle, and a pickle can run code.
            tensors = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure means "not a usable weights file"
        raise ValueError(
            f"{file}: refused or unreadable as plain tensors ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(tensors, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()
    ):
        raise ValueError(f"{file}: expected a flat mapping of names to tensors")
    return tensors


def _load_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    merged: dict[str, torch.Tensor] = {}
    for file in files:
        for key, tensor in _load_file(file).items():
            if key in merged:
                raise ValueError(f"{file}: tensor {key!r} also appears in another shard")
            merged[key] = tensor
    return merged


def _layer_count(sd: dict[str, torch.Tensor], prefix: str) -> int:
    idx = {int(k[len(prefix) :].split(".", 1)[0]) for k in sd if k.startswith(prefix)}
    return max(idx) + 1 if idx else 0


class _Taker:
    """Pops HF tensors by name so leftovers (unknown tensors) can be reported at the end."""

    def __init__(self, sd: dict[str, torch.Tensor]):
        self.sd = dict(sd)
        self.missing: list[str] = []

    def __call__(self, key: str) -> torch.Tensor:
        if key not in self.sd:
            self.missing.append(key)
            return torch.empty(0)
        return self.sd.pop(key)


def _convert_tower(take: _Taker, out: dict, hf: str, oc: str, layers: int) -> None:
    for i in range(layers):
        src, dst = f"{hf}.encoder.layers.{i}.", f"{oc}transformer.resblocks.{i}."
        qkv = [take(f"{src}self_attn.{p}_proj.weight") for p in "qkv"]
        qkv_b = [take(f"{src}self_attn.{p}_proj.bias") for p in "qkv"]
        out[dst + "attn.in_proj_weight"] = torch.cat(qkv, dim=0)
        out[dst + "attn.in_proj_bias"] = torch.cat(qkv_b, dim=0)
        for hf_name, oc_name in (
            ("self_attn.out_proj", "attn.out_proj"),
            ("layer_norm1", "ln_1"),
            ("layer_norm2", "ln_2"),
            ("mlp.fc1", "mlp.c_fc"),
            ("mlp.fc2", "mlp.c_proj"),
        ):
            for p in ("weight", "bias"):
                out[f"{dst}{oc_name}.{p}"] = take(f"{src}{hf_name}.{p}")


def _convert_state_dict(
    sd: dict[str, torch.Tensor], text_layers: int, vision_layers: int, where: str
) -> dict[str, torch.Tensor]:
    take = _Taker(sd)
    # position_ids are index buffers that older checkpoints saved; open_clip has no such thing.
    for k in ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids"):
        take.sd.pop(k, None)
    out: dict[str, torch.Tensor] = {}
    t, v = "text_model", "vision_model"
    out["token_embedding.weight"] = take(f"{t}.embeddings.token_embedding.weight")
    out["positional_embedding"] = take(f"{t}.embeddings.position_embedding.weight")
    _convert_tower(take, out, t, "", text_layers)
    out["ln_final.weight"] = take(f"{t}.final_layer_norm.weight")
    out["ln_final.bias"] = take(f"{t}.final_layer_norm.bias")
    out["text_projection"] = take("text_projection.weight").T  # Linear(out,in) -> x @ W
    out["visual.class_embedding"] = take(f"{v}.embeddings.class_embedding")
    out["visual.conv1.weight"] = take(f"{v}.embeddings.patch_embedding.weight")
    out["visual.positional_embedding"] = take(f"{v}.embeddings.position_embedding.weight")
    for hf_name, oc_name in (("pre_layrnorm", "ln_pre"), ("post_layernorm", "ln_post")):
        for p in ("weight", "bias"):
            out[f"visual.{oc_name}.{p}"] = take(f"{v}.{hf_name}.{p}")
    _convert_tower(take, out, v, "visual.", vision_layers)
    out["visual.proj"] = take("visual_projection.weight").T
    out["logit_scale"] = take("logit_scale")
    if take.missing:
        raise ValueError(
            f"{where}: not a complete CLIPModel checkpoint, missing {len(take.missing)} "
            f"tensors, e.g. {take.missing[:4]}\n{expected_files()}"
        )
    if take.sd:
        raise ValueError(
            f"{where}: unexpected tensors for a ViT CLIPModel ({len(take.sd)}), "
            f"e.g. {sorted(take.sd)[:4]}"
        )
    return {k: t.contiguous() for k, t in out.items()}


# --- config ------------------------------------------------------------------------------------


def _sub_config(cfg: dict, name: str, defaults: dict) -> dict:
    sub = dict(defaults)
    sub.update(cfg.get(f"{name}_config") or {})
    # Legacy configs carry the authoritative values in *_config_dict (transformers does the same).
    sub.update(cfg.get(f"{name}_config_dict") or {})
    return sub


def _mlp_ratio(width: int, hidden: int, where: str) -> float:
    ratio = hidden / width
    if int(width * ratio) != hidden:  # open_clip sizes the MLP as int(width * mlp_ratio)
        ratio = (hidden + 0.5) / width
    if int(width * ratio) != hidden:
        raise ValueError(f"{where}: intermediate_size {hidden} not expressible for width {width}")
    return ratio


def _heads(width: int, heads: int, where: str, tower: str) -> int:
    if heads <= 0 or width % heads:
        raise ValueError(f"{where}: {tower} hidden_size {width} not divisible by {heads} heads")
    return heads


def _model_cfg(cfg: dict, where: str) -> dict:
    tc = _sub_config(cfg, "text", _TEXT_DEFAULTS)
    vc = _sub_config(cfg, "vision", _VISION_DEFAULTS)
    acts = {tc["hidden_act"], vc["hidden_act"]}
    if len(acts) != 1 or not acts <= _ACTS.keys():
        raise ValueError(
            f"{where}: hidden_act must be 'quick_gelu' or 'gelu' and the same for both towers, "
            f"got text={tc['hidden_act']!r} vision={vc['hidden_act']!r}"
        )
    image_size, patch_size = vc["image_size"], vc["patch_size"]
    if not isinstance(image_size, int) or not isinstance(patch_size, int):
        raise ValueError(f"{where}: only square image_size/patch_size are supported")
    if vc["num_channels"] != 3:
        raise ValueError(f"{where}: vision num_channels must be 3, got {vc['num_channels']}")
    v_width, t_width = vc["hidden_size"], tc["hidden_size"]
    v_heads = _heads(v_width, vc["num_attention_heads"], where, "vision")
    vision_cfg = {
        "image_size": image_size,
        "layers": vc["num_hidden_layers"],
        "width": v_width,
        "patch_size": patch_size,
        "head_width": v_width // v_heads,
        "mlp_ratio": _mlp_ratio(v_width, vc["intermediate_size"], where),
    }
    text_cfg = {
        "context_length": tc["max_position_embeddings"],
        "vocab_size": tc["vocab_size"],
        "width": t_width,
        "heads": _heads(t_width, tc["num_attention_heads"], where, "text"),
        "layers": tc["num_hidden_layers"],
        "mlp_ratio": _mlp_ratio(t_width, tc["intermediate_size"], where),
    }
    for sub, tower in ((vc, vision_cfg), (tc, text_cfg)):
        if not math.isclose(sub["layer_norm_eps"], _DEFAULT_EPS, rel_tol=1e-9):
            tower["norm_kwargs"] = {"eps": sub["layer_norm_eps"]}
    eos = tc["eos_token_id"]
    eos = eos[0] if isinstance(eos, list) and len(eos) == 1 else eos
    if not isinstance(eos, int):
        raise ValueError(f"{where}: unsupported text eos_token_id {eos!r}")
    # transformers pools at argmax(ids) when eos_token_id == 2 (legacy) and at the first eos
    # otherwise; argmax finds the first eos too when eos is the largest id, as in OpenAI's BPE.
    if eos not in (2, tc["vocab_size"] - 1):
        text_cfg.update(pool_type="eos", eos_id=eos)
    projection_dim = cfg.get("projection_dim", 512)
    return {
        "embed_dim": projection_dim,
        "quick_gelu": _ACTS[tc["hidden_act"]],
        "vision_cfg": vision_cfg,
        "text_cfg": text_cfg,
    }


def _preprocess_cfg(path: Path, image_size: int) -> dict:
    """open_clip preprocessing from preprocessor_config.json (OpenAI defaults when absent)."""
    pp = _read_json(path / PREPROCESSOR_FILE) if (path / PREPROCESSOR_FILE).is_file() else {}
    # Resize-shortest-then-centre-crop is open_clip's 'shortest'; no crop means a plain squash.
    resize_mode = "shortest" if pp.get("do_center_crop", True) else "squash"
    return {
        # The model's input size wins: the network cannot take anything else.
        "size": image_size,
        "mean": tuple(pp.get("image_mean") or _OPENAI_MEAN),
        "std": tuple(pp.get("image_std") or _OPENAI_STD),
        # Nearest/lanczos/etc. have no open_clip equivalent; bicubic is what CLIP was trained with.
        "interpolation": _RESAMPLE.get(pp.get("resample", 3), "bicubic"),
        "resize_mode": resize_mode,
    }


def _expected_shapes(model_cfg: dict) -> dict[str, torch.Size]:
    from open_clip.model import CLIP

    with torch.device("meta"):  # shapes only: no memory, no random init cost
        model = CLIP(**model_cfg)
    return {k: v.shape for k, v in model.state_dict().items()}


def _check_shapes(sd: dict[str, torch.Tensor], model_cfg: dict, where: str, cfg: Path) -> None:
    expected = _expected_shapes(model_cfg)
    missing = sorted(expected.keys() - sd.keys())
    extra = sorted(sd.keys() - expected.keys())
    if missing or extra:
        raise ValueError(
            f"{where} does not match {cfg}: missing {missing[:4]}, unexpected {extra[:4]} "
            "(layer counts in config and weights differ?)"
        )
    wrong = [
        f"{k}: weights {tuple(sd[k].shape)} vs config {tuple(s)}"
        for k, s in expected.items()
        if sd[k].shape != s
    ]
    if wrong:
        raise ValueError(f"{where} does not match {cfg}: " + "; ".join(wrong[:4]))


# --- public entry points ----------------------------------------------------------------------


def load_hf_clip(path: Path) -> ConvertedClip:
    """Read a transformers CLIPModel folder and convert it to open_clip config + state dict."""
    path = Path(path)
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise ValueError(f"{path}: no {CONFIG_FILE}\n{expected_files()}")
    cfg = _read_json(config_file)
    if not _is_clip_config(cfg):
        raise ValueError(
            f"{config_file}: not a CLIP model (model_type={cfg.get('model_type')!r}, "
            f"architectures={cfg.get('architectures')!r}); a full CLIPModel with text and "
            f"vision towers is needed\n{expected_files()}"
        )
    files = _weight_files(path)
    if not files:
        raise ValueError(f"{path}: no weights file found\n{expected_files()}")
    where = ", ".join(str(f) for f in files)
    model_cfg = _model_cfg(cfg, str(config_file))
    hf_sd = _load_weights(files)
    sd = _convert_state_dict(
        hf_sd,
        _layer_count(hf_sd, "text_model.encoder.layers."),
        _layer_count(hf_sd, "vision_model.encoder.layers."),
        where,
    )
    _check_shapes(sd, model_cfg, where, config_file)
    return ConvertedClip(
        model_cfg=model_cfg,
        preprocess_cfg=_preprocess_cfg(path, model_cfg["vision_cfg"]["image_size"]),
        state_dict=sd,
        context_length=model_cfg["text_cfg"]["context_length"],
        source=path,
        openai_vocab=is_openai_vocab(cfg),
    )


def build_model(conv: ConvertedClip) -> torch.nn.Module:
    """An eval-mode fp32 open_clip CLIP holding the converted weights (strict load)."""
    from open_clip.model import CLIP

    state = {k: v.float() if v.is_floating_point() else v for k, v in conv.state_dict.items()}
    # Building on meta and assigning the loaded tensors skips a random init that costs
    # seconds for ViT-L; the only non-persistent buffer, the causal mask, is rebuilt below.
    with torch.device("meta"):
        model = CLIP(**conv.model_cfg)
    model.load_state_dict(state, strict=True, assign=True)
    n = model.positional_embedding.shape[0]
    model.attn_mask = torch.full((n, n), float("-inf")).triu_(1)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        model = CLIP(**conv.model_cfg)  # an open_clip change added state we cannot rebuild
        model.load_state_dict(state, strict=True)
    return model.eval()


# --- tokenizer ---------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _standard_merges() -> tuple[str, ...]:
    from open_clip.tokenizer import default_bpe

    with gzip.open(default_bpe(), "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    return tuple(lines[1 : _N_MERGES + 1])  # line 0 is a '#version' header


def _read_merges(path: Path) -> tuple[list[str], Path] | None:
    """BPE merges as 'a b' strings, from merges.txt or else tokenizer.json."""
    files = hf_tokenizer_files(path)
    if "merges.txt" in files:
        text = files["merges.txt"].read_text(encoding="utf-8")
        lines = [ln for ln in text.split("\n") if ln and not ln.startswith("#version")]
        return lines, files["merges.txt"]
    if "tokenizer.json" in files:
        model = _read_json(files["tokenizer.json"]).get("model") or {}
        merges = model.get("merges")
        if model.get("type") != "BPE" or not isinstance(merges, list):
            raise ValueError(f"{files['tokenizer.json']}: not a BPE tokenizer")
        # Older tokenizers files store "a b", newer ones ["a", "b"].
        return [m if isinstance(m, str) else " ".join(m) for m in merges], files["tokenizer.json"]
    return None


def _read_vocab(path: Path) -> tuple[dict[str, int], Path] | None:
    files = hf_tokenizer_files(path)
    if "vocab.json" in files:
        return _read_json(files["vocab.json"]), files["vocab.json"]
    if "tokenizer.json" in files:
        tj = _read_json(files["tokenizer.json"])
        vocab = dict((tj.get("model") or {}).get("vocab") or {})
        for added in tj.get("added_tokens") or []:
            if isinstance(added, dict) and "content" in added and "id" in added:
                vocab[added["content"]] = added["id"]
        return vocab, files["tokenizer.json"]
    return None


def is_standard_clip_bpe(merges: list[str]) -> bool:
    """True when the merges are OpenAI CLIP's (the ones open_clip bundles)."""
    return tuple(merges) == _standard_merges()


def make_tokenizer(conv: ConvertedClip) -> Callable[[str | list[str]], torch.Tensor]:
    """texts -> LongTensor[N, context_length], tokenized as open_clip/OpenAI CLIP do.

    Text cleaning is open_clip's (ftfy, HTML unescape, Python lower-casing), i.e. the original
    OpenAI CLIP one, which transformers' fast tokenizer only approximates.
    """
    from open_clip.tokenizer import SimpleTokenizer

    if conv.source is None:
        raise ValueError("ConvertedClip has no source folder to read tokenizer files from")
    found = _read_merges(conv.source)
    if found is None and conv.openai_vocab:
        # The Stable Diffusion case: a download that stopped before the tokenizer files.
        # OpenAI's vocabulary ships with open_clip (proven token-for-token equal to it).
        log.warning("note: %s has no tokenizer files; its text config is OpenAI CLIP's, so "
                    "the identical BPE vocabulary bundled with open_clip is used", conv.source)
        return SimpleTokenizer(context_length=conv.context_length)
    if found is None:
        raise ValueError(f"{conv.source}: no tokenizer files ({TOKENIZER_NEEDED}) and the "
                         "text config is not OpenAI CLIP's vocabulary (vocab_size 49408, "
                         f"start/end tokens 49406/49407, context 77)\n{expected_files()}")
    merges, merges_file = found
    if is_standard_clip_bpe(merges):
        tok = SimpleTokenizer(context_length=conv.context_length)
    elif len(merges) == _N_MERGES:
        # SimpleTokenizer only reads gzip; hand it an in-memory one instead of a temp file.
        gz = gzip.compress(("#version: 0.2\n" + "\n".join(merges) + "\n").encode("utf-8"))
        tok = SimpleTokenizer(bpe_path=io.BytesIO(gz), context_length=conv.context_length)
    else:
        raise ValueError(
            f"{merges_file}: {len(merges)} BPE merges; only OpenAI-CLIP-style vocabularies "
            f"({_N_MERGES} merges) are supported"
        )
    _check_vocab(tok, conv)
    return tok


def _check_vocab(tok, conv: ConvertedClip) -> None:
    """The folder's token ids must be the ones SimpleTokenizer derives from the merges."""
    found = _read_vocab(conv.source)
    if found is not None:
        vocab, vocab_file = found
        ours = {_SPECIAL_NAMES.get(k, k): v for k, v in vocab.items()}
        if ours != tok.encoder:
            diff = sorted(set(ours.items()) ^ set(tok.encoder.items()))[:4]
            raise ValueError(
                f"{vocab_file}: token ids differ from the OpenAI CLIP layout open_clip uses, "
                f"e.g. {diff}"
            )
    text_cfg = conv.model_cfg["text_cfg"]
    if text_cfg["vocab_size"] != len(tok.encoder):
        raise ValueError(
            f"{conv.source}: model vocab_size {text_cfg['vocab_size']} != tokenizer's "
            f"{len(tok.encoder)}"
        )
    if text_cfg.get("pool_type") == "eos" and text_cfg["eos_id"] != tok.eot_token_id:
        raise ValueError(
            f"{conv.source}: config eos_token_id {text_cfg['eos_id']} is not the tokenizer's "
            f"end token {tok.eot_token_id}"
        )
