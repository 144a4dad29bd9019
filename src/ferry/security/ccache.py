"""Reading a Kerberos credential cache (or a service's keytab) *as its identity* (SPEC §8.2).

Runs on an IdentityIO worker whose fsuid/fsgid/groups are already the token's, so the kernel
judges every step as it would for the user. On top of that, the file must be reachable
without following any symbolic link (each directory is opened with O_NOFOLLOW from the one
before, as openat2's RESOLVE_NO_SYMLINKS would), must be a regular file owned by the
identity itself (a cache the identity could read but that someone else made — another
uid's — is refused too), and is opened O_NONBLOCK so a FIFO planted there cannot hang a
worker. Nothing is read before every check has passed. Refusals are E_ACCESSDENIED.
"""

from __future__ import annotations

import errno
import os
import stat

from ..errors import FerryError

MAX_CACHE_BYTES = 1 << 20  # a credential cache or keytab is a few KiB


def _denied(path: str, why: str) -> FerryError:
    return FerryError("E_ACCESSDENIED", f"credential cache {path}: {why}")


def _open_no_symlinks(path: str) -> int | None:
    """A descriptor for ``path`` (absolute, normalised) opened without following any
    symbolic link; None when it does not exist."""
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise _denied(path, "not a file")
    # O_PATH: a directory is only passed through, which needs search (x) permission, not
    # read — a 0711 home or /var/lib directory is as good to the walk as it is to open(2).
    # With O_DIRECTORY a symbolic link is refused (ENOTDIR) rather than opened.
    dir_flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open("/", dir_flags)
    try:
        for part in parts[:-1]:
            try:
                nxt = os.open(part, dir_flags, dir_fd=fd)
            except FileNotFoundError:
                return None
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise _denied(path, f"{part!r} is a symbolic link or not a directory") from None
                raise _denied(path, os.strerror(exc.errno or 0)) from None
            os.close(fd)
            fd = nxt
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        try:
            return os.open(parts[-1], flags, dir_fd=fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise _denied(path, "is a symbolic link") from None
            raise _denied(path, os.strerror(exc.errno or 0)) from None
    finally:
        os.close(fd)


def _vetted(path: str, uid: int) -> int | None:
    fd = _open_no_symlinks(path)
    if fd is None:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _denied(path, "not a regular file")
        if st.st_uid != uid:
            raise _denied(path, f"owned by uid {st.st_uid}, not {uid}")
        if st.st_nlink != 1:
            raise _denied(path, f"has {st.st_nlink} links")
        if st.st_size > MAX_CACHE_BYTES:
            raise _denied(path, "too large to be a credential cache")
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_cache_file(path: str, uid: int) -> bool:
    """On the identity's worker: whether ``path`` exists and would be accepted (raises
    E_ACCESSDENIED when it exists and would not). Opens and fstats; reads nothing."""
    fd = _vetted(path, uid)
    if fd is None:
        return False
    os.close(fd)
    return True


def read_cache_file(path: str, uid: int) -> bytes | None:
    """On the identity's worker: the bytes of the cache, None when it does not exist."""
    fd = _vetted(path, uid)
    if fd is None:
        return None
    try:
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            total += len(chunk)
            if total > MAX_CACHE_BYTES:
                raise _denied(path, "too large to be a credential cache")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


# ---- what the bytes are, before libkrb5 sees them ----------------------------------------

_MAX_COMPONENTS = 16
_UNUSUAL = frozenset("\\/@") | frozenset(chr(c) for c in range(0x20)) | {"\x7f"}


def _counted(data: bytes, pos: int, what: str) -> tuple[bytes, int]:
    if pos + 4 > len(data):
        raise ValueError(f"truncated {what}")
    n = int.from_bytes(data[pos : pos + 4], "big")
    if n > len(data) - pos - 4:
        raise ValueError(f"truncated {what}")
    return data[pos + 4 : pos + 4 + n], pos + 4 + n


def ccache_principal(data: bytes) -> str:
    """The default principal of the bytes of a FILE credential cache (format version 3 or
    4, what MIT and Heimdal write), as GSSAPI displays it (``a/b@REALM``). Raises ValueError
    when the bytes are not such a cache, or when the principal holds a character that
    display would escape (``\\``, ``/`` or ``@`` inside a part, control characters): such
    a name could not be compared reliably, so it is not used."""
    if len(data) < 4 or data[0] != 5 or data[1] not in (3, 4):
        raise ValueError("not a credential cache (format 0x0503 or 0x0504)")
    pos = 2
    if data[1] == 4:
        header_len = int.from_bytes(data[2:4], "big")
        pos = 4 + header_len
    if pos + 8 > len(data):
        raise ValueError("truncated principal")
    count = int.from_bytes(data[pos + 4 : pos + 8], "big")
    if not 1 <= count <= _MAX_COMPONENTS:
        raise ValueError(f"a principal of {count} components")
    raw_realm, pos = _counted(data, pos + 8, "realm")
    parts = []
    for _ in range(count):
        raw, pos = _counted(data, pos, "principal")
        parts.append(raw)
    try:
        realm = raw_realm.decode("utf-8")
        names = [p.decode("utf-8") for p in parts]
    except UnicodeDecodeError:
        raise ValueError("a principal that is not UTF-8") from None
    if not realm or any(not n for n in names):
        raise ValueError("a principal with an empty part")
    if any(c in _UNUSUAL for text in (realm, *names) for c in text):
        raise ValueError("a principal with characters that would be escaped")
    return "/".join(names) + "@" + realm


def check_keytab(data: bytes) -> None:
    """Raises ValueError unless the bytes start like a keytab (format 0x0502 or 0x0501)."""
    if len(data) < 2 or data[0] != 5 or data[1] not in (1, 2):
        raise ValueError("not a keytab (format 0x0502)")
