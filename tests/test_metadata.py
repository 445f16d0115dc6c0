"""Photo metadata (issue 14.2): EXIF date with its offset, camera, orientation and the
content's type, read from the one open of the file the indexer already does, stored in the
catalog, carried by results; and the migration of a library made before they were stored."""

from __future__ import annotations

import io
import os
import random
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_core.pixels.decode import decode_image, read_header
from clipsearch import CatalogError, Filters, Library
from clipsearch.shapes import draw
from store.salvage import salvage
from tests.helpers import cli_json

SCHEMA1 = Path(__file__).parent / "data" / "catalog-schema1.sql"
OLD_FILE_COLUMNS = ("id", "path", "root_id", "size", "mtime_ns", "content_hash", "width",
                    "height", "taken_at", "status", "error_reason", "error_message",
                    "indexed_at")


def _exif(make=None, model=None, original=None, offset=None, datetime=None,
          orientation=None) -> Image.Exif:
    exif = Image.Exif()
    if make:
        exif[0x010F] = make
    if model:
        exif[0x0110] = model
    if datetime:
        exif[0x0132] = datetime
    if orientation:
        exif[0x0112] = orientation
    sub = exif.get_ifd(0x8769)
    if original:
        sub[0x9003] = original
    if offset:
        sub[0x9011] = offset
    return exif


def _jpeg(exif: Image.Exif | None, size=(60, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, "red").save(out, "JPEG", **({"exif": exif} if exif else {}))
    return out.getvalue()


def test_decode_and_header_read_the_same_metadata():
    data = _jpeg(_exif("Google", "Pixel 7\x00", "2023:06:14 10:11:12", "+02:00",
                       orientation=6))
    for meta in (decode_image(data).meta, read_header(data).meta):
        assert meta.taken_at == "2023-06-14T10:11:12" and meta.taken_offset == "+02:00"
        assert (meta.camera_make, meta.camera_model) == ("Google", "Pixel 7")
        assert meta.orientation == 6 and meta.format == "JPEG"
    assert decode_image(data).width == 40  # orientation 6: rotated


def test_metadata_edge_cases():
    # Only DateTime: its offset is OffsetTime (0x9010), not OffsetTimeOriginal.
    exif = _exif(datetime="2020:01:02 03:04:05")
    exif.get_ifd(0x8769)[0x9010] = "-05:30"
    meta = decode_image(_jpeg(exif)).meta
    assert (meta.taken_at, meta.taken_offset) == ("2020-01-02T03:04:05", "-05:30")
    # A garbage offset is dropped, the date kept (Pillow writes the EXIF sub-IFD only beside
    # an IFD0 tag: hence a make); no EXIF at all: nothing but the type.
    meta = decode_image(_jpeg(_exif("Leica", original="2021:05:06 07:08:09",
                                         offset="noon"))).meta
    assert (meta.taken_at, meta.taken_offset) == ("2021-05-06T07:08:09", None)
    meta = decode_image(_jpeg(None)).meta
    assert (meta.taken_at, meta.camera_make, meta.orientation) == (None, None, 1)
    # The type is the content's: a PNG named .jpg is a PNG.
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    assert read_header(png.getvalue()).meta.format == "PNG"


def _photos(folder: Path) -> dict[str, dict]:
    """Six photos: with and without EXIF, a PNG named .jpg, and one broken file."""
    folder.mkdir()
    facts = {
        "pixel.jpg": dict(exif=_exif("Google", "Pixel 7", "2023:06:14 10:11:12", "+02:00"),
                          fmt="JPEG", camera=("Google", "Pixel 7"), offset="+02:00"),
        "canon.jpg": dict(exif=_exif("Canon", "Canon EOS R5", "2019:12:31 23:59:59"),
                          fmt="JPEG", camera=("Canon", "Canon EOS R5"), offset=None),
        "rotated.jpg": dict(exif=_exif("Apple", "iPhone 14", orientation=8), fmt="JPEG",
                            camera=("Apple", "iPhone 14"), offset=None),
        "plain.jpg": dict(exif=None, fmt="JPEG", camera=(None, None), offset=None),
        "png-named.jpg": dict(exif=None, fmt="PNG", camera=(None, None), offset=None),
    }
    for i, (name, fact) in enumerate(facts.items()):
        img = draw("red" if i % 2 else "blue", "circle", size=(80 + i, 60),
                   rng=random.Random(i))
        kwargs = {"exif": fact["exif"]} if fact["exif"] else {}
        img.save(folder / name, fact["fmt"], **kwargs)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return {str(folder / name): fact for name, fact in facts.items()}


def _downgrade(lib_path: Path) -> None:
    """Rewrite the library's catalog in the schema of tests/data/catalog-schema1.sql: the
    same rows (their old columns) and vectors, schema_version 1."""
    db = lib_path / "catalog.db"
    old = lib_path / "old.db"
    conn = sqlite3.connect(old)
    conn.executescript(SCHEMA1.read_text())
    conn.execute("ATTACH DATABASE ? AS new", (str(db),))
    cols = ", ".join(OLD_FILE_COLUMNS)
    for table, select in (("meta", "*"), ("roots", "*"), ("models", "*"),
                          ("embeddings", "*"), ("files", cols)):
        target = f"{table}({cols})" if table == "files" else table
        conn.execute(f"INSERT INTO {target} SELECT {select} FROM new.{table}")
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.commit()
    conn.execute("DETACH DATABASE new")
    conn.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.move(old, db)


def _old_state(db: Path) -> tuple[list, list]:
    conn = sqlite3.connect(db)
    rows = conn.execute(f"SELECT {', '.join(OLD_FILE_COLUMNS)} FROM files ORDER BY id")
    files = [r[:-1] for r in rows]  # indexed_at is rewritten by a refresh
    vectors = conn.execute("SELECT * FROM embeddings ORDER BY 1, 2").fetchall()
    conn.close()
    return files, vectors


def test_schema1_library_migrates_and_fills_metadata_without_embedding(tmp_path):
    photos = tmp_path / "photos"
    facts = _photos(photos)
    lib_path = tmp_path / "lib"
    with Library(lib_path, model="shapes-tiny") as lib:
        assert lib.index([photos]).indexed == 5
    _downgrade(lib_path)
    files, vectors = _old_state(lib_path / "catalog.db")
    assert len(files) == 6 and len(vectors) == 5

    # A read-only open migrates nothing and still searches; a camera filter says what to do.
    with Library(lib_path, readonly=True) as lib:
        assert len(lib.query("a red circle", limit=10)) == 5
        with pytest.raises(CatalogError, match="run `clipsearch index` once"):
            lib.query("a red circle", filters=Filters(camera="pixel"))
    assert _old_state(lib_path / "catalog.db") == (files, vectors)

    with Library(lib_path) as lib:  # opening writable migrates: every row and vector kept
        assert lib.catalog.get_meta("schema_version") == "2"
        assert _old_state(lib_path / "catalog.db") == (files, vectors)
        report = lib.index([photos])
        assert (report.indexed, report.reused, report.known_errors) == (0, 5, 1)
        assert _old_state(lib_path / "catalog.db") == (files, vectors)  # same vectors
        hits = {r.path: r for r in lib.query("a red circle", limit=10)}
        assert set(hits) == set(facts)
        for path, fact in facts.items():
            hit = hits[path]
            assert hit.format == fact["fmt"] and hit.taken_offset == fact["offset"], path
            assert (hit.camera_make, hit.camera_model) == fact["camera"], path
        again = lib.index([photos])  # one time only
        assert (again.todo, again.unchanged, again.indexed) == (0, 5, 0)
        pixel = lib.query("a red circle", filters=Filters(camera="PIXEL"))
        assert [r.path for r in pixel] == [str(photos / "pixel.jpg")]


def test_salvage_of_a_schema1_catalog_keeps_its_rows(tmp_path):
    """doctor --repair copies a damaged schema-1 catalog into a fresh schema-2 one: the
    columns it lacks must not make it drop every file row."""
    photos = tmp_path / "photos"
    _photos(photos)
    lib_path = tmp_path / "lib"
    with Library(lib_path, model="shapes-tiny") as lib:
        lib.index([photos])
    _downgrade(lib_path)
    files, vectors = _old_state(lib_path / "catalog.db")
    report = salvage(lib_path / "catalog.db")
    assert report.kept["files"] == 6 and report.kept["embeddings"] == 5
    assert _old_state(lib_path / "catalog.db") == (files, vectors)
    with Library(lib_path) as lib:
        assert lib.index([photos]).indexed == 0


def test_results_say_where_their_date_comes_from(tmp_path):
    photos = tmp_path / "photos"
    facts = _photos(photos)
    os.utime(photos / "plain.jpg", (1_600_000_000, 1_600_000_000))
    lib_path = tmp_path / "lib"
    with Library(lib_path, model="shapes-tiny") as lib:
        lib.index([photos])
    hits = {h["path"]: h for h in cli_json("query", "a circle", "-n", "10", library=lib_path)}
    assert set(hits) == set(facts)
    pixel, plain = hits[str(photos / "pixel.jpg")], hits[str(photos / "plain.jpg")]
    assert (pixel["taken_at"], pixel["taken_at_source"], pixel["taken_offset"]) == (
        "2023-06-14T10:11:12", "exif", "+02:00")
    assert plain["taken_at_source"] == "mtime" and plain["taken_offset"] is None
    from datetime import datetime
    assert plain["taken_at"] == datetime.fromtimestamp(1_600_000_000).isoformat()
    assert hits[str(photos / "rotated.jpg")]["width"] == 60  # orientation 8
    listed = cli_json("query", "--camera", "canon eos", library=lib_path)
    assert [h["path"] for h in listed] == [str(photos / "canon.jpg")]
    pngs = cli_json("query", "a circle", "--type", "png", library=lib_path)
    assert [h["path"] for h in pngs] == [str(photos / "png-named.jpg")]
    assert np.isfinite(pngs[0]["score"])
