"""Crashes, Ctrl-C, model changes and unsafe weights: an index run loses nothing it committed,
resumes where it stopped, and ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clipsearch import Library
from clipsearch.shapes import draw, write_corpus
from tests.helpers import cli, cli_json
from tests.reliability_support import (
    CLIPSEARCH,
    MODEL,
    assert_library_exact,
    catalog_rows,
    default_model_id,
    make_random_bundle,
    subprocess_env,
    top_k,
    vectors_by_path,
)

HELPER = Path(__file__).with_name("kill_helper.py")


class ForkServer:
    """tests/kill_helper.py: forks `clipsearch index` children and kills them on request."""

    def __init__(self, env: dict[str, str]):
        self.proc = subprocess.Popen([sys.executable, str(HELPER)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout.readline().strip() == "ready"

    def run(self, argv: list[str], log: Path, **kill) -> dict:
        self.proc.stdin.write(json.dumps({"argv": argv, "log": str(log), **kill}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _mutate(photos: Path, rng: random.Random, round_no: int) -> None:
    """New work for the next runs: deletes, moves, rewrites and new files."""
    files = sorted(p for p in photos.rglob("*.png"))
    rng.shuffle(files)
    for path in files[:6]:
        path.unlink()
    moved = photos / f"moved-{round_no}"
    moved.mkdir()
    for path in files[6:16]:
        shutil.move(path, moved / path.name)
    for path in files[16:22]:  # same name, new picture
        draw("red", "star", size=64, rng=random.Random(rng.random())).save(path)
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    write_corpus(photos / f"new-{round_no}", per_pair=1, seed=900 + round_no, size=64)


def _assert_sound_after_crash(library: Path) -> None:
    """At any instant the catalog is a committed state: sound file, no row without vector."""
    if not (library / "catalog.db").exists():
        return  # killed before the library was created
    conn = sqlite3.connect(f"file:{library / 'catalog.db'}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'files'").fetchone():
            assert conn.execute(
                "SELECT COUNT(*) FROM files f WHERE status = 'ok' AND NOT EXISTS (SELECT 1"
                " FROM embeddings e WHERE e.content_hash = f.content_hash)").fetchone()[0] == 0
    finally:
        conn.close()


def test_sigkill_at_random_moments_then_exact_library(tmp_path):
    """>= 20 SIGKILLs of `clipsearch index --batch-size 8` (random moments, inside SQLite
    transactions, during FAISS cache writes), restarting after each, with the tree changing
    between completed runs; the final library equals uninterrupted runs' exactly."""
    photos, library, reference = tmp_path / "photos", tmp_path / "lib", tmp_path / "ref"
    write_corpus(photos, per_pair=10, seed=11, size=64)  # 240 images
    argv = ["index", str(photos), "--model", MODEL, "--batch-size", "8", "-q"]
    server = ForkServer(subprocess_env(tmp_path))
    log = tmp_path / "children.log"
    try:
        timing = server.run([*argv, "--library", str(reference)], log)
        assert timing["code"] == 0, log.read_text()
        full = timing["seconds"]
        rng = random.Random(20240607)
        kills = mutations = steps = 0
        while kills < 22:
            steps += 1
            assert steps <= 60, "runs keep completing before the planned kill"
            kind = steps % 4
            if kind in (0, 1):  # anywhere: model load, crawl, decode, encode, commit
                step = {"kill_after": rng.uniform(0.05, 1.5)}
            elif kind == 2:  # inside a write transaction, after its statements, before COMMIT
                step = {"hook": "commit", "hook_at": rng.randint(1, 6)}
            else:  # at the end, writing the FAISS cache: before the 1st or between 2 renames
                step = {"hook": "replace", "hook_at": rng.choice((1, 2))}
            result = server.run([*argv, "--library", str(library)], log, **step)
            if result["killed"]:
                kills += 1
                assert result["code"] == -signal.SIGKILL
                _assert_sound_after_crash(library)
            else:  # finished before the kill: change the tree so the next runs have work
                assert result["code"] == 0, log.read_text()[-3000:]
                mutations += 1
                _mutate(photos, rng, mutations)
        final = server.run([*argv, "--library", str(library)], log)  # runs to the end
        assert final["code"] == 0 and not final["killed"]
        ref_run = server.run([*argv, "--library", str(reference)], log)
        assert ref_run["code"] == 0
    finally:
        server.close()
    print(f"{kills} kills in {steps} runs, {mutations} tree changes; first full run {full:.1f}s")
    model_id = default_model_id(library)
    assert_library_exact(library, photos, model_id)
    assert_library_exact(reference, photos, model_id)
    got, want = vectors_by_path(library, model_id), vectors_by_path(reference, model_id)
    assert set(got) == set(want)
    assert max(float(np.abs(got[p] - want[p]).max()) for p in got) <= 1e-6
    assert top_k(library) == top_k(reference)


def _committed(library: Path) -> int:
    try:
        with sqlite3.connect(f"file:{library / 'catalog.db'}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT COUNT(*) FROM files").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_ctrl_c_stops_within_two_seconds_and_resumes(tmp_path):
    photos, library = tmp_path / "photos", tmp_path / "lib"
    total = len(write_corpus(photos, per_pair=10, seed=12, size=64))
    proc = subprocess.Popen(
        [CLIPSEARCH, "index", str(photos), "--model", MODEL, "--library", str(library),
         "--batch-size", "8", "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=subprocess_env(tmp_path))
    deadline = time.monotonic() + 90
    while _committed(library) < 16 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    stopped_in = time.monotonic() - sent
    print(f"SIGINT -> exit in {stopped_in:.2f}s")
    assert proc.returncode == 130, err
    assert stopped_in < 2.0
    assert "Traceback" not in err
    committed = _committed(library)
    assert 16 <= committed < total
    assert f"Stopped after committing {committed} of {total} files" in err
    assert "run the same command again to resume" in err
    resumed = cli_json("index", str(photos), "-q", library=library)
    assert resumed["indexed"] == total - committed and resumed["unchanged"] == committed
    assert resumed["todo"] == total - committed and not resumed["interrupted"]
    assert_library_exact(library, photos, default_model_id(library))


def test_stop_request_commits_encoded_part_of_batch(tmp_path):
    """Mid-batch stop (API cancel event, same path as Ctrl-C): what is encoded is kept."""
    import threading

    from indexer import IndexSettings

    photos = tmp_path / "photos"
    write_corpus(photos, per_pair=2, seed=13, size=64)
    cancel = threading.Event()
    with Library(tmp_path / "lib", model=MODEL) as lib:
        ref = lib.default_model
        real = lib.encoder(ref, frozenset({"image"}))
        calls = []

        class SlowEncoder:  # cancels during the 3rd encoder call of the first batch
            model_id, preprocess, embed_dim = real.model_id, real.preprocess, real.embed_dim
            micro_batch = 4  # images per encoder call: the stop is polled between calls

            def encode_pixels(self, pixels):
                calls.append(len(pixels))
                if len(calls) == 3:
                    cancel.set()
                return real.encode_pixels(pixels)

        lib._encoders[(ref.model_id, frozenset({"image"}))] = SlowEncoder()
        report = lib.index([photos], settings=IndexSettings(batch_size=32, cancel=cancel))
        assert report.interrupted
        encoded = sum(calls)
        assert len(calls) == 3 and report.committed == report.indexed == encoded < 48
        assert lib.status().indexed == encoded
        del lib._encoders[(ref.model_id, frozenset({"image"}))]
        again = lib.index()
        assert again.indexed == 48 - encoded and not again.interrupted


def test_models_are_kept_apart(tmp_path):
    """Two models over one folder: both vector sets kept, each query uses its own model's
    vectors only, status counts both."""
    photos, library = tmp_path / "photos", tmp_path / "lib"
    n = len(write_corpus(photos, per_pair=1, seed=14, size=64))
    other = make_random_bundle(tmp_path / "other-model", embed_dim=24)
    cli("index", str(photos), "--model", MODEL, "-q", library=library)
    second = cli_json("index", str(photos), "--model", other, "-q", library=library)
    assert second["indexed"] == n  # same files, new model: embedded again, rows shared
    with Library(library) as lib:
        first_id, other_id = lib.default_model.model_id, lib.model_ref(other).model_id
        assert lib.catalog.model_counts() == {first_id: n, other_id: n}
        for model in (MODEL, other):
            model_id = lib.model_ref(model).model_id
            ids, vectors = lib.catalog.vectors(model_id)
            by_id = dict(zip(ids.tolist(), vectors, strict=True))
            query = lib.embed_text(["a red circle"], model=model)[0]
            assert query.shape == (vectors.shape[1],)
            hits = lib.searcher.search(model_id, query, limit=n)
            assert len(hits) == n  # scores come from this model's vectors, nothing else
            for hit in hits:
                assert abs(hit.score - float(by_id[hit.file_id] @ query)) < 1e-5
            assert len(lib.query("a red circle", limit=n, model=model)) == n
        assert vectors.shape[1] == 24 != lib.catalog.models()[first_id]["embed_dim"]
    status = cli_json("status", library=library)
    assert status["models"] == {first_id: n, other_id: n}
    text = cli("status", library=library).stdout
    assert f"{first_id}: {n} vectors" in text and f"{other_id}: {n} vectors" in text
    assert cli_json("index", "--model", other, "-q", library=library)["unchanged"] == n
    assert cli_json("index", "-q", library=library)["unchanged"] == n
    # Removing the default model: the other one takes over, and its files go.
    with Library(library) as lib:
        lib.query("a red circle")  # writes the FAISS cache and adopts the text tower
    derived = [p for p in library.rglob("*") if first_id.split("@")[0] in p.name
               and p.suffix in (".faiss", ".json", ".safetensors")]
    assert len(derived) == 4, derived  # FAISS cache, its sidecar, grade bars, text tower
    assert cli("remove-model", first_id, library=library).stdout.strip() == f"Removed {n} vectors"
    assert not any(p.exists() for p in derived)
    with Library(library) as lib:
        assert lib.default_model.model_id == other_id
        assert len(lib.query("a red circle", limit=n)) == n
    cli("remove-model", other, library=library)
    with Library(library) as lib:
        assert lib.catalog.get_meta("default_model") is None


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _tiny_cfg() -> dict:
    return {"embed_dim": 16,
            "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                           "head_width": 16},
            "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 16, "heads": 1,
                         "layers": 1}}


@pytest.mark.parametrize("where", ["pretrained-file", "bundle-bin", "bundle-torch-zip"])
def test_weights_with_code_in_them_are_refused(tmp_path, where):
    """A pickle that would run `touch MARKER` when unpickled: refused with a clear message,
    and the marker never appears (weights load via safetensors or weights_only=True)."""
    import torch

    marker = tmp_path / "pwned-marker"
    evil = tmp_path / "evil" / "open_clip_pytorch_model.bin"
    evil.parent.mkdir()
    if where == "bundle-torch-zip":
        torch.save({"state_dict": _Evil(marker)}, evil)
    else:
        evil.write_bytes(pickle.dumps({"state_dict": _Evil(marker)}))
    photos = tmp_path / "photos"
    write_corpus(photos, per_pair=1, seed=15, size=32)
    if where == "pretrained-file":
        args = ["--model", "ViT-S-32", "--pretrained", str(evil)]
    else:
        (evil.parent / "open_clip_config.json").write_text(json.dumps({"model_cfg": _tiny_cfg()}))
        args = ["--model", f"local-dir:{evil.parent}"]
    result = cli("index", str(photos), *args, "-q", library=tmp_path / "lib", ok=False)
    assert result.exit_code == 2, result.output
    assert "Refused to load" in result.stderr and "safe paths" in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()
    assert not (Path.cwd() / "pwned-marker").exists()


def test_no_shell_anywhere_in_the_engine():
    """Paths from the catalog are never given to a shell: no shell-running call exists."""
    repo = Path(__file__).resolve().parent.parent
    offenders = []
    for package in ("clipsearch", "indexer", "store", "search", "clip_core"):
        for source in (repo / package).rglob("*.py"):
            text = source.read_text()
            for needle in ("shell=True", "os.system(", "os.popen(", "commands.getoutput",
                           "pty.spawn("):
                if needle in text:
                    offenders.append(f"{source.relative_to(repo)}: {needle}")
    assert offenders == []


def test_shell_metacharacter_names_are_just_names(tmp_path, monkeypatch):
    photos, library = tmp_path / "photos", tmp_path / "lib"
    photos.mkdir()
    victim = photos / "x.png"
    draw("blue", "circle", size=64, rng=random.Random(1)).save(victim)
    names = ["$(touch pwned).png", ";rm -rf x.png", "`touch pwned2`.png", "a|b&c>d.png"]
    for i, name in enumerate(names):
        draw("red", "square", size=64, rng=random.Random(i)).save(photos / name)
    monkeypatch.chdir(photos)
    report = cli_json("index", str(photos), "--model", MODEL, "-q", library=library)
    assert report["indexed"] == len(names) + 1
    found = cli("query", "a red square", "-n", "10", "--paths", "-0", library=library).stdout
    assert {os.path.basename(p) for p in found.split("\0") if p} == {*names, "x.png"}
    assert victim.exists()
    assert not list(tmp_path.rglob("pwned*")) and not Path("pwned").exists()
    assert set(catalog_rows(library)) == {os.fsencode(photos / n) for n in [*names, "x.png"]}
