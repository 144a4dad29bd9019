"""Fixtures of the security tests that act on files as other uids."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ferry.security.identity import IdentityIO


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory every test uid can traverse (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="ferry-sec-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def io() -> AsyncIterator[IdentityIO]:
    identity = IdentityIO()
    yield identity
    await identity.shutdown()
