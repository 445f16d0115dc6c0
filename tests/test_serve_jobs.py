"""A server's index runs yield the CPU to its searches: each runs in a child process at a
lower priority, with a GIL of its own; the server's threads keep theirs. Stopping the jobs
stops the run, which commits what it encoded."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest

from clipsearch import Library
from clipsearch.server.index_worker import BACKGROUND_NICE
from clipsearch.server.jobs import IndexJobs
from tests.helpers import draw_photos


def nice(thread_id: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, thread_id)


def indexed(tmp_path):
    photos = tmp_path / "photos"
    draw_photos(photos, per_pair=1, seed=5)
    with Library(tmp_path / "lib", model="shapes-tiny") as lib:
        lib.index([photos])
    return photos


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness")
def test_index_runs_yield_the_cpu_to_searches(tmp_path):
    photos = indexed(tmp_path)
    mine = nice(threading.get_native_id())
    finished: list[str] = []
    jobs = IndexJobs(tmp_path / "lib", {"model": "shapes-tiny"}, on_finish=finished.append)
    draw_photos(photos / "new", per_pair=1, seed=6)
    jobs.start()
    jobs.wait(timeout=300)
    assert jobs.state["state"] == "done", jobs.state
    assert jobs.state["report"]["indexed"] == 24
    assert jobs.state["done"] == jobs.state["total"] == 24  # progress came through
    assert jobs.state["nice"] == min(19, mine + BACKGROUND_NICE)  # the worker's priority
    assert nice(threading.get_native_id()) == mine  # this (the serving) thread: unchanged
    # In the server's session (with autogroups a new session is a CPU group of its own,
    # where nice +10 would not yield to the server), in a process group of its own (a
    # Ctrl-C in the terminal reaches the server only, which stops the run itself).
    if sys.version_info >= (3, 11):
        assert jobs.state["session"] == os.getsid(0)
        assert jobs.state["group"] not in (None, os.getpgid(0))
    assert finished and finished[0].startswith("shapes-tiny")
    with Library(tmp_path / "lib") as lib:
        assert lib.status().indexed == 48


def test_a_stopped_run_commits_what_it_encoded_and_the_next_resumes(tmp_path):
    photos = indexed(tmp_path)
    draw_photos(photos / "new", per_pair=16, seed=7, size=256)  # 384: a dozen batches
    jobs = IndexJobs(tmp_path / "lib", {"model": "shapes-tiny"})
    jobs.start()
    deadline = time.monotonic() + 120
    while jobs.state.get("done", 0) < 40:  # past the first committed batch
        assert jobs.running and time.monotonic() < deadline, jobs.state
        time.sleep(0.02)
    jobs.stop(timeout=120)
    assert not jobs.running and jobs.state["state"] == "stopped", jobs.state
    with Library(tmp_path / "lib") as lib:
        assert lib.catalog.problems() == []
        kept = lib.status().indexed
        assert 24 + 32 <= kept < 24 + 384
        assert lib.index().indexed == 24 + 384 - kept


def test_a_run_that_fails_says_why(tmp_path):
    indexed(tmp_path)
    jobs = IndexJobs(tmp_path / "lib", {"model": "no-such-model-here"})
    jobs.start()
    jobs.wait(timeout=120)
    assert jobs.state["state"] == "failed"
    assert jobs.state["error_type"] != "WorkerDied" and "no-such-model-here" in jobs.state["error"]
