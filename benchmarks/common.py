"""What the benchmarks share beyond the harness (harness/: ferryd, nginx, the fault server,
files, tools): QUICK, timing a child process's wall time and its own resource usage, the
median, and a description of the machine printed with every table.

Nothing here is timed itself; the callers decide what a measurement covers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def quick() -> bool:
    """QUICK=1 in the environment (``make bench QUICK=1``) asks for the short version."""
    return os.environ.get("QUICK", "") not in ("", "0")


@dataclass
class Timed:
    """One finished child process: wall time and its own resource usage."""

    wall: float
    user: float
    sys: float
    maxrss_kib: int
    returncode: int

    @property
    def cpu(self) -> float:
        return self.user + self.sys


def run_timed(
    cmd: Sequence[str],
    *,
    stdout: Any = subprocess.DEVNULL,
    stderr: Any = subprocess.DEVNULL,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
) -> Timed:
    """Run ``cmd`` to its end; wall time from just before exec to its exit, CPU and peak RSS
    from wait4's rusage (the child's own, not its children's)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(cmd), stdout=stdout, stderr=stderr, env=env, cwd=cwd)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Timed(wall, ru.ru_utime, ru.ru_stime, ru.ru_maxrss, proc.returncode)


def median(values: Iterable[float]) -> float:
    vals = sorted(values)
    if not vals:
        return float("nan")
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def machine_description() -> dict[str, str]:
    """nproc, memory, CPU model, kernel, Python: printed with every table."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = subprocess.run(
            ["free", "-h"], capture_output=True, text=True, check=False
        ).stdout.rstrip()
    except OSError:
        mem = "unknown"
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": cpu,
        "memory": mem,
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
    }
