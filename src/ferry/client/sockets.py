"""Where ferryd listens: the one place that decides which socket a client talks to.

The library and the CLI both call :func:`locate_socket`, so ``ferry`` and ``import ferry``
can never disagree about which daemon they mean (SPEC §1: argument, then ``FERRY_SOCKET``,
then the user daemon if one is running, then the system daemon).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..protocol import SYSTEM_SOCKET, default_socket

ENV_SOCKET = "FERRY_SOCKET"

if TYPE_CHECKING:
    from .unixhttp import UnixHTTPConnection as UnixHTTPConnection

SocketSource = Literal["argument", "environment", "user", "system"]


def user_socket(environ: Mapping[str, str] | None = None) -> str:
    """The socket a user-mode ferryd serves (``ferry.protocol.default_socket``)."""
    return default_socket(system=False, environ=environ)


@dataclass(frozen=True, slots=True)
class SocketChoice:
    """A socket path and why it was chosen.

    The reason matters to the CLI: it may start a user daemon only when it picked the
    socket by default, never when the user named one (they asked for *that* daemon).
    """

    path: str
    source: SocketSource

    @property
    def explicit(self) -> bool:
        return self.source in ("argument", "environment")


def locate_socket(
    explicit: str | None = None, environ: Mapping[str, str] | None = None
) -> SocketChoice:
    """Argument, else ``FERRY_SOCKET``, else the user socket if it exists, else the system
    socket. An empty string counts as "not given", as shells make empty variables easily."""
    env = os.environ if environ is None else environ
    if explicit:
        return SocketChoice(explicit, "argument")
    from_env = env.get(ENV_SOCKET)
    if from_env:
        return SocketChoice(from_env, "environment")
    user = user_socket(env)
    if os.path.exists(user):
        return SocketChoice(user, "user")
    return SocketChoice(SYSTEM_SOCKET, "system")


def resolve_socket(explicit: str | None = None) -> str:
    """The socket path a client should connect to (see :func:`locate_socket`)."""
    return locate_socket(explicit).path


def __getattr__(name: str) -> Any:
    # ``UnixHTTPConnection`` lives in ``unixhttp`` so that finding a socket does not import
    # ``http.client`` (and with it ``ssl`` and ``email``): the ``ferry`` command's start-up.
    if name == "UnixHTTPConnection":
        from .unixhttp import UnixHTTPConnection

        return UnixHTTPConnection
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
