"""Credentials a job answers HTTP authentication challenges with (SPEC §8.2,
IBackgroundCopyJob2::SetCredentials). Pure data and checks: the password is kept here only
as the ciphertext the daemon's secret box made (security/secretbox.py), never in clear.

One entry per (target, scheme). ``user is None`` is an *implicit* credential (NTLM or
NEGOTIATE answered with the acting network identity's own Kerberos credentials).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ..errors import FerryError

MAX_USER = 300  # characters, as BITS (BG_AUTH_CREDENTIALS: user names up to 300)
MAX_PASSWORD = 65536  # characters, as BITS
MAX_CCACHE = 4096  # a credential cache name (a path)


class AuthTarget(StrEnum):
    SERVER = "SERVER"
    PROXY = "PROXY"


class AuthScheme(StrEnum):
    BASIC = "BASIC"
    DIGEST = "DIGEST"
    NTLM = "NTLM"
    NEGOTIATE = "NEGOTIATE"


# Only these schemes may be implicit (the identity's own credentials).
IMPLICIT_SCHEMES = frozenset({AuthScheme.NTLM, AuthScheme.NEGOTIATE})


def parse_target(value: Any) -> AuthTarget:
    try:
        return AuthTarget(str(value).upper())
    except ValueError:
        raise FerryError(
            "BG_E_INVALID_AUTH_TARGET", f"unknown credential target {value!r}; SERVER or PROXY"
        ) from None


def parse_scheme(value: Any) -> AuthScheme:
    text = str(value).upper()
    if text == "PASSPORT":
        raise FerryError("BG_E_INVALID_AUTH_SCHEME", "the PASSPORT scheme is not supported")
    try:
        return AuthScheme(text)
    except ValueError:
        raise FerryError(
            "BG_E_INVALID_AUTH_SCHEME",
            f"unknown credential scheme {value!r}; BASIC, DIGEST, NTLM or NEGOTIATE",
        ) from None


def check_user_password(scheme: AuthScheme, user: str | None, password: str | None) -> None:
    """The user name and password of SetCredentials: both or (for NTLM/NEGOTIATE) neither."""
    if user is not None:
        if not isinstance(user, str):
            raise FerryError("E_INVALIDARG", "the user name must be a string")
        if len(user) > MAX_USER:
            raise FerryError(
                "BG_E_USERNAME_TOO_LARGE",
                f"the user name is {len(user)} characters; the limit is {MAX_USER}",
            )
        if "\x00" in user or "\r" in user or "\n" in user:
            raise FerryError("E_INVALIDARG", "the user name contains a control character")
        if scheme is AuthScheme.BASIC and ":" in user:
            raise FerryError("E_INVALIDARG", "a Basic user name cannot contain ':'")
    if password is not None:
        if not isinstance(password, str):
            raise FerryError("E_INVALIDARG", "the password must be a string")
        if len(password) > MAX_PASSWORD:
            raise FerryError(
                "BG_E_PASSWORD_TOO_LARGE",
                f"the password is {len(password)} characters; the limit is {MAX_PASSWORD}",
            )
        if "\x00" in password:
            raise FerryError("E_INVALIDARG", "the password contains a NUL byte")
    if user is None and password is not None:
        raise FerryError("E_INVALIDARG", "a password needs a user name")
    if user is None and scheme not in IMPLICIT_SCHEMES:
        raise FerryError(
            "E_INVALIDARG",
            f"{scheme.value} needs a user name and a password; only NTLM and NEGOTIATE "
            "may be implicit",
        )
    if user is not None and password is None:
        raise FerryError("E_INVALIDARG", "a user name needs a password")


@dataclass(frozen=True, slots=True)
class Credential:
    """One (target, scheme) entry. ``secret`` is the encrypted password (opaque text)."""

    target: AuthTarget
    scheme: AuthScheme
    user: str | None = None
    secret: str | None = None

    @property
    def implicit(self) -> bool:
        return self.user is None

    def view(self) -> dict[str, Any]:
        """What clients see: never the password, not even encrypted."""
        return {
            "target": self.target.value,
            "scheme": self.scheme.value,
            "user": self.user,
            "implicit": self.implicit,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target.value,
            "scheme": self.scheme.value,
            "user": self.user,
            "secret": self.secret,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Credential:
        return cls(AuthTarget(d["target"]), AuthScheme(d["scheme"]), d.get("user"), d.get("secret"))


def normalize_ccache(value: Any) -> str | None:
    """A Kerberos credential cache name a client sent (its KRB5CCNAME): a file cache
    (``FILE:/path`` or ``/path``) becomes its absolute, normalised path; ``None`` or ''
    means none. Other cache types (KEYRING:, KCM:, DIR:, MEMORY:) cannot be read as a file by
    ferryd and are refused. The file is checked when it is read, as its identity."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise FerryError("E_INVALIDARG", "krb5ccname must be a string")
    if len(value) > MAX_CCACHE or "\x00" in value:
        raise FerryError("E_INVALIDARG", "krb5ccname is too long or contains a NUL byte")
    path = value[5:] if value.startswith("FILE:") else value
    if not path.startswith("/"):
        raise FerryError(
            "E_INVALIDARG",
            f"only file credential caches (FILE:/path) can be used, not {value.split(':')[0]!r}",
        )
    if ".." in path.split("/"):
        raise FerryError("E_ACCESSDENIED", "a credential cache path may not contain '..'")
    path = posixpath.normpath(path)
    if path.startswith("//"):
        path = "/" + path.lstrip("/")
    for forbidden in ("/proc", "/sys", "/dev"):
        if path == forbidden or path.startswith(forbidden + "/"):
            raise FerryError("E_ACCESSDENIED", f"{path} is not a credential cache ferryd may read")
    return path
