"""What a transformers-format CLIP folder holds, checked without torch.

A Stable Diffusion user's `openai/clip-vit-large-patch14` download may have stopped half-way:
config without weights, weights without config, no tokenizer files. These checks run in
milliseconds (before torch is imported), so each such folder gets one clear message.
"""

from __future__ import annotations

import json
from pathlib import Path

from clipsearch_errors import ModelError

CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_FILE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
# (index, single file) in order of preference: safetensors (no pickle) first, full precision
# before transformers' fp16 "variant" names.
WEIGHT_LAYOUTS = (
    (SAFETENSORS_INDEX, SAFETENSORS_FILE),
    ("model.safetensors.index.fp16.json", "model.fp16.safetensors"),
    (BIN_INDEX, BIN_FILE),
    ("pytorch_model.bin.index.fp16.json", "pytorch_model.fp16.bin"),
)
TOKENIZER_FILES = (
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
TOKENIZER_NEEDED = "merges.txt + vocab.json, or tokenizer.json"
# OpenAI CLIP's text vocabulary: open_clip ships its BPE, so such a model needs no tokenizer
# files. 0 and 2 are transformers' legacy start/end ids that OpenAI's own config.json still
# carries (end id 2 means "pool at the largest id", which is 49407 in this vocabulary).
OPENAI_VOCAB_SIZE = 49408
OPENAI_CONTEXT = 77
OPENAI_BOS_IDS = (49406, 0)
OPENAI_EOS_IDS = (49407, 2)
_TEXT_ID_DEFAULTS = {"vocab_size": OPENAI_VOCAB_SIZE, "max_position_embeddings": OPENAI_CONTEXT,
                     "bos_token_id": 49406, "eos_token_id": 49407}


class MissingFiles(ModelError, ValueError):
    """Files a transformers CLIP folder needs are absent: `expected` names them, the message
    says what is there instead."""

    def __init__(self, expected: list[str], detail: str):
        self.expected = expected
        self.detail = detail
        super().__init__(detail)


def read_json(file: Path) -> dict:
    try:
        data = json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{file}: cannot read JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{file}: expected a JSON object")
    return data


def is_clip_config(cfg: dict) -> bool:
    archs = cfg.get("architectures") or []
    return cfg.get("model_type") == "clip" or "CLIPModel" in archs


def weight_files(path: Path) -> list[Path]:
    """Weight files of the first layout present; [] when there are none. ValueError for a
    shard index that is broken or names shards that are not there."""
    path = Path(path)
    for index_name, single in WEIGHT_LAYOUTS:
        if (path / single).is_file():
            return [path / single]
        index = path / index_name
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"{index}: no 'weight_map'")
            names = sorted(set(weight_map.values()))
            # Shard names come from the file: keep them inside the folder.
            bad = [n for n in names if not isinstance(n, str) or Path(n).name != n]
            if bad:
                raise ValueError(f"{index}: shard names must be plain file names, got {bad[:3]}")
            missing = [n for n in names if not (path / n).is_file()]
            if missing:
                raise MissingFiles(missing, f"{index} lists {len(names)} shard(s) but "
                                   f"{len(missing)} are not there, e.g. {missing[0]}")
            return [path / n for n in names]
    return []


def folder_files(path: Path) -> list[Path]:
    """The files of a complete folder that loading uses (for export): config, preprocessing,
    the weights in use (with their shard index), tokenizer files."""
    path = Path(path)
    weights = weight_files(path)
    index = next((path / i for i, single in WEIGHT_LAYOUTS
                  if not (path / single).is_file() and (path / i).is_file()), None)
    if weights and weights[0] in [path / single for _, single in WEIGHT_LAYOUTS]:
        index = None  # a single file won over any index
    names = [CONFIG_FILE, PREPROCESSOR_FILE, *TOKENIZER_FILES]
    return ([path / n for n in names if (path / n).is_file()]
            + ([index] if index else []) + weights)


def has_tokenizer(path: Path) -> bool:
    path = Path(path)
    return (path / "merges.txt").is_file() or (path / "tokenizer.json").is_file()


def text_config(cfg: dict) -> dict:
    """The text tower's ids as transformers reads them (text_config_dict wins, as there)."""
    text = dict(_TEXT_ID_DEFAULTS)
    text.update(cfg.get("text_config") or {})
    text.update(cfg.get("text_config_dict") or {})
    return text


def is_openai_vocab(cfg: dict) -> bool:
    """True when the text config is OpenAI CLIP's BPE layout (vocab 49408, start/end tokens
    49406/49407, context 77): open_clip's bundled vocabulary then tokenizes it exactly."""
    text = text_config(cfg)
    return (text.get("vocab_size") == OPENAI_VOCAB_SIZE
            and text.get("max_position_embeddings") == OPENAI_CONTEXT
            and text.get("bos_token_id") in OPENAI_BOS_IDS
            and text.get("eos_token_id") in OPENAI_EOS_IDS)


def looks_like_transformers(path: Path) -> bool:
    """A folder in transformers' layout (its config or any of its weight names), as opposed
    to an open_clip bundle."""
    path = Path(path)
    return (path / CONFIG_FILE).is_file() or any(
        (path / name).is_file() for pair in WEIGHT_LAYOUTS for name in pair)


def check_folder(path: Path) -> dict:
    """The folder's config when it is a complete transformers CLIP folder; MissingFiles for
    absent files, ValueError for files that are there but not a CLIPModel's."""
    path = Path(path)
    weights = weight_files(path)
    if not (path / CONFIG_FILE).is_file():
        found = f"only {weights[0].name}" if weights else "neither"
        raise MissingFiles([CONFIG_FILE] + ([] if weights else [weights_needed()]),
                           f"{path} has {found}: {CONFIG_FILE} (the model's architecture) "
                           "and its weights are both needed")
    cfg = read_json(path / CONFIG_FILE)
    if not is_clip_config(cfg):
        raise ValueError(f"{path / CONFIG_FILE}: not a CLIP model (model_type="
                         f"{cfg.get('model_type')!r}, architectures={cfg.get('architectures')!r});"
                         " a full CLIPModel with text and vision towers is needed")
    if not weights:
        raise MissingFiles([weights_needed()], f"{path} has {CONFIG_FILE} but no weights file")
    if not has_tokenizer(path) and not is_openai_vocab(cfg):
        text = text_config(cfg)
        raise MissingFiles([TOKENIZER_NEEDED], (
            f"{path} has no tokenizer files, and its text config is not OpenAI CLIP's "
            f"vocabulary (vocab_size {text.get('vocab_size')}, start/end tokens "
            f"{text.get('bos_token_id')}/{text.get('eos_token_id')}, context "
            f"{text.get('max_position_embeddings')}), so the one bundled with open_clip "
            "cannot stand in"))
    return cfg


def weights_needed() -> str:
    return f"{SAFETENSORS_FILE} (or {BIN_FILE}, fp16 or sharded variants)"
