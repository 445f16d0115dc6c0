"""Shared fixtures. No test may touch the network: sockets to anything but loopback fail."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHAPES_TINY = REPO / "data" / "models" / "shapes-tiny"
CALTECH = REPO.parent / "shared" / "datasets" / "caltech101-1200"

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("CLIPSEARCH_NO_NETWORK_TESTS", "1")


def _guarded_connect(original):
    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1")
                                      or self.family == socket.AF_UNIX):
            return original(self, address)
        raise OSError(f"tests must not touch the network (tried {address!r})")

    return connect


@pytest.fixture(scope="session", autouse=True)
def _compiled_model_cache(tmp_path_factory):
    """Compiled models (clip_core.compiled.cache) go to one folder per test session, shared by the
    tests and their subprocesses: each model compiles once per run, never into the user's
    cache."""
    os.environ["CLIPSEARCH_CACHE"] = str(tmp_path_factory.getbasetemp() / "cache")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch, tmp_path_factory):
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect(socket.socket.connect))
    # Keep every test away from the user's real model store and library.
    monkeypatch.setenv("CLIPSEARCH_MODELS", str(tmp_path_factory.getbasetemp() / "models"))
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf-home"))
    monkeypatch.delenv("CLIPSEARCH_LIBRARY", raising=False)
