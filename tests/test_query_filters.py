"""Photo filters inside the vector search (issue 14.2): date (EXIF, else mtime), orientation,
size, camera and file type (by content) select ids in SQLite that the exact scan is limited
to, so a filter keeping a few photos still returns their exact top-k."""

from __future__ import annotations

import os
import random
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsearch import Filters, Library
from clipsearch.shapes import COLOURS, SHAPES, draw
from search import searcher
from tests.helpers import cli, cli_json

SIZES = ((96, 96), (140, 100), (100, 140), (200, 150))
CAMERAS = (("Google", "Pixel 7"), ("Canon", "Canon EOS R5"), ("Apple", "iPhone 14 Pro"),
           ("NIKON CORPORATION", "NIKON D750"))


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """96 photos: sizes, PNG or JPEG, mtimes spread over 2019-2024, a third of the JPEGs
    with an EXIF date that differs from their mtime, half of them with a camera, some PNGs
    named .jpg. Returns the facts per path."""
    root = tmp_path_factory.mktemp("filters")
    photos = root / "photos"
    photos.mkdir()
    rng = random.Random(8080)
    facts: dict[str, dict] = {}
    n = 0
    for colour in COLOURS:
        for shape in SHAPES:
            for _ in range(4):
                w, h = SIZES[n % 4]
                img = draw(colour, shape, size=(w, h), rng=rng)
                jpeg = n % 5 in (0, 1, 3)  # every size in both types
                misnamed = n % 10 == 4  # a PNG named .jpg: its type is its content's
                path = photos / f"{colour}-{shape}-{n}.{'jpg' if jpeg or misnamed else 'png'}"
                taken, camera = None, ("", "")
                exif = Image.Exif()
                if jpeg and n % 3 == 0:
                    taken = datetime(2018 + n % 7, 1 + n % 12, 1 + n % 28, 12, n % 60, n // 60)
                    exif[0x0132] = taken.strftime("%Y:%m:%d %H:%M:%S")  # DateTime
                if jpeg and n % 2 == 0:
                    camera = CAMERAS[n // 2 % 4]
                    exif[0x010F], exif[0x0110] = camera
                if jpeg:
                    img.save(path, "JPEG", quality=90, **({"exif": exif} if len(exif) else {}))
                else:
                    img.save(path, "PNG")
                mtime = datetime(2019 + n % 6, 1 + (n * 5) % 12, 1 + (n * 7) % 28, 8, n % 60,
                                 n // 60)
                os.utime(path, (mtime.timestamp(), mtime.timestamp()))
                facts[str(path)] = {"w": w, "h": h, "jpeg": jpeg, "camera": camera,
                                    "date": (taken or mtime).isoformat()}
                n += 1
    with Library(root / "lib", model="shapes-tiny") as lib:
        lib.index([photos])
    return root / "lib", facts


def _keeps(fact: dict, f: Filters) -> bool:
    """The filters' meaning, written independently of their SQL."""
    if f.after and fact["date"] < _start(f.after):
        return False
    if f.before and fact["date"] >= _start(f.before):
        return False
    w, h = fact["w"], fact["h"]
    if f.orientation and f.orientation != ("landscape" if w > h else
                                           "portrait" if h > w else "square"):
        return False
    if f.min_size:
        mw, mh = (int(v) for v in f.min_size.split("x"))
        if w < mw or h < mh:
            return False
    if f.camera:
        make, model = fact["camera"]
        text = f.camera.lower()
        if not (text in make.lower() or text in model.lower()
                or (make and text in f"{make} {model}".lower())):
            return False
    return not (f.types and (fact["jpeg"] != ("jpeg" in f.types)))


def _start(text: str) -> str:
    parts = [int(p) for p in text.split("-")] + [1, 1]
    return datetime(parts[0], parts[1], parts[2]).isoformat()


CASES = [
    Filters(after="2021"),
    Filters(before="2020-06"),
    Filters(after="2020-03", before="2022-07-15"),
    Filters(orientation="portrait"),
    Filters(orientation="square", types=("png",)),
    Filters(min_size="150x120"),
    Filters(types=("jpeg",), after="2023"),
    Filters(after="2024-03", orientation="landscape"),  # keeps very few
    Filters(types=("png",)),  # includes the PNGs named .jpg
    Filters(types=("jpeg",)),
    Filters(camera="pixel"),
    Filters(camera="CANON eos", orientation="portrait"),
    Filters(camera="google pixel"),  # make and model together
    Filters(camera="on", after="2020"),  # Canon, iPhone, NIKON CORPORATION
]


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "faiss-selector"])
@pytest.mark.parametrize("filters", CASES, ids=lambda f: repr(f))
def test_filtered_results_equal_brute_force(library, filters, direct, monkeypatch):
    """Both ways a filter is searched: a selective one's rows scored directly, a broad one
    through FAISS's id selector (forced here by lowering the cut-over)."""
    if not direct:
        monkeypatch.setattr(searcher, "DIRECT_MAX", 0)
    lib_path, facts = library
    with Library(lib_path) as lib:
        ids, vectors = lib.catalog.vectors(lib.default_model.model_id)
        rows = lib.catalog.file_rows(ids.tolist())
        query = lib.embed_text(["a red star"])[0]
        keep = np.array([_keeps(facts[rows[i]["path"]], filters) for i in ids.tolist()])
        assert keep.any()
        scores = vectors[keep] @ query
        order = sorted(zip((-scores).tolist(), ids[keep].tolist(), strict=True))
        expected = [file_id for _, file_id in order[:10]]
        got = lib.query("a red star", limit=10, filters=filters)
        assert [r.file_id for r in got] == expected
        assert np.allclose([r.score for r in got], [-s for s, _ in order[:10]], atol=1e-5)


def test_paging_and_listing_by_date(library):
    lib_path, facts = library
    with Library(lib_path) as lib:
        whole = lib.query("a blue circle", limit=30)
        pages = [lib.query("a blue circle", limit=10, offset=k) for k in (0, 10, 20)]
        assert [r for page in pages for r in page] == list(whole)
        listed = lib.query(None, filters=Filters(after="2022"), limit=200)
        want = sorted((p for p, f in facts.items() if f["date"] >= "2022"),
                      key=lambda p: facts[p]["date"], reverse=True)
        assert [r.path for r in listed] == want  # dates are distinct: no ties
        assert all(r.score is None for r in listed)
        second = lib.query(None, filters=Filters(after="2022"), limit=5, offset=5)
        assert [r.path for r in second] == want[5:10] and second[0].rank == 6


def test_bad_filters_get_clear_messages(library):
    lib_path, _ = library
    with pytest.raises(ValueError, match="impossible date range"):
        Filters(after="2023-06", before="2023-06")
    with pytest.raises(ValueError, match="takes a date like"):
        Filters(after="June")
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        Filters(min_size="big")
    with Library(lib_path) as lib:
        nothing = lib.query("a red star", filters=Filters(after="2031"))
        assert nothing == [] and nothing.reason == "no photo matches the filters"
    for args in (["--after", "2024", "--before", "2023"], ["--before", "13/2023"],
                 ["--min-size", "10"], ["--type", "doc"]):
        bad = cli("query", "a red star", *args, library=lib_path, ok=False)
        assert bad.exit_code == 2 and "Traceback" not in bad.output, args
    none = cli("query", "a red star", "--after", "2031", "--json", library=lib_path)
    assert none.stdout.strip() == "[]" and "no photo matches the filters" in none.stderr


def test_cli_filters_and_listing(library):
    lib_path, facts = library
    hits = cli_json("query", "a green square", "--orientation", "portrait", "--type", "png",
                    "-n", "5", library=lib_path)
    assert hits and all(h["height"] > h["width"] and not facts[h["path"]]["jpeg"]
                        and h["format"] == "PNG" for h in hits)
    pixels = cli_json("query", "--camera", "Pixel", "-n", "100", library=lib_path)
    assert sorted(h["path"] for h in pixels) == sorted(
        p for p, f in facts.items() if f["camera"][1] == "Pixel 7")
    assert {(h["camera_make"], h["camera_model"]) for h in pixels} == {("Google", "Pixel 7")}
    listed = cli_json("query", "--after", "2024", "-n", "3", library=lib_path)
    newest = sorted(facts, key=lambda p: facts[p]["date"], reverse=True)[:3]
    assert [h["path"] for h in listed] == newest
    page = cli_json("query", "a green square", "-n", "3", "--offset", "3", library=lib_path)
    assert [h["rank"] for h in page] == [4, 5, 6]


@pytest.mark.parametrize("zone", ["UTC", "America/Sao_Paulo", "Pacific/Kiritimati",
                                  "Etc/GMT+12", "Asia/Manila", "Europe/London"])
def test_date_clauses_keep_what_the_local_date_keeps(zone, monkeypatch):
    """The date filter's SQL converts an mtime to local time only near the day it is
    compared with; it keeps exactly the rows the plain local date keeps, in zones 14 hours
    ahead and 12 behind, one whose DST began at midnight (Sao Paulo, 2018-11-04), Manila
    before 1845 (local mean time 15:56 behind UTC), EXIF dates and files with no mtime."""
    import calendar
    import sqlite3
    import time
    from datetime import date

    from search.filters import DATE_SQL

    if zone != "UTC" and not os.path.exists(f"/usr/share/zoneinfo/{zone}"):
        pytest.skip(f"no tz database entry for {zone}")
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        days = [date(2018, 11, 4), date(2018, 11, 5), date(2024, 2, 29), date(1970, 1, 1),
                date(1844, 12, 30), date(2000, 1, 1)]
        rng = np.random.default_rng(3)
        conn = sqlite3.connect(":memory:")
        conn.execute("CREATE TABLE files (id INTEGER PRIMARY KEY, taken_at TEXT, mtime_ns)")
        rows = []
        for day in days:
            start = calendar.timegm(day.timetuple())
            seconds = start + np.concatenate([np.arange(-3 * 86400, 3 * 86400, 1800),
                                              rng.integers(-9 * 86400, 9 * 86400, 300)])
            rows += [(None, int(s) * 10**9 + int(rng.integers(0, 10**9))) for s in seconds]
            rows += [(f"{day.isoformat()}T00:00:00", 0), (f"{day.isoformat()}T23:59:59", None)]
        rows += [(None, None), ("2018-11-03T23:59:59", 10**18)]
        conn.executemany("INSERT INTO files (taken_at, mtime_ns) VALUES (?, ?)", rows)
        for day in days:
            for key, op in (("after", ">="), ("before", "<")):
                clauses, params = Filters(**{key: day.isoformat()}).where()
                got = [r[0] for r in conn.execute(
                    f"SELECT id FROM files WHERE {clauses[0]} ORDER BY id", params)]
                want = [r[0] for r in conn.execute(
                    f"SELECT id FROM files WHERE {DATE_SQL} {op} ? ORDER BY id",
                    [day.isoformat()])]
                assert got == want, (zone, day, key)
                assert 0 < len(got) < len(rows)
    finally:
        monkeypatch.undo()  # TZ as it was (set or not), then the process's zone from it
        time.tzset()


def test_a_filters_id_selector_is_every_match_in_id_order(library):
    """filtered_ids hands a search its selector as one string from SQLite (not a row per
    id): the same ids as the rows, sorted, and none when nothing matches."""
    lib_path, _ = library
    with Library(lib_path) as lib:
        for filters in [*CASES, Filters(after="2099")]:
            clauses, params = filters.where()
            where = " AND ".join(["status = 'ok'", *clauses])
            want = sorted(r[0] for r in lib.catalog.conn.execute(
                f"SELECT id FROM files WHERE {where}", params))
            got = lib.catalog.filtered_ids(clauses, params)
            assert got.dtype == np.int64 and got.tolist() == want, filters
        folder = lib.roots[0]
        inside = lib.catalog.filtered_ids([], [], folder)
        assert inside.tolist() == sorted(r[0] for r in lib.catalog.conn.execute(
            "SELECT id FROM files WHERE status = 'ok'"))
