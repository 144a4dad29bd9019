"""``ferry top`` through a pseudo-terminal against a real ferryd: the live table shows the
jobs, their states and a transfer rate while a throttled download runs, redraws in place,
and Ctrl-C ends it cleanly; ``--json`` gives the same rows as one document."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness.faultserver import FaultServer
from harness.ferryd import Daemon
from harness.wait import wait_until

from ferry import Client, JobState
from tests.integration.cli_helpers import Cli, cli_env

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _read(fd: int, buf: bytearray, until: float) -> None:
    while time.monotonic() < until:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk


def test_top_in_a_terminal(ferryd: Daemon, dest: Path) -> None:
    with FaultServer(rate=200_000) as server, Client(ferryd.socket) as c:
        url = server.add("slow", b"s" * 5_000_000)
        moving = c.create_job("moving-job")
        moving.add_file(url, str(dest / "slow"))
        moving.resume()
        idle = c.create_job("idle-job", priority="low")
        idle.add_file(url, str(dest / "idle"))
        wait_until(lambda: moving.info().state is JobState.TRANSFERRING, "the transfer")

        master, slave = pty.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "ferry.cli.main", "--socket", ferryd.socket,
             "top", "--interval", "0.5"],
            stdin=slave, stdout=slave, stderr=slave, close_fds=True,
            env=cli_env({"COLUMNS": "160", "LINES": "40", "TERM": "xterm-256color"}),
            start_new_session=True,
        )  # fmt: skip
        os.close(slave)
        buf = bytearray()
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                _read(master, buf, time.monotonic() + 0.5)
                text = ANSI.sub("", buf.decode(errors="replace"))
                if re.search(r"moving-job\s+TRANSFERRING.*\d+(\.\d+)? ?[kM]B/s", text):
                    break
            os.killpg(proc.pid, signal.SIGINT)
            assert proc.wait(timeout=30) == 0
            _read(master, buf, time.monotonic() + 1)
        finally:
            if proc.poll() is None:
                proc.kill()
            os.close(master)
        raw = buf.decode(errors="replace")
        text = ANSI.sub("", raw)
        assert re.search(r"moving-job\s+TRANSFERRING\s+normal", text), text[-3000:]
        assert re.search(r"moving-job\s+TRANSFERRING.*\d+(\.\d+)? ?[kM]B/s", text), text[-3000:]
        assert re.search(r"idle-job\s+SUSPENDED\s+low", text)
        assert "2 jobs, 1 active" in text
        assert "\x1b[" in raw  # drawn for a terminal: redrawn in place, with colours
        assert text.count("ferry top —") >= 2  # refreshed
        moving.cancel()


def test_top_json(ferryd: Daemon, http_server: FaultServer, dest: Path) -> None:
    with Client(ferryd.socket) as c:
        c.create_job("one")
    rows = Cli(ferryd.socket).ok("top", "--interval", "0.2")["jobs"]
    assert [(r["display_name"], r["state"], r["rate"]) for r in rows] == [
        ("one", "SUSPENDED", None)
    ]


def test_top_iterations_off_a_terminal(ferryd: Daemon) -> None:
    with Client(ferryd.socket) as c:
        c.create_job("listed")
    r = Cli(ferryd.socket)("top", "-n", "2", "--interval", "0.2", json=False)
    assert r.returncode == 0, r
    assert "listed" in r.stdout and "SUSPENDED" in r.stdout
