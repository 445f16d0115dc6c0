"""What `clipsearch serve` was asked for, and the binding rules checked before it starts."""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import sys
from dataclasses import dataclass, field

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    read_only: bool = False
    watch: bool = False  # index on every change under the roots (clipsearch.watch_roots)
    cors: list[str] = field(default_factory=list)
    max_upload_bytes: int = 50 * 1024 * 1024
    max_query_chars: int = 1000
    max_limit: int = 500
    max_offset: int = 10_000
    readers: int | None = None  # searches at once (server/readers.py; None: by the cores)
    workers: int = 1  # serving processes on the port (server/workers.py; the CLI: by cores)
    # Passed to the Library that runs index jobs (the warm one answers queries).
    library_options: dict = field(default_factory=dict)


def default_workers() -> int:
    """Serving processes for `clipsearch serve`: one per usable core, at most 4 (each holds
    a warm Library of its own), and 1 where connections cannot be passed between
    processes (server/workers.py)."""
    if not can_spread():
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, cores or 1))


def can_spread() -> bool:
    # Sockets passed over Unix sockets (SCM_RIGHTS); tried and tested on Linux.
    return sys.platform.startswith("linux") and hasattr(socket, "send_fds")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def check_binding(config: ServeConfig) -> ServeConfig:
    """Refuse to expose a library beyond this machine without a token; `--token auto` makes
    one. Raises ValueError with the reason and the fix."""
    if config.token == "auto":
        config.token = secrets.token_urlsafe(24)
    if config.token is not None and len(config.token) < 16:
        raise ValueError("the token is too short: use at least 16 characters "
                         "(or --token auto to have one made)")
    if not is_loopback(config.host) and not config.token:
        raise ValueError(
            f"refusing to serve on {config.host} without a token: anyone who can reach this "
            "machine could read every photo in the library. Add --token auto (a token is made "
            "and printed in the URL), or bind to 127.0.0.1.")
    if config.workers < 1:
        raise ValueError("--workers must be at least 1")
    if config.workers > 1 and not can_spread():
        raise ValueError("--workers above 1 passes connections between processes over Unix "
                         "sockets, which clipsearch does only on Linux: use --workers 1")
    return config
