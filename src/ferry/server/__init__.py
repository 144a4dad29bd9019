"""ferry-server: the server side of the BITS Upload Protocol (what the IIS BITS extension
is on Windows), as an aiohttp application.

    from aiohttp import web
    from ferry.server import ServerConfig, make_app

    app = make_app(ServerConfig(root=Path("/srv/uploads")))
    web.run_app(app)                        # or, inside a bigger application:
    outer.add_subapp("/uploads/", make_app(ServerConfig(root=...)))

``make_app`` also lets aiohttp's HTTP server accept the ``BITS_POST`` method (see
``enable_bits_post``).
"""

from __future__ import annotations

from aiohttp import web

from .app import PROTOCOL_GUID, build, sweep
from .config import ServerConfig

__all__ = ["PROTOCOL_GUID", "ServerConfig", "enable_bits_post", "make_app", "sweep"]


def enable_bits_post() -> None:
    """Make aiohttp's HTTP server accept the ``BITS_POST`` method.

    aiohttp's C parser (llhttp) knows only the registered HTTP methods and answers 400 to
    ``BITS_POST`` before any application sees it; its pure-Python parser accepts any token.
    This makes every connection aiohttp's server accepts *from now on, in this process* use
    the Python parser (the C one is still used by aiohttp's client). Clients that can only
    send ``POST`` with ``X-Http-Method-Override: BITS_POST`` work without it.
    """
    from aiohttp import http_parser, web_protocol

    py = http_parser.HttpRequestParserPy
    if web_protocol.HttpRequestParser is not py:  # type: ignore[attr-defined]
        web_protocol.HttpRequestParser = py  # type: ignore[attr-defined]


def make_app(config: ServerConfig) -> web.Application:
    """The ferry-server application for ``config`` (also usable with ``add_subapp``).

    Calls ``enable_bits_post()``. Raises ValueError when the root is not a directory."""
    enable_bits_post()
    return build(config)
