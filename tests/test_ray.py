"""Indexing on a real Ray cluster (indexer/ray_executor.py) gives a local run's library: the
same rows, error rows and vectors, also after a worker or the driver is killed mid-run.

One local cluster (2 CPUs, loopback only) serves the whole module: in-process runs join it,
the CLI driver killed in a subprocess joins it by its address.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from clipsearch import IndexSettings, Library, embed_shards
from tests.helpers import draw_photos
from tests.reliability_support import (
    MODEL,
    assert_library_exact,
    catalog_rows,
    default_model_id,
    subprocess_env,
    top_k,
    vectors_by_path,
)

ray = pytest.importorskip("ray", reason="the cluster extra: pip install 'clipsearch[cluster]'")

ROW_FIELDS = ("size", "mtime_ns", "content_hash", "width", "height", "taken_at", "status",
              "error_reason", "error_message", "taken_offset", "camera_make", "camera_model",
              "exif_orientation", "format")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint() -> str:
    """The S3 endpoint (a local moto server, started by `s3`) for the driver and, set before
    the cluster starts, for its workers: pyarrow reads AWS_ENDPOINT_URL. Dummy credentials;
    no other address is ever used."""
    endpoint = f"http://127.0.0.1:{_free_port()}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def cluster(s3_endpoint) -> str:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def s3(s3_endpoint) -> object:
    """A real S3-compatible server on 127.0.0.1 (moto, the dev extra); pyarrow's S3
    filesystem for it, allowed to make buckets."""
    server_module = pytest.importorskip("moto.server", reason="the dev extra: moto[server]")
    from pyarrow import fs

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    port = int(s3_endpoint.rsplit(":", 1)[1])
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port,
                                              verbose=False)
    server.start()
    try:
        yield fs.S3FileSystem(endpoint_override=s3_endpoint, access_key="testing",
                              secret_key="testing", region="us-east-1",
                              allow_bucket_creation=True)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Shapes, a non-image named .jpg, and a PNG cut short: two kinds of error rows."""
    folder = tmp_path_factory.mktemp("ray-photos") / "photos"
    written = draw_photos(folder, per_pair=3, size=256)
    (folder / "not-a-photo.jpg").write_bytes(b"this is not a JPEG")
    png = Path(written[0][0]).read_bytes()
    (folder / "cut-short.png").write_bytes(png[: len(png) // 2])
    return folder


@pytest.fixture(scope="module")
def local_library(photos, tmp_path_factory) -> Path:
    library = tmp_path_factory.mktemp("ray-local") / "library"
    with Library(library, model=MODEL) as lib:
        lib.index([photos])
    return library


def _good_photos(photos: Path, tmp: Path) -> Path:
    """The shapes only (assert_library_exact wants every file indexed)."""
    folder = tmp / "good"
    folder.mkdir()
    for path in photos.iterdir():
        if path.suffix == ".png" and path.name != "cut-short.png":
            os.link(path, folder / path.name)
    return folder


def _rows(library: Path) -> dict[bytes, tuple]:
    return {p: tuple(r[f] for f in ROW_FIELDS) for p, r in catalog_rows(library).items()}


def _assert_same_vectors(library: Path, reference: Path) -> None:
    model_id = default_model_id(reference)
    # Keyed by file name: the folders differ, the names in them are unique.
    mine, theirs = ({os.path.basename(p): v for p, v in vectors_by_path(lib, model_id).items()}
                    for lib in (library, reference))
    assert set(mine) <= set(theirs) and len(mine) >= len(theirs) - 2  # less the 2 errors
    for path, vector in mine.items():
        other = theirs[path]
        cosine = float(vector @ other / np.linalg.norm(vector) / np.linalg.norm(other))
        assert cosine >= 0.9999, (path, cosine)


def _committed(library: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{library / 'catalog.db'}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute("SELECT count(*) FROM files").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0  # not made yet


def _encoder_workers() -> list[int]:
    """Pids of the Ray worker processes running the encoder actor (Ray sets their title)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if b"ray::" in cmdline and b"_EncodeWorker" in cmdline:
            pids.append(int(entry))
    return pids


def test_ray_run_equals_a_local_run(cluster, photos, local_library, tmp_path):
    library = tmp_path / "library"
    seen = []
    with Library(library, model=MODEL) as lib:
        report = lib.index([photos], settings=IndexSettings(ray="auto", batch_size=8),
                           progress=seen.append)
    with Library(local_library) as lib:
        local = lib.index()  # unchanged: counts come from the first run below
    assert local.unchanged == report.indexed
    assert sorted(s.path for s in report.skipped) == [str(photos / "cut-short.png"),
                                                       str(photos / "not-a-photo.jpg")]
    assert not report.interrupted
    assert _rows(library) == _rows(local_library)  # the error rows too
    _assert_same_vectors(library, local_library)
    assert [[p for p, _ in q] for q in top_k(library)] == [
        [p for p, _ in q] for q in top_k(local_library)]
    assert seen[-1].done == seen[-1].total == report.todo and seen[-1].workers == 2


def test_rerun_on_ray_changes_nothing(cluster, photos, local_library, tmp_path):
    library = tmp_path / "library"
    with Library(library, model=MODEL) as lib:
        lib.index([photos], settings=IndexSettings(ray="auto"))
        again = lib.index(settings=IndexSettings(ray="auto"))
    assert again.todo == 0 and again.indexed == 0 and again.known_errors == 2
    assert _rows(library) == _rows(local_library)


def test_a_killed_worker_is_retried_and_the_library_is_exact(cluster, photos, local_library,
                                                             tmp_path):
    good = _good_photos(photos, tmp_path)
    library = tmp_path / "library"
    outcome: dict = {}

    def run() -> None:
        with Library(library, model=MODEL) as lib:
            outcome["report"] = lib.index([good], settings=IndexSettings(ray="auto",
                                                                         batch_size=2))

    thread = threading.Thread(target=run)
    thread.start()
    killed = []
    deadline = time.monotonic() + 60
    while thread.is_alive() and not killed and time.monotonic() < deadline:
        pids = _encoder_workers()
        if pids and _committed(library) > 0:  # mid-run: some batches are in the catalog
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            killed = pids
        time.sleep(0.01)
    thread.join(120)
    assert killed, "the run ended before a worker could be killed"
    assert not thread.is_alive() and not outcome["report"].interrupted
    total = len(list(good.iterdir()))
    assert outcome["report"].indexed == total
    assert_library_exact(library, good, default_model_id(library))
    _assert_same_vectors(library, local_library)


def test_a_killed_driver_resumes_exactly(cluster, photos, local_library, tmp_path):
    good = _good_photos(photos, tmp_path)
    library = tmp_path / "library"
    argv = [sys.executable, "-m", "clipsearch.cli", "index", str(good), "--library",
            str(library), "--model", MODEL, "--ray", cluster, "--batch-size", "2", "-q"]
    driver = subprocess.Popen(argv, env=subprocess_env(tmp_path), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    total = len(list(good.iterdir()))
    deadline = time.monotonic() + 90
    while driver.poll() is None and _committed(library) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    driver.kill()
    _, err = driver.communicate()
    assert driver.returncode == -signal.SIGKILL, err.decode()[-2000:]
    kept = _committed(library)
    assert 0 < kept < total, kept
    with Library(library, model=MODEL) as lib:
        report = lib.index(settings=IndexSettings(ray="auto"))
    assert report.todo == total - kept and not report.interrupted
    assert_library_exact(library, good, default_model_id(library))
    _assert_same_vectors(library, local_library)


def _by_name(library: Path) -> dict[str, tuple]:
    return {os.path.basename(p).decode(): row for p, row in _rows(library).items()}


def test_shards_import_like_a_local_run_and_idempotently(cluster, photos, local_library,
                                                         tmp_path):
    folder, out, library = tmp_path / "photos", tmp_path / "shards", tmp_path / "library"
    shutil.copytree(photos, folder)  # copy2: the same mtimes as the local run's files
    total = len(list(folder.iterdir()))
    assert embed_shards(folder, str(out), ray="auto", model=MODEL, settings=IndexSettings(
        batch_size=16)) == total
    changed = folder / "red-circle-0.png"
    changed.write_bytes(b"no longer the embedded picture")  # stale: left for the next run
    with Library(library) as lib:
        first = lib.import_shards(out)
        generation = lib.catalog.generation
        again = lib.import_shards(out)
        assert lib.catalog.generation == generation  # re-importing wrote nothing
        shard = next(out.glob("*.parquet"))
        (out / "cut-short.parquet").write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
        cut = lib.import_shards(out)
        assert lib.catalog.generation == generation
    assert (first.imported, first.stale, first.ignored) == (total - 1, 1, [])
    assert (again.imported, again.unchanged, again.stale) == (0, total - 1, 1)
    assert cut.ignored == [str(out / "cut-short.parquet")] and cut.imported == 0
    mine, local = _by_name(library), _by_name(local_library)
    assert mine == {name: row for name, row in local.items() if name != changed.name}
    _assert_same_vectors(library, local_library)
    with Library(library) as lib:
        report = lib.index()
    assert report.todo == 1 and [s.path for s in report.skipped] == [str(changed)]


def test_a_stopped_ray_run_commits_what_arrived_and_the_rerun_does_the_rest(
        cluster, photos, local_library, tmp_path):
    good = _good_photos(photos, tmp_path)
    library = tmp_path / "library"
    total = len(list(good.iterdir()))
    cancel = threading.Event()

    def progress(p) -> None:
        if p.done >= 10:
            cancel.set()  # as Ctrl-C does (indexer/interrupt.py)

    with Library(library, model=MODEL) as lib:
        stopped = lib.index([good], settings=IndexSettings(ray="auto", batch_size=4,
                                                           cancel=cancel), progress=progress)
        assert stopped.interrupted and 10 <= stopped.committed < total
        assert _committed(library) == stopped.committed  # what it reports is what it kept
        rest = lib.index(settings=IndexSettings(ray="auto"))
    assert rest.todo == total - stopped.committed and not rest.interrupted
    assert_library_exact(library, good, default_model_id(library))
    _assert_same_vectors(library, local_library)


def _cli(tmp_path: Path, cluster: str, *args: str) -> subprocess.CompletedProcess:
    """The real CLI in a child process, joining the module's cluster (RAY_ADDRESS) through
    `--ray auto`: no second cluster is started."""
    env = {**subprocess_env(tmp_path), "RAY_ADDRESS": cluster}
    return subprocess.run([sys.executable, "-m", "clipsearch.cli", *args], env=env,
                          capture_output=True, text=True, timeout=180)


def test_photos_and_shards_on_s3(cluster, s3, photos, local_library, tmp_path):
    """embed-shards s3://photos --out s3://shards, then import-shards s3://shards, through
    the CLI: the library holds the photos by their URIs, with a local run's rows."""
    s3.create_dir("bucket")
    for path in sorted(photos.iterdir()):
        with s3.open_output_stream(f"bucket/photos/{path.name}") as out:
            out.write(path.read_bytes())
    with s3.open_output_stream("bucket/photos/notes.txt") as out:
        out.write(b"not an image name: not listed")
    total = len(list(photos.iterdir()))
    embedded = _cli(tmp_path, cluster, "embed-shards", "s3://bucket/photos", "--ray", "auto",
                    "--out", "s3://bucket/shards", "--model", MODEL, "--batch-size", "16",
                    "--json")
    assert embedded.returncode == 0, embedded.stderr[-2000:]
    assert json.loads(embedded.stdout)["files"] == total
    with s3.open_output_stream("bucket/photos/red-circle-0.png") as out:
        out.write(b"replaced since it was embedded")  # stale: not imported
    library = tmp_path / "library"
    imported = _cli(tmp_path, cluster, "import-shards", "s3://bucket/shards", "--library",
                    str(library), "--json")
    assert imported.returncode == 0, imported.stderr[-2000:]
    report = json.loads(imported.stdout)
    assert (report["imported"], report["stale"], report["ignored"]) == (total - 1, 1, [])
    rows = _rows(library)
    assert all(p.startswith(b"s3://bucket/photos/") for p in rows)
    without_mtime = [f for f in ROW_FIELDS if f != "mtime_ns"]  # S3's LastModified differs

    def comparable(library: Path) -> dict:
        return {name: tuple(v for f, v in zip(ROW_FIELDS, row, strict=True)
                            if f in without_mtime) for name, row in _by_name(library).items()}

    assert comparable(library) == {n: r for n, r in comparable(local_library).items()
                                   if n != "red-circle-0.png"}
    _assert_same_vectors(library, local_library)
    with Library(library) as lib:
        again = lib.import_shards("s3://bucket/shards")
        rerun = lib.index()  # a local run leaves the object-store root to import-shards
    assert (again.imported, again.unchanged, again.stale) == (0, total - 1, 1)
    assert rerun.todo == 0 and rerun.skipped == [] and rerun.removed == 0
    assert _rows(library) == rows
    with Library(library) as lib:
        assert lib.remove_root("s3://bucket/photos") == total - 1  # named by its URI
        assert lib.roots == []


def test_cli_index_on_ray(cluster, photos, local_library, tmp_path):
    library = tmp_path / "library"
    done = _cli(tmp_path, cluster, "index", str(photos), "--library", str(library),
                "--model", MODEL, "--ray", "auto", "--batch-size", "8", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    assert _rows(library) == _rows(local_library)
    _assert_same_vectors(library, local_library)
