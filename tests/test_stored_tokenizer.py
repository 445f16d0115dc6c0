"""Models with a Hugging Face tokenizer load it from clipsearch's store, never the hub."""

from __future__ import annotations

import pytest

from clip_core.models.files import MissingModelError
from clip_core.models.ref import parse_model
from clip_core.torch_backend.loading import load_model

transformers = pytest.importorskip("transformers")  # a dev dependency: always there in CI


def _save_small_fast_tokenizer(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "red": 4, "circle": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>",
                                                eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(folder)


def test_hf_tokenizer_comes_from_the_store(tmp_path):
    ref = parse_model("ViT-B-16-SigLIP", "none")
    with pytest.raises(MissingModelError) as err:
        load_model(ref, towers=frozenset({"text"}), models_dir=tmp_path)
    assert "tokenizer" in str(err.value)
    _save_small_fast_tokenizer(tmp_path / "ViT-B-16-SigLIP" / "webli" / "tokenizer")
    loaded = load_model(ref, towers=frozenset({"text"}), models_dir=tmp_path)
    tokens = loaded.tokenizer(["a red circle"])
    assert tokens.shape == (1, 64) and tokens[0, :3].tolist() == [3, 4, 5]
