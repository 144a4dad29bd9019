"""ferryd's HTTP server: aiohttp's, except that a request aiohttp cannot even parse (a
request line or header past its limits, a bad chunk, a bad method, a malformed header)
is answered like every other failure — the error body of SPEC §5 with a BITS code
(E_INVALIDARG for the client's mistakes, E_FAIL otherwise) — instead of aiohttp's plain
text. The API fuzzing of the torture run found these (harness/hostile.py)."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from ..errors import FerryError

MAX_DETAIL = 200  # characters of aiohttp's reason kept in the message


def parse_error_response(status: int, message: str | None) -> web.Response:
    """The BITS error answer to a request that never reached the application."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "error"
    if status >= 500:
        err = FerryError("E_FAIL", f"internal error while reading the request ({phrase})")
    else:
        lines = (message or "").strip().splitlines()
        detail = lines[0] if lines else phrase
        if len(detail) > MAX_DETAIL:
            detail = detail[:MAX_DETAIL] + "…"
        code = "BG_E_NOT_FOUND" if status == 404 else "E_INVALIDARG"
        err = FerryError(code, f"malformed HTTP request ({status} {phrase}): {detail}")
    resp = web.json_response(err.to_json(), status=status)
    resp.force_close()
    return resp


class BitsRequestHandler(RequestHandler):
    __slots__ = ()

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's own first: it logs, and raises when part of an answer went out already.
        super().handle_error(request, status, exc, message)
        return parse_error_response(status, message)


class _BitsServer(web.Server):
    def __call__(self) -> RequestHandler:
        handler = super().__call__()
        handler.__class__ = BitsRequestHandler  # same layout: no new slots
        return handler


class AppRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer unparsable requests with BITS errors."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _BitsServer
        return server
