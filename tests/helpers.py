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


def pair_of(path: str) -> tuple[str, str]:
    colour, shape = Path(path).name.split("-")[:2]
    return colour, shape
