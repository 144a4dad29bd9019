"""The names of temporary files: how ferry makes one for a local name (``new_temp_name``:
hidden, beside it, with 96 random bits) and the check that a name has exactly that shape
(``check_temp_name``). Everything that opens, renames or deletes a stored temporary name
checks it first, so a damaged store cannot point ferryd at somebody else's file.

Pure string work: nothing here touches the file system.
"""

from __future__ import annotations

import posixpath
import secrets

from ..errors import FerryError
from ..model.paths import TEMP_SUFFIX, temp_name_for

TEMP_TOKEN_BYTES = 12  # 96 random bits: a name nobody can predict or collide with


def new_temp_name(local_name: str) -> str:
    """A fresh temporary name for ``local_name``: ``<dir>/.<basename>.<random>.ferry-part``,
    96 random bits that nobody can predict. Nothing is created: the caller persists the name,
    then creates the file with ``IdentityIO.create_temp``."""
    return temp_name_for(local_name, secrets.token_hex(TEMP_TOKEN_BYTES))


def check_temp_name(local_name: str, temp_name: str) -> None:
    """``temp_name`` is a temporary name of ``local_name`` as ``new_temp_name`` makes them: a
    plain hidden file ``.<basename>.<token>.ferry-part`` in the same directory (no other
    directory, no NUL, no slash or dot in the token). Raises E_INVALIDARG otherwise."""
    directory, base = posixpath.split(temp_name)
    stem = base.removesuffix(TEMP_SUFFIX)
    token = stem.rpartition(".")[2]
    valid = (
        "\x00" not in temp_name
        and directory == posixpath.dirname(local_name)
        and base.startswith(".")
        and stem != base
        and "." in stem[1:]
        and bool(token)
    )
    if valid:
        try:
            valid = temp_name_for(local_name, token) == temp_name
        except FerryError:
            valid = False
    if not valid:
        raise FerryError("E_INVALIDARG", f"{temp_name!r} is not a temporary name of {local_name!r}")
