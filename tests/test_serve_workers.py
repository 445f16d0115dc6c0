"""`clipsearch serve --workers N`: several real serving processes on one port. Searches are
answered by more than one process, each new connection by the one with the fewest open; an
index run started through any of them is one run whose progress reaches clients of every
process, and whose vectors every process finds; a stop signal to the server stops them all;
`--workers 1` is one process, as before."""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.helpers import draw_photos
from tests.serve_support import indexed_library, start_server

NEW = 240  # photos an index run adds: long enough to be asked twice while it runs


def connect(base: str) -> http.client.HTTPConnection:
    url = urlsplit(base)
    return http.client.HTTPConnection(url.hostname, url.port, timeout=60)


def ask(conn: http.client.HTTPConnection, path: str, method: str = "GET") -> tuple[int, dict]:
    conn.request(method, path)
    response = conn.getresponse()
    return response.status, json.loads(response.read())


def connections_by_pid(base: str, want: int, tries: int = 100) -> dict[int, object]:
    """Keep-alive connections, one per serving process (by the pid /api/status names):
    new connections until `want` processes answered (the owner deals each to the process
    with the fewest open, as they last reported them)."""
    found: dict[int, http.client.HTTPConnection] = {}
    for _ in range(tries):
        conn = connect(base)
        pid = ask(conn, "/api/status")[1]["serving"]["pid"]
        if pid in found:
            conn.close()
            time.sleep(0.05)  # a process reports its ended connections every 0.1 s
        else:
            found[pid] = conn
        if len(found) == want:
            break
    return found


def children(pid: int) -> set[int]:
    kids: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:  # a thread may end between the listing and the read: it has no children then
            kids.update(int(k) for k in (task / "children").read_text().split())
        except FileNotFoundError:
            continue
    return kids


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def gone_within(pids: set[int], seconds: float) -> set[int]:
    deadline = time.monotonic() + seconds
    while (left := {p for p in pids if alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


pytestmark = pytest.mark.skipif(not Path("/proc/self/task").exists(),
                                reason="--workers above 1 needs Linux")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_several_processes_answer_on_one_port_and_stop_together(tmp_path, sig):
    lib_dir = indexed_library(tmp_path)
    proc, base = start_server(lib_dir, "--workers", "2")
    try:
        workers = children(proc.pid)
        assert len(workers) == 1  # the other serving process, nothing else yet
        conns = connections_by_pid(base, 2)
        assert set(conns) == {proc.pid, *workers}, "one process answered every connection"
        # Each new connection goes to the process with the fewest open: 2 more, one each.
        more = [connect(base) for _ in range(2)]
        assert sorted(ask(c, "/api/status")[1]["serving"]["pid"] for c in more) == sorted(conns)
        for c in more:
            c.close()
        for pid, conn in conns.items():  # each answers searches on its own connections
            status, body = ask(conn, "/api/search?q=a+red+circle&limit=3")
            assert status == 200 and "red-circle" in body["results"][0]["path"], pid
            assert ask(conn, "/api/status")[1]["serving"] == {"pid": pid, "workers": 2,
                                                               "requests": 1}
            conn.close()
        # The server file names the process that owns the others (`clipsearch query`).
        assert json.loads((lib_dir / "server.json").read_text())["pid"] == proc.pid
        proc.send_signal(sig)
        code = proc.wait(timeout=60)
        assert code == (-9 if sig == signal.SIGKILL else 0), proc.stderr.read()
        # Killed, the owner could not stop them: they see their link end and stop.
        assert gone_within(workers, 30) == set()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if sig != signal.SIGKILL:
        assert not (lib_dir / "server.json").exists()


def events_until_done(conn: http.client.HTTPConnection, seen: list[dict]) -> None:
    conn.request("GET", "/api/index/events")
    response = conn.getresponse()
    assert response.status == 200
    while True:
        line = response.readline()
        if not line:
            return
        if line.startswith(b"data: "):
            seen.append(json.loads(line[6:]))
            if seen[-1]["state"] in ("done", "failed", "stopped"):
                return


def test_one_index_run_through_any_process_reaches_every_process(tmp_path):
    lib_dir = indexed_library(tmp_path)
    # 1024 px: the run lasts several of the event streams' 0.25 s polls on a fast machine
    # too (the model-167 Xeon indexed 240 photos of 256 px in 0.25 s: a stream saw no step)
    draw_photos(lib_dir.parent / "photos" / "new", per_pair=NEW // 24, seed=5, size=1024)
    proc, base = start_server(lib_dir, "--workers", "2")
    try:
        conns = connections_by_pid(base, 2)
        assert len(conns) == 2
        other = next(pid for pid in conns if pid != proc.pid)
        streams = connections_by_pid(base, 2)  # an event stream from each process
        seen: dict[int, list[dict]] = {pid: [] for pid in streams}
        readers = [threading.Thread(target=events_until_done, args=(conn, seen[pid]))
                   for pid, conn in streams.items()]
        for t in readers:
            t.start()
        # Started through the process that does not own runs:
        status, started = ask(conns[other], "/api/index", "POST")
        assert status == 202 and started["state"] == "running"
        for conn in conns.values():  # a second request, through either, is refused as today
            status, body = ask(conn, "/api/index", "POST")
            assert status == 409 and "already going" in body["error"]
        for t in readers:
            t.join(timeout=120)
        for pid, events in seen.items():
            assert events[-1]["state"] == "done", (pid, events[-3:])
            assert events[-1]["report"]["indexed"] == NEW
            # One run: the same start everywhere, with its progress on the way.
            assert {e["started"] for e in events if e["state"] != "idle"} == {
                started["started"]}
            assert any(e["state"] == "running" and 0 < (e["done"] or 0) < NEW
                       for e in events), pid
        # Every process finds the new vectors. New connections: the ones above sat idle
        # through the run, longer than uvicorn keeps an idle connection (5 s) on a slow
        # machine, so the server may have closed them, as HTTP allows.
        for conn in conns.values():
            conn.close()
        conns = connections_by_pid(base, 2)
        assert len(conns) == 2
        for pid, conn in conns.items():
            body = ask(conn, "/api/status")[1]
            assert body["indexed"] == 24 + NEW and body["index"]["state"] == "done"
            hits = ask(conn, "/api/search?q=a+red+circle&limit=5")[1]["results"]
            assert any("/new/" in h["path"] for h in hits), pid
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, proc.stderr.read()


def test_one_worker_is_one_process_as_before(tmp_path):
    lib_dir = indexed_library(tmp_path)
    proc, base = start_server(lib_dir, "--workers", "1")
    try:
        conn = connect(base)
        assert ask(conn, "/api/status")[1]["serving"] == {"pid": proc.pid, "workers": 1,
                                                           "requests": 1}
        assert "red-circle" in ask(conn, "/api/search?q=a+red+circle")[1]["results"][0]["path"]
        assert children(proc.pid) == set()
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, proc.stderr.read()


def test_workers_above_one_are_refused_where_connections_cannot_be_passed(monkeypatch):
    from clipsearch.server import ServeConfig, check_binding, config

    monkeypatch.setattr(config.sys, "platform", "darwin")
    assert config.default_workers() == 1
    with pytest.raises(ValueError, match="only on Linux"):
        check_binding(ServeConfig(workers=2))
    assert check_binding(ServeConfig(workers=1)).workers == 1
    monkeypatch.setattr(config.sys, "platform", "linux")
    assert 1 <= config.default_workers() <= min(4, os.cpu_count() or 1)


def test_read_only_holds_in_every_process(tmp_path):
    lib_dir = indexed_library(tmp_path)
    proc, base = start_server(lib_dir, "--workers", "2", "--read-only")
    try:
        conns = connections_by_pid(base, 2)
        assert len(conns) == 2
        for conn in conns.values():
            status, body = ask(conn, "/api/index", "POST")
            assert status == 403 and "read-only" in body["error"]
            assert ask(conn, "/api/status")[1]["read_only"] is True
            conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, proc.stderr.read()


def test_every_process_counts_the_requests_all_are_answering(tmp_path):
    """The table the processes share (clip_core.crowd): a search alone spreads over the
    cores, one among others' requests does not."""
    proc, base = start_server(indexed_library(tmp_path), "--workers", "2")
    try:
        (pid_a, slow), (pid_b, other) = connections_by_pid(base, 2).items()
        assert ask(other, "/api/status")[1]["serving"]["requests"] == 1  # itself
        # An upload whose body is still coming: a request in progress in process A.
        slow.putrequest("POST", "/api/search/image")
        slow.putheader("Content-Length", "100000")
        slow.endheaders(b"\xff\xd8" * 5)
        deadline = time.monotonic() + 30
        while (seen := ask(other, "/api/status")[1]["serving"])["requests"] != 2 \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen == {"pid": pid_b, "workers": 2, "requests": 2}
        slow.close()  # A's request ends with its connection
        while (seen := ask(other, "/api/status")[1]["serving"])["requests"] != 1 \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert seen["requests"] == 1
        other.close()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
