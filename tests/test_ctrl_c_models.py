"""Ctrl-C (a real SIGINT) during long `models` commands: exit 130, one line saying what was
kept, not click's "Aborted!" and exit 1, and nothing half-written left (issue 19 item 11).
Each interrupt is sent once the command is seen working (its temp folder or file exists)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from clip_core.models.ref import parse_model
from clip_core.weights import store as model_store

from .reliability_support import CLIPSEARCH, make_random_bundle, subprocess_env

EXIT_INTERRUPTED = 130


def _interrupt_when(args: list[str], env: dict, ready: Callable[[], bool]
                    ) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([CLIPSEARCH, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ready():
        assert proc.poll() is None, ("finished before it could be interrupted",
                                     proc.communicate())
        assert time.monotonic() < deadline, "never got to work"
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _assert_one_clean_line(proc: subprocess.CompletedProcess, note: str) -> None:
    assert proc.returncode == EXIT_INTERRUPTED, (proc.returncode, proc.stderr)
    assert f"Interrupted; {note}" in proc.stderr, proc.stderr
    assert "Aborted!" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_ctrl_c_during_compile_keeps_the_compiled_model(tmp_path):
    from clip_core.compiled.cache import compile_supported

    if not compile_supported():
        pytest.skip("compiling needs onnxruntime and onnx")
    model = make_random_bundle(tmp_path / "rand")
    env = {**subprocess_env(tmp_path), "CLIPSEARCH_CACHE": str(tmp_path / "cache")}
    first = subprocess.run([CLIPSEARCH, "models", "compile", model, "--json"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    folder = Path(json.loads(first.stdout)["folder"])
    before = {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    def work_folders() -> list[Path]:  # compiler.py's mkdtemp(prefix=".NAME.") beside it
        return [p for p in folder.parent.iterdir() if p.is_dir() and p.name.startswith(".")]

    proc = _interrupt_when(["models", "compile", model, "--force"], env,
                           lambda: bool(work_folders()))
    _assert_one_clean_line(proc, "no compiled model was written; one already in place is kept")
    assert work_folders() == []
    assert {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    again = subprocess.run([CLIPSEARCH, "models", "compile", model, "--json"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and json.loads(again.stdout)["reused"] is True


def test_ctrl_c_during_export_and_import_leaves_nothing_half_written(tmp_path):
    """A 300 MB weights file, so that writing it takes long enough to be interrupted."""
    source = tmp_path / "big-model"
    source.mkdir()
    (source / "open_clip_config.json").write_text("{}")
    with open(source / "open_clip_model.safetensors", "wb") as handle:
        for _ in range(300):
            handle.write(bytes(1 << 20))
    env = subprocess_env(tmp_path)
    out = tmp_path / "out" / "big.tar"
    proc = _interrupt_when(["models", "export", f"local-dir:{source}", "-o", str(out)], env,
                           lambda: any(out.parent.glob(".big.tar.tmp")))
    _assert_one_clean_line(proc, "no bundle was written.")
    assert list(out.parent.iterdir()) == []

    model_store.export_bundle(parse_model(f"local-dir:{source}"), out, tmp_path / "models")
    store = tmp_path / "store"
    proc = _interrupt_when(["models", "--models-dir", str(store), "import", str(out)], env,
                           lambda: any(store.glob(".import-*/*")))
    _assert_one_clean_line(proc, "nothing was installed.")
    assert list(store.iterdir()) == []
