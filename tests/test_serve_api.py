"""The HTTP API of `clipsearch serve`, through the framework's test client (no socket)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from clipsearch import Library
from tests.serve_support import client, indexed_library, png_bytes


@pytest.fixture(scope="module")
def lib_dir(tmp_path_factory):
    return indexed_library(tmp_path_factory.mktemp("serve-api"))


@pytest.fixture(scope="module")
def api(lib_dir):
    with Library(lib_dir) as lib, client(lib) as c:
        yield c


def test_text_search_is_shaped_like_the_cli_json_with_urls(api):
    r = api.get("/api/search", params={"q": "a red circle", "limit": 3})
    assert r.status_code == 200
    body = r.json()
    assert body["query"] == "a red circle" and body["more"] is True
    first = body["results"][0]
    assert "red-circle" in first["path"] and first["rank"] == 1
    assert {"score", "file_id", "width", "height", "taken_at", "root"} <= set(first)
    assert first["thumbnail"] == f"/api/thumbnail/{first['file_id']}?size=256"
    assert first["file"] == f"/api/file/{first['file_id']}"


def test_offset_pages_through_one_ranking(api):
    whole = api.get("/api/search", params={"q": "a blue star", "limit": 10}).json()["results"]
    second = api.get("/api/search", params={"q": "a blue star", "limit": 5,
                                            "offset": 5}).json()["results"]
    assert [r["file_id"] for r in second] == [r["file_id"] for r in whole[5:]]
    assert [r["rank"] for r in second] == [6, 7, 8, 9, 10]
    last = api.get("/api/search", params={"q": "a blue star", "limit": 5, "offset": 20}).json()
    assert len(last["results"]) == 4 and last["more"] is False  # 24 photos


def test_folder_filter(api, lib_dir, tmp_path):
    photos = str(lib_dir.parent / "photos")
    inside = api.get("/api/search", params={"q": "a red circle", "in": photos}).json()
    assert inside["results"]
    elsewhere = api.get("/api/search", params={"q": "a red circle", "in": str(tmp_path)})
    assert elsewhere.json()["results"] == []
    relative = api.get("/api/search", params={"q": "a red circle", "in": "photos"})
    assert relative.status_code == 400 and "absolute" in relative.json()["error"]


def test_combined_queries_filters_and_grades_over_http(api, lib_dir):
    """The query language and filters of the CLI and API (docs/search.md), over HTTP."""
    swap = api.get("/api/search", params={"expr": "'a red circle' - circle + square",
                                          "limit": 3}).json()
    assert "red-square" in swap["results"][0]["path"], swap
    assert swap["good_match"] is not None and swap["results"][0]["grade"]
    with Library(lib_dir) as lib:  # the same ranking as the Python API's
        mine = lib.query("'a red circle' - circle + square", limit=3)
    assert [r["file_id"] for r in swap["results"]] == [r.file_id for r in mine]
    some_id = swap["results"][1]["file_id"]
    by_id = api.get("/api/search", params={"expr": f"id:{some_id}", "limit": 3}).json()
    with Library(lib_dir) as lib:  # an indexed photo as a term, as in the Python API
        assert [r["file_id"] for r in by_id["results"]] == [
            r.file_id for r in lib.query(f"id:{some_id}", limit=3)]
    # A filter keeps only what it names: png files, square photos; listing without a text.
    listed = api.get("/api/search", params={"type": "png", "orientation": "square",
                                            "limit": 50}).json()["results"]
    assert listed and all(r["path"].endswith(".png") for r in listed)
    nothing = api.get("/api/search", params={"q": "a red circle", "camera": "Leica"}).json()
    assert nothing["results"] == []
    for params, needle in (({"expr": "a dog + + cat"}, "^"),
                           ({"expr": "image:/etc/passwd"}, "id:N"),
                           ({"q": "a dog", "expr": "a cat"}, "not both"),
                           ({"after": "2024", "before": "2023"}, "impossible"),
                           ({}, "give q")):
        r = api.get("/api/search", params=params)
        assert r.status_code == 400 and needle in r.json()["error"], (params, r.json())


def test_duplicates_over_http_are_the_apis_groups(api, tmp_path):
    lib_dir = indexed_library(tmp_path)
    photos = sorted((tmp_path / "photos").glob("*.png"))
    shutil.copy(photos[0], tmp_path / "photos" / "exact-copy.png")
    with Image.open(photos[1]) as im:  # a resized, re-encoded copy
        im.convert("RGB").resize((im.width // 2, im.height // 2)).save(
            tmp_path / "photos" / "smaller.jpg", quality=80)
    with Library(lib_dir) as lib:
        lib.index()
        expected = [[m.file_id for m in g.members] for g in lib.duplicates()]
        with client(lib) as c:
            body = c.get("/api/duplicates").json()
            assert c.get("/api/duplicates", params={"threshold": 2}).status_code == 400
    assert len(expected) == 2, expected
    assert [[m["file_id"] for m in g["members"]] for g in body["groups"]] == expected
    for group in body["groups"]:
        assert all(m["thumbnail"].startswith("/api/thumbnail/") for m in group["members"])


def test_search_by_uploaded_image_and_more_like_this(api):
    r = api.post("/api/search/image", content=png_bytes("red"), params={"limit": 3})
    assert r.status_code == 200 and r.json()["results"][0]["path"].split("/")[-1][:3] == "red"
    hit = api.get("/api/search", params={"q": "a green square", "limit": 1}).json()
    file_id = hit["results"][0]["file_id"]
    similar = api.get(f"/api/similar/{file_id}", params={"limit": 5}).json()
    assert similar["query"] == {"similar": file_id}
    assert file_id not in [r["file_id"] for r in similar["results"]]
    assert len(similar["results"]) == 5


def test_classify_an_upload(api, lib_dir):
    data = (lib_dir.parent / "photos" / "green-triangle-0.png").read_bytes()
    r = api.post("/api/classify", content=data,
                 params=[("label", "a green triangle"), ("label", "a red circle")])
    assert r.status_code == 200
    labels = r.json()["labels"]
    assert labels[0]["label"] == "a green triangle" and labels[0]["probability"] > 0.5


def test_status_roots_and_openapi(api, lib_dir):
    st = api.get("/api/status").json()
    assert st["indexed"] == 24 and st["read_only"] is False and st["index"]["state"] == "idle"
    assert api.get("/api/roots").json() == {"roots": [str(lib_dir.parent / "photos")]}
    paths = api.get("/api/openapi.json").json()["paths"]
    for path in ("/api/search", "/api/search/image", "/api/similar/{file_id}",
                 "/api/classify", "/api/status", "/api/roots", "/api/index",
                 "/api/index/events", "/api/thumbnail/{file_id}", "/api/file/{file_id}"):
        assert path in paths


def test_thumbnail_is_cached_by_content_hash_with_etag(api, lib_dir):
    hit = api.get("/api/search", params={"q": "a red circle", "limit": 1}).json()["results"][0]
    r = api.get(hit["thumbnail"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.content[:2] == b"\xff\xd8" and "max-age" in r.headers["cache-control"]
    cached = list((lib_dir / "thumbnails" / "256").rglob("*.jpg"))
    assert any(p.read_bytes() == r.content for p in cached)
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in cached)  # the library's rule
    again = api.get(hit["thumbnail"], headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304
    assert api.get(f"/api/thumbnail/{hit['file_id']}?size=300").status_code == 400


def test_original_file_with_its_content_type(api, lib_dir):
    hit = api.get("/api/search", params={"q": "a red circle", "limit": 1}).json()["results"][0]
    r = api.get(hit["file"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == Path(hit["path"]).read_bytes()
    assert r.headers["x-content-type-options"] == "nosniff"


def test_index_run_over_http_reports_progress_as_events(tmp_path):
    lib_dir = indexed_library(tmp_path)
    from tests.helpers import draw_photos

    draw_photos(lib_dir.parent / "photos" / "more", per_pair=1, seed=5)
    (lib_dir.parent / "photos" / "more" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with Library(lib_dir) as lib, client(lib) as c:
        r = c.post("/api/index")
        assert r.status_code == 202 and r.json()["state"] == "running"
        events = []
        with c.stream("GET", "/api/index/events") as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                    if events[-1]["state"] != "running":
                        break
        assert events[-1]["state"] == "done", events[-1]
        assert events[-1]["report"]["indexed"] == 24
        assert events[-1]["done"] == events[-1]["total"] == 25
        errors = [e["errors"] for e in events]  # failed files so far, as the run goes
        assert errors == sorted(errors) and errors[-1] == 1
        assert events[-1]["report"]["skipped"][0]["path"].endswith("broken.png")
        assert c.get("/api/status").json()["indexed"] == 48
        hits = c.get("/api/search", params={"q": "a red circle", "limit": 2}).json()["results"]
        assert {h["path"].split("/")[-1][:10] for h in hits} == {"red-circle"}


def test_empty_library_answers_no_results(tmp_path):
    with Library(tmp_path / "lib", model="shapes-tiny") as lib, client(lib) as c:
        r = c.get("/api/search", params={"q": "a red circle"})
        assert r.status_code == 200 and r.json()["results"] == []
        st = c.get("/api/status").json()
        assert st["indexed"] == 0 and st["models"] == {}
        no_roots = c.post("/api/index")  # accepted; the run says why it cannot go
        assert no_roots.status_code == 202
        for _ in range(100):
            state = c.get("/api/status").json()["index"]
            if state["state"] != "running":
                break
            time.sleep(0.05)
        assert state["state"] == "failed" and "no folders to index" in state["error"]


def test_thumbnails_are_upright_and_drafted_from_large_jpegs(tmp_path):
    """EXIF orientation 6 (a phone held upright): the stored pixels are landscape, the
    thumbnail is portrait. A 4000 x 3000 JPEG still comes out at the asked size."""
    import io

    from PIL import Image

    from clipsearch.server.thumbnails import make_thumbnail
    from tests.hostile_corpus import exif_bytes

    sideways = tmp_path / "sideways.jpg"
    Image.new("RGB", (400, 200), "red").save(sideways, "JPEG", exif=exif_bytes(orientation=6))
    thumb = Image.open(io.BytesIO(make_thumbnail(str(sideways), 128)))
    assert thumb.size == (64, 128)
    big = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), "blue").save(big, "JPEG")
    assert Image.open(io.BytesIO(make_thumbnail(str(big), 256))).size == (256, 192)
