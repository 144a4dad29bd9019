"""A job's HTTP options (IBackgroundCopyJobHttpOptions, SPEC §8.3), checked here, pure: custom
headers (and their write-only switch), the client certificate's paths, the security flags
(certificate checks, redirect policy) and the HTTP method. What the transport does with them
is transfer/http.py's; how write-only headers are kept secret is the service's (they are
sealed before they reach the job)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from ..errors import FerryError

MAX_HEADERS_CHARS = 16_384
FORBIDDEN_HEADERS = frozenset(
    {"host", "range", "if-range", "content-length", "authorization", "proxy-authorization"}
)
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 token
WRITE_ONLY_SHOWN = "(write-only)"

REDIRECT_ALLOW_SILENT = "REDIRECT_POLICY_ALLOW_SILENT"
REDIRECT_ALLOW_REPORT = "REDIRECT_POLICY_ALLOW_REPORT"
REDIRECT_DISALLOW = "REDIRECT_POLICY_DISALLOW"
# BG_SSL_* / BG_HTTP_REDIRECT_POLICY_*, in the order ferry shows them.
SECURITY_FLAGS: tuple[str, ...] = (
    "ENABLE_CRL_CHECK",
    "IGNORE_CERT_CN_INVALID",
    "IGNORE_CERT_DATE_INVALID",
    "IGNORE_UNKNOWN_CA",
    "IGNORE_CERT_WRONG_USAGE",
    REDIRECT_ALLOW_SILENT,
    REDIRECT_ALLOW_REPORT,
    REDIRECT_DISALLOW,
    "ALLOW_HTTPS_TO_HTTP",
)
REDIRECT_POLICIES = frozenset({REDIRECT_ALLOW_SILENT, REDIRECT_ALLOW_REPORT, REDIRECT_DISALLOW})
MAX_METHOD = 64
MAX_PATH = 4096


def _bad(message: str) -> FerryError:
    return FerryError("E_INVALIDARG", message)


def check_custom_headers(value: Any) -> tuple[str, ...] | None:
    """SetCustomHeaders: ``"Name: value"`` lines (a list, or one string of CR/LF-separated
    lines as BITS takes them); None or empty clears."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [line for line in re.split(r"\r\n|\n", value) if line]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise _bad("custom_headers must be a list of 'Name: value' lines")
    if sum(len(v) + 2 for v in value) > MAX_HEADERS_CHARS:
        raise _bad(f"custom headers exceed {MAX_HEADERS_CHARS} characters")
    out = []
    for line in value:
        if "\r" in line or "\n" in line or "\x00" in line:
            raise _bad("a custom header line contains CR, LF or NUL")
        name, sep, rest = line.partition(":")
        if not sep or not _TOKEN.match(name):
            raise _bad(f"not a header line: {line[:60]!r}")
        if name.lower() in FORBIDDEN_HEADERS:
            raise _bad(f"the header {name} cannot be set by a job")
        if any(ord(c) < 0x20 and c != "\t" or c == "\x7f" for c in rest):
            raise _bad(f"the value of {name} contains control characters")
        out.append(f"{name}: {rest.strip()}")
    return tuple(out) or None


def header_pairs(lines: tuple[str, ...] | list[str]) -> list[tuple[str, str]]:
    out = []
    for line in lines:
        name, _, value = line.partition(":")
        out.append((name.strip(), value.strip()))
    return out


def parse_security_flags(value: Any) -> tuple[str, ...]:
    """Names (a list, or one string separated by commas; ``none`` or empty clears), with or
    without the BG_SSL_ / BG_HTTP_ prefixes; at most one redirect policy. Canonical order,
    and the default redirect policy (ALLOW_SILENT) is not kept."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [] if value.strip().lower() == "none" else re.split(r"[\s,|]+", value)
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise _bad("security_flags must be a list of names")
    names = set()
    for raw in value:
        name = raw.strip().upper().removeprefix("BG_SSL_").removeprefix("BG_HTTP_")
        if not name:
            continue
        if name not in SECURITY_FLAGS:
            raise _bad(f"unknown security flag {raw!r} (one of {', '.join(SECURITY_FLAGS)})")
        names.add(name)
    if len(names & REDIRECT_POLICIES) > 1:
        raise _bad("give at most one REDIRECT_POLICY_* flag")
    names.discard(REDIRECT_ALLOW_SILENT)
    return tuple(f for f in SECURITY_FLAGS if f in names)


def redirect_policy(flags: tuple[str, ...]) -> str:
    for f in flags:
        if f in REDIRECT_POLICIES:
            return f
    return REDIRECT_ALLOW_SILENT


def check_http_method(value: Any) -> str:
    if not isinstance(value, str) or not _TOKEN.match(value) or len(value) > MAX_METHOD:
        raise _bad(f"http_method must be an HTTP method name, not {value!r}")
    if value.upper() == "CONNECT":
        raise _bad("http_method CONNECT is not a transfer")
    return value


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """PEM (or PKCS#12) paths, read as the job's owner when a transfer starts."""

    cert: str
    key: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"cert": self.cert, "key": self.key}

    @classmethod
    def parse(cls, value: Any) -> ClientCertificate | None:
        if value is None:
            return None
        if not isinstance(value, dict) or not set(value) <= {"cert", "key"}:
            raise _bad("client_certificate must be {cert, key} or null")
        cert, key = value.get("cert"), value.get("key")
        for what, path in (("cert", cert), ("key", key)):
            if path is None and what == "key":
                continue
            if (
                not isinstance(path, str)
                or not os.path.isabs(path)
                or "\x00" in path
                or len(path) > MAX_PATH
            ):
                raise _bad(f"client_certificate.{what} must be an absolute path")
        return cls(os.path.normpath(cert), None if key is None else os.path.normpath(key))  # type: ignore[arg-type]
