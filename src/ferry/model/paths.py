"""Validation of a file's remote URL and local name (SPEC §2.2), and the temporary-file
naming rule. Pure: no I/O, so the API can refuse a bad name before anything touches a disk.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from typing import Any
from urllib.parse import SplitResult, quote, unquote, urlsplit

from ..errors import FerryError
from .job import Limits, check_string

REMOTE_SCHEMES = frozenset({"http", "https", "file"})
TEMP_SUFFIX = ".ferry-part"
# Linux file systems cap one path component at 255 bytes; a longer basename can never be
# created, so it is refused up front rather than failing later inside a transfer.
NAME_MAX = 255


def _invalid(message: str) -> FerryError:
    return FerryError("E_INVALIDARG", message)


def _fs_bytes(what: str, value: str) -> bytes:
    """The bytes the kernel will see; a string that has none (lone surrogates that are not
    surrogate-escaped bytes) cannot name a file."""
    try:
        return os.fsencode(value)
    except UnicodeError:
        raise _invalid(f"{what} is not a valid file name encoding") from None


def _check_segments(what: str, path: str) -> None:
    if any(seg == ".." for seg in path.split("/")):
        raise _invalid(f"{what} must not contain '..' segments: {path!r}")


def _collapse(path: str) -> str:
    """Collapse '//' and '/./'; the caller has already refused '..', so no segment can climb
    and the result names the same file as the input."""
    parts = [seg for seg in path.split("/") if seg not in ("", ".")]
    return "/" + "/".join(parts)


def validate_local_name(path: str, limits: Limits) -> str:
    """Check a download's local name and return it normalized.

    The name must be absolute (ferryd has no meaningful working directory for a caller),
    free of '..' (so the directory the access check sees is the directory that is written)
    and must name a file, not a directory."""
    check_string("local_name", path, limits.path_len)
    if not path:
        raise _invalid("local_name must not be empty")
    if not path.startswith("/"):
        raise _invalid(f"local_name must be an absolute path: {path!r}")
    if path.endswith("/"):
        raise _invalid(f"local_name must name a file, not a directory: {path!r}")
    _check_segments("local_name", path)
    if path.endswith("/.") or path == "/.":
        raise _invalid(f"local_name must name a file, not a directory: {path!r}")
    normalized = _collapse(path)
    base = posixpath.basename(normalized)
    if len(_fs_bytes("local_name", base)) > NAME_MAX:
        raise FerryError(
            "BG_E_STRING_TOO_LONG",
            f"the file name {base[:40]!r}... is longer than {NAME_MAX} bytes",
        )
    return normalized


def _split(url: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError as exc:
        raise _invalid(f"remote_name is not a valid URL: {exc}") from None
    return parts


def validate_remote_name(url: str, limits: Limits) -> str:
    """Check a remote URL: http and https with a host, or a local/mounted file as
    ``file:///abs/path`` (``file://localhost/abs/path``). Returns it with the scheme in
    lower case.

    A plain absolute path means the ``file://`` URL of that path (BITS accepts local paths as
    remote names): ``/srv/a b`` becomes ``file:///srv/a%20b``, percent-encoded (bytes that
    are not UTF-8, kept by surrogateescape, as themselves) and then checked as any file URL.

    Credentials embedded in a URL are refused: the remote name is shown in every listing and
    event, and BITS keeps credentials in a separate, write-only property."""
    if isinstance(url, str) and url.startswith("/"):
        url = "file://" + quote(url, safe="/", errors="surrogateescape")
    check_string("remote_name", url, limits.url_len)
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise _invalid("remote_name must not contain whitespace or control characters")
    parts = _split(url)
    scheme = parts.scheme.lower()
    if scheme not in REMOTE_SCHEMES:
        shown = parts.scheme or "(none)"
        raise _invalid(f"unsupported scheme {shown!r}: remote_name must be http, https or file")
    normalized = scheme + url[len(parts.scheme) :]
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise _invalid(f"an {scheme} remote_name needs a host: {url!r}")
        if parts.username is not None or parts.password is not None:
            raise _invalid("remote_name must not carry credentials (user:password@)")
        return normalized
    _file_path(normalized)
    return normalized


def _file_path(url: str) -> str:
    if not url[:7].lower() == "file://":
        raise _invalid(f"a file URL must look like file:///absolute/path: {url!r}")
    parts = _split(url)
    if parts.netloc.lower() not in ("", "localhost"):
        raise _invalid(f"a file URL must name a local path (no host): {url!r}")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise _invalid("a file URL has no query or fragment; percent-encode '?' and '#'")
    # surrogateescape keeps bytes that are not UTF-8 as they were, so any file name works.
    path = unquote(parts.path, errors="surrogateescape")
    if "\x00" in path:
        raise _invalid("a file URL must not contain a NUL byte")
    if not path.startswith("/"):
        raise _invalid(f"a file URL must hold an absolute path: {url!r}")
    _check_segments("a file URL", path)
    if path.endswith("/") or path.endswith("/."):
        raise _invalid(f"a file URL must name a file, not a directory: {url!r}")
    _fs_bytes("a file URL", path)
    return path


_HEX = frozenset("0123456789abcdef")


def validate_sha256(value: object) -> str | None:
    """An expected SHA-256 given with a file: 64 hexadecimal digits (either case), returned
    in lower case; None (or absent) means the file is not checked."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid("sha256 must be a string of 64 hexadecimal digits")
    digest = value.lower()
    if len(digest) != 64 or not set(digest) <= _HEX:
        raise _invalid(f"sha256 must be 64 hexadecimal digits, not {value[:80]!r}")
    return digest


def file_url_path(url: str) -> str:
    """The local path a (validated) file URL names, percent-decoded."""
    return _file_path(url)


def temp_name_for(local_name: str, token: str) -> str:
    """The hidden temporary file of a download: ``<dir>/.<basename>.<token>.ferry-part``.

    It lives in the local name's directory so that ``complete`` is an atomic same-directory
    rename; ``token`` (random) makes it unique. A long basename is shortened so the whole
    component still fits NAME_MAX; uniqueness comes from the token, not the basename."""
    if not token or "/" in token or "\x00" in token:
        raise _invalid(f"invalid temporary-name token {token!r}")
    directory, base = posixpath.split(local_name)
    if not directory or not base:
        raise _invalid(f"local_name must name a file in a directory: {local_name!r}")
    room = NAME_MAX - len(_fs_bytes("token", f"..{token}{TEMP_SUFFIX}"))
    raw = _fs_bytes("local_name", base)
    if len(raw) > room:
        base = _shorten(raw, max(room, 1))
    return posixpath.join(directory, f".{base}.{token}{TEMP_SUFFIX}")


def _shorten(raw: bytes, size: int) -> str:
    """The first ``size`` bytes of a name, cut on a UTF-8 character boundary when the name
    is UTF-8 (so the temporary name stays readable), byte-exact otherwise."""
    for cut in range(size, max(size - 4, 0), -1):
        try:
            return raw[:cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return os.fsdecode(raw[:size])


def check_upload_files(files: Sequence[Any]) -> None:
    """An upload's file (SPEC §9): its remote name is an http or https URL (the BITS Upload
    Protocol runs over HTTP); a file:// or plain path is refused. ``files`` are validated
    JobFiles."""
    for f in files:
        scheme = f.remote_name.partition(":")[0].lower()
        if scheme not in ("http", "https"):
            raise _invalid(
                f"an upload's remote name must be an http or https URL, not {f.remote_name!r}"
            )
        if f.sha256 is not None:
            raise _invalid("sha256 applies to downloads only")
