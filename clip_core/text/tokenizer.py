"""Torch-free re-implementation of open_clip's ``SimpleTokenizer`` (OpenAI CLIP BPE).

Gives token ids identical to ``open_clip.get_tokenizer('ViT-B-32')`` (clean='lower', plain
truncation) so a query can be tokenized without paying ~3 s for ``import torch, open_clip``.
Must never import torch or open_clip, directly or indirectly (tests check ``sys.modules``).
"""

from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import regex

SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
SOT_ID = 49406
EOT_ID = 49407
# open_clip keeps merges[1 : 49152 - 256 - 2 + 1], i.e. 48894 merges -> vocab of 49408.
_N_MERGES = 49152 - 256 - 2
_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
_INF = float("inf")


def default_bpe_path() -> Path:
    """open_clip's bundled vocab, found via find_spec, which does not execute open_clip
    (and so does not import torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"open_clip is not installed; pass bpe_path= to a {_BPE_FILE} or merges.txt"
        )
    return Path(next(iter(spec.submodule_search_locations))) / _BPE_FILE


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """Byte -> printable unicode char table of GPT-2/CLIP byte-level BPE (same order)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def _read_merges(path: Path) -> list[str]:
    """First _N_MERGES merge lines after the header line; .gz or plain (HF merges.txt).

    Reads only as far as needed: the bundled .gz holds 262k lines but only the first 48895
    are used, and stopping early saves ~30 ms of decompression per process.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    data = b""
    with opener(path, "rb") as f:
        while data.count(b"\n") <= _N_MERGES:
            chunk = f.read(1 << 19)
            if not chunk:
                break
            data += chunk
    # A chunk boundary may split a UTF-8 char, but only after the lines kept.
    lines = data.decode("utf-8", errors="replace").split("\n")[1 : _N_MERGES + 1]
    if len(lines) != _N_MERGES or (lines and lines[-1] == ""):
        raise ValueError(f"{path}: expected {_N_MERGES} merges after the header line")
    if b"\r" in data:
        lines = [line.rstrip("\r") for line in lines]
    return lines


def _clean_lower(text: str) -> str:
    # open_clip's _clean_lower: ftfy + double html unescape + strip, whitespace collapse, lower.
    # Both fixers are no-ops on printable ASCII without "&" (tested against ftfy), so
    # typical queries skip importing ftfy (40-80 ms here).
    if not (text.isascii() and text.isprintable() and "&" not in text):
        import html

        import ftfy

        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.strip().split()).strip().lower()


class ClipTokenizer:
    """Callable like open_clip's tokenizer, returning int64 numpy [N, context_length]."""

    def __init__(self, context_length: int = 77, bpe_path: Path | None = None) -> None:
        if context_length < 2:
            raise ValueError("context_length must be >= 2 (room for start and end tokens)")
        self.context_length = context_length
        self.byte_encoder = bytes_to_unicode()
        merges = _read_merges(Path(bpe_path) if bpe_path is not None else default_bpe_path())
        # Vocab order as in open_clip: 256 bytes, 256 bytes+</w>, merges, specials.
        base = list(self.byte_encoder.values())
        vocab = base + [v + "</w>" for v in base] + [m.replace(" ", "") for m in merges]
        vocab += [SOT_TOKEN, EOT_TOKEN]
        self.encoder: dict[str, int] = dict(zip(vocab, range(len(vocab)), strict=True))
        # Keyed by the raw "a b" line (symbols never contain spaces): 4x faster to build
        # than open_clip's tuple keys, same ranks (later duplicates win in both).
        self.bpe_ranks: dict[str, int] = dict(zip(merges, range(len(merges)), strict=True))
        self.sot_token_id = self.encoder[SOT_TOKEN]
        self.eot_token_id = self.encoder[EOT_TOKEN]
        assert (self.sot_token_id, self.eot_token_id) == (SOT_ID, EOT_ID)
        self.cache: dict[str, str] = {SOT_TOKEN: SOT_TOKEN, EOT_TOKEN: EOT_TOKEN}
        # Same pattern and flags as open_clip, special tokens included: literal
        # "<end_of_text>" in user text becomes the special id there too.
        self.pat = regex.compile(
            f"{SOT_TOKEN}|{EOT_TOKEN}"
            r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    def bpe(self, token: str) -> str:
        """Space-joined BPE symbols of one pre-token (byte-encoded)."""
        cached = self.cache.get(token)
        if cached is not None:
            return cached
        word = (*token[:-1], token[-1] + "</w>")
        if len(word) == 1:
            return word[0]
        ranks = self.bpe_ranks
        while len(word) > 1:
            pairs = set(zip(word, word[1:], strict=False))
            first, second = min(pairs, key=lambda p: ranks.get(f"{p[0]} {p[1]}", _INF))
            if f"{first} {second}" not in ranks:
                break
            merged: list[str] = []
            i = 0
            n = len(word)
            while i < n:
                if i < n - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        out = " ".join(word)
        self.cache[token] = out
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without start/end tokens."""
        ids: list[int] = []
        enc = self.byte_encoder
        for piece in self.pat.findall(_clean_lower(text)):
            piece = "".join(enc[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[s] for s in self.bpe(piece).split(" "))
        return ids

    def __call__(self, texts: str | list[str]) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        ctx = self.context_length
        out = np.zeros((len(texts), ctx), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > ctx:
                # open_clip truncates and forces the end token into the last slot.
                ids = ids[:ctx]
                ids[-1] = self.eot_token_id
            out[row, : len(ids)] = ids
        return out
