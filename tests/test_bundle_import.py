"""`models import` against hostile bundles: a clear message naming the problem, nothing
written, and never an unlisted member extracted (issue 10 item 6)."""

from __future__ import annotations

import hashlib
import io
import json
import resource
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from clipsearch.cli import main

from .reliability_support import subprocess_env

GOOD = b"weights"


def _manifest(files: list, **extra: object) -> dict:
    return {"format": "clipsearch-model", "version": 1, "kind": "local-dir",
            "folder_name": "m", "spec": {"model": "local-dir:m", "pretrained": None},
            "files": files, **extra}


def _entry(name: str, data: bytes = GOOD) -> dict:
    return {"name": name, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _bundle(path: Path, manifest: dict, members: list[tuple[str, bytes]],
            mode: str = "w", manifest_first: bool = True) -> Path:
    entries = [(f"files/{n}", d) for n, d in members]
    meta = ("manifest.json", json.dumps(manifest).encode())
    entries = [meta, *entries] if manifest_first else [*entries, meta]
    with tarfile.open(path, mode) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _import(store: Path, bundle: Path) -> tuple[int, str]:
    # catch_exceptions=False: a TypeError/KeyError traceback fails the test.
    result = CliRunner().invoke(main, ["models", "--models-dir", str(store), "import",
                                       str(bundle)], catch_exceptions=False)
    return result.exit_code, result.stderr


def _nothing_written(store: Path) -> bool:
    return not store.exists() or not any(store.rglob("*"))


@pytest.mark.parametrize(("manifest", "members", "message"), [
    (_manifest([_entry("a")], version="2"), [("a", GOOD)],
     "'version' must be a whole number >= 1, got '2'"),
    (_manifest([{"sha256": "0" * 64, "size": 1}]), [], "'files[0].name' must be a file name"),
    (_manifest([_entry("a"), {"name": "b", "sha256": "xyz", "size": 7}]), [("a", GOOD)],
     "'files[1].sha256' must be 64 lowercase hex digits"),
    (_manifest([_entry("a")] * 1, spec=["x"]), [("a", GOOD)], "'spec' must be an object"),
    (_manifest([{**_entry("a"), "size": "7"}]), [("a", GOOD)],
     "'files[0].size' must be a whole number"),
    (_manifest([_entry("a"), _entry("a/b")]), [("a", GOOD), ("a/b", GOOD)],
     "lists both 'a' and 'a/b': 'a' cannot be a file and a folder"),
    (_manifest([_entry("a")], version=99), [("a", GOOD)], "needs a newer clipsearch"),
    (_manifest([_entry("../x")]), [], "unsafe file name '../x'"),
])
def test_malformed_manifest_gets_a_message_naming_the_field(tmp_path, manifest, members,
                                                            message):
    store = tmp_path / "store"
    code, err = _import(store, _bundle(tmp_path / "b.tar", manifest, members))
    assert code == 1 and message in err, err
    assert _nothing_written(store)


def test_a_member_not_in_the_manifest_is_refused_by_name(tmp_path):
    store = tmp_path / "store"
    bundle = _bundle(tmp_path / "b.tar", _manifest([_entry("a")]), [("a", GOOD),
                                                                   ("extra", b"x")])
    code, err = _import(store, bundle)
    assert code == 1 and "'files/extra' is not listed" in err and _nothing_written(store)


@pytest.mark.parametrize("manifest_first", [True, False])
def test_unlisted_huge_member_is_never_extracted(tmp_path, manifest_first):
    """A ~70 KB .tar.gz carrying 64 MB of zeros not in the manifest. The import runs with a
    16 MB file-size limit (RLIMIT_FSIZE): extracting the member would kill it (SIGXFSZ)."""
    bundle = _bundle(tmp_path / "bomb.tar.gz", _manifest([_entry("a")]),
                     [("a", GOOD), ("bomb", bytes(64 << 20))], "w:gz", manifest_first)
    assert bundle.stat().st_size < 1 << 20
    store = tmp_path / "store"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))

    proc = subprocess.run(
        [sys.executable, "-c", "from clipsearch.cli import main; main()", "models",
         "--models-dir", str(store), "import", str(bundle)],
        capture_output=True, text=True, env=subprocess_env(tmp_path), preexec_fn=limit,
        timeout=120)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "'files/bomb' is not listed" in proc.stderr and "Traceback" not in proc.stderr
    assert _nothing_written(store)


@pytest.mark.parametrize("manifest_first", [True, False])
def test_not_enough_space_is_said_before_extracting(tmp_path, manifest_first):
    """The manifest lists a 1 PB file, and a bare tar header says so too (its data cut off):
    the import says how much is needed and available, and writes nothing, whether the
    manifest comes first or (as export writes it) last."""
    size = 1 << 50
    manifest = _manifest([{"name": "big", "sha256": "0" * 64, "size": size}])
    data = json.dumps(manifest).encode()
    info = tarfile.TarInfo("manifest.json")
    info.size = len(data)
    meta = info.tobuf(tarfile.PAX_FORMAT) + data + bytes(-len(data) % 512)
    header = tarfile.TarInfo("files/big")
    header.size = size
    big = header.tobuf(tarfile.PAX_FORMAT)
    path = tmp_path / "big.tar"
    path.write_bytes(meta + big if manifest_first else big + meta)
    store = tmp_path / "store"
    code, err = _import(store, path)
    assert code == 1 and "Not enough disk space" in err, err
    assert "needs 1125.9 TB" in err and "available" in err
    assert _nothing_written(store)
