"""A deliberately odd BITS Upload Protocol server (aiohttp), for testing ferry's client
against the variations real servers show: packet types in any case, no session id on Acks,
``BITS-Error`` instead of ``BITS-Error-Code``, 201 for Create-Session, comma-separated
protocol lists; and faults on demand: 413 for fragments over a size, connections dropped
mid-fragment, sessions forgotten (BG_E_SESSION_NOT_FOUND), application errors (context 0x7),
a farm host (``BITS-Host-Id``). Uploads are kept in memory and published to ``published``
only at Close-Session."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import http_parser, web, web_protocol
from harness.aio import AppServer

# aiohttp's C parser (llhttp) knows a fixed list of methods and refuses BITS_POST; the pure
# Python parser accepts any token, as HTTP allows. This process's aiohttp servers use it.
web_protocol.HttpRequestParser = http_parser.HttpRequestParserPy  # type: ignore[misc]

GUID = "{7df0354d-249b-430f-820d-3d2a9bef4931}"
_RANGE = re.compile(r"^bytes\s+(?:(\d+)-(\d+)|\*)/(\d+)$", re.IGNORECASE)


@dataclass
class Session:
    path: str
    data: bytearray = field(default_factory=bytearray)
    total: int | None = None


class OddBitsServer(AppServer):
    def __init__(self) -> None:
        super().__init__()
        self.sessions: dict[str, Session] = {}
        self.published: dict[str, bytes] = {}
        self.packets: list[tuple[str, str, dict[str, str]]] = []  # (type, path, headers)
        self.max_fragment: int | None = None  # 413 above this
        self.drop_at: list[int] = []  # drop the connection after this many bytes of a body
        self.forget_at: int | None = None  # forget the session when it holds this many bytes
        self.reply_for: dict[str, bytes] = {}  # path -> reply (makes the path upload-reply)
        self.app_error_status: int | None = None  # the back end fails the last fragment
        self.host_id: str | None = None
        self.host_fallback: int | None = None
        self.create_status = 201
        self.fail_creates = 0  # the next N Create-Session answer 500 (with BITS-Error)
        self.fragment_bytes = 0  # body bytes received in fragments (overlaps included)
        self.reply_url: str | None = None  # the BITS-Reply-URL to send instead of our own

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("BITS_POST", "/{path:.*}", self.bits)
        app.router.add_get("/reply/{sid}", self.reply)
        return app

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def count(self, packet: str) -> int:
        return sum(1 for p in self.packets if p[0] == packet.lower())

    # Odd on purpose: lower-case Ack, BITS-Error (not -Code), no session id on fragment Acks.
    def _ack(self, status: int = 200, **headers: Any) -> web.Response:
        h = {"bits-packet-type": "ack", "Content-Length": "0"}
        h.update({k.replace("_", "-"): str(v) for k, v in headers.items()})
        return web.Response(status=status, headers=h)

    def _error(self, status: int, code: int, context: int = 5) -> web.Response:
        return self._ack(
            status, **{"BITS-Error": f"0x{code:08x}", "BITS-Error-Context": hex(context)}
        )

    async def bits(self, request: web.Request) -> web.StreamResponse:
        packet = request.headers.get("BITS-Packet-Type", "").lower()
        path = request.match_info["path"]
        self.packets.append((packet, path, dict(request.headers)))
        sid = request.headers.get("BITS-Session-Id")
        if packet == "ping":
            return self._ack()
        if packet == "create-session":
            protocols = re.split(r"[,\s]+", request.headers.get("BITS-Supported-Protocols", ""))
            if GUID.lower() not in [p.lower() for p in protocols]:
                return self._error(400, 0x80070057)
            if self.fail_creates:
                self.fail_creates -= 1
                return self._error(500, 0x80070070)  # disk full: transient
            sid = "{" + str(uuid.uuid4()).upper() + "}"
            self.sessions[sid] = Session(path)
            extra: dict[str, Any] = {}
            if self.host_id:
                extra["BITS-Host-Id"] = self.host_id
                if self.host_fallback is not None:
                    extra["BITS-Host-Id-Fallback-Timeout"] = self.host_fallback
            # Comma-separated protocol echo in upper case, 201 rather than 200.
            return self._ack(
                self.create_status,
                BITS_Protocol=GUID.upper(),
                BITS_Session_Id=sid,
                Accept_Encoding="identity",
                **extra,
            )
        session = self.sessions.get(sid or "")
        if packet in ("close-session", "cancel-session", "fragment") and session is None:
            return self._error(500, 0x8020001F)
        assert session is not None
        if packet == "cancel-session":
            del self.sessions[sid or ""]
            return self._ack()
        if packet == "close-session":
            if session.total is None or len(session.data) != session.total:
                return self._error(400, 0x80070057)
            self.published[session.path] = bytes(session.data)
            del self.sessions[sid or ""]
            return self._ack(BITS_Session_Id=sid)
        if packet != "fragment":
            return self._error(400, 0x80070057)
        m = _RANGE.match(request.headers.get("Content-Range", "").strip())
        if m is None:
            return self._error(400, 0x80070057)
        total = int(m.group(3))
        start, end = (int(m.group(1)), int(m.group(2))) if m.group(1) else (0, -1)
        length = end - start + 1
        if self.max_fragment is not None and length > self.max_fragment:
            return self._ack(413)
        if self.drop_at and length > self.drop_at[0]:
            cut = self.drop_at.pop(0)
            await request.content.readexactly(cut)
            assert request.transport is not None
            request.transport.close()
            return self._ack()
        body = await request.read()
        self.fragment_bytes += len(body)
        if len(body) != length:
            return self._error(400, 0x80070057)
        if session.total is None:
            session.total = total
        elif session.total != total:
            return self._error(400, 0x80070057)
        have = len(session.data)
        if start > have:
            return self._ack(416, BITS_Received_Content_Range=have)
        if end >= have:  # an overlap is trimmed: only the new bytes count
            session.data += body[have - start :]
        received = len(session.data)
        if self.forget_at is not None and received >= self.forget_at:
            self.forget_at = None
            del self.sessions[sid or ""]
            return self._error(500, 0x8020001F)
        headers: dict[str, Any] = {"BITS_Received_Content_Range": received}
        if received == total and session.path in self.reply_for:
            if self.app_error_status is not None:
                return self._error(self.app_error_status, 0x80004005, context=7)
            headers["BITS_Reply_URL"] = self.reply_url or f"/reply/{sid.strip('{}') if sid else ''}"
        return self._ack(**headers)  # no BITS-Session-Id on purpose

    async def reply(self, request: web.Request) -> web.Response:
        sid = "{" + request.match_info["sid"] + "}"
        session = self.sessions.get(sid)
        if session is None:
            raise web.HTTPNotFound()
        return web.Response(body=self.reply_for[session.path])
