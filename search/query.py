"""Combined queries: a weighted sum of texts and images, as CLIP arithmetic is usually done.

One parser serves the CLI (shell words) and the API (a string): `"a dog" + "in the snow" -
"a leash"`, `2:"golden retriever"`, `+ ~/Photos/pool.jpg`, `- id:42`. Grammar (docs/search.md):

    query  := [sign] term (sign term)*
    sign   := "+" | "-"                     only as a word of its own
    term   := [weight ":"] (text | image)   weight: a number, e.g. 2 or 0.5
    image  := "image:"PATH | "id:"N | a single word that looks like a path (starts with
              "/", "~", "./" or "../", or ends in an image extension); "AC/DC" is text
    text   := the words up to the next sign, joined by spaces

The query vector is the weighted sum of the terms' unit vectors, normalised again.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from clipsearch_errors import UsageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic",
                  ".heif", ".avif")
# A weight prefix: a number, then ":" and not a digit (so "10:30" stays text).
_WEIGHT = re.compile(r"([0-9]+(?:\.[0-9]+)?|\.[0-9]+):(?![0-9])")
# A string's words: a quoted run (quotes dropped) or a run of non-blanks; an apostrophe
# inside a word ("dog's") is just a letter.
_WORD = re.compile(r"""\s*((?:[0-9.]+:)?(?:"[^"]*"|'[^']*')|\S+)(?=\s|$)""")


class QuerySyntaxError(UsageError):
    """A malformed query. `position`/`length`: the bad part of `query` (characters)."""

    def __init__(self, problem: str, query: str, position: int, length: int = 1):
        caret = " " * position + "^" * max(1, length)
        super().__init__(f"{problem}\n  {query}\n  {caret}")
        self.problem = problem
        self.query = query
        self.position = position
        self.length = length


@dataclass(frozen=True)
class Term:
    weight: float
    kind: str  # "text", "image" (a file path) or "id" (an indexed file's id)
    value: str | int

    def describe(self) -> str:
        what = {"text": repr(self.value), "image": f"image {self.value}",
                "id": f"id:{self.value}"}[self.kind]
        return what if self.weight == 1 else f"{self.weight:g}:{what}"


class Query:
    """A weighted sum of terms. Build with the operators or parse a string:

        Query.text("a dog") - Query.text("a leash") + Query.image("~/pool.jpg")
        2 * Query.text("golden retriever") + Query.file_id(42)
        Query.parse('"a dog" + "in the snow" - "a leash"')
    """

    def __init__(self, terms: Sequence[Term] = ()):
        self.terms: tuple[Term, ...] = tuple(terms)

    @classmethod
    def text(cls, text: str, weight: float = 1.0) -> Query:
        if not isinstance(text, str) or not text.strip():
            raise UsageError(f"a query text must not be blank: {text!r}")
        return cls([Term(float(weight), "text", " ".join(text.split()))])

    @classmethod
    def image(cls, path: str | os.PathLike, weight: float = 1.0) -> Query:
        return cls([Term(float(weight), "image", os.path.expanduser(os.fspath(path)))])

    @classmethod
    def file_id(cls, file_id: int, weight: float = 1.0) -> Query:
        return cls([Term(float(weight), "id", int(file_id))])

    @classmethod
    def parse(cls, query: str) -> Query:
        """Parse a query string (words split at blanks, quotes group words)."""
        words, spans = [], []
        for match in _WORD.finditer(query):
            word = match.group(1)
            spans.append((match.start(1), match.end(1)))
            words.append(_unquote(word))
        return _parse(words, query, spans, quoted=[_is_quoted(query[a:b]) for a, b in spans])

    @classmethod
    def from_words(cls, words: Sequence[str]) -> Query:
        """Parse shell words (the CLI's arguments): `+` and `-` are signs only as words of
        their own, so `clipsearch query a dog` is the one text "a dog"."""
        shown, spans, pos = [], [], 0
        for word in words:
            text = _show(word)
            spans.append((pos, pos + len(text)))
            shown.append(text)
            pos += len(text) + 1
        return _parse(list(words), " ".join(shown), spans, quoted=[False] * len(words))

    def __add__(self, other: Query) -> Query:
        if not isinstance(other, Query):
            return NotImplemented
        return Query(self.terms + other.terms)

    def __sub__(self, other: Query) -> Query:
        if not isinstance(other, Query):
            return NotImplemented
        return Query(self.terms + (-other).terms)

    def __neg__(self) -> Query:
        return Query([Term(-t.weight, t.kind, t.value) for t in self.terms])

    def __mul__(self, factor: float) -> Query:
        if isinstance(factor, bool) or not isinstance(factor, int | float):
            return NotImplemented
        return Query([Term(t.weight * factor, t.kind, t.value) for t in self.terms])

    __rmul__ = __mul__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Query) and self.terms == other.terms

    def __hash__(self) -> int:
        return hash(self.terms)

    def __repr__(self) -> str:
        return f"Query({' + '.join(t.describe() for t in self.terms)})"

    @property
    def text_only(self) -> bool:
        return all(t.kind == "text" for t in self.terms)

    def check(self) -> None:
        """Raise ValueError for a query that cannot be searched: no term, or no term with
        a positive weight (a sum of only negatives points away from everything asked)."""
        if not self.terms:
            raise UsageError("the query is empty: give a text or an image")
        if not any(t.weight > 0 for t in self.terms):
            raise UsageError(f"the query has only negative or zero terms ({self!r}): say "
                             "what to look for, then what to push away with -")


def _parse(words: list[str], shown: str, spans: list[tuple[int, int]],
           quoted: list[bool]) -> Query:
    def fail(problem: str, index: int) -> QuerySyntaxError:
        if index >= len(spans):  # past the end
            return QuerySyntaxError(problem, shown, len(shown) + 1)
        start, end = spans[index]
        return QuerySyntaxError(problem, shown, start, end - start)

    if not any(w.strip() for w in words):
        raise QuerySyntaxError("the query is empty: give a text or an image", shown, 0)
    terms: list[Term] = []
    sign, i = 1.0, 0
    expect_term = True  # at the start, or after a sign
    while i < len(words):
        word = words[i]
        is_sign = word in ("+", "-") and not quoted[i]
        if is_sign:
            if expect_term and i > 0:
                raise fail(f"'{word}' follows another sign: one sign between two terms", i)
            sign = 1.0 if word == "+" else -1.0
            expect_term = True
            i += 1
            if i == len(words):
                raise fail(f"'{word}' with no term after it", i - 1)
            continue
        start = i
        while i < len(words) and not (words[i] in ("+", "-") and not quoted[i]):
            i += 1
        terms.append(_term(words[start:i], sign, start, fail))
        sign, expect_term = 1.0, False
    query = Query(terms)
    if not any(t.weight > 0 for t in terms):
        raise QuerySyntaxError("the query has only negative terms: say what to look for "
                               "first, then what to push away with -", shown, 0)
    return query


def _term(words: list[str], sign: float, start: int, fail) -> Term:
    weight = 1.0
    first = words[0]
    match = _WEIGHT.match(first)
    if match:
        weight = float(match.group(1))
        words = [first[match.end():], *words[1:]]
        if not words[0]:
            words = words[1:]
        if not words:
            raise fail(f"the weight {match.group(1)}: has no term after it", start)
    if len(words) == 1:
        word = words[0]
        if word.startswith("id:"):
            if not re.fullmatch(r"[0-9]+", word[3:]):
                raise fail(f"id: takes a file id (a whole number, as --json shows it), "
                           f"not {word[3:]!r}", start)
            return Term(sign * weight, "id", int(word[3:]))
        if word.startswith("image:"):
            if not word[6:]:
                raise fail("image: takes a path", start)
            return Term(sign * weight, "image", os.path.expanduser(word[6:]))
        if _looks_like_path(word):
            return Term(sign * weight, "image", os.path.expanduser(word))
    text = " ".join(" ".join(words).split())
    if not text:
        raise fail("this term is blank", start)
    return Term(sign * weight, "text", text)


def _looks_like_path(word: str) -> bool:
    return word.startswith(("/", "~", "./", "../")) or word.lower().endswith(IMAGE_SUFFIXES)


def _unquote(word: str) -> str:
    match = re.fullmatch(r"""((?:[0-9.]+:)?)(?:"([^"]*)"|'([^']*)')""", word)
    if not match:
        return word
    inner = match.group(2) if match.group(2) is not None else match.group(3)
    return match.group(1) + inner


def _is_quoted(word: str) -> bool:
    return len(word) >= 2 and word[0] == word[-1] and word[0] in "\"'"


def _show(word: str) -> str:
    """A shell word as the user typed it (quoted when it holds blanks)."""
    return f'"{word}"' if (not word or any(c.isspace() for c in word)) else word
