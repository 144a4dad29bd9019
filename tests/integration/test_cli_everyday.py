"""What a new user tripped on in everyday use ("Everyday use"): each test drives ``ferry``
as a user would, against a real ferryd."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from harness.ferryd import Daemon
from harness.wait import wait_state

from ferry.protocol import SYSTEM_SOCKET
from tests.integration.cli_helpers import Cli, run_ferry


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


# ---- no daemon: which sockets, and how to start one ----------------------------------------


def test_no_daemon_names_every_socket_and_how_to_start_one(tmp_path: Path) -> None:
    if os.path.exists(SYSTEM_SOCKET):
        pytest.skip(f"a system ferryd may be running at {SYSTEM_SOCKET}")
    runtime = tmp_path / "run"
    runtime.mkdir()
    r = run_ferry("list", json_mode=False, env={"XDG_RUNTIME_DIR": str(runtime)})
    assert r.returncode == 1, r
    user = str(runtime / "ferry" / "ferryd.sock")
    assert user in r.stderr and SYSTEM_SOCKET in r.stderr, r
    assert r.stderr.index(user) < r.stderr.index(SYSTEM_SOCKET), r
    for hint in ("ferryd --user &", "systemctl --user start ferryd.socket",
                 "systemctl start ferryd.socket"):  # fmt: skip
        assert hint in r.stderr, r
    assert not (runtime / "ferry").exists(), "ferry list must not start a daemon"


def test_no_daemon_at_a_named_socket(tmp_path: Path) -> None:
    gone = str(tmp_path / "nothing.sock")
    r = run_ferry("list", socket=gone, json_mode=True)
    assert r.returncode == 1, r
    message = r.json["error"]["message"]
    assert gone in message and "--socket" in message and "ferryd --user &" in message, r

