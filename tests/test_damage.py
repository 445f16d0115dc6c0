"""Damaged files: a text tower or a catalog with wrong bytes is found, said in one line, and
rebuilt or salvaged; never a traceback, never silently different results."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clip_core.text.file_check import sidecar
from clipsearch import Library
from clipsearch.cli_errors import EXIT_DAMAGED
from clipsearch.shapes import write_corpus
from tests.helpers import cli, cli_json
from tests.reliability_support import (
    CLIPSEARCH,
    MODEL,
    QUERIES,
    assert_library_exact,
    default_model_id,
    make_random_bundle,
    subprocess_env,
    top_k,
)


def _run(env: dict, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([CLIPSEARCH, *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def compiled_cache(tmp_path_factory) -> Path:
    """A compile cache made once for the module: each test copies it (the copy is its own to
    damage) instead of compiling shapes-tiny again (~7 s each)."""
    tmp = tmp_path_factory.mktemp("damage-cache")
    env = {**subprocess_env(tmp), "CLIPSEARCH_CACHE": str(tmp / "cache")}
    write_corpus(tmp / "photos", per_pair=1, seed=31, size=64)
    _run(env, "index", str(tmp / "photos"), "--model", MODEL, "-q", "--library",
         str(tmp / "lib"))
    return tmp / "cache"


@pytest.fixture
def indexed(tmp_path, monkeypatch, compiled_cache) -> tuple[Path, dict]:
    """A shapes-tiny library with its text tower linked from a private compile cache (the
    session's shared cache must not be damaged by these tests)."""
    shutil.copytree(compiled_cache, tmp_path / "cache", symlinks=True)
    monkeypatch.setenv("CLIPSEARCH_CACHE", str(tmp_path / "cache"))
    env = {**subprocess_env(tmp_path), "CLIPSEARCH_CACHE": str(tmp_path / "cache")}
    write_corpus(tmp_path / "photos", per_pair=1, seed=31, size=64)
    library = tmp_path / "lib"
    _run(env, "index", str(tmp_path / "photos"), "--model", MODEL, "-q", "--library",
         str(library))
    return library, env


def _tower(library: Path) -> Path:
    (tower,) = (library / "text-towers").glob("*.safetensors")
    return tower


def _same(a: list, b: list) -> None:
    """The same ranking up to near-tie swaps: a tower rebuilt from torch may be stored at
    another precision than the compiled one it replaces (scores move by ~1e-3)."""
    for x, y in zip(a, b, strict=True):
        assert x[0][0] == y[0][0], (a, b)
        for (_, s), (_, t) in zip(x, y, strict=True):
            assert abs(s - t) < 5e-3, (a, b)


def _flip(path: Path, count: int, seed: int, start: int = 0) -> None:
    rng = random.Random(seed)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        for _ in range(count):
            f.seek(rng.randrange(start, size))
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))


def test_damaged_text_tower_is_rebuilt_not_trusted(indexed):
    library, env = indexed
    before = top_k(library, k=5)
    tower = _tower(library)
    shared = next((Path(env["CLIPSEARCH_CACHE"]) / "compiled").rglob("text.safetensors"))
    assert os.path.samefile(tower, shared)  # linked from the compile cache
    # 500 flipped bytes in the weights: results must not silently change.
    _flip(tower, 500, seed=1, start=4096)
    _same(top_k(library, k=5), before)
    # Random bytes over the whole file (header included): a clear line, the same results.
    tower = _tower(library)
    tower.write_bytes(random.Random(2).randbytes(tower.stat().st_size))
    proc = _run(env, "query", QUERIES[0], "-n", "5", "--json", "--library", str(library))
    assert "damaged" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    _same([[(r["path"], r["score"]) for r in json.loads(proc.stdout)]], before[:1])
    _same(top_k(library, k=5), before)


def test_damaged_shared_tower_does_not_spread(indexed, tmp_path):
    library, env = indexed
    shared = next((Path(env["CLIPSEARCH_CACHE"]) / "compiled").rglob("text.safetensors"))
    shared.write_bytes(random.Random(3).randbytes(shared.stat().st_size))
    # The library's own link to it is damaged too: the next index run repairs it.
    _run(env, "index", "-q", "--library", str(library))
    tower = _tower(library)
    assert not (shared.exists() and os.path.samefile(tower, shared))
    assert sidecar(tower).is_file()
    # A second library indexed with that cache never gets the damaged copy.
    other = tmp_path / "other"
    _run(env, "index", str(tmp_path / "photos"), "--model", MODEL, "-q", "--library",
         str(other))
    _same(top_k(other, k=5), top_k(library, k=5))
    with Library(other) as lib:
        from clip_core.text.file_check import verify

        verify(lib._text_embedder(lib.default_model).path, full=True)


def _vouched(path: Path) -> bool:
    """Whether `path`'s record vouches for it as it is now (a check then only stats it)."""
    st = os.stat(path)
    verified = json.loads(sidecar(path).read_text())["verified"]
    return verified == [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def test_linking_the_shared_tower_keeps_it_vouched_for(indexed, tmp_path):
    """Each new library hard-links the cache's text tower, which moves the shared inode's
    ctime: the cache's record takes the new stamp, so the next library's first index run
    stats the file instead of hashing it again, and a write through any link still shows."""
    library, env = indexed
    shared = next((Path(env["CLIPSEARCH_CACHE"]) / "compiled").rglob("text.safetensors"))
    assert _vouched(shared)
    other = tmp_path / "other"
    _run(env, "index", str(tmp_path / "photos"), "--model", MODEL, "-q", "--library",
         str(other))
    tower = _tower(other)
    assert os.path.samefile(tower, shared) and _vouched(shared) and _vouched(tower)
    _flip(tower, 10, seed=5, start=4096)  # through the new library's link
    assert not _vouched(shared)
    third = tmp_path / "third"
    _run(env, "index", str(tmp_path / "photos"), "--model", MODEL, "-q", "--library",
         str(third))
    assert not shared.exists()  # found by its changed stamp, hashed, and dropped
    assert not any(os.path.samefile(p, tower) for p in third.rglob("*.safetensors"))
    _same(top_k(third, k=5), top_k(library, k=5))


def test_a_link_made_or_removed_elsewhere_is_not_hashed_again(tmp_path, monkeypatch):
    """Deleting a library unlinks the shared tower, which moves its ctime: with the inode,
    size and mtime as at the last match and the link count changed, the next check only
    re-stamps it (the bench's phone runs paid ~0.17 CPU s a run for that hash). A write,
    even one that sets the mtime back, still shows where the link count did not change."""
    import hashlib

    from clip_core.text import file_check

    shared = tmp_path / "text.safetensors"
    data = random.Random(6).randbytes(1 << 20)
    shared.write_bytes(data)
    file_check.record(shared, hashlib.sha256(data).hexdigest(), len(data))
    hashed: list[Path] = []
    real_hash = file_check.hash_file
    monkeypatch.setattr(file_check, "hash_file", lambda p: (hashed.append(p), real_hash(p))[1])
    library = tmp_path / "lib.text.safetensors"
    os.link(shared, library)  # a library made: its link, its own record
    file_check.linked(shared)
    file_check.copy_record(shared, library)
    other = tmp_path / "other.text.safetensors"
    os.link(shared, other)  # another library made without telling the first
    file_check.verify(library)
    other.unlink()  # and deleted
    library.unlink()  # the first one deleted too
    file_check.verify(shared)
    assert hashed == [] and _vouched(shared)
    # A write that sets the mtime back, no link count changed: hashed, and refused
    st = os.stat(shared)
    with open(shared, "r+b") as f:
        f.seek(4096)
        f.write(b"x" * 16)
    os.utime(shared, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(file_check.DamagedFile):
        file_check.verify(shared)
    assert hashed == [shared]


def _damage(catalog: Path, kind: str) -> None:
    data = bytearray(catalog.read_bytes())
    page = 4096
    if kind == "header":
        data[0] ^= 0xFF  # "SQLite format 3" no more
    elif kind == "pages":
        for start in range(page, len(data), 3 * page):  # b-tree page type bytes
            data[start] ^= 0xFF
    elif kind == "truncated":
        data = data[: len(data) // 2]
    elif kind == "garbage":
        data = bytearray(random.Random(4).randbytes(len(data)))
    catalog.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", ["header", "pages", "truncated", "garbage"])
def test_damaged_catalog_says_so_and_doctor_salvages_it(indexed, tmp_path, kind):
    library, _env = indexed
    model_id = default_model_id(library)
    catalog = library / "catalog.db"
    assert not Path(f"{catalog}-wal").exists()  # all of it in the file
    _damage(catalog, kind)
    damaged = catalog.read_bytes()
    for args in (["status"], ["query", "a red circle"], ["index", "-q"], ["doctor"]):
        result = cli(*args, library=library, ok=False)
        assert result.exit_code == EXIT_DAMAGED, (args, result.output)
        assert "damaged" in result.stderr + result.stdout and "doctor" in \
            result.stderr + result.stdout, (args, result.output)
    assert catalog.read_bytes() == damaged  # nothing was written to it
    report = cli_json("doctor", "--repair", library=library)
    assert report["repaired"] and Path(report["backup"]).read_bytes() == damaged
    if kind in ("header", "pages"):  # the roots survive: a plain `index` finds the rest
        assert report["kept"]["roots"] == 1 and report["kept"]["files"] > 0
        cli("index", "-q", library=library)
    else:  # a lost root page (or nothing readable): the folder has to be given again
        cli("index", str(tmp_path / "photos"), "--model", MODEL, "-q", library=library)
    assert_library_exact(library, tmp_path / "photos", model_id)
    assert cli_json("doctor", library=library)["healthy"]


def test_empty_catalog_is_not_a_new_library(indexed, tmp_path):
    library, _env = indexed
    catalog = library / "catalog.db"
    catalog.write_bytes(b"")
    for args in (["status"], ["index", "-q"], ["query", "a red circle"]):
        result = cli(*args, library=library, ok=False)
        assert result.exit_code == EXIT_DAMAGED and "doctor" in result.stderr, result.output
    assert catalog.stat().st_size == 0  # no fresh catalog made over it
    catalog.unlink()  # missing, with the derived files still there: the same
    assert cli("status", library=library, ok=False).exit_code == EXIT_DAMAGED
    assert not catalog.exists()
    catalog.write_bytes(b"")
    report = cli_json("doctor", "--repair", library=library)
    assert report["repaired"] and "roots are lost" in " ".join(report["notes"])
    assert cli_json("status", library=library)["roots"] == []
    cli("index", str(tmp_path / "photos"), "--model", MODEL, "-q", library=library)
    assert_library_exact(library, tmp_path / "photos", default_model_id(library))


def test_tower_without_checksum_is_quietly_remade(indexed):
    """A tower made before checksums existed (or by a run killed before its record) is not
    vouched for: re-made without a 'damaged' warning, and then recorded."""
    library, env = indexed
    before = top_k(library, k=5)
    tower = _tower(library)
    sidecar(tower).unlink()
    proc = _run(env, "query", QUERIES[0], "-n", "5", "--json", "--library", str(library))
    assert "damaged" not in proc.stderr, proc.stderr
    _same([[(r["path"], r["score"]) for r in json.loads(proc.stdout)]], before[:1])
    assert sidecar(_tower(library)).is_file()


_QUERY_WITHOUT_TORCH = """
import json, sys
from clipsearch import Library
with Library(sys.argv[1]) as lib:
    hits = [[h.path, h.score] for h in lib.query(sys.argv[2], limit=5)]
print(json.dumps({"hits": hits, "torch": "torch" in sys.modules}))
"""


def _query_in_a_new_process(env: dict, library: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", _QUERY_WITHOUT_TORCH, str(library), QUERIES[0]],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_missing_tower_comes_back_without_torch(indexed):
    """A library without its text tower (one an index run could not give it, or one `doctor`
    removed as damaged) takes the compiled model's again: its next query never loads torch
    (for ViT-B-32 that was ~5 s, and a server kept 1.3 GB)."""
    library, env = indexed
    before = top_k(library, k=5)
    shared = next((Path(env["CLIPSEARCH_CACHE"]) / "compiled").rglob("text.safetensors"))
    for path in (_tower(library), sidecar(_tower(library))):
        path.unlink()
    got = _query_in_a_new_process(env, library)
    assert not got["torch"]
    assert os.path.samefile(_tower(library), shared) and _vouched(_tower(library))
    _same([[tuple(h) for h in got["hits"]]], before[:1])


def test_a_missing_tower_is_read_from_the_weights_file_when_nothing_is_compiled(tmp_path):
    """The same with no compiled model at hand (another cache): the tower is read from the
    model's safetensors file, as the compile reads it, still without torch."""
    model = make_random_bundle(tmp_path / "bundle")  # a plain ViT: readable without torch
    write_corpus(tmp_path / "photos", per_pair=1, seed=31, size=64)
    env = {**subprocess_env(tmp_path), "CLIPSEARCH_CACHE": str(tmp_path / "cache")}
    library = tmp_path / "lib"
    _run(env, "index", str(tmp_path / "photos"), "--model", model, "-q", "--library",
         str(library))
    before = top_k(library, k=5)
    for path in (_tower(library), sidecar(_tower(library))):
        path.unlink()
    got = _query_in_a_new_process({**env, "CLIPSEARCH_CACHE": str(tmp_path / "empty")},
                                  library)
    assert not got["torch"]
    assert os.stat(_tower(library)).st_nlink == 1 and _vouched(_tower(library))
    _same([[tuple(h) for h in got["hits"]]], before[:1])
    _same(top_k(library, k=5), before)
