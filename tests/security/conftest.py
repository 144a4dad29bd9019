"""Fixtures of the security tests that act on files as other uids."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ferry.security.identity import IdentityIO


@pytest.fixture
def base(short_tmp: Path) -> Path:
    """A directory every test uid can traverse (pytest's tmp_path is root-only)."""
    return short_tmp


@pytest.fixture
async def io() -> AsyncIterator[IdentityIO]:
    identity = IdentityIO()
    yield identity
    await identity.shutdown()
