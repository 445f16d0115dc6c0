"""clip_core.text.tokenizer.ClipTokenizer must give open_clip's exact token ids, without torch."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clip_core.text.tokenizer import EOT_ID, SOT_ID, ClipTokenizer, default_bpe_path

REPO = Path(__file__).resolve().parent.parent

TRICKY = [
    "a cat",
    "",
    "   ",
    "A PHOTO of a Dog's dinner, isn't it?!",
    "hello...world!!! ??? (parens) [brackets] {braces} #hash @at $5.99 100% a/b\\c",
    "café naïve résumé Ångström Zoë façade",
    "cafe\u0301 (combining accent) vs café",
    "日本語のテキスト 中文 한국어 ไทย",
    "emoji 🐱🐶 👍🏽 👨‍👩‍👧 🇫🇷",
    "&amp; &lt;b&gt; &amp;amp;lt; &quot;quoted&quot; &#39;apos&#39; &eacute;",
    "  lots\t\tof \n\n whitespace \r\n here  ",
    "UPPER CASE ΣΊΣΥΦΟΣ İSTANBUL STRASSE ß",
    "cafÃ© mojibake â€œquotesâ€\x9d",
    "numbers 12345 3.14159 1st 2nd 3rd 0x1F",
    "<start_of_text> literal specials <end_of_text> and <END_OF_TEXT>",
    "control\x00chars\x07here\x1b[31m red \x1b[0m",
    "ﬁne ﬂower ligatures and ｆｕｌｌｗｉｄｔｈ",
    "I'm you're we've they'll he'd it's don't",
    " ".join(f"word{i}" for i in range(200)),
    "supercalifragilisticexpialidocious pneumonoultramicroscopicsilicovolcanoconiosis",
]


@pytest.fixture(scope="module")
def ref77():
    import open_clip

    return open_clip.get_tokenizer("ViT-B-32")


@pytest.fixture(scope="module")
def ref16():
    import open_clip

    return open_clip.get_tokenizer("ViT-B-32", context_length=16)


@pytest.fixture(scope="module")
def tok77() -> ClipTokenizer:
    return ClipTokenizer()


@pytest.fixture(scope="module")
def tok16() -> ClipTokenizer:
    return ClipTokenizer(context_length=16)


def _ref(tokenizer, texts) -> np.ndarray:
    return tokenizer(texts).numpy()


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_strings_match_open_clip(text, ref77, ref16, tok77, tok16):
    np.testing.assert_array_equal(tok77(text), _ref(ref77, text))
    np.testing.assert_array_equal(tok16(text), _ref(ref16, text))


def test_batch_shape_dtype_and_specials(tok77, ref77):
    out = tok77(TRICKY)
    assert out.dtype == np.int64 and out.shape == (len(TRICKY), 77)
    np.testing.assert_array_equal(out, _ref(ref77, TRICKY))
    assert (out[:, 0] == SOT_ID).all()
    # Over-long text: truncated with the end token forced into the last slot.
    long = tok77(" ".join(["word"] * 200))[0]
    assert long[-1] == EOT_ID and (long != 0).all()
    assert list(tok77("")[0, :3]) == [SOT_ID, EOT_ID, 0]


_PIECES = st.sampled_from(
    ["&amp;", "&lt;", "<end_of_text>", "'s", "'LL", "🐱", "é", "e\u0301", "Ã©", "ß", "İ",
     "日本", "\x1b[1m", "\u200b", "\u00a0", "ﬁ", "１２", "...", "--", "3.5", " ", "\t"]
)  # fmt: skip
_TEXTS = st.one_of(
    st.text(max_size=60),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=40),
    st.lists(st.one_of(_PIECES, st.text(min_size=1, max_size=8)), max_size=12).map("".join),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(_TEXTS, min_size=1, max_size=3))
def test_hypothesis_strings_match_open_clip(texts, ref77, ref16, tok77, tok16):
    np.testing.assert_array_equal(tok77(texts), _ref(ref77, texts))
    np.testing.assert_array_equal(tok16(texts), _ref(ref16, texts))


_PLAIN_ASCII = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "&")


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=_PLAIN_ASCII, max_size=80))
def test_ftfy_and_html_are_noops_on_plain_ascii(text):
    # ClipTokenizer skips ftfy (and its import) for such text; this proves it safe.
    import html

    import ftfy

    assert html.unescape(html.unescape(ftfy.fix_text(text))) == text


def test_ftfy_noop_on_all_plain_ascii_pairs():
    import ftfy

    pairs = [a + b for a in _PLAIN_ASCII for b in _PLAIN_ASCII]
    assert [p for p in pairs if ftfy.fix_text(p) != p] == []


def test_hf_merges_txt_and_explicit_gz(tmp_path, tok77):
    with gzip.open(default_bpe_path(), "rt", encoding="utf-8") as f:
        lines = [next(f) for _ in range(49152 - 256 - 2 + 1)]
    merges_txt = tmp_path / "merges.txt"  # Hugging Face layout: "#version: 0.2" then merges
    merges_txt.write_text("#version: 0.2\n" + "".join(lines[1:]), encoding="utf-8")
    expected = tok77(TRICKY)
    np.testing.assert_array_equal(ClipTokenizer(bpe_path=merges_txt)(TRICKY), expected)
    crlf = tmp_path / "crlf-merges.txt"  # exactly the merges, CRLF, no trailing newline
    crlf.write_bytes(("#version: 0.2\r\n" + "".join(lines[1:]).replace("\n", "\r\n"))
                     .rstrip().encode("utf-8"))  # fmt: skip
    np.testing.assert_array_equal(ClipTokenizer(bpe_path=crlf)(TRICKY), expected)
    gz = tmp_path / "vocab.txt.gz"
    gz.write_bytes(gzip.compress("".join(lines).encode("utf-8")))
    np.testing.assert_array_equal(ClipTokenizer(bpe_path=gz)(TRICKY), expected)


def test_short_merges_file_rejected(tmp_path):
    bad = tmp_path / "merges.txt"
    bad.write_text("#version: 0.2\na b\n", encoding="utf-8")
    with pytest.raises(ValueError, match="merges"):
        ClipTokenizer(bpe_path=bad)


def test_tokenizer_imports_neither_torch_nor_open_clip():
    code = (
        "import sys\n"
        "from clip_core.text.tokenizer import ClipTokenizer\n"
        "ids = ClipTokenizer()(['a cat', 'x'])\n"
        "assert ids.shape == (2, 77), ids.shape\n"
        "bad = [m for m in ('torch', 'open_clip', 'torchvision') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)
