"""Helpers for the client and CLI integration tests: run the real ``ferry`` command, check
the JSON job object's shape (SPEC §6) against the OpenAPI document, and the fault
server set up to hold a transfer open so cancel and Ctrl-C can be tested mid-transfer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.env import child_env
from harness.faultserver import FaultServer, Resource

from tests.integration.api_schema import assert_valid


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a ``ferry`` child (harness.env.child_env: this checkout's
    sources first, no FERRY_SOCKET from the developer's shell), 200 columns wide."""
    return child_env({"COLUMNS": "200", **(extra or {})})


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


# ---- the file system ---------------------------------------------------------------------------


def others_in(directory: Path, *names: str) -> list[str]:
    """Entries of ``directory`` other than ``names``: temporary files, in these tests."""
    return sorted(p.name for p in directory.iterdir() if p.name not in names)


# ---- a slow server ----------------------------------------------------------------------------


class SlowServer(FaultServer):
    """Serves every ``/f/NAME`` (any name) as ``size`` random bytes of which only the first
    ``head`` are sent until ``release()``: the transfer is provably in progress (the
    temporary file exists, bytes are on disk) for as long as the test needs."""

    def __init__(self, size: int = 1_000_000, head: int = 64 * 1024) -> None:
        super().__init__()
        self.size = size
        self.head = head

    def url(self, name_or_path: str = "file") -> str:
        if not name_or_path.startswith("/") and name_or_path not in self.files:
            self.files[name_or_path] = Resource(os.urandom(self.size), pause_after=self.head)
        return super().url(name_or_path)
