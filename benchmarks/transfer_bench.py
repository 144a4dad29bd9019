"""``ferry transfer`` against aria2c and curl, as a user runs them, with the destination on
tmpfs (/dev/shm) and on disk (issue #15). Tools alternate from round to round; the table
shows medians and ferry / peer ratios, and ferryd's CPU time.

    .venv/bin/python -m benchmarks.transfer_bench small [COUNT] [ROUNDS]
    .venv/bin/python -m benchmarks.transfer_bench big [MIB] [ROUNDS]

small: COUNT x 64 KiB (default 1000) — ``ferry transfer`` with COUNT pairs as a user runs
it (its progress bar on a pseudo-terminal: "ferry CLI, bar"), ``ferry --json transfer`` (as a
script runs it: "ferry CLI"), the same through the library (create, add, resume, wait,
complete), ``aria2c -j5 -i LIST``, ``curl --parallel --parallel-max 5``.
big: one MIB MiB file (default 512) — ``ferry transfer`` with its live progress bar on a
pseudo-terminal (CLI, as a user sees it), ``ferry --json transfer`` (CLI), the library
(create, add, resume, wait, complete), curl, and curl followed by an fsync of its output
(ferry makes its data durable, curl does not).
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.env import child_env, ensure_tools, ferry_cli, short_tmpdir
from harness.ferryd import Daemon
from harness.files import KIB, MIB, make_file, sha256_file
from harness.nginx import Nginx

from benchmarks.common import median, run_timed

ARIA2_QUIET = ["--quiet=true", "--console-log-level=error", "--summary-interval=0",
               "--file-allocation=none", "--allow-overwrite=true", "--auto-file-renaming=false",
               "--check-certificate=false", "--max-tries=1"]  # fmt: skip


def destinations(work: Path, tmpfs: bool = True) -> dict[str, Path]:
    out = {"disk": work / "out"}
    if tmpfs and Path("/dev/shm").is_dir():
        out["tmpfs"] = Path(tempfile.mkdtemp(prefix="fy-shm-", dir="/dev/shm"))
    return out


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.sync()
    return path


def run_pty(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Run ``cmd`` with stdout and stderr on a pseudo-terminal (the progress bar draws),
    draining it; wall time and exit status."""
    master, slave = pty.openpty()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, env=env)
    os.close(slave)
    while True:
        r, _, _ = select.select([master], [], [], 1.0)
        if r:
            try:
                if not os.read(master, 65536):
                    break
            except OSError:
                break
        elif proc.poll() is not None:
            break
    proc.wait()
    wall = time.perf_counter() - t0
    os.close(master)
    return wall, proc.returncode


class Bench:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.tools = ensure_tools(["nginx", "curl", "aria2c"])
        www = work / "www"
        www.mkdir()
        self.www = www
        assert self.tools["nginx"], "nginx is needed"
        self.nginx = Nginx(www, work / "nginx", binary=self.tools["nginx"]).start()
        self.daemon = Daemon(work / "d", log_level="warning")
        self.daemon.start()
        # FERRYD_AB="VAR=VALUE": a second ferryd with that variable in its environment,
        # its "ferry CLI, B" alternating with the others (an A/B of a change behind a switch).
        self.ab: Daemon | None = None
        if os.environ.get("FERRYD_AB"):
            var, _, value = os.environ["FERRYD_AB"].partition("=")
            self.ab = Daemon(work / "d-ab", log_level="warning", env={var: value})
            self.ab.start()
        self.env = child_env({"FERRY_SOCKET": self.daemon.socket})
        self.tmpfs_ok = True  # False: the outputs do not fit in /dev/shm, disk only

    def close(self) -> None:
        self.daemon.stop()
        if self.ab is not None:
            self.ab.stop()
        self.nginx.stop()

    def ferry_cli(
        self, pairs: list[tuple[str, str]], bar: bool = False, daemon: Daemon | None = None
    ) -> float:
        cmd = [*ferry_cli(), "--socket", (daemon or self.daemon).socket]
        if not bar:
            cmd.append("--json")
        cmd += ["transfer", *[x for p in pairs for x in p]]
        if bar:
            wall, rc = run_pty(cmd, dict(self.env, COLUMNS="100"))
        else:
            t = run_timed(cmd, env=self.env)
            wall, rc = t.wall, t.returncode
        if rc != 0:
            raise RuntimeError(f"ferry transfer exited {rc}")
        return wall

    def ferry_lib(self, pairs: list[tuple[str, str]]) -> float:
        import ferry

        t0 = time.perf_counter()
        with ferry.Client(self.daemon.socket) as c:
            job = c.create_job("bench")
            job.add_files(pairs)
            job.resume()
            state = job.wait(timeout=600)
            if state is not ferry.JobState.TRANSFERRED:
                raise RuntimeError(f"the job ended {state}: {job.error}")
            job.complete()
        return time.perf_counter() - t0

    def peer(self, tool: str, pairs: list[tuple[str, str]], out: Path) -> float:
        if tool == "aria2c":
            lst = self.work / "aria2.list"
            lst.write_text("".join(f"{u}\n  out={Path(p).name}\n" for u, p in pairs))
            cmd = [self.tools["aria2c"] or "aria2c", *ARIA2_QUIET, "-j5", "-d", str(out),
                   "-i", str(lst)]  # fmt: skip
        else:
            cfg = self.work / "curl.cfg"
            cfg.write_text("".join(f'url = "{u}"\noutput = "{p}"\n' for u, p in pairs))
            cmd = [self.tools["curl"] or "curl", "-s", "-f", "-K", str(cfg)]
            if len(pairs) > 1:
                cmd[1:1] = ["--parallel", "--parallel-max", "5"]
        t0 = time.perf_counter()
        t = run_timed(cmd)
        if t.returncode != 0:
            raise RuntimeError(f"{tool} exited {t.returncode}")
        if tool == "curl+fsync":
            for _, p in pairs:
                fd = os.open(p, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
        return time.perf_counter() - t0

    def compare(
        self, label: str, files: dict[str, str], tools: list[str], rounds: int
    ) -> list[dict[str, Any]]:
        rows = []
        for dest, out in destinations(self.work, self.tmpfs_ok).items():
            walls: dict[str, list[float]] = {t: [] for t in tools}
            cpu: list[float] = []
            cpu_of: dict[str, list[float]] = {t: [] for t in tools if t.startswith("ferry")}
            for r in range(rounds):
                order = tools[r % len(tools):] + tools[: r % len(tools)]
                for tool in order:
                    fresh(out)
                    pairs = [(self.nginx.url(rel), str(out / Path(rel).name)) for rel in files]
                    which = self.ab if tool == "ferry CLI, B" and self.ab else self.daemon
                    c0 = which.cpu_seconds()
                    if tool == "ferry CLI":
                        w = self.ferry_cli(pairs)
                    elif tool == "ferry CLI, bar":
                        w = self.ferry_cli(pairs, bar=True)
                    elif tool == "ferry CLI, B":
                        w = self.ferry_cli(pairs, daemon=self.ab)
                    elif tool == "ferry library":
                        w = self.ferry_lib(pairs)
                    else:
                        w = self.peer(tool, pairs, out)
                    if tool.startswith("ferry"):
                        cpu_of[tool].append(which.cpu_seconds() - c0)
                        if which is self.daemon:
                            cpu.append(cpu_of[tool][-1])
                    walls[tool].append(w)
                    for rel, sha in files.items():
                        if sha256_file(out / Path(rel).name) != sha:
                            raise RuntimeError(f"{tool}: {rel} differs")
                print(f"  {label} {dest} round {r + 1}: "
                      + ", ".join(f"{t} {walls[t][-1]:.3f}" for t in tools), flush=True)
            shutil.rmtree(out, ignore_errors=True)
            med = {t: median(v) for t, v in walls.items()}
            rows.append({"what": label, "dest": dest, "median": med,
                         "ferryd_cpu": median(cpu),
                         "ferryd_cpu_by_tool": {t: median(v) for t, v in cpu_of.items()},
                         "rounds": walls})  # fmt: skip
        return rows


def render(rows: list[dict[str, Any]]) -> str:
    lines = []
    for row in rows:
        med = row["median"]
        ferry_tools = [t for t in med if t.startswith("ferry")]
        peers = [t for t in med if not t.startswith("ferry")]
        lines.append(f"{row['what']}, {row['dest']} (medians, s; ferryd CPU "
                     f"{row['ferryd_cpu']:.3f} s per run)")  # fmt: skip
        by_tool = row.get("ferryd_cpu_by_tool", {})
        for t in ferry_tools:
            ratios = ", ".join(f"{med[t] / med[p]:.2f}x {p}" for p in peers)
            cpu = f"   ferryd CPU {by_tool[t]:.3f} s" if t in by_tool else ""
            lines.append(f"  {t:<16} {med[t]:7.3f}   {ratios}{cpu}")
        for p in peers:
            lines.append(f"  {p:<16} {med[p]:7.3f}")
    return "\n".join(lines)


SMALL_TOOLS = ["ferry CLI, bar", "ferry CLI", "ferry library", "aria2c", "curl"]
BIG_TOOLS = ["ferry CLI, bar", "ferry CLI", "ferry library", "curl", "curl+fsync"]


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0


def run(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """``main``'s work; the rows (one per destination: medians per tool, ferryd's CPU)."""
    args = list(sys.argv[1:] if argv is None else argv)
    what = args[0] if args else "small"
    rounds = int(args[2]) if len(args) > 2 else 5
    work = short_tmpdir("fy-tb-")
    bench = Bench(work)
    rows: list[dict[str, Any]] = []
    try:
        if what == "small":
            count = int(args[1]) if len(args) > 1 else 1000
            src = bench.www / "small"
            src.mkdir()
            files = {f"small/f{i:04d}.bin": make_file(src / f"f{i:04d}.bin", 64 * KIB)
                     for i in range(count)}  # fmt: skip
            tools = SMALL_TOOLS.copy()
            if bench.ab is not None:
                tools.insert(1, "ferry CLI, B")
            rows = bench.compare(f"{count} x 64 KiB", files, tools, rounds)
        else:
            mib = int(args[1]) if len(args) > 1 else 512
            bench.tmpfs_ok = tmpfs_room(mib)
            if not bench.tmpfs_ok:
                print(f"  {mib} MiB: /dev/shm has no room for it: disk only", flush=True)
            files = {"big.bin": make_file(bench.www / "big.bin", mib * MIB)}
            tools = BIG_TOOLS.copy()
            if bench.ab is not None:
                tools.insert(1, "ferry CLI, B")
            bench.compare(f"{mib} MiB", files, tools, 1)  # untimed warm-up
            rows = bench.compare(f"{mib} MiB", files, tools, rounds)
        print(render(rows))
    finally:
        bench.close()
        shutil.rmtree(work, ignore_errors=True)
    return rows


def tmpfs_room(mib: int) -> bool:
    """Whether /dev/shm can hold a MIB MiB output with 1 GiB to spare (only one tool's
    output exists at a time)."""
    try:
        free = shutil.disk_usage("/dev/shm").free
    except OSError:
        return False
    return free >= (mib + 1024) * MIB


if __name__ == "__main__":
    raise SystemExit(main())
