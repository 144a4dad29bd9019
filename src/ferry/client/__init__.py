"""The client side of ferry: the sync ``Client``, the asyncio ``AsyncClient``, their job
handles, and socket discovery. Importing this package does not import aiohttp."""

from ..protocol import SYSTEM_SOCKET
from ._ops import DaemonUnavailable
from .aio import AsyncClient, AsyncEventStream, AsyncJob, AsyncTokenOptions
from .impersonation import impersonate
from .sockets import locate_socket, resolve_socket, user_socket
from .sse import Event
from .sync import Client, EventStream, Job, TokenOptions
from .views import FileInfo

__all__ = [
    "SYSTEM_SOCKET",
    "AsyncClient",
    "AsyncEventStream",
    "AsyncJob",
    "AsyncTokenOptions",
    "Client",
    "DaemonUnavailable",
    "Event",
    "EventStream",
    "FileInfo",
    "Job",
    "TokenOptions",
    "impersonate",
    "locate_socket",
    "resolve_socket",
    "user_socket",
]
