"""Passwords at rest (SPEC §8.2): encrypted with AES-256-GCM (``cryptography``'s AESGCM, a
well-kept binding of OpenSSL) under a key only ferryd's own user can read — root's for the
system ferryd, the user's own for a per-user ferryd — kept in the state directory as
``credentials.key`` (mode 0600).

Each password is sealed with a fresh 96-bit nonce and the entry's identity (job id, target,
scheme) as associated data, so a ciphertext copied into another job or slot of the store does
not open. What the store holds is ``v1:`` + base64(nonce || ciphertext || tag).
"""

from __future__ import annotations

import base64
import os
import secrets
import stat

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import FerryError

KEY_FILE = "credentials.key"
_PREFIX = "v1:"


def _load_or_create(path: str) -> bytes:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        key = AESGCM.generate_key(bit_length=256)
        # A random name: a file a crash left (the same pid comes back in a container) never
        # blocks the start; O_EXCL|O_NOFOLLOW: nothing planted there is written through.
        tmp = f"{path}.{secrets.token_hex(8)}.new"
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            os.write(fd, key)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # never replaces a key another ferryd made meanwhile
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
        _fsync_dir(os.path.dirname(path) or ".")  # the key's name survives a power loss
        return _load_or_create(path)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise FerryError("E_ACCESSDENIED", f"{path} is not a regular file of ferryd's user")
        if st.st_mode & 0o077:
            raise FerryError(
                "E_ACCESSDENIED", f"{path} is readable by others (mode {st.st_mode & 0o777:o})"
            )
        key = os.read(fd, 64)
    finally:
        os.close(fd)
    if len(key) != 32:
        raise FerryError("E_FAIL", f"{path} does not hold a 256-bit key")
    return key


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SecretBox:
    """Seals and opens the passwords of job credentials."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @classmethod
    def in_state_dir(cls, state_dir: str) -> SecretBox:
        return cls(_load_or_create(os.path.join(state_dir, KEY_FILE)))

    @classmethod
    def from_file(cls, path: str) -> SecretBox:
        """The key at ``path`` (``[store] credentials_key``: one key shared by every worker
        of a fleet), made there if missing, with the same checks as the state directory's."""
        return cls(_load_or_create(path))

    @staticmethod
    def _aad(job_id: str, target: str, scheme: str) -> bytes:
        return f"ferry-credential\x00{job_id}\x00{target}\x00{scheme}".encode()

    def seal(self, password: str, job_id: str, target: str, scheme: str) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, password.encode(), self._aad(job_id, target, scheme))
        return _PREFIX + base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, secret: str, job_id: str, target: str, scheme: str) -> str:
        if not secret.startswith(_PREFIX):
            raise FerryError("BG_E_INVALID_CREDENTIALS", "a stored password has an unknown format")
        try:
            raw = base64.b64decode(secret[len(_PREFIX) :], validate=True)
            plain = self._aead.decrypt(raw[:12], raw[12:], self._aad(job_id, target, scheme))
        except (ValueError, InvalidTag):
            raise FerryError(
                "BG_E_INVALID_CREDENTIALS",
                "a stored password cannot be decrypted (the key in the state directory changed?)",
            ) from None
        return plain.decode()
