"""One error family (issue 11 item 5): every error clipsearch raises on purpose is a
ClipsearchError, in a category an app can catch and the CLI maps to an exit code."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

import clipsearch
from clipsearch import (
    BadInputError,
    ClipsearchError,
    Library,
    LibraryBusyError,
    ModelError,
    StorageError,
    UsageError,
)
from clipsearch.cli_errors import friendly_errors
from tests.helpers import cli, cli_json, draw_photos

# What each category means to the CLI (README "Exit codes"): 1 bad input or storage,
# 2 model missing or usage, 3 busy.
CATEGORY_EXIT = {UsageError: 2, ModelError: 2, LibraryBusyError: 3, StorageError: 1,
                 BadInputError: 1, ClipsearchError: 1}


def test_every_exported_error_is_in_the_family():
    exported = [getattr(clipsearch, name) for name in clipsearch.__all__]
    errors = [e for e in exported if isinstance(e, type) and issubclass(e, BaseException)]
    assert len(errors) >= 14
    assert all(issubclass(e, ClipsearchError) for e in errors), errors
    # Each keeps the builtin base code written before the family still catches it by.
    assert issubclass(clipsearch.QuerySyntaxError, (UsageError, ValueError))
    assert issubclass(clipsearch.MissingModelError, (ModelError, RuntimeError))
    assert issubclass(clipsearch.ModelNotIndexedError, (BadInputError, LookupError))
    assert issubclass(clipsearch.CatalogDamagedError, StorageError)
    assert issubclass(clipsearch.MissingExtraError, ImportError)


@pytest.mark.parametrize("category", list(CATEGORY_EXIT), ids=lambda c: c.__name__)
def test_the_cli_maps_exit_codes_by_category(category):
    """A new error needs no line in cli_errors: its category decides."""

    class NewError(category):
        pass

    @click.command()
    @friendly_errors
    def command():
        raise NewError("what went wrong, and what to do")

    result = CliRunner().invoke(command, [], catch_exceptions=False)
    assert result.exit_code == CATEGORY_EXIT[category], result.output
    assert result.stderr == "Error: what went wrong, and what to do\n"


def test_int8_on_a_gpu_is_a_one_line_usage_error_that_changes_nothing(tmp_path):
    """It was a traceback whose advice was to install onnxruntime, already installed."""
    draw_photos(tmp_path / "p", per_pair=1, seed=5)
    library = tmp_path / "lib"
    for device in ("cuda", "cuda:1", "xpu", "mps"):
        result = cli("index", str(tmp_path / "p"), "--model", "shapes-tiny", "--precision",
                     "int8", "--device", device, "-q", library=library, ok=False)
        assert result.exit_code == 2, (result.exit_code, result.output)
        assert result.stderr.startswith("Error: --precision int8 runs on the CPU only")
        assert f"--device {device}" in result.stderr and "--device cpu" in result.stderr
        assert len(result.stderr.splitlines()) == 1 and "pip install" not in result.stderr
        assert not library.exists()  # no library was made for a run that could not work
    cli("index", str(tmp_path / "p"), "--model", "shapes-tiny", "-q", library=library)
    before = cli_json("status", library=library)
    (tmp_path / "q").mkdir()
    result = cli("index", str(tmp_path / "q"), "--precision", "int8", "--device", "cuda", "-q",
                 library=library, ok=False)
    assert result.exit_code == 2 and "CPU only" in result.stderr
    assert cli_json("status", library=library) == before  # no root added
    with Library(library, precision="int8", device="cuda") as lib, \
            pytest.raises(UsageError, match="int8 runs on the CPU only"):
        lib.index([tmp_path / "q"])
