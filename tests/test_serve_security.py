"""Every point of issue 13's "Security and bad input": binding, token, files only by catalog
id, CORS, limits, read-only."""

from __future__ import annotations

import os

import pytest

from clipsearch import Library
from clipsearch.server import ServeConfig, check_binding
from tests.helpers import cli
from tests.hostile_corpus import png_header_only
from tests.serve_support import client, indexed_library, png_bytes

TOKEN = "s3cret-token-for-tests-0123456789"


@pytest.fixture(scope="module")
def lib_dir(tmp_path_factory):
    return indexed_library(tmp_path_factory.mktemp("serve-security"))


@pytest.fixture(scope="module")
def lib(lib_dir):
    with Library(lib_dir) as lib:
        yield lib


def first_hit(c, text: str = "a red circle") -> dict:
    return c.get("/api/search", params={"q": text, "limit": 1}).json()["results"][0]


# -- binding ---------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "photos.example"])
def test_other_addresses_than_loopback_need_a_token(host):
    with pytest.raises(ValueError, match="without a token"):
        check_binding(ServeConfig(host=host))
    assert check_binding(ServeConfig(host=host, token=TOKEN)).token == TOKEN
    made = check_binding(ServeConfig(host=host, token="auto")).token
    assert made and len(made) >= 16
    check_binding(ServeConfig(host="127.0.0.1"))  # loopback: no token needed
    check_binding(ServeConfig(host="::1"))


def test_cli_refuses_a_public_address_without_token(lib_dir):
    result = cli("serve", "--host", "0.0.0.0", library=lib_dir, ok=False)
    assert result.exit_code == 2 and "without a token" in result.output


# -- token -----------------------------------------------------------------------------
def test_with_a_token_every_request_without_it_gets_401(lib):
    with client(lib, token=TOKEN) as c:
        for path in ("/", "/api/status", "/api/search?q=a+cat", "/api/file/1",
                     "/api/thumbnail/1", "/static/app.js", "/api/openapi.json"):
            assert c.get(path).status_code == 401, path
        assert c.post("/api/index").status_code == 401
        wrong = {"Authorization": "Bearer not-the-token-0123456789"}
        assert c.get("/api/status", headers=wrong).status_code == 401
        right = {"Authorization": f"Bearer {TOKEN}"}
        assert c.get("/api/status", headers=right).status_code == 200


def test_the_page_takes_the_token_from_its_url_once_and_keeps_it_in_a_cookie(lib):
    with client(lib, token=TOKEN) as c:
        first = c.get("/", params={"token": TOKEN, "q": "a red circle"}, follow_redirects=False)
        assert first.status_code == 303
        assert first.headers["location"] == "/?q=a+red+circle"  # the token leaves the URL
        cookie = first.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert c.get("/api/status").status_code == 200  # the client keeps the cookie
        assert c.get("/").status_code == 200


# -- hosts and origins -----------------------------------------------------------------
def test_dns_rebinding_is_refused_on_loopback(lib):
    with client(lib) as c:
        assert c.get("/api/status", headers={"Host": "evil.example:8765"}).status_code == 403
        assert c.get("/api/status", headers={"Host": "localhost:8765"}).status_code == 200
        assert c.get("/api/status", headers={"Host": "[::1]:8765"}).status_code == 200


def test_no_cors_unless_asked(lib):
    origin = {"Origin": "https://photos.example"}
    with client(lib) as c:
        r = c.get("/api/status", headers=origin)
        assert "access-control-allow-origin" not in r.headers
        assert c.post("/api/index", headers=origin).status_code == 403  # no cross-site writes
    with client(lib, cors=["https://photos.example"], read_only=True) as c:
        r = c.get("/api/status", headers=origin)
        assert r.headers["access-control-allow-origin"] == "https://photos.example"
        assert c.post("/api/index", headers=origin).status_code == 403  # read-only, see below


# -- files only through catalog ids ----------------------------------------------------
@pytest.mark.parametrize("path", [
    "/api/file/..%2F..%2F..%2Fetc%2Fpasswd", "/api/file/../../etc/passwd",
    "/api/thumbnail/%2Fetc%2Fpasswd", "/api/file/-1", "/api/file/999999",
    "/api/file/1e3", "/static/..%2F..%2Fapi.py", "/api/similar/999999"])
def test_traversal_and_unknown_ids_are_404(lib, path):
    with client(lib) as c:
        assert c.get(path).status_code == 404, path


def test_symlink_put_in_place_of_an_indexed_file_is_404(tmp_path):
    lib_dir = indexed_library(tmp_path)
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes("black"))
    with Library(lib_dir) as lib, client(lib) as c:
        hit = first_hit(c)
        assert c.get(hit["file"]).status_code == 200
        os.unlink(hit["path"])
        os.symlink(secret, hit["path"])  # after indexing: the id must not lead out
        assert c.get(hit["file"]).status_code == 404
        assert c.get(hit["thumbnail"].replace("256", "128")).status_code == 404


def test_ids_of_removed_files_are_404(tmp_path):
    lib_dir = indexed_library(tmp_path)
    with Library(lib_dir) as lib, client(lib) as c:
        hit = first_hit(c)
        os.unlink(hit["path"])
        assert c.get(hit["file"]).status_code == 404  # gone from disk, still in the catalog
        lib.index()
        assert c.get(hit["file"]).status_code == 404  # and gone from the catalog
        assert c.get(f"/api/file/{hit['file_id']}/info").status_code == 404


# -- limits ----------------------------------------------------------------------------
def test_limits_answer_with_clear_4xx(lib):
    with client(lib, max_upload_bytes=100_000) as c:
        long = c.get("/api/search", params={"q": "a" * 1001})
        assert long.status_code == 400 and "longer than 1000" in long.json()["error"]
        for limit in (0, 501, "ten"):
            r = c.get("/api/search", params={"q": "a cat", "limit": limit})
            assert r.status_code == 400 and "limit" in r.json()["error"]
        assert c.get("/api/search", params={"q": "a cat", "offset": -1}).status_code == 400
        assert c.get("/api/search").status_code == 400  # no q
        big = c.post("/api/search/image", content=b"\0" * 100_001)
        assert big.status_code == 413 and "limit of 100000 bytes" in big.json()["error"]
        empty = c.post("/api/search/image", content=b"")
        assert empty.status_code == 400 and "no image" in empty.json()["error"]


def test_bombs_and_non_images_in_uploads_are_400_naming_the_reason(lib):
    with client(lib) as c:
        text = c.post("/api/search/image", content=b"hello, not a picture" * 10)
        assert text.status_code == 400 and text.json()["reason"] == "not-an-image"
        assert "clipsearch-upload" not in text.json()["error"]  # no server-side temp names
        bomb = c.post("/api/search/image", content=png_header_only(60_000, 60_000))
        assert bomb.status_code == 400 and bomb.json()["reason"] == "decompression-bomb"
        labels = [("label", "a cat"), ("label", "a dog")]
        assert c.post("/api/classify", content=b"nope" * 10, params=labels).status_code == 400


def test_unknown_model_is_400_naming_the_library_models(lib):
    with client(lib) as c:
        r = c.get("/api/search", params={"q": "a cat", "model": "shapes-tny"})
        assert r.status_code == 400
        assert r.json()["available"] == list(lib.status().models)
        assert "shapes-tiny" in r.json()["error"]


# -- read-only -------------------------------------------------------------------------
def test_read_only_turns_off_index_runs(lib, lib_dir):
    with client(lib, read_only=True) as c:
        r = c.post("/api/index")
        assert r.status_code == 403 and "read-only" in r.json()["error"]
        assert c.get("/api/status").json()["read_only"] is True
        assert c.get("/api/search", params={"q": "a cat"}).status_code == 200


def test_a_read_only_disk_implies_read_only(lib_dir):
    with Library(lib_dir, readonly=True) as ro, client(ro) as c:
        assert c.post("/api/index").status_code == 403
        assert c.get("/api/status").json()["read_only"] is True


def test_index_of_a_folder_that_is_not_a_root_is_refused(lib, tmp_path):
    with client(lib) as c:
        r = c.post("/api/index", params={"root": str(tmp_path)})
        assert r.status_code == 400 and r.json()["roots"] == lib.roots


def test_a_search_text_never_names_a_file(lib, tmp_path):
    """Query strings may name images by path (image:PATH, ~/x.jpg); over HTTP q is only ever
    text, so a request cannot make the server read a file or tell whether one exists."""
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the web")
    with client(lib) as c:
        for q in (f"image:{secret}", str(secret), f"image:{tmp_path}/missing.jpg",
                  '"a cat" + /etc/passwd'):
            r = c.get("/api/search", params={"q": q, "limit": 3})
            assert r.status_code == 200, (q, r.text)
            assert r.json()["query"] == q and len(r.json()["results"]) == 3
