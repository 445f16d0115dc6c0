"""GET /api/search's fast path (clipsearch/server/fast.py) answers plain requests without
FastAPI's parameter solving, byte for byte as the FastAPI route does (inline on the event
loop or in the thread pool); every other request, errors included, still goes to the
route."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.routing import APIRoute

from clipsearch import Library
from clipsearch.server.app import _result
from clipsearch.server.fast import FastSearch, Inline
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


def fast_path(app) -> dict:
    """The fast path's arguments (set them before the app's first call builds it)."""
    return next(m for m in app.user_middleware if m.cls is FastSearch).kwargs


def search_route(app) -> APIRoute:
    return next(r for r in app.router.routes
                if isinstance(r, APIRoute) and r.path == "/api/search")


def test_fast_path_answers_as_the_route_does(lib_dir):
    photos = str(lib_dir.parent / "photos")
    with Library(lib_dir) as lib:
        fast, routed = client(lib), client(lib)
        app = routed.app.app  # the Guard's FastAPI app: drop the fast path
        app.user_middleware = [m for m in app.user_middleware if m.cls is not FastSearch]
        fast_app = fast.app.app
        delegated: list[bytes] = []
        route = search_route(fast_app)
        handle = route.handle

        async def counting(scope, receive, send):
            delegated.append(scope["query_string"])
            await handle(scope, receive, send)

        route.handle = counting
        with fast, routed:
            compare(fast, routed, photos, delegated)


def compare(fast, routed, photos: str, delegated: list[bytes]) -> None:
    for query in PLAIN + ROUTED:
        url = "/api/search?" + query.replace("PHOTOS", photos)
        mine, theirs = fast.get(url), routed.get(url)
        assert (mine.status_code, mine.content) == (theirs.status_code, theirs.content), url
        assert dict(mine.headers) == dict(theirs.headers), url
    taken = [q.replace("PHOTOS", photos).encode() for q in ROUTED]
    assert delegated == taken  # plain requests never reached FastAPI's route
    for method in ("HEAD", "POST", "PUT"):  # 405 from the route, Allow: GET
        mine, theirs = (c.request(method, "/api/search?q=a") for c in (fast, routed))
        assert (mine.status_code, mine.content) == (theirs.status_code, theirs.content)
        assert dict(mine.headers) == dict(theirs.headers), method
    assert routed.get("/api/search?q=a+red+circle").json()["results"]
    schema = fast.get("/api/openapi.json").json()
    assert "/api/search" in schema["paths"]
    assert "in" in {p["name"] for p in schema["paths"]["/api/search"]["get"]["parameters"]}


def test_a_lone_warm_search_runs_on_the_event_loop_and_answers_the_same(lib_dir):
    """The first search of a model goes to the thread pool (it may load the model); once one
    was quick enough (here: any), a lone search runs on the event loop's thread with the same
    answer (errors included), and another model's first search goes to the pool again."""
    with Library(lib_dir) as lib:
        c = client(lib)
        fast = fast_path(c.app.app)
        where: list[str] = []
        run = fast["run_search"]

        def spy(**kwargs):
            try:
                asyncio.get_running_loop()
                where.append("loop")
            except RuntimeError:  # a worker thread has no running loop
                where.append("pool")
            return run(**kwargs)

        fast["run_search"] = spy
        inline = fast["inline"]
        inline.max_s = 60.0  # the first search loads the model: however slow this machine
        urls = ["/api/search?q=a+red+circle&limit=3"] * 2 + ["/api/search?q=a&limit=0"] * 2 + [
            "/api/search?q=a+red+circle&limit=3&model=shapes-tiny",
            "/api/search?q=a+blue+star&model=ViT-B-99", "/api/search?q=a+blue+star&model=ViT-B-99"]
        with c:
            answers = [c.get(url) for url in urls]
        assert where == ["pool", "loop", "loop", "loop", "pool", "pool", "pool"]
        assert answers[0].content == answers[1].content and answers[0].json()["results"]
        assert answers[2].status_code == 400 and answers[2].content == answers[3].content
        assert answers[5].status_code == 400 and answers[5].content == answers[6].content
        assert inline.in_flight == 0  # every answered request was counted out


def test_inline_only_when_alone_warm_quick_and_no_index_run():
    running = [False]
    inline = Inline(lambda: running[0], max_s=0.05)
    inline.in_flight = 1  # the search itself
    assert not inline.ok(None)  # no search of this model yet
    inline.last_s[None] = 0.01
    assert inline.ok(None) and not inline.ok("ViT-B-16")
    inline.in_flight = 2  # another request is being answered
    assert not inline.ok(None)
    inline.in_flight = 1
    running[0] = True  # the server's index run commits batches: searches reload
    assert not inline.ok(None)
    running[0] = False
    inline.last_s[None] = 0.2  # slower than a request should wait behind
    assert not inline.ok(None)


def test_results_carry_the_dataclass_fields_and_the_urls(lib_dir):
    with Library(lib_dir) as lib:
        hits = lib.query("a red circle", limit=5)
    assert hits
    for r in hits:
        assert _result(r) == {**r.to_dict(), "thumbnail": f"/api/thumbnail/{r.file_id}?size=256",
                              "file": f"/api/file/{r.file_id}"}


def test_event_streams_are_not_counted_as_requests_in_flight():
    """An open event stream (hours, idle) must not keep searches off the event loop."""
    inline = Inline(lambda: False)
    seen: list[int] = []

    async def inner(scope, receive, send):
        seen.append(inline.in_flight)

    fast = FastSearch(inner, run_search=None, inline=inline, error=ValueError,
                      on_error=None, left_out=frozenset({"/api/index/events"}))
    for path in ("/api/roots", "/api/index/events", "/api/thumbnail/1"):
        asyncio.run(fast({"type": "http", "path": path, "method": "GET",
                          "query_string": b""}, None, None))
    assert seen == [1, 0, 1] and inline.in_flight == 0
