"""A real ferry-server process per module (conformance: each test its own file names) or per
test (restarts, policies), its root and state directory in a temporary directory."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.env import short_tmpdir
from harness.upserver import FerryServer

_names = itertools.count()


@pytest.fixture(scope="module")
def shared_server() -> Iterator[FerryServer]:
    base = short_tmpdir("fys-")
    root = base / "root"
    root.mkdir()
    server = FerryServer(root, state_dir=base / "state").start()
    yield server
    server.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def name() -> str:
    """A fresh destination path (under the shared root)."""
    return f"/u{next(_names)}.bin"


@pytest.fixture
def base() -> Iterator[Path]:
    path = short_tmpdir("fys-")
    (path / "root").mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def servers() -> Iterator[list[FerryServer]]:
    """Servers a test starts (``servers.append(FerryServer(...).start())``), stopped after."""
    started: list[FerryServer] = []
    yield started
    for s in started:
        s.stop()
