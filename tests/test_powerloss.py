"""Power loss during an index run: the catalog opens, passes integrity_check, holds no file
without its vector, and the next run completes exactly.

A real power cut keeps what was synced and any part of what was not. tests/powerloss_shim.c
(LD_PRELOAD) records every write, truncate and sync of the catalog and its WAL during a real
`clipsearch index`; each simulated cut replays that record up to a random instant, keeping
every operation a sync made durable and each later one only by a coin toss (so unsynced
writes are lost, kept, or kept out of order). FAISS caches are dropped in the image (a cache
is never trusted across a catalog it was not made from); text towers carry checksums.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from clipsearch.shapes import write_corpus
from tests.helpers import cli
from tests.reliability_support import (
    CLIPSEARCH,
    MODEL,
    assert_library_exact,
    default_model_id,
    subprocess_env,
)

SHIM = Path(__file__).with_name("powerloss_shim.c")
CUTS = 30  # images checked for a sound catalog
RESUMED = 4  # of them, also indexed to the end and compared exactly


@dataclass
class Op:
    kind: str  # W write, T truncate, S sync, U unlink, C create
    path: str
    offset: int
    data: bytes


def _build_shim(tmp: Path) -> Path:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler (gcc) to build the LD_PRELOAD power-loss shim")
    out = tmp / "powerloss_shim.so"
    subprocess.run([gcc, "-shared", "-fPIC", "-O1", "-o", str(out), str(SHIM), "-ldl",
                    "-lpthread"], check=True, capture_output=True)
    return out


def _read_log(path: Path) -> list[Op]:
    raw = path.read_bytes()
    ops, at = [], 0
    while at < len(raw):
        kind = chr(raw[at])
        plen, offset, length = struct.unpack_from("<Iqq", raw, at + 1)
        at += 21
        name = raw[at : at + plen].decode()
        at += plen
        data = b""
        if kind == "W":
            data, at = raw[at : at + length], at + length
        ops.append(Op(kind, name, offset, data))
    return ops


def _replay(ops: list[Op], cut: int, start: dict[str, bytes | None],
            rng: random.Random) -> dict[str, bytes | None]:
    """The files as a power cut before ops[cut] could leave them."""
    synced = {op.path: i for i, op in enumerate(ops[:cut]) if op.kind == "S"}
    files = {p: None if b is None else bytearray(b) for p, b in start.items()}
    for i, op in enumerate(ops[:cut]):
        durable = i <= synced.get(op.path, -1)
        if op.kind in "WT" and not durable and rng.random() < 0.5:
            continue  # this unsynced write never reached the disk
        data = files.get(op.path)
        if op.kind == "C" and data is None:
            files[op.path] = bytearray()
        elif op.kind == "U":
            files[op.path] = None
        elif op.kind == "W" and data is not None:
            end = op.offset + len(op.data)
            if len(data) < end:
                data.extend(bytes(end - len(data)))
            data[op.offset : end] = op.data
        elif op.kind == "T" and data is not None:
            del data[op.offset :]
            data.extend(bytes(max(0, op.offset - len(data))))
    return {p: None if b is None else bytes(b) for p, b in files.items()}


def _mutate(photos: Path) -> None:
    files = sorted(photos.glob("*.png"))
    for path in files[:5]:
        path.unlink()
    (photos / "moved").mkdir()
    for path in files[5:10]:
        path.rename(photos / "moved" / path.name)
    write_corpus(photos / "new", per_pair=2, seed=61, size=64)


def test_power_cut_at_random_instants_of_an_index_run(tmp_path):
    shim = _build_shim(tmp_path)
    photos, library = tmp_path / "photos", tmp_path / "lib"
    write_corpus(photos, per_pair=2, seed=60, size=64)
    env = subprocess_env(tmp_path)
    argv = [CLIPSEARCH, "index", str(photos), "--model", MODEL, "--batch-size", "4", "-q",
            "--library", str(library)]
    subprocess.run(argv, env=env, check=True, capture_output=True, timeout=300)
    model_id = default_model_id(library)
    _mutate(photos)
    catalog = (library / "catalog.db").resolve()
    wal = Path(f"{catalog}-wal")
    assert not wal.exists()  # closed cleanly: everything is in the main file
    start = {str(catalog): catalog.read_bytes(), str(wal): None}
    log = tmp_path / "ops.log"
    proc = subprocess.run(argv, env={**env, "LD_PRELOAD": str(shim), "POWERLOSS_LOG": str(log)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ops = _read_log(log)
    # The run ends by closing the catalog (checkpoint, then the WAL is deleted); cuts fall
    # anywhere before that.
    end = next((i for i, op in enumerate(ops) if op.kind == "U"), len(ops))
    assert sum(op.kind == "S" for op in ops[:end]) >= 10, "too few commits to cut between"
    assert {op.path for op in ops} <= set(start)
    rng = random.Random(20261130)
    cuts = sorted(rng.sample(range(end + 1), CUTS))
    resumed = set(rng.sample(cuts, RESUMED))
    for n, cut in enumerate(cuts):
        image = tmp_path / f"cut{n}"
        shutil.copytree(library, image, ignore=shutil.ignore_patterns("catalog.db*", "vectors"))
        for path, data in _replay(ops, cut, start, rng).items():
            if data is not None:
                (image / Path(path).name).write_bytes(data)
        _assert_sound(image / "catalog.db", cut)
        if cut in resumed:
            cli("index", "-q", library=image)
            assert_library_exact(image, photos, model_id)
        shutil.rmtree(image)


def _assert_sound(catalog: Path, cut: int) -> None:
    conn = sqlite3.connect(catalog)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok", cut
        assert conn.execute(
            "SELECT COUNT(*) FROM files f WHERE status = 'ok' AND NOT EXISTS (SELECT 1"
            " FROM embeddings e WHERE e.content_hash = f.content_hash)").fetchone()[0] == 0, cut
        assert conn.execute("SELECT COUNT(*) FROM roots").fetchone()[0] == 1, cut
    finally:
        conn.close()
