"""Capture the caller's token from a connected Unix socket (SPEC §4.1).

SO_PEERCRED gives pid/uid/gid as the kernel recorded them at connect time, SO_PEERGROUPS
the supplementary groups, and /proc/PID/sessionid the audit (login) session.
"""

from __future__ import annotations

import errno
import pwd
import socket
import struct
from functools import lru_cache

from ..model.token import NO_SESSION, Token, is_admin

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)


@lru_cache(maxsize=4096)
def user_name(uid: int) -> str | None:
    """The passwd name, or None: tokens must work for uids with no passwd entry."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def peer_groups(sock: socket.socket) -> tuple[int, ...]:
    size = 64 * 4
    while True:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size)
        except OSError as exc:
            if exc.errno == errno.ERANGE and size < 65536 * 4:
                size *= 4
                continue
            raise
        n = len(raw) // 4
        return tuple(struct.unpack(f"{n}I", raw[: n * 4]))


def audit_session(pid: int) -> int | None:
    """The audit session id of a process; None when it has none (a service identity)."""
    try:
        with open(f"/proc/{pid}/sessionid", "rb") as f:
            value = int(f.read().strip() or NO_SESSION)
    except (OSError, ValueError):
        return None
    return None if value == NO_SESSION else value


def token_from_socket(sock: socket.socket, admin_groups: frozenset[int]) -> Token:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    groups = peer_groups(sock)
    return Token(
        uid=uid,
        gid=gid,
        groups=groups,
        session=audit_session(pid),
        name=user_name(uid),
        admin=is_admin(uid, (gid, *groups), admin_groups),
        pid=pid,
    )
