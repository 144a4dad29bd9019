"""The client side of ferry: the sync ``Client``, the asyncio ``AsyncClient``, their job
handles, and socket discovery. Importing this package does not import aiohttp.

Its names are loaded when first used (PEP 562): ``from ferry.client import Client`` does
not import the asyncio client, and ``from ferry.client import AsyncClient`` not the sync
one, so the ``ferry`` command and scripts pay only for what they use. A new public name is
one line in ``_WHERE`` and one in the ``TYPE_CHECKING`` block.
"""

from __future__ import annotations

from .._lazy import lazy_exports

# Not typing.TYPE_CHECKING: ``ferry list`` imports this package (for ``wire``), and typing
# (with re) would cost it more than the rest of its imports (see ferry/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from ..protocol import SYSTEM_SOCKET
    from ._ops import DaemonUnavailable
    from .aio import AsyncClient, AsyncEventStream, AsyncJob, AsyncTokenOptions
    from .impersonation import impersonate
    from .sockets import locate_socket, resolve_socket, user_socket
    from .sse import Event
    from .sync import Client, EventStream, Job, TokenOptions
    from .views import FileInfo

# public name -> the module (relative to this package) that defines it
_WHERE = {
    "SYSTEM_SOCKET": "..protocol",
    "DaemonUnavailable": "._ops",
    "AsyncClient": ".aio",
    "AsyncEventStream": ".aio",
    "AsyncJob": ".aio",
    "AsyncTokenOptions": ".aio",
    "impersonate": ".impersonation",
    "locate_socket": ".sockets",
    "resolve_socket": ".sockets",
    "user_socket": ".sockets",
    "Event": ".sse",
    "Client": ".sync",
    "EventStream": ".sync",
    "Job": ".sync",
    "TokenOptions": ".sync",
    "FileInfo": ".views",
}


__getattr__, __dir__ = lazy_exports(__name__, _WHERE, globals())


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
