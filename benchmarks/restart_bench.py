"""Restart to serving with N stored jobs (default 100,000), and ferryd's RSS then (issue
#15: < 1 s, < 150 MB). The store is filled by ``fillstore.py`` while no ferryd runs; each
round starts ferryd and times exec -> ``/v1/status`` answering; an empty store's start is
measured beside it (the floor: interpreter and imports).

    .venv/bin/python -m benchmarks.restart_bench [N] [ROUNDS]

``FERRYD_AB=VAR=VALUE`` adds a second ferryd ("B", e.g. ``PYTHONPATH=/old/checkout/src``)
started on a copy of the same store, alternating with A.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.env import ROOT
from harness.ferryd import Daemon

from benchmarks.cli_bench import compile_sources
from benchmarks.common import median


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0


def run(argv: list[str] | None = None) -> dict[str, float]:
    """``main``'s work: medians of the start times (s) and of the RSS (MB)."""
    args = list(sys.argv[1:] if argv is None else argv)
    n = int(args[0]) if args else 100_000
    rounds = int(args[1]) if len(args) > 1 else 3
    # As an installed ferryd starts: with its .pyc files (else every start compiles ferry).
    compile_sources()
    with tempfile.TemporaryDirectory(prefix="fy-rb-", dir="/var/tmp") as tmp:
        empty = Daemon(Path(tmp) / "empty", log_level="warning")
        fulls = {"A": Daemon(Path(tmp) / "full", log_level="warning")}
        # FERRYD_AB="VAR=VALUE": a second ferryd ("B") with that variable in its environment,
        # started on a copy of the same store, alternating with A in every round.
        if os.environ.get("FERRYD_AB"):
            var, _, value = os.environ["FERRYD_AB"].partition("=")
            fulls["B"] = Daemon(Path(tmp) / "full-ab", log_level="warning", env={var: value})
        first = fulls["A"]
        first.state_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "fillstore.py"), str(first.db_path), str(n)],
            check=True, capture_output=True,
        )  # fmt: skip
        for d in fulls.values():
            if d is not first:
                d.state_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(first.db_path, d.db_path)
        t_empty: list[float] = []
        t_full: dict[str, list[float]] = {k: [] for k in fulls}
        rss: dict[str, list[float]] = {k: [] for k in fulls}
        for r in range(rounds):
            t_empty.append(empty.start())
            empty.stop()
            for k in list(fulls) if r % 2 == 0 else list(reversed(fulls)):
                d = fulls[k]
                t_full[k].append(d.start(timeout=300))
                rss[k].append(d.rss_kib() * 1024 / 1e6)
                d.stop()
        for k in fulls:
            print(f"{k}: restart to serving: empty store {median(t_empty):.3f} s, {n:,} jobs "
                  f"{median(t_full[k]):.3f} s (rounds: {', '.join(f'{x:.3f}' for x in t_full[k])});"
                  f" RSS then {median(rss[k]):.1f} MB")  # fmt: skip
        if "B" in fulls:
            ratio = [a / b for a, b in zip(t_full["A"], t_full["B"], strict=True)]
            print(f"A/B start time, rounds' median: {median(ratio):.2f}x")
    return {"jobs": n, "empty": median(t_empty), "full": median(t_full["A"]),
            "rss_mb": median(rss["A"])}  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
