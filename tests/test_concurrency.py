"""Several processes, odd disks: queries during an index run, a second indexer, a read-only
library, a disk that fills up. Nothing is corrupted and every failure is a clear message."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from clipsearch import Library
from clipsearch.shapes import write_corpus
from store import Catalog, WriterLock
from tests.helpers import cli, cli_json
from tests.reliability_support import (
    CLIPSEARCH,
    MODEL,
    assert_library_exact,
    default_model_id,
    subprocess_env,
)


def _ok_count(library: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{library / 'catalog.db'}?mode=ro", uri=True)
    except sqlite3.Error:
        return 0  # not created yet
    try:
        return conn.execute("SELECT COUNT(*) FROM files WHERE status = 'ok'").fetchone()[0]
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def test_queries_see_committed_state_while_an_index_run_writes(tmp_path):
    photos, library = tmp_path / "photos", tmp_path / "lib"
    # Big enough that the run lasts a few seconds even with the fast compiled encoder.
    total = len(write_corpus(photos, per_pair=40, seed=41, size=320))
    writer = subprocess.Popen(
        [CLIPSEARCH, "index", str(photos), "--model", MODEL, "--library", str(library),
         "--batch-size", "8", "-q"], stderr=subprocess.PIPE, text=True,
        env=subprocess_env(tmp_path))
    deadline = time.monotonic() + 90
    while _ok_count(library) < 8 and writer.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    long_lived = Library(library)
    during = 0
    try:
        while writer.poll() is None:
            before = _ok_count(library)
            if during % 2:
                found = long_lived.query("a red circle", limit=1000)  # sees new generations
            else:
                with Library(library) as fresh:  # opening a library writes nothing
                    found = fresh.query("a red circle", limit=1000)
            after = _ok_count(library)
            assert before <= len(found) <= after
            assert len({r.path for r in found}) == len(found)
            time.sleep(0.05)  # leave the writer some CPU on a small machine
            during += writer.poll() is None
        _, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err
        assert len(long_lived.query("a red circle", limit=1000)) == total
    finally:
        long_lived.close()
        if writer.poll() is None:
            writer.kill()
    print(f"{during} queries answered while the index run was writing")
    assert during >= 2
    assert_library_exact(library, photos, default_model_id(library))


def test_second_indexer_refuses_or_waits(tmp_path):
    photos, library = tmp_path / "photos", tmp_path / "lib"
    write_corpus(photos, per_pair=1, seed=42, size=64)
    cli("index", str(photos), "--model", MODEL, "-q", library=library)
    other = tmp_path / "other"
    write_corpus(other, per_pair=1, seed=43, size=64)
    holder = WriterLock(library / "index.lock")
    holder.acquire()  # another indexer (a separate open file: flock conflicts as it would)
    try:
        refused = cli("index", str(other), "-q", library=library, ok=False)
        assert refused.exit_code == 3
        assert "is indexing this library" in refused.stderr and "--wait" in refused.stderr
        assert f"pid {os.getpid()}" in refused.stderr
        assert "Traceback" not in refused.output
        assert cli_json("status", library=library)["roots"] == [str(photos)]  # unchanged
        threading.Timer(1.5, holder.release).start()
        started = time.monotonic()
        waited = cli_json("index", str(other), "--wait", "60", "-q", library=library)
        assert time.monotonic() - started >= 1.4
        assert waited["indexed"] == 24
    finally:
        holder.release()
    assert cli_json("status", library=library)["indexed"] == 48


@contextmanager
def _mounted(kind: str, target: Path, source: Path | None = None, size: str = "1m"):
    """A read-only bind mount of `source`, or a small tmpfs; skips where mounting fails."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) to make a read-only or a tiny disk")
    target.mkdir(parents=True, exist_ok=True)
    if kind == "ro":
        steps = [["mount", "--bind", str(source), str(target)],
                 ["mount", "-o", "remount,ro,bind", str(target)]]
    else:
        steps = [["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(target)]]
    for i, step in enumerate(steps):
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            if i:
                subprocess.run(["umount", str(target)])
            pytest.skip(f"cannot mount here ({' '.join(step)}: {done.stderr.strip()})")
    try:
        yield target
    finally:
        if subprocess.run(["umount", str(target)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(target)])


def test_read_only_library_is_queryable(tmp_path):
    """On a read-only disk: queries work from whatever state the library was left in (closed
    cleanly; a writer killed with its WAL and -shm; a WAL without -shm), the FAISS cache is
    built in memory, and indexing fails with a clear message."""
    photos, library = tmp_path / "photos", tmp_path / "lib"
    write_corpus(photos, per_pair=1, seed=44, size=64)
    cli("index", str(photos), "--model", MODEL, "-q", library=library)
    shutil.rmtree(library / "vectors")  # no cache: it has to be built, and cannot be saved
    states = {"clean": tmp_path / "clean"}
    shutil.copytree(library, states["clean"])
    writer = Catalog(library / "catalog.db")
    writer.conn.execute("PRAGMA wal_autocheckpoint=0")
    writer.delete_files([writer.file_id(str(photos / "red-circle-0.png"))])  # only in the WAL
    for name, files in (("wal+shm", ("-wal", "-shm")), ("wal-only", ("-wal",))):
        states[name] = tmp_path / name
        states[name].mkdir()
        for suffix in ("", *files):  # what a killed writer leaves on disk
            shutil.copy2(library / f"catalog.db{suffix}", states[name] / f"catalog.db{suffix}")
    writer.close()
    for name, source in states.items():
        expected = 24 if name == "clean" else 23
        with _mounted("ro", tmp_path / f"mnt-{name}", source) as mnt:
            with Library(mnt) as lib:
                assert lib.readonly
                found = lib.query("a red circle", limit=100)
                assert len(found) == expected, name
                assert lib.status().indexed == expected
            assert not (mnt / "vectors").exists()
            refused = cli("index", "-q", library=mnt, ok=False)
            assert refused.exit_code == 1 and "read-only" in refused.stderr, refused.output
            assert "Traceback" not in refused.output
            paths = cli("query", "a blue star", "-n", "3", "--paths", library=mnt).stdout
            assert len(paths.splitlines()) == 3


def test_full_disk_while_indexing_ends_cleanly_and_resumes(tmp_path):
    photos = tmp_path / "photos"
    total = len(write_corpus(photos, per_pair=10, seed=45, size=64))
    with _mounted("tmpfs", tmp_path / "small", size="256k") as disk:
        library = disk / "lib"
        full = cli("index", str(photos), "--model", MODEL, "--batch-size", "8", "-q",
                   library=library, ok=False)
        assert full.exit_code == 1, full.output
        assert "disk is full" in full.stderr and "run the same command again" in full.stderr
        assert "Traceback" not in full.output
        with _readonly(library) as cat:
            assert cat.problems() == []
            kept = cat.counts().get("ok", 0)
        assert 0 < kept < total  # some batches committed before the disk filled
        print(f"disk full after {kept} of {total} files")
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        resumed = cli_json("index", "-q", library=library)
        assert resumed["indexed"] == total - kept
        assert_library_exact(library, photos, default_model_id(library))
        # A query on a disk with no room left: the FAISS cache cannot be saved, the answer
        # comes from memory, and no partial cache or temp file is left behind.
        shutil.rmtree(library / "vectors")
        (library / "vectors").mkdir()
        subprocess.run(["mount", "-o", "remount,size=1m", str(disk)], check=False)
        _fill(disk / "filler")
        assert len(cli_json("query", "a red circle", "-n", "500", library=library)) == total
        assert [p.name for p in (library / "vectors").iterdir()] == []


@contextmanager
def _readonly(library: Path):
    cat = Catalog(library / "catalog.db", readonly=True)
    try:
        yield cat
    finally:
        cat.close()


def _fill(path: Path) -> None:
    with open(path, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
