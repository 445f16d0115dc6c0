"""`models list` keeps its columns, `models export` never overwrites by surprise and `-o -`
streams, and every option of every command has help (issue 19 item 16)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import tarfile
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from clip_core.weights import store as model_store
from clipsearch.cli import main

from .reliability_support import CLIPSEARCH, subprocess_env

LONG = "tiny-with-a-rather-long-name-as-bundles-from-elsewhere-have-" + "x" * 40


def _model_folder(folder: Path) -> Path:
    """A folder `list` and `export` accept (config + weights file); never loaded here."""
    folder.mkdir(parents=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"embed_dim": 8}}))
    (folder / "open_clip_model.safetensors").write_bytes(os.urandom(4096))
    return folder


def _cli(*args: str) -> click.testing.Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_list_keeps_its_columns_with_a_long_path(tmp_path, monkeypatch):
    store = tmp_path / "models"
    monkeypatch.setenv("CLIPSEARCH_MODELS", str(store))
    folder = _model_folder(store / "local-dir" / LONG)
    result = _cli("models", "list")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    header = lines[0]
    assert len(header) <= 80, header
    starts = [header.index(h) for h in ("PRETRAINED", "DIM", "SIZE", "LOCAL")]
    assert f"local-dir:{folder}" in lines  # in full, on a line of its own
    for line in lines[1:]:
        if line == f"local-dir:{folder}":
            continue
        for start in starts:  # every cell begins under its heading
            assert line[start - 2:start] == "  " and line[start] != " ", (line, start)
    rows = json.loads(_cli("models", "list", "--json").stdout)
    assert {"model": f"local-dir:{folder}", "location": str(folder)}.items() <= \
        next(r for r in rows if r["model"].startswith("local-dir:")).items()


def test_export_does_not_overwrite_without_force(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPSEARCH_MODELS", str(tmp_path / "models"))
    model = f"local-dir:{_model_folder(tmp_path / 'm')}"
    out = tmp_path / "bundle.tar"
    out.write_bytes(b"my thesis")
    result = _cli("models", "export", model, "-o", str(out))
    assert result.exit_code == 1 and "already exists" in result.stderr and "--force" in \
        result.stderr
    assert out.read_bytes() == b"my thesis"
    assert _cli("models", "export", model, "-o", str(out), "--force").exit_code == 0
    assert tarfile.is_tarfile(out)


def test_export_to_dash_streams_to_a_pipe_and_refuses_a_terminal(tmp_path):
    model = f"local-dir:{_model_folder(tmp_path / 'm')}"
    env = subprocess_env(tmp_path)
    proc = subprocess.run([CLIPSEARCH, "models", "export", model, "-o", "-"], cwd=tmp_path,
                          env=env, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "-").exists()
    (tmp_path / "piped.tar").write_bytes(proc.stdout)
    installed = model_store.import_bundle(tmp_path / "piped.tar", tmp_path / "store")
    assert (installed.path / "open_clip_model.safetensors").read_bytes() == \
        (tmp_path / "m" / "open_clip_model.safetensors").read_bytes()

    primary, replica = pty.openpty()  # stdout a terminal: a tar there helps nobody
    try:
        proc = subprocess.run([CLIPSEARCH, "models", "export", model, "-o", "-"],
                              cwd=tmp_path, env=env, stdout=replica, stderr=subprocess.PIPE,
                              timeout=120)
    finally:
        os.close(primary)
        os.close(replica)
    assert proc.returncode == 2 and b"terminal" in proc.stderr, proc.stderr
    assert not (tmp_path / "-").exists()


def _commands(command: click.Command, path: tuple[str, ...]):
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _commands(sub, (*path, name))


@pytest.mark.parametrize(("path", "command"), [
    pytest.param(p, c, id=" ".join(p)) for p, c in _commands(main, ("clipsearch",))])
def test_every_option_and_argument_has_help(path, command):
    """Options need help text; arguments (click has no help for them) must be named in the
    command's help, as `Index PATHS`."""
    ctx = click.Context(command)
    for param in command.get_params(ctx):
        if isinstance(param, click.Option):
            assert param.help, f"{' '.join(path)} {'/'.join(param.opts)} has no help"
        else:
            name = param.human_readable_name.strip("[].")  # "[TEXT]..." is named as TEXT
            assert name in (command.help or ""), \
                f"{' '.join(path)}: argument {name} not in its help"
