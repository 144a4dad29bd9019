"""Start-up cost of the ``ferry`` command, side by side with ``python -c pass`` and
``curl --version``: wall time (median of alternating rounds) and, where valgrind is
installed, the instructions each one executes (``valgrind --tool=callgrind``: a count that
does not move with the machine's load, unlike the wall time on a shared VM).

    .venv/bin/python -m benchmarks.cli_bench [ROUNDS]

A user-mode ferryd with 10 jobs serves ``ferry list``; the commands measured, through the
``ferry`` console script installed beside this Python (as a user runs it):
``ferry --version``, ``ferry list``, ``ferry --json list``, ``ferry --json info JOB``; and
``python -m ferry.cli --version``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness.ferryd import Daemon

from benchmarks.common import median, run_timed

FERRY_M = [sys.executable, "-m", "ferry.cli"]
# The console script pip installed beside this interpreter: what a user runs as `ferry`.
# (pip's wrapper of this venv imports re, ~25 M instructions; newer pips' do not.)
_SCRIPT = Path(sys.executable).parent / "ferry"
FERRY = [str(_SCRIPT)] if _SCRIPT.exists() else FERRY_M
ROOT = Path(__file__).resolve().parent.parent


def compile_sources() -> None:
    """Byte-compile ferry's sources: an installed ferry has its .pyc files (pip writes
    them), but a run with PYTHONDONTWRITEBYTECODE set (as on the development VM) would
    otherwise compile every module on every start and measure the compiler."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(ROOT / "src")],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip


def instructions(cmd: list[str], env: dict[str, str]) -> int | None:
    """Instructions executed by ``cmd`` (callgrind's ``Collected``), or None without
    valgrind."""
    if shutil.which("valgrind") is None:
        return None
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *cmd],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    m = re.search(r"Collected\s*:\s*(\d+)", out.stderr)
    return int(m.group(1)) if m else None


def measure(rounds: int = 15, count: bool = True) -> dict[str, Any]:
    compile_sources()
    with tempfile.TemporaryDirectory(prefix="ferry-clibench-") as tmp:
        d = Daemon(Path(tmp) / "d", log_level="warning")
        d.start()
        try:
            for i in range(10):
                status, _ = d.call("POST", "/v1/jobs", {"display_name": f"job{i}"})
                assert status in (200, 201), status
            env = dict(os.environ, FERRY_SOCKET=d.socket, COLUMNS="120")
            cmds: dict[str, list[str]] = {
                "python -c pass": [sys.executable, "-c", "pass"],
                "ferry --version": [*FERRY, "--version"],
                "python -m ferry.cli --version": [*FERRY_M, "--version"],
                "ferry list": [*FERRY, "list"],
                "ferry --json list": [*FERRY, "--json", "list"],
                "ferry --json info job3": [*FERRY, "--json", "info", "job3"],
            }
            if shutil.which("curl"):
                cmds["curl --version"] = ["curl", "--version"]
            walls: dict[str, list[float]] = {k: [] for k in cmds}
            for cmd in cmds.values():  # warm-up: page cache, .pyc files
                run_timed(cmd, env=env)
            names = list(cmds)
            for r in range(rounds):
                order = names[r % len(names):] + names[: r % len(names)]
                for name in order:
                    t = run_timed(cmds[name], env=env)
                    if t.returncode != 0:
                        raise SystemExit(f"{name}: exit {t.returncode}")
                    walls[name].append(t.wall)
            result: dict[str, Any] = {}
            for name, cmd in cmds.items():
                result[name] = {
                    "wall_median_ms": 1000 * median(walls[name]),
                    "wall_min_ms": 1000 * min(walls[name]),
                    "instructions": instructions(cmd, env) if count else None,
                }
            return result
        finally:
            d.stop()


def render(result: dict[str, Any]) -> str:
    base = result["python -c pass"]
    lines = [
        f"  {'command':<30} {'wall median':>12} {'wall min':>9} {'instructions':>14} "
        f"{'vs python -c pass':>18}"
    ]
    for name, r in result.items():
        ins = r["instructions"]
        ratio = (
            f"{ins / base['instructions']:.2f}x" if ins and base["instructions"] else ""
        )
        lines.append(
            f"  {name:<30} {r['wall_median_ms']:>9.1f} ms {r['wall_min_ms']:>6.1f} ms "
            f"{(f'{ins / 1e6:.1f} M') if ins else '-':>14} {ratio:>18}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    rounds = int(args[0]) if args else 15
    print(render(measure(rounds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
