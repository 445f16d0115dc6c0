"""A server's index runs yield the CPU to its searches: the run's thread, and what it starts,
run at a lower priority (Linux keeps a niceness per thread); the serving threads keep theirs."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from clipsearch import Library
from clipsearch.server.jobs import BACKGROUND_NICE, IndexJobs
from tests.helpers import draw_photos


def nice(thread_id: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, thread_id)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness")
def test_index_runs_yield_the_cpu_to_searches(tmp_path):
    photos = tmp_path / "photos"
    draw_photos(photos, per_pair=1, seed=5)
    with Library(tmp_path / "lib", model="shapes-tiny") as lib:
        lib.index([photos])
    mine = nice(threading.get_native_id())
    seen: dict[str, int] = {}

    def in_the_run(model_id: str) -> None:  # runs in the run's own thread
        seen["run"] = nice(threading.get_native_id())

    jobs = IndexJobs(tmp_path / "lib", {"model": "shapes-tiny"}, on_finish=in_the_run)
    draw_photos(photos / "new", per_pair=1, seed=6)
    jobs.start()
    jobs.wait(timeout=300)
    assert jobs.state["state"] == "done", jobs.state
    assert jobs.state["report"]["indexed"] > 0
    assert seen["run"] == min(19, mine + BACKGROUND_NICE)
    assert nice(threading.get_native_id()) == mine  # this (the serving) thread: unchanged
