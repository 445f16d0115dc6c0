"""A messy photo tree through the real indexer: every good file indexed, every bad one recorded
with its reason, every name (any bytes, near PATH_MAX) exact in the table, JSON and -0."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from clipsearch import IndexSettings, Library
from clipsearch.shapes import draw, write_corpus
from store import printable
from tests.helpers import cli, cli_json
from tests.hostile_corpus import make_hostile_corpus
from tests.reliability_support import CLIPSEARCH, MODEL, catalog_rows, subprocess_env

ODD_GOOD = ["with space.png", "it's \"quoted\".png", "new\nline.png", "emoji \U0001f4f7.png",
            "tab\there.png", "-starts-with-dash.png", os.fsdecode(b"caf\xe9.png"),
            os.fsdecode(b"\xff\xfe latin junk.png")]
ODD_BAD = os.fsdecode(b"bad \xe9\n\"name\".jpg")


def _picture(path: Path, seed: int) -> None:
    rng = random.Random(seed)
    draw(rng.choice(["red", "blue", "green"]), rng.choice(["circle", "star"]), size=64,
         rng=rng).save(path, format="PNG")


def _deep_folder(base: Path, name_len: int = 240, limit: int = 4000) -> Path:
    """Nested folders until the path is close to PATH_MAX (4096 on Linux)."""
    folder = base
    while len(os.fsencode(folder)) + name_len + 1 + 40 < limit:
        folder = folder / ("d" * name_len)
    folder.mkdir(parents=True)
    return folder


def build_messy_tree(root: Path) -> tuple[set[bytes], dict[bytes, str]]:
    """Returns (paths that must be indexed, path -> expected error reason)."""
    good: set[bytes] = set()
    bad: dict[bytes, str] = {}
    for name, reason in make_hostile_corpus(root / "hostile").items():
        path = os.fsencode(root / "hostile" / name)
        if name == "folder.jpg":
            continue  # a folder named like an image is a folder: descended, not an error
        if reason is None:
            good.add(path)
        else:
            bad[path] = reason
    good |= {os.fsencode(p[0]) for p in write_corpus(root / "good", per_pair=1, seed=31, size=64)}
    (root / "odd").mkdir()
    for i, name in enumerate(ODD_GOOD):
        _picture(root / "odd" / name, i)
        good.add(os.fsencode(root / "odd" / name))
    (root / "odd" / ODD_BAD).write_bytes(b"this is not a picture at all")
    bad[os.fsencode(root / "odd" / ODD_BAD)] = "not-an-image"
    deep = _deep_folder(root / "deep") / "deep-picture.png"
    _picture(deep, 99)
    good.add(os.fsencode(deep))
    assert 3900 < len(os.fsencode(deep)) < 4096
    links = root / "links"
    links.mkdir()
    os.symlink(root / "missing.jpg", links / "broken.jpg")
    os.symlink(links / "loop-b.jpg", links / "loop-a.jpg")
    os.symlink(links / "loop-a.jpg", links / "loop-b.jpg")
    os.symlink(root, links / "back-to-root")  # a folder loop: walked once, no error
    os.symlink(root / "good" / "red-circle-0.png", links / "alias.png")
    bad[os.fsencode(links / "broken.jpg")] = "broken-symlink"
    bad[os.fsencode(links / "loop-a.jpg")] = "symlink-loop"
    bad[os.fsencode(links / "loop-b.jpg")] = "symlink-loop"
    good.add(os.fsencode(links / "alias.png"))
    (root / "album.jpg").mkdir()
    _picture(root / "album.jpg" / "inside.png", 7)
    good.add(os.fsencode(root / "album.jpg" / "inside.png"))
    return good, bad


def test_messy_tree_indexes_everything_indexable(tmp_path):
    photos, library = tmp_path / "photos", tmp_path / "lib"
    good, bad = build_messy_tree(photos)
    report = cli_json("index", str(photos), "--model", MODEL, "-q", library=library)
    assert not report["interrupted"]
    assert report["indexed"] + report["reused"] == len(good)
    assert {os.fsencode(s["path"]): s["reason"] for s in report["skipped"]} == bad

    rows = catalog_rows(library)
    assert {p for p, r in rows.items() if r["status"] == "ok"} == good
    assert {p: r["error_reason"] for p, r in rows.items() if r["status"] == "error"} == bad

    status = cli_json("status", "--errors", library=library)
    assert status["errors"] == len(bad) and status["indexed"] == len(good)
    assert {os.fsencode(e["path"]): e["error_reason"] for e in status["error_list"]} == bad
    table = cli("status", "--errors", library=library).stdout
    for path, reason in bad.items():
        line = f"  error {printable(os.fsdecode(path))}: {reason}: "
        assert line in table, line
    assert "bad \\xe9\\n\"name\".jpg" in table  # raw bytes and newline shown escaped

    results = cli_json("query", "a red circle", "-n", "1000", library=library)
    assert {os.fsencode(r["path"]) for r in results} == good
    raw = cli("query", "a red circle", "-n", "1000", "--paths", "-0", library=library)
    assert set(raw.stdout_bytes.split(b"\0")[:-1]) == good
    lines = cli("query", "a red circle", "-n", "1000", library=library).stdout.splitlines()
    assert len(lines) == len(good)  # a newline in a name never breaks a row
    assert any("caf\\xe9.png" in line for line in lines)

    generation = _generation(library)
    again = cli_json("index", "-q", library=library)
    assert again["unchanged"] == len(good) and again["known_errors"] == len(bad)
    assert again["indexed"] == again["reused"] == again["removed"] == 0
    assert _generation(library) == generation  # an unchanged tree writes nothing


def _generation(library: Path) -> int:
    with Library(library) as lib:
        return lib.catalog.generation


def test_files_vanish_or_change_during_the_run(tmp_path):
    photos = tmp_path / "photos"
    files = sorted(p[0] for p in write_corpus(photos, per_pair=1, seed=32, size=64))
    first, late_changed, late_gone = Path(files[0]), Path(files[-1]), Path(files[-2])
    originals = {p: p.read_bytes() for p in (first, late_changed)}

    def meddle(progress) -> None:
        if progress.done == 2:  # `first` is read; the last two are not
            late_gone.unlink()
            draw("black", "circle", size=64, rng=random.Random(3)).save(late_changed)
            draw("white", "square", size=64, rng=random.Random(4)).save(first)
            os.utime(first, ns=(1, 10**18))

    settings = IndexSettings(batch_size=4, workers=1, prefetch=1)
    with Library(tmp_path / "lib", model=MODEL) as lib:
        report = lib.index([photos], settings=settings, progress=meddle)
        assert report.indexed == len(files) - 1 and report.removed == 0
        rows = catalog_rows(tmp_path / "lib")
        assert os.fsencode(late_gone) not in rows
        assert rows[os.fsencode(late_changed)]["content_hash"] == _sha(late_changed.read_bytes())
        assert rows[os.fsencode(first)]["content_hash"] == _sha(originals[first])
        changed_id = rows[os.fsencode(late_changed)]["id"]
        changed_vec = lib.catalog.vectors_for_files(lib.default_model.model_id,
                                                    [changed_id])[changed_id]
        fresh = lib._image_vector(late_changed, lib.default_model)
        assert np.allclose(changed_vec, fresh, atol=1e-5)  # the new picture's vector
        again = lib.index()
        assert again.indexed == 1 and again.unchanged == len(files) - 2
        rows = catalog_rows(tmp_path / "lib")
        assert rows[os.fsencode(first)]["content_hash"] == _sha(first.read_bytes())
        assert lib.catalog.problems() == []


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _drop_root_powers() -> list[str]:
    """Run a command as root without the capabilities that bypass file permissions."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and util-linux setpriv is missing: cannot make a file "
                    "unreadable for this process")
    probe = subprocess.run([setpriv, "--bounding-set=-dac_override,-dac_read_search", "true"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"setpriv cannot drop capabilities here: {probe.stderr.decode()[:200]}")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]


def test_unreadable_files_and_folders_without_root_powers(tmp_path):
    """chmod 000 as it really behaves for a normal user (root's override dropped): the file
    is recorded as unreadable, a folder that cannot be listed keeps its indexed files, and
    both recover after the permissions are fixed (no mtime change needed)."""
    prefix = _drop_root_powers()
    photos, library = tmp_path / "photos", tmp_path / "lib"
    write_corpus(photos, per_pair=1, seed=33, size=64)
    private = photos / "private"
    private.mkdir()
    _picture(private / "inside.png", 5)
    cli("index", str(photos), "--model", MODEL, "-q", library=library)
    locked = photos / "locked.png"
    _picture(locked, 6)
    locked.chmod(0)
    private.chmod(0)
    try:
        run = subprocess.run([*prefix, CLIPSEARCH, "index", "--library", str(library), "-q"],
                             capture_output=True, text=True, env=subprocess_env(tmp_path),
                             timeout=180)
    finally:
        private.chmod(0o755)
    assert run.returncode == 0, run.stderr
    rows = catalog_rows(library)
    assert rows[os.fsencode(locked)]["error_reason"] == "unreadable"
    assert rows[os.fsencode(private)]["error_reason"] == "unreadable"
    assert rows[os.fsencode(private / "inside.png")]["status"] == "ok"  # kept, not swept
    assert f"skipped {locked}: unreadable" in run.stderr
    locked.chmod(0o644)  # ctime changes, mtime does not: still retried
    fixed = cli_json("index", "-q", library=library)
    assert fixed["indexed"] == 1 and fixed["removed"] == 1  # locked.png in, folder error out
    rows = catalog_rows(library)
    assert all(r["status"] == "ok" for r in rows.values()) and len(rows) == 26


def test_missing_root_keeps_its_files(tmp_path):
    """An unmounted drive is not an empty one: its files stay until it is back."""
    photos, library = tmp_path / "photos", tmp_path / "lib"
    write_corpus(photos, per_pair=1, seed=34, size=64)
    cli("index", str(photos), "--model", MODEL, "-q", library=library)
    photos.rename(tmp_path / "unplugged")
    away = cli_json("index", "-q", library=library)
    assert away["removed"] == 0 and [s["reason"] for s in away["skipped"]] == ["missing"]
    assert cli_json("status", library=library)["indexed"] == 24
    assert len(cli_json("query", "a red circle", "-n", "100", library=library)) == 24
    (tmp_path / "unplugged").rename(photos)
    back = cli_json("index", "-q", library=library)
    assert back["unchanged"] == 24 and back["removed"] == 1 and back["indexed"] == 0
    assert cli_json("status", library=library)["errors"] == 0
