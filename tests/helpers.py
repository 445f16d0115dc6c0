"""Test helpers: run the real CLI in-process, draw fresh photo folders."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner, Result

from clipsearch.cli import main
from clipsearch.shapes import COLOURS, SHAPES, write_corpus

PAIRS = [(c, s) for c in COLOURS for s in SHAPES]


def cli(*args: str, library: Path | None = None, ok: bool = True) -> Result:
    argv = list(args) + (["--library", str(library)] if library is not None else [])
    result = CliRunner().invoke(main, argv, catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, (argv, result.output, result.stderr)
    return result


def cli_json(*args: str, library: Path | None = None):
    return json.loads(cli(*args, "--json", library=library).stdout)


def draw_photos(folder: Path, per_pair: int = 2, seed: int = 777, size: int = 96):
    """Fresh images (a seed the fixture model never trained on)."""
    return write_corpus(folder, per_pair=per_pair, seed=seed, size=size)


def indexed_shapes(root: Path, per_pair: int = 2, seed: int = 777) -> Path:
    """root/photos drawn and indexed into root/lib with the bundled shapes-tiny model."""
    from clipsearch import Library

    draw_photos(root / "photos", per_pair=per_pair, seed=seed)
    with Library(root / "lib", model="shapes-tiny") as lib:
        lib.index([root / "photos"])
    return root / "lib"


def pair_of(path: str) -> tuple[str, str]:
    colour, shape = Path(path).name.split("-")[:2]
    return colour, shape


def shape_rankings(lib) -> dict[str, list]:
    """Every colour-shape query's whole ranking ("red circle" -> results)."""
    return {f"{c} {s}": lib.query(f"a {c} {s}", limit=2 * len(PAIRS)) for c, s in PAIRS}


def ranking_changes(reference: dict[str, list], other: dict[str, list],
                    top: int = 10) -> tuple[int, float]:
    """How far `other`'s top `top` strays from `reference`'s, position by position: the
    positions holding another picture, and the largest gap between the reference scores of
    the picture shown and the one expected there (small gaps are swapped near-ties)."""
    swaps, worst = 0, 0.0
    for query, expected in reference.items():
        score = {r.path: r.score for r in expected}
        for mine, theirs in zip(other[query][:top], expected[:top], strict=True):
            worst = max(worst, abs(score[mine.path] - theirs.score))
            swaps += mine.path != theirs.path
    return swaps, worst


def assert_only_near_ties_swap(reference: dict[str, list], other: dict[str, list],
                               max_gap: float = 6e-3) -> tuple[int, float]:
    """`other` (a reduced-precision lever's rankings) keeps `reference`'s top ten position by
    position, except swaps between pictures tied within `max_gap` (at most one per query on
    average), and every query's own picture still leads. Returns (swaps, largest gap)."""
    swaps, worst = ranking_changes(reference, other)
    assert worst < max_gap and swaps <= len(PAIRS), (swaps, worst)
    for query, ranked in other.items():
        assert pair_of(ranked[0].path) == tuple(query.split())
    return swaps, worst


def mapped_kb(path: Path) -> int:
    """Resident KB of this process's mappings of `path` (/proc/self/smaps; Linux only)."""
    total, current = 0, None
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and not fields[0].endswith(":"):
            current = fields[5] if len(fields) > 5 else None
        elif fields[0] == "Rss:" and current == str(path):
            total += int(fields[1])
    return total
