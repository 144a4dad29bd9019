"""A real ferryd in a subprocess, on its own socket and state directory: start it and wait
until it serves, stop it (SIGTERM), kill it (SIGKILL, the crash case), restart it, read its
log; and raw API calls over its Unix socket, independent of the client library under test.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ferry.client.sockets import UnixHTTPConnection
from harness.env import ROOT, child_env

CLK_TCK = os.sysconf("SC_CLK_TCK")


def api_call(
    sock_path: str,
    method: str,
    path: str,
    body: Any = None,
    raw: bytes | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, Any]:
    """One request on a fresh connection: (status, the JSON body, or the raw bytes when it
    is not JSON). ``raw`` is sent as the body instead of ``body`` encoded."""
    conn = UnixHTTPConnection(sock_path, timeout)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        hdrs = {"Content-Type": "application/json"} if data is not None else {}
        hdrs.update(headers or {})
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        payload = resp.read()
        try:
            return resp.status, json.loads(payload) if payload else None
        except ValueError:
            return resp.status, payload
    finally:
        conn.close()


def status_ok(sock_path: str, timeout: float = 2.0) -> bool:
    """GET /v1/status answers 200: ferryd serves."""
    try:
        return api_call(sock_path, "GET", "/v1/status", timeout=timeout)[0] == 200
    except (OSError, http.client.HTTPException):
        return False


class Daemon:
    """ferryd in a subprocess with its own socket, state directory and log under ``base``.

    ``args`` are extra command-line arguments; ``config`` is the text of a ferryd.toml
    written beside the socket and passed with ``--config``; ``env`` adds variables to the
    child's environment (``harness.env.child_env``, read at each start). With
    ``new_session`` ferryd gets a session of its own, so a Ctrl-C meant for the caller
    does not reach it and the caller can stop it cleanly.
    """

    def __init__(
        self,
        base: Path,
        args: Sequence[str] = (),
        *,
        system: bool = False,
        config: str | None = None,
        log_level: str = "debug",
        env: Mapping[str, str] | None = None,
        new_session: bool = False,
    ) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.system = system
        self.args = list(args)
        self.socket = str(base / "ferryd.sock")
        self.state_dir = base / "state"
        self.log_path = base / "ferryd.log"
        self.log_level = log_level
        self.env = dict(env or {})
        self.new_session = new_session
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = base / "ferryd.toml"
            self.config_path.write_text(config)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def db_path(self) -> Path:
        return self.state_dir / "ferry.db"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "ferryd is not running"
        return self.proc.pid

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "ferry.daemon.main",
            "--system" if self.system else "--user",
            "--socket",
            self.socket,
            "--state-dir",
            str(self.state_dir),
            "--log-level",
            self.log_level,
        ]
        if self.config_path is not None:
            cmd += ["--config", str(self.config_path)]
        return cmd + self.args

    # ---- life cycle ---------------------------------------------------------------------

    def spawn(self) -> float:
        """Exec ferryd without waiting for it; returns the monotonic time of the exec."""
        with open(self.log_path, "ab") as log:
            t0 = time.monotonic()
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=child_env(self.env),
                cwd=str(ROOT),
                start_new_session=self.new_session,
            )
        self.starts += 1
        return t0

    def wait_ready(self, t0: float, timeout: float = 60.0, poll: float = 0.005) -> float:
        """Poll GET /v1/status until it answers 200; returns the seconds since ``t0``.
        Raises RuntimeError, with the log, if ferryd exits or stays silent."""
        assert self.proc is not None
        deadline = t0 + timeout
        while True:
            if status_ok(self.socket, timeout=5.0):
                return time.monotonic() - t0
            if self.proc.poll() is not None:
                raise RuntimeError(f"ferryd exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"ferryd did not answer within {timeout} s:\n{self.log()}")
            time.sleep(poll)

    def start(self, timeout: float = 60.0) -> float:
        """Start and wait until it serves; returns the start-to-serving time (s)."""
        return self.wait_ready(self.spawn(), timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit status (0 is a clean shutdown)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self.proc = None
                raise RuntimeError(f"ferryd did not stop on SIGTERM:\n{self.log()}") from None
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        """A clean stop (exit status 0, or RuntimeError) and a start."""
        code = self.stop()
        if code != 0:
            raise RuntimeError(f"ferryd exited with {code} on SIGTERM:\n{self.log()}")
        self.start()

    def log(self, size: int = 8000) -> str:
        """The last ``size`` characters of ferryd's log (every start appends to it)."""
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    # ---- the API --------------------------------------------------------------------------

    def call(
        self, method: str, path: str, body: Any = None, raw: bytes | None = None
    ) -> tuple[int, Any]:
        return api_call(self.socket, method, path, body, raw)

    # ---- resources (from /proc) ---------------------------------------------------------

    def cpu_seconds(self) -> float:
        """user + system CPU time so far, all threads (/proc/PID/stat)."""
        with open(f"/proc/{self.pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        # rest[0] is field 3 (state); utime and stime are fields 14 and 15.
        return (int(rest[11]) + int(rest[12])) / CLK_TCK

    def rss_kib(self) -> int:
        return self._status_kib("VmRSS")

    def hwm_kib(self) -> int:
        """Peak RSS (a per-process high-water mark)."""
        return self._status_kib("VmHWM")

    def _status_kib(self, key: str) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise KeyError(key)
