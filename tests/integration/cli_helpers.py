"""Helpers for the client and CLI integration tests: run the real ``ferry`` command, check
the JSON job object's shape (SPEC §6) against the OpenAPI document, and a deliberately slow
HTTP server that holds a transfer open so cancel and Ctrl-C can be tested mid-transfer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.integration.api_schema import assert_valid

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a ``ferry`` child: this checkout's sources first, and no
    FERRY_SOCKET leaking in from the developer's shell."""
    env = dict(os.environ)
    env.pop("FERRY_SOCKET", None)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(SRC)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    env["COLUMNS"] = "200"
    env.update(extra or {})
    return env


class CliResult:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    @property
    def json(self) -> Any:
        """The one JSON document SPEC §6 promises on stdout (fails the test otherwise)."""
        try:
            return json.loads(self.stdout)
        except ValueError:
            raise AssertionError(
                f"stdout is not one JSON document:\n{self.stdout}\nstderr:\n{self.stderr}"
            ) from None

    def __repr__(self) -> str:
        return f"<exit {self.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}>"


def run_ferry(
    *args: str,
    socket: str | None = None,
    json_mode: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float = 60,
) -> CliResult:
    cmd = [sys.executable, "-m", "ferry.cli.main"]
    if socket is not None:
        cmd += ["--socket", socket]
    if json_mode:
        cmd.append("--json")
    cmd += list(args)
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=cli_env(env), cwd=cwd, timeout=timeout
    )
    return CliResult(proc)


class Cli:
    """``ferry`` bound to one daemon's socket: ``cli("info", job)`` runs
    ``ferry --socket S --json info JOB``."""

    def __init__(self, socket: str) -> None:
        self.socket = socket

    def __call__(self, *args: str, json: bool = True, **kw: Any) -> CliResult:
        return run_ferry(*args, socket=self.socket, json_mode=json, **kw)

    def ok(self, *args: str, **kw: Any) -> Any:
        """Run in JSON mode, require exit 0, return the document."""
        r = self(*args, **kw)
        assert r.returncode == 0, r
        return r.json

    def popen(self, *args: str, json: bool = True, **kw: Any) -> subprocess.Popen[str]:
        cmd = [sys.executable, "-m", "ferry.cli.main", "--socket", self.socket]
        if json:
            cmd.append("--json")
        return subprocess.Popen(
            cmd + list(args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
            **kw,
        )


# ---- the JSON job object (SPEC §6) -------------------------------------------------------


def assert_job_shape(j: Any) -> None:
    """A job object as the OpenAPI document's Job schema describes it (every field SPEC §6
    lists, with its type), and an owner whose SID is its uid's."""
    assert_valid("Job", j)
    assert j["owner"]["sid"] == f"S-1-22-1-{j['owner']['uid']}"


def assert_file_shape(f: Any) -> None:
    assert_valid("File", f)


# ---- waiting on the file system -------------------------------------------------------------


def eventually(check: Callable[[], bool], timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def others_in(directory: Path, *names: str) -> list[str]:
    """Entries of ``directory`` other than ``names``: temporary files, in these tests."""
    return sorted(p.name for p in directory.iterdir() if p.name not in names)


# ---- a slow server ----------------------------------------------------------------------------


class SlowServer:
    """Serves ``/slow/NAME`` as ``size`` bytes of which only the first ``head`` are sent
    until ``release()``: the transfer is provably in progress (the temporary file exists,
    bytes are on disk) for as long as the test needs."""

    def __init__(self, size: int = 1_000_000, head: int = 64 * 1024) -> None:
        self.size = size
        self.head = head
        self.gate = threading.Event()
        self.data = os.urandom(size)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _headers(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(outer.size))
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("ETag", '"slow-1"')
                self.end_headers()

            def do_HEAD(self) -> None:
                self._headers()

            def do_GET(self) -> None:
                self._headers()
                try:
                    self.wfile.write(outer.data[: outer.head])
                    self.wfile.flush()
                    outer.gate.wait(60)
                    self.wfile.write(outer.data[outer.head :])
                except OSError:
                    pass  # the client went away (cancel): expected

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> SlowServer:
        self.thread.start()
        return self

    def url(self, name: str = "file") -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/slow/{name}"

    def release(self) -> None:
        self.gate.set()

    def stop(self) -> None:
        self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()
