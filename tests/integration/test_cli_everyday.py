"""What a new user tripped on in everyday use ("Everyday use"): each test drives ``ferry``
as a user would, against a real ferryd."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from harness.ferryd import Daemon
from harness.wait import wait_state

from tests.integration.cli_helpers import Cli


@pytest.fixture
def cli(ferryd: Daemon) -> Cli:
    return Cli(ferryd.socket)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- error texts are ours, not aiohttp's ---------------------------------------------------


def test_cannot_connect_names_host_and_port_not_library_internals(
    cli: Cli, ferryd: Daemon, dest: Path
) -> None:
    port = closed_port()
    job = cli.ok("create", "refused")["id"]
    cli.ok("add", job, f"http://127.0.0.1:{port}/x", str(dest / "x"))
    cli.ok("resume", job)
    j = wait_state(ferryd, job, "TRANSIENT_ERROR")
    text = cli.ok("info", job)["error"]["description"]
    assert j["error"]["code"] == "ERROR_WINHTTP_CANNOT_CONNECT"
    assert f"127.0.0.1:{port}" in text, text
    assert "ssl:" not in text and "Connect call failed" not in text, text
    assert "refused" in text.lower(), text

