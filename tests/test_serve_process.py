"""`clipsearch serve` as a real uvicorn process on a free loopback port: it answers, and
SIGTERM or Ctrl-C stops it cleanly, committing the index batch in flight."""

from __future__ import annotations

import json
import signal
import time
import urllib.request

import pytest

from clipsearch import Library
from tests.helpers import draw_photos
from tests.serve_support import indexed_library, start_server

N = 384  # photos the server's index run adds: more than a few batches


def get(url: str, method: str = "GET") -> tuple[int, dict]:
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, json.loads(r.read())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_real_server_answers_and_stops_cleanly_mid_index(tmp_path, sig):
    lib_dir = indexed_library(tmp_path)
    draw_photos(lib_dir.parent / "photos" / "new", per_pair=N // 24, seed=3, size=256)
    proc, base = start_server(lib_dir)
    try:
        status, body = get(f"{base}/api/search?q=a+red+circle&limit=2")
        assert status == 200 and "red-circle" in body["results"][0]["path"]
        with urllib.request.urlopen(f"{base}{body['results'][0]['thumbnail']}") as r:
            assert r.headers["content-type"] == "image/jpeg" and r.read(2) == b"\xff\xd8"
        assert get(f"{base}/api/index", "POST")[0] == 202
        deadline = time.monotonic() + 60
        while (seen := get(f"{base}/api/status")[1]["indexed"]) <= 24:  # a batch committed
            assert time.monotonic() < deadline, "no batch was committed"
            time.sleep(0.05)
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with Library(lib_dir) as lib:
        assert lib.catalog.problems() == []
        kept = lib.status().indexed
        assert seen <= kept <= 24 + N  # what was committed before the stop is kept
        report = lib.index()  # and the next run resumes
        assert report.indexed == 24 + N - kept and lib.status().indexed == 24 + N


def test_a_killed_server_leaves_no_index_run_behind(tmp_path):
    """SIGKILL gives the server no chance to stop its run: the worker sees its pipe close,
    commits the batch in flight and exits, so the writer lock is free again soon."""
    lib_dir = indexed_library(tmp_path)
    draw_photos(lib_dir.parent / "photos" / "new", per_pair=N // 24, seed=4, size=256)
    proc, base = start_server(lib_dir)
    try:
        assert get(f"{base}/api/index", "POST")[0] == 202
        deadline = time.monotonic() + 60
        while get(f"{base}/api/status")[1]["indexed"] <= 24:  # a batch committed
            assert time.monotonic() < deadline, "no batch was committed"
            time.sleep(0.05)
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    started = time.monotonic()
    with Library(lib_dir) as lib:
        report = lib.index(wait=60)  # waits for the orphaned run to let go of the lock
        assert time.monotonic() - started < 30  # a batch's time, not the whole run's
        assert lib.catalog.problems() == [] and lib.status().indexed == 24 + N
        assert 0 < report.indexed < N  # the orphan committed some, then stopped early
