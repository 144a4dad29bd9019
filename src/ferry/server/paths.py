"""URL paths → files under the root, never outside it.

``parse_url_path`` is pure: it splits the *raw* (still percent-encoded) path, decodes each
segment and refuses what could name something else (``.``, ``..`` however encoded, an
encoded ``/``, NUL, control characters, names longer than NAME_MAX, paths longer than
PATH_MAX, ferry-server's own hidden names). ``open_parent`` then walks the segments from the
root one directory at a time with ``O_NOFOLLOW``, so a symbolic link inside the root (to a
place outside it, or anywhere) is never followed.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

NAME_MAX = 255
PATH_MAX = 4096
RESERVED_PREFIX = ".ferry-"  # the state directory and temporary files: never served


class PathRefused(Exception):
    """A URL path that does not name a file under the root; ``status`` is 400 (malformed)
    or 403 (well-formed, but it would leave the root or is not permitted)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class UrlPath:
    """A checked path: its segments (each a plain file name) relative to the root."""

    segments: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.segments[-1]

    @property
    def parents(self) -> tuple[str, ...]:
        return self.segments[:-1]

    def __str__(self) -> str:
        return "/" + "/".join(self.segments)


def parse_url_path(raw: str) -> UrlPath:
    """The segments of a raw URL path (query removed), each percent-decoded and checked."""
    raw = raw.split("?", 1)[0].split("#", 1)[0]
    if len(raw.encode("utf-8", "surrogateescape")) > PATH_MAX:
        raise PathRefused(400, "path too long")
    if not raw.startswith("/"):
        raise PathRefused(400, "path must be absolute")
    segments: list[str] = []
    parts = raw[1:].split("/")
    for i, part in enumerate(parts):
        if part == "" and i == len(parts) - 1 and segments:
            raise PathRefused(400, "path names a directory")
        decoded = unquote_to_bytes(part)
        if b"\x00" in decoded:
            raise PathRefused(400, "NUL in path")
        if b"/" in decoded or b"\\" in decoded:
            raise PathRefused(400, "encoded separator in path")
        if any(b < 0x20 or b == 0x7F for b in decoded):
            raise PathRefused(400, "control character in path")
        if decoded in (b"", b".", b".."):
            raise PathRefused(400, "empty, . or .. segment in path")
        if len(decoded) > NAME_MAX:
            raise PathRefused(400, "name too long")
        try:
            name = decoded.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PathRefused(400, "path is not UTF-8") from exc
        if name.startswith(RESERVED_PREFIX):
            raise PathRefused(403, "reserved name")
        segments.append(name)
    if not segments:
        raise PathRefused(400, "path names the root")
    return UrlPath(tuple(segments))


def open_root(root: str) -> int:
    return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def open_parent(root: str, path: UrlPath) -> int:
    """A descriptor of the directory that holds ``path``, reached from the root without
    following any symbolic link. 403 when a segment is a symbolic link, 404 (FileNotFoundError
    kept as ``PathRefused(404)``) when a directory is missing, 403 when one is not a directory.
    """
    fd = open_root(root)
    try:
        for seg in path.parents:
            try:
                nfd = os.open(
                    seg,
                    os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                    dir_fd=fd,
                )
            except OSError as exc:
                raise _refusal(exc) from exc
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _refusal(exc: OSError) -> PathRefused:
    if exc.errno == errno.ENOENT:
        return PathRefused(404, "no such directory")
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return PathRefused(403, "a segment is a symbolic link or not a directory")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PathRefused(403, "permission denied")
    if exc.errno == errno.ENAMETOOLONG:
        return PathRefused(400, "name too long")
    raise exc


def open_file(root: str, path: UrlPath) -> int:
    """A read-only descriptor of the regular file ``path`` (never through a symbolic link)."""
    pfd = open_parent(root, path)
    try:
        try:
            fd = os.open(
                path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=pfd
            )
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise PathRefused(404, "no such file") from exc
            raise _refusal(exc) from exc
    finally:
        os.close(pfd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise PathRefused(404, "not a regular file")
    return fd
