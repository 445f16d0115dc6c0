"""FIFOs and reads that never progress cannot hang an index run (issue 10, item 2).

Real FIFOs, a real `clipsearch index` process and real SIGINTs: a file swapped for a FIFO
after the crawl becomes a `not-a-file` row; a read stuck in a system call (a hung network
disk) does not keep Ctrl-C from stopping the run within the promised ~2 s (3 s bound here,
for a busy machine), and a second Ctrl-C is as prompt.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clipsearch.shapes import draw
from tests.helpers import draw_photos
from tests.reliability_support import MODEL, REPO, catalog_rows, subprocess_env

STOP_BOUND_S = 3.0


def _start(tmp_path: Path, hook: str, photos: Path, library: Path) -> tuple[subprocess.Popen,
                                                                         Path]:
    marker = tmp_path / "hook-fired"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.stall_helper", hook, str(marker), "index", str(photos),
         "--model", MODEL, "--library", str(library), "-q", "--json"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=subprocess_env(tmp_path))
    return proc, marker


def _finish(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"clipsearch index still running after {timeout} s (killed):\n{err}")


def _wait_for(marker: Path, proc: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"hook never fired: {proc.communicate()[1]}")
        time.sleep(0.02)


def test_files_turned_into_fifos_after_the_crawl_become_not_a_file_rows(tmp_path):
    photos, library = tmp_path / "photos", tmp_path / "lib"
    good = draw_photos(photos / "kept", per_pair=1)
    draw_photos(photos / "to-fifo", per_pair=1, seed=5)
    proc, marker = _start(tmp_path, "fifo-after-crawl", photos, library)
    out, err = _finish(proc, timeout=120)
    assert proc.returncode == 0, err
    report = json.loads(out)
    assert report["indexed"] == len(good) and not report["interrupted"]
    fifos = sorted((photos / "to-fifo").iterdir())
    assert {s["path"]: s["reason"] for s in report["skipped"]} == {
        str(p): "not-a-file" for p in fifos}
    rows = catalog_rows(library)
    for fifo in fifos:
        row = rows[str(fifo).encode()]
        assert row["error_reason"] == "not-a-file" and row["content_hash"] is None


@pytest.mark.parametrize("signals", [1, 2])
def test_ctrl_c_stops_a_run_whose_read_never_returns(tmp_path, signals):
    photos, library = tmp_path / "photos", tmp_path / "lib"
    draw_photos(photos, per_pair=1)
    draw("red", "circle", size=64, rng=random.Random(1)).save(photos / "aaa-stuck.png")
    proc, marker = _start(tmp_path, "stuck-read", photos, library)
    _wait_for(marker, proc)
    time.sleep(0.3)  # the pool is blocked in the read; the main thread waits on it
    sent = time.monotonic()
    for _ in range(signals):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
    out, err = _finish(proc, timeout=15)
    stopped_in = time.monotonic() - sent
    print(f"{signals} SIGINT -> exit in {stopped_in:.2f}s")
    assert proc.returncode == 130, err
    assert stopped_in < STOP_BOUND_S
    assert "Traceback" not in err
