"""Run one job as a fresh process: wall time (start-up and exit included) and peak RSS.

Peak RSS is the job's maximum resident set, its waited-for descendants included, as
`/usr/bin/time` reports it. Without /usr/bin/time it comes from our own wait4(), which Linux
floors at this process's RSS when the child was spawned (exec keeps the high-water mark of
the address space it replaces), so the harness keeps itself small and does heavy set-up in
subprocesses.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench import steal

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
GNU_TIME = Path("/usr/bin/time")


@dataclass
class ProcResult:
    argv: list[str]
    seconds: float
    peak_rss_mb: float  # decimal MB (1e6 bytes)
    returncode: int
    stdout: str
    stderr: str
    steal_s: float | None = None  # core time the VM's host took meanwhile (bench.steal)

    def check(self) -> ProcResult:
        if self.returncode != 0:
            tail = self.stderr.strip().splitlines()[-15:]
            raise RuntimeError(f"{' '.join(self.argv)} exited {self.returncode}:\n"
                               + "\n".join(tail))
        return self


def clipsearch(*args: str) -> list[str]:
    """The installed console script, as a user would run it."""
    script = BIN / "clipsearch"
    return [str(script), *args] if script.exists() else [sys.executable, "-m",
                                                          "clipsearch.cli", *args]


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 3600) -> ProcResult:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        wrapped = argv
        if GNU_TIME.exists():
            wrapped = [str(GNU_TIME), "-f", "%M", "-o", rss.name, *argv]
        steal_before = steal.stolen_seconds()
        start = time.perf_counter()
        proc = subprocess.Popen(wrapped, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                env=full_env, cwd=REPO)
        killer = threading.Timer(timeout, proc.kill)  # a hung job must not hang the bench
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        seconds = time.perf_counter() - start
        stolen = steal.stolen_since(steal_before)
        proc.returncode = os.waitstatus_to_exitcode(status)  # tell Popen it is reaped
        peak_kib = usage.ru_maxrss
        if wrapped is not argv:
            lines = rss.read().split()  # "Command exited with non-zero status N" comes first
            if lines and lines[-1].isdigit():
                peak_kib = int(lines[-1])
        out.seek(0)
        err.seek(0)
        return ProcResult(argv, seconds, peak_kib * 1024 / 1e6, proc.returncode,
                          out.read().decode(errors="replace"), err.read().decode(errors="replace"),
                          None if stolen is None else round(stolen, 2))
