"""A real `clipsearch serve` whose lone searches run on the event loop's thread
(clipsearch/server/fast.py: Inline): with many clients at once, thumbnails and an open event
stream, every request is still answered, and every search with what a lone client gets."""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse

from tests.serve_support import indexed_library, start_server

TEXTS = ["a red circle", "a blue square", "a green star", "a yellow triangle"]
CLIENTS, EACH = 8, 24


def search_url(text: str) -> str:
    return "/api/search?" + urllib.parse.urlencode({"q": text, "limit": 5})


def read_event(stream: http.client.HTTPResponse) -> dict:
    """The next `event: index` of the stream (comments and blank lines skipped)."""
    kind = None
    while True:
        line = stream.fp.readline().decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: ") and kind == "index":
            return json.loads(line[6:])


def test_concurrent_searches_thumbnails_and_events_are_all_answered(tmp_path):
    lib_dir = indexed_library(tmp_path)
    proc, base = start_server(lib_dir)
    port = int(base.rsplit(":", 1)[1])
    try:
        lone = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        alone = {}
        for text in TEXTS * 2:  # the first loads the model (thread pool), then inline
            lone.request("GET", search_url(text))
            r = lone.getresponse()
            body = r.read()
            assert r.status == 200 and alone.setdefault(text, body) == body
        thumbs = [hit["thumbnail"] for hit in json.loads(alone[TEXTS[0]])["results"]]
        events = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        events.request("GET", "/api/index/events")
        stream = events.getresponse()
        assert read_event(stream)["state"] == "idle"  # open for the whole test
        answers: list[tuple[str, int, bytes]] = []

        def client(k: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            for i in range(EACH):
                path = thumbs[(k + i) % len(thumbs)] if i % 3 == 2 else \
                    search_url(TEXTS[(k + i) % len(TEXTS)])
                conn.request("GET", path)
                r = conn.getresponse()
                answers.append((path, r.status, r.read()))
            conn.close()

        threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(answers) == CLIENTS * EACH
        by_url = {search_url(t): body for t, body in alone.items()}
        for path, status, body in answers:
            assert status == 200, (path, body[:200])
            if path in by_url:
                assert body == by_url[path], path
            else:
                assert body[:2] == b"\xff\xd8"  # a JPEG thumbnail
        # the event stream still answers: the progress of a run started now reaches it
        lone.request("POST", "/api/index")
        assert lone.getresponse().status == 202
        assert read_event(stream)["state"] in ("running", "done")
        events.close()
        lone.close()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
