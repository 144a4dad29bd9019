"""Shared fixtures: a real ferryd on a temporary socket, and a real HTTP server on loopback
(both from harness/, which the benchmarks and the demo use too)."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from harness.env import short_tmpdir
from harness.faultserver import FaultServer
from harness.ferryd import Daemon

from ferry.security.identity import IdentityIO


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temporary directory: Unix socket paths are limited to 107 bytes."""
    path = short_tmpdir("fy-")
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
    daemon = Daemon(short_tmp, system=True, config="[daemon]\nsession_poll_interval = 0.2\n")
    daemon.start()
    yield daemon
    code = daemon.stop()
    assert code == 0, f"ferryd exited with {code}:\n{daemon.log()}"


@pytest.fixture
def http_server() -> Iterator[FaultServer]:
    """The fault server with no fault configured: ``http_server.add(NAME, data)``."""
    with FaultServer() as server:
        yield server


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    d = tmp_path / "dest"
    d.mkdir()
    return d


@pytest.fixture
async def identity() -> AsyncIterator[IdentityIO]:
    """The worker pool that does file operations as a token (ferryd's one IdentityIO)."""
    io = IdentityIO()
    yield io
    await io.shutdown()
