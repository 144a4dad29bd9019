"""Shared fixtures: a real ferryd on a temporary socket, and a real HTTP server on loopback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ferry.client.sockets import UnixHTTPConnection
from tests.helpers.static_server import StaticServer

ROOT = Path(__file__).resolve().parent.parent


def api_call(
    sock_path: str, method: str, path: str, body: Any = None, raw: bytes | None = None
) -> tuple[int, Any]:
    """One raw API request, independent of the client library under test."""
    conn = UnixHTTPConnection(sock_path)
    try:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
        try:
            return resp.status, json.loads(payload) if payload else None
        except ValueError:
            return resp.status, payload
    finally:
        conn.close()


class Daemon:
    """A user-mode ferryd in a subprocess, with its own socket and state directory."""

    def __init__(
        self, base: Path, extra_args: list[str] | None = None, mode: str = "--user"
    ) -> None:
        self.base = base
        self.mode = mode
        self.socket = str(base / "ferryd.sock")
        self.state_dir = base / "state"
        self.log_path = base / "ferryd.log"
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "ferry.daemon.main",
                    self.mode,
                    "--socket",
                    self.socket,
                    "--state-dir",
                    str(self.state_dir),
                    "--log-level",
                    "debug",
                    *self.extra_args,
                ],
                stdout=log,
                stderr=log,
                cwd=str(ROOT),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ferryd exited with {self.proc.returncode}:\n{self.log()}")
            try:
                status, _ = api_call(self.socket, "GET", "/v1/status")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"ferryd did not answer within {timeout} s:\n{self.log()}")

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit code (0 is a clean shutdown)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"ferryd did not stop on SIGTERM:\n{self.log()}") from None
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        code = self.stop()
        assert code == 0, f"ferryd exited with {code} on SIGTERM:\n{self.log()}"
        self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return api_call(self.socket, method, path, body)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary directory: Unix socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="fy-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def ferryd(short_tmp: Path) -> Iterator[Daemon]:
    daemon = Daemon(short_tmp)
    daemon.start()
    yield daemon
    code = daemon.stop()
    assert code == 0, f"ferryd exited with {code}:\n{daemon.log()}"


@pytest.fixture
def system_ferryd(short_tmp: Path) -> Iterator[Daemon]:
    """A system-mode ferryd (root only): every local uid may connect."""
    if os.geteuid() != 0:
        pytest.skip("system-mode ferryd needs root (CI runs as root)")
    config = short_tmp / "ferryd.toml"
    config.write_text("[daemon]\nsession_poll_interval = 0.2\n")
    daemon = Daemon(short_tmp, ["--config", str(config)], mode="--system")
    daemon.start()
    yield daemon
    code = daemon.stop()
    assert code == 0, f"ferryd exited with {code}:\n{daemon.log()}"


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[StaticServer]:
    root = tmp_path / "www"
    root.mkdir()
    server = StaticServer(root)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    d = tmp_path / "dest"
    d.mkdir()
    return d
