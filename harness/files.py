"""Source files for transfers: random bytes of a given size, and SHA-256 to check results."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
_BLOCK = 4 * MIB


def make_file(path: Path, size: int) -> str:
    """``size`` random bytes at ``path``; returns their SHA-256 (hex)."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(_BLOCK, left))
            f.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()
