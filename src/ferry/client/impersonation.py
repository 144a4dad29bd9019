"""``ferry.impersonate``: make API calls as another identity, for root callers.

BITS's SetHelperToken takes "the identity the application is impersonating". On Linux the
daemon learns a caller's identity from the connection (SO_PEERCRED), so impersonating means
*connecting* as the other identity: a forked child drops to the uid, gid and groups,
connects to ferryd, and passes the connected socket back over a socketpair (SCM_RIGHTS).
The calling process's own credentials never change, so other threads are unaffected.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from ..errors import FerryError


@dataclass(frozen=True, slots=True)
class Identity:
    uid: int
    gid: int
    groups: tuple[int, ...]


_current: ContextVar[Identity | None] = ContextVar("ferry_impersonation", default=None)


def current() -> Identity | None:
    """The identity calls made now should connect as (None: the process's own)."""
    return _current.get()


@contextlib.contextmanager
def impersonate(uid: int, gid: int, groups: tuple[int, ...] | list[int] = ()) -> Iterator[None]:
    """Within the block, every ferry call from this thread or task connects as
    ``uid``/``gid``/``groups`` (root only). The process's own credentials do not change."""
    if os.geteuid() != 0:
        raise FerryError("E_ACCESSDENIED", "only root can impersonate another identity")
    ids = (uid, gid, *groups)
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 2**32 - 1 for i in ids):
        raise FerryError("E_INVALIDARG", "uid, gid and groups must be valid numeric ids")
    token = _current.set(Identity(uid, gid, tuple(groups)))
    try:
        yield
    finally:
        _current.reset(token)


class ImpersonatedSocket:
    """A socket connected as another identity. The child that connected it stays alive (and
    in the caller's login session) until this is closed, so ferryd can still read the
    connecting process's session when it captures the token."""

    def __init__(self, sock: socket.socket, control: socket.socket, pid: int) -> None:
        self.sock = sock
        self._control = control
        self._pid = pid

    def close(self) -> None:
        self.sock.close()
        self._control.close()  # the child sees EOF and exits
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self._pid, 0)


def connect_as(identity: Identity, path: str, timeout: float | None = None) -> ImpersonatedSocket:
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        status = 1
        try:
            parent.close()
            os.setgroups(list(identity.groups))
            os.setgid(identity.gid)
            os.setuid(identity.uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            socket.send_fds(child, [b"ok"], [s.fileno()])
            s.close()
            child.recv(1)  # wait until the parent is done with the connection
            status = 0
        except BaseException as exc:
            with contextlib.suppress(BaseException):
                child.sendall(b"E" + repr(exc).encode()[:300])
        finally:
            os._exit(status)
    child.close()
    try:
        parent.settimeout(timeout)
        msg, fds, _flags, _addr = socket.recv_fds(parent, 512, 1)
    except BaseException:
        parent.close()
        os.waitpid(pid, 0)
        raise
    if not fds:
        parent.close()
        os.waitpid(pid, 0)
        detail = msg[1:].decode(errors="replace") if msg.startswith(b"E") else "no socket"
        if "Permission" in detail:
            raise FerryError("E_ACCESSDENIED", f"uid {identity.uid} may not connect: {detail}")
        raise FerryError("E_FAIL", f"could not connect to {path} as uid {identity.uid}: {detail}")
    sock = socket.socket(fileno=fds[0])
    sock.settimeout(timeout)
    return ImpersonatedSocket(sock, parent, pid)
