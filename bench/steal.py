"""CPU time a virtual machine's host took from this machine's cores (/proc/stat's steal).

A VM's core can be ready to run and still not run: the host gave its physical core to
another guest. Linux counts that time as steal, per core, and leaves it out of every
process's CPU time (a spin loop on both cores of the AMX VM: CPU time = wall - steal to the
millisecond). It came and went by the minute there: 0.04 s over one phone run, 4.6 s of
its 27 core-seconds over another on a later day. A run's throughput against the machine's
limit is then judged on the core time the VM was given (bench.pace.in_turns), as the
limit's own parts are core-ms.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

PROC_STAT = Path("/proc/stat")
STEAL_FIELD = 8  # cpuN user nice system idle iowait irq softirq steal ...


def stolen_seconds(cpus: Iterable[int] | None = None, text: str | None = None) -> float | None:
    """The steal counted so far on `cpus` (default: the cores this process may use), in
    seconds; None where the kernel does not count it (no /proc/stat, no steal column)."""
    if text is None:
        try:
            text = PROC_STAT.read_text()
        except OSError:
            return None
    wanted = {f"cpu{n}" for n in (os.sched_getaffinity(0) if cpus is None else cpus)}
    ticks = 0
    seen = False
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] in wanted and len(fields) > STEAL_FIELD:
            ticks += int(fields[STEAL_FIELD])
            seen = True
    return ticks / os.sysconf("SC_CLK_TCK") if seen else None


def stolen_since(before: float | None) -> float | None:
    """The steal counted since `before` (a stolen_seconds() reading), or None."""
    now = stolen_seconds()
    return None if before is None or now is None else now - before


def given_share(seconds: float, cores: int, steal_s: float | None) -> float:
    """The share of `cores` x `seconds` of core time the host left to this machine."""
    if seconds <= 0 or cores <= 0:
        raise ValueError(f"need a positive run and core count: {seconds} s, {cores} cores")
    if steal_s is None:
        return 1.0
    return max(1.0 - steal_s / (cores * seconds), 1e-3)
