"""GET /api/search's fast path (clipsearch/server/fast.py) answers plain requests without
FastAPI's parameter solving, byte for byte as the FastAPI route does; every other request,
errors included, still goes to the route."""

from __future__ import annotations

import pytest

from clipsearch import Library
from clipsearch.server.fast import FastSearch, search_route
from tests.serve_support import client, indexed_library

PLAIN = [  # answered by the fast path
    "q=a+red+circle", "q=a%20blue%20square&limit=3", "limit=2&q=star&offset=1",
    "q=a+red+circle&in=PHOTOS", "q=a+red+circle&model=shapes-tiny&limit=1",
    "q=gr%C3%BCn+%E2%98%85", "q=", "q=+++", "q=a&limit=0", "q=a&limit=100000",
    "q=a&offset=999999999", "q=a&in=relative/folder", "q=a&in=", "q=a&model=ViT-B-99",
    "q=" + "x" * 2000, "q=%FF%FE",
]
ROUTED = [  # anything else: the FastAPI route
    "q=a&limit=-1", "q=a&limit=%2B5", "q=a&limit=+5", "q=a&limit=five", "q=a&limit=2.0",
    "q=a&q=b", "q=a&limit=1&limit=2", "expr=a+dog+%2B+snow", "q=a&expr=b",
    "q=a+circle&after=2020", "q=a&type=png", "after=2020", "", "limit=3", "q=a&x=1",
    "q=a&limit=" + "9" * 12,
]


@pytest.fixture(scope="module")
def lib_dir(tmp_path_factory):
    return indexed_library(tmp_path_factory.mktemp("serve-fast"))


def test_fast_path_answers_as_the_route_does(lib_dir):
    photos = str(lib_dir.parent / "photos")
    with Library(lib_dir) as lib, client(lib) as fast, client(lib) as routed:
        app = routed.app.app  # the Guard's FastAPI app: drop the fast route
        app.router.routes = [r for r in app.router.routes
                             if not isinstance(getattr(r, "app", None), FastSearch)]
        fast_app = fast.app.app
        delegated: list[bytes] = []
        route = search_route(fast_app)
        handle = route.handle

        async def counting(scope, receive, send):
            delegated.append(scope["query_string"])
            await handle(scope, receive, send)

        route.handle = counting
        for query in PLAIN + ROUTED:
            url = "/api/search?" + query.replace("PHOTOS", photos)
            mine, theirs = fast.get(url), routed.get(url)
            assert (mine.status_code, mine.content) == (theirs.status_code, theirs.content), url
            assert dict(mine.headers) == dict(theirs.headers), url
        for method in ("HEAD", "POST", "PUT"):  # 405 from the route, Allow: GET
            mine, theirs = (c.request(method, "/api/search?q=a") for c in (fast, routed))
            assert (mine.status_code, mine.content) == (theirs.status_code, theirs.content)
            assert dict(mine.headers) == dict(theirs.headers), method
        taken = [q.replace("PHOTOS", photos).encode() for q in ROUTED]
        assert delegated == taken  # plain requests never reached FastAPI's route
        assert routed.get("/api/search?q=a+red+circle").json()["results"]
        schema = fast.get("/api/openapi.json").json()
        assert "/api/search" in schema["paths"]
        assert "in" in {p["name"] for p in schema["paths"]["/api/search"]["get"]["parameters"]}
