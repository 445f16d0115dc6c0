"""A long-lived Library runs its text tower on the fastest runner that agrees with fp32, timed
once per tower and machine and recorded in the user's cache, so that every later process, of
any library holding the same tower, takes the same runner (the same scores) without timing
again (clip_core/text/runner_record.py)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

from clip_core.cpu import CpuFeatures, text_int8_kinds, text_int8_timed
from clip_core.text import file_check, runner_record
from clip_core.text.tower import INT8_MIN_COS
from clipsearch import Library
from clipsearch.layout import TEXT_TOWERS_DIR
from tests.helpers import indexed_shapes, shape_rankings

# CPU flags as data; the kernels are the host's. Its kinds ("unsigned", "blocks") never
# saturate, so both agree with fp32 on any x86 host and there is a choice to time (a VNNI
# CPU's "dynamic" saturates on an AVX2 host's kernels: nothing to choose there).
AVX2_ONLY = CpuFeatures("x86_64", frozenset({"sse4_2", "avx", "avx2", "fma"}))
SSE_ONLY = CpuFeatures("x86_64", frozenset({"sse4_1", "sse4_2"}))  # int8 may lose: fp32 timed
CPU = AVX2_ONLY


@pytest.fixture(autouse=True)
def _timed(monkeypatch):
    """The choice these tests are about (the suite's conftest pins the flags' order)."""
    monkeypatch.delenv("CLIPSEARCH_TEXT_RUNNER", raising=False)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> Path:
    return indexed_shapes(tmp_path_factory.mktemp("runner"), per_pair=1, seed=41)


@pytest.fixture
def library(indexed, tmp_path) -> Path:
    """The indexed library, copied: each test its own."""
    shutil.copytree(indexed, tmp_path / "lib")
    return tmp_path / "lib"


@pytest.fixture
def cache(tmp_path) -> Path:
    """A cache of the test's own (the records; no compiled model is needed to query)."""
    return tmp_path / "cache"


def _digest(library: Path) -> str:
    return file_check.digest(next((library / TEXT_TOWERS_DIR).glob("*.text.safetensors")))


def _warm(library: Path, cache: Path, cpu: CpuFeatures, monkeypatch, **kw):
    """A long-lived Library's tower as it runs after its first query, and its top ten."""
    monkeypatch.setattr(CpuFeatures, "here", staticmethod(lambda: cpu))
    with Library(library, cache_dir=cache, **kw) as lib:
        rankings = shape_rankings(lib)
        tower = lib._text_embedder(lib.default_model)._numpy_tower()[0]
    return tower, rankings


def _records(cache: Path) -> list[Path]:
    return sorted((cache / runner_record.FOLDER).glob("*.json"))


def test_the_first_process_times_every_agreeing_runner_and_records_the_fastest(
        library, cache, monkeypatch):
    tower, _ = _warm(library, cache, CPU, monkeypatch)
    agreed = [k for k in text_int8_kinds(CPU) if tower.int8_tried[k] >= INT8_MIN_COS]
    assert list(tower.int8_tried) == list(text_int8_kinds(CPU))  # every kind checked
    seconds = tower.runner_seconds
    assert len(agreed) == 2, "the tiny model agrees in both kinds here: a choice to make"
    # fp32 is timed too only where int8 is not surely faster
    assert set(seconds) == set(agreed) and all(s > 0 for s in seconds.values())
    assert tower.runner == min(seconds, key=seconds.get)
    sse, _ = _warm(library, cache, SSE_ONLY, monkeypatch)
    assert set(sse.runner_seconds) == {k for k, cos in sse.int8_tried.items()
                                       if cos >= INT8_MIN_COS} | {"fp32"}
    path = runner_record.record_path(cache / runner_record.FOLDER, _digest(library),
                                     runner_record.machine(CPU))
    assert len(_records(cache)) == 2  # one for each machine
    entry = json.loads(path.read_text())
    assert entry["runner"] == tower.runner and entry["seconds"].keys() == seconds.keys()
    assert entry["machine"] == runner_record.machine(CPU)
    assert entry["tower"] == _digest(library) and entry["model"].startswith("shapes-tiny")


def test_later_processes_of_any_library_with_the_tower_take_the_record_untimed(
        library, cache, monkeypatch, tmp_path):
    first, rankings = _warm(library, cache, CPU, monkeypatch)
    [path] = _records(cache)
    shutil.copytree(library, tmp_path / "other")  # another library, the same tower file
    for lib in (library, tmp_path / "other"):
        again, same = _warm(lib, cache, CPU, monkeypatch)
        assert again.runner == first.runner and again.runner_seconds == {}
        assert list(again.int8_tried) == ([first.runner] if first.runner != "fp32" else [])
        assert same == rankings
    # The record is what decides: one naming fp32 (which always agrees) is followed
    entry = json.loads(path.read_text())
    path.write_text(json.dumps({**entry, "runner": "fp32"}))
    forced, _ = _warm(library, cache, CPU, monkeypatch)
    assert forced.runner == "fp32" and forced.runner_seconds == {} and not forced.int8_tried
    # A record that does not name this very tower (a shortened key's collision) is not
    path.write_text(json.dumps({**entry, "runner": "fp32", "tower": "0" * 64}))
    timed, _ = _warm(library, cache, CPU, monkeypatch)
    assert timed.runner_seconds and json.loads(path.read_text())["tower"] == entry["tower"]


def test_each_machine_times_for_itself_what_its_flags_give(library, cache, monkeypatch):
    avx2, _ = _warm(library, cache, AVX2_ONLY, monkeypatch)
    sse, _ = _warm(library, cache, SSE_ONLY, monkeypatch)  # another machine: timed again
    assert avx2.runner_seconds and sse.runner_seconds and len(_records(cache)) == 2
    assert "fp32" in sse.runner_seconds and "fp32" not in avx2.runner_seconds


def test_with_nowhere_to_record_the_flags_decide_untimed_where_int8_surely_wins(
        library, tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")
    cache = tmp_path / "a-file" / "cache"  # a folder cannot be made there, even by root
    for cpu in (CPU, SSE_ONLY):
        tower, _ = _warm(library, cache, cpu, monkeypatch)
        assert tower.runner_seconds == {}
        # the first kind in the CPU's order that agrees (and, where timed, outran fp32)
        assert list(tower.int8_tried) == list(text_int8_kinds(cpu))[: len(tower.int8_tried)]
        agreed = any(cos >= INT8_MIN_COS for cos in tower.int8_tried.values())
        assert (tower.int8_timing is not None) == (agreed and text_int8_timed(cpu))


def test_a_read_only_library_records_in_the_cache_and_takes_the_record(
        library, cache, monkeypatch):
    made, _ = _warm(library, cache, CPU, monkeypatch, readonly=True)
    assert made.runner_seconds and len(_records(cache)) == 1
    reader, _ = _warm(library, cache, CPU, monkeypatch, readonly=True)
    assert reader.runner == made.runner and reader.runner_seconds == {}


def test_a_process_starting_while_another_chooses_waits_for_its_record(
        library, cache, monkeypatch):
    monkeypatch.setattr(CpuFeatures, "here", staticmethod(lambda: CPU))
    folder, here = cache / runner_record.FOLDER, runner_record.machine(CPU)
    got: dict = {}

    def second_process() -> None:
        with Library(library, cache_dir=cache) as lib:
            lib.embed_text(["a red circle"])
            got["tower"] = lib._text_embedder(lib.default_model)._numpy_tower()[0]

    with runner_record.choosing(folder):  # the first one, choosing
        thread = threading.Thread(target=second_process)
        thread.start()
        time.sleep(1.0)
        assert "tower" not in got  # waiting, not timing alongside
        runner_record.remember(folder, _digest(library), here, "fp32",
                               {"fp32": 0.001, "blocks": 0.002})
    thread.join(timeout=120)
    assert got["tower"].runner == "fp32" and got["tower"].runner_seconds == {}


def test_the_environment_can_name_a_runner_or_the_flags_order(library, cache, monkeypatch):
    """CLIPSEARCH_TEXT_RUNNER: a kind (still guarded), fp32, or the CPU's order: untimed and
    unrecorded; anything else is ignored."""
    for value, order in (("blocks", ["blocks"]), ("fp32", []),
                         ("flags", list(text_int8_kinds(CPU)))):
        monkeypatch.setenv("CLIPSEARCH_TEXT_RUNNER", value)
        tower, _ = _warm(library, cache, CPU, monkeypatch)
        # the first kind in that order that agrees, else fp32
        ran = next((k for k in order if tower.int8_tried.get(k, 0.0) >= INT8_MIN_COS), "fp32")
        assert list(tower.int8_tried) == order[: len(tower.int8_tried)]
        assert tower.runner == ran and tower.runner_seconds == {} and not _records(cache)
    monkeypatch.setenv("CLIPSEARCH_TEXT_RUNNER", "fastest-please")
    tower, _ = _warm(library, cache, CPU, monkeypatch)
    assert tower.runner_seconds and len(_records(cache)) == 1
