"""``ferry list``'s fast path (cli/fast.py) finds ferryd's socket without importing
``ferry.protocol``: its ``locate`` must choose what ``client.sockets.locate_socket`` chooses,
in every case the library knows."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ferry.cli.fast import SYSTEM_SOCKET, fetch_jobs, locate
from ferry.client.sockets import locate_socket
from ferry.protocol import SYSTEM_SOCKET as CONTRACT_SYSTEM_SOCKET


def test_system_socket_is_the_contracts() -> None:
    assert SYSTEM_SOCKET == CONTRACT_SYSTEM_SOCKET


@pytest.mark.parametrize("explicit", [None, "", "/x/given.sock"])
@pytest.mark.parametrize("env_socket", [None, "", "/x/env.sock"])
@pytest.mark.parametrize("xdg", [None, "", "runtime"])
@pytest.mark.parametrize("user_exists", [False, True])
def test_locate_agrees_with_the_library(
    tmp_path: Path, explicit: str | None, env_socket: str | None, xdg: str | None,
    user_exists: bool,
) -> None:  # fmt: skip
    env: dict[str, str] = {}
    if env_socket is not None:
        env["FERRY_SOCKET"] = env_socket
    runtime = tmp_path / "runtime"
    if xdg is not None:
        env["XDG_RUNTIME_DIR"] = str(runtime) if xdg else ""
    if user_exists and xdg:
        (runtime / "ferry").mkdir(parents=True)
        (runtime / "ferry" / "ferryd.sock").touch()
    assert locate(explicit, env) == locate_socket(explicit, env).path


def test_fetch_jobs_without_a_daemon_leaves_it_to_click(tmp_path: Path) -> None:
    assert fetch_jobs(str(tmp_path / "nobody.sock"), False, timeout=5) is None
    assert not os.path.exists(tmp_path / "nobody.sock")


def test_client_connect_without_a_daemon_is_daemon_unavailable(tmp_path: Path) -> None:
    """The CLI's autostart check (``Client.connect``: a connection, no request)."""
    from ferry.client import Client, DaemonUnavailable

    with Client(str(tmp_path / "nobody.sock")) as c, pytest.raises(DaemonUnavailable):
        c.connect()
