"""Restart to serving with N stored jobs (default 100,000), and ferryd's RSS then (issue
#15: < 1 s, < 150 MB). The store is filled by ``fillstore.py`` while no ferryd runs; each
round starts ferryd and times exec -> ``/v1/status`` answering; an empty store's start is
measured beside it (the floor: interpreter and imports).

    .venv/bin/python -m benchmarks.restart_bench [N] [ROUNDS]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from harness.env import ROOT
from harness.ferryd import Daemon

from benchmarks.common import median


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0


def run(argv: list[str] | None = None) -> dict[str, float]:
    """``main``'s work: medians of the start times (s) and of the RSS (MB)."""
    args = list(sys.argv[1:] if argv is None else argv)
    n = int(args[0]) if args else 100_000
    rounds = int(args[1]) if len(args) > 1 else 3
    with tempfile.TemporaryDirectory(prefix="fy-rb-", dir="/var/tmp") as tmp:
        empty = Daemon(Path(tmp) / "empty", log_level="warning")
        full = Daemon(Path(tmp) / "full", log_level="warning")
        full.state_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "fillstore.py"), str(full.db_path), str(n)],
            check=True, capture_output=True,
        )  # fmt: skip
        t_empty, t_full, rss = [], [], []
        for _ in range(rounds):
            t_empty.append(empty.start())
            empty.stop()
            t_full.append(full.start(timeout=300))
            rss.append(full.rss_kib() * 1024 / 1e6)
            full.stop()
        print(f"restart to serving: empty store {median(t_empty):.3f} s, {n:,} jobs "
              f"{median(t_full):.3f} s (rounds: {', '.join(f'{x:.3f}' for x in t_full)}); "
              f"RSS then {median(rss):.1f} MB")  # fmt: skip
    return {"jobs": n, "empty": median(t_empty), "full": median(t_full), "rss_mb": median(rss)}


if __name__ == "__main__":
    raise SystemExit(main())
