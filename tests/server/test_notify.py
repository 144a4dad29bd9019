"""The upload-reply back end (--notify-url): a real aiohttp application in the test receives
each finished upload by value or by reference, and its answer becomes the reply that the
last Fragment Ack's BITS-Reply-URL serves."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from harness.aio import AppServer
from harness.upserver import FerryServer, bits, create, fragment, raw_request


class Backend:
    """Routes: /value (echo a digest of the body), /ref (read the named file, write the
    response file), /static, /copy, /flaky (503 until ``healthy``), /missing (404)."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.healthy = False
        app = web.Application(client_max_size=1 << 30)
        app.router.add_post("/value", self.value)
        app.router.add_post("/ref", self.ref)
        app.router.add_post("/static", self.static)
        app.router.add_post("/copy", self.copy)
        app.router.add_post("/flaky", self.flaky)
        self.server = AppServer(app)

    def _note(self, request: web.Request, body: bytes) -> None:
        self.seen.append({"path": request.path, "headers": dict(request.headers), "body": body})

    async def value(self, request: web.Request) -> web.Response:
        body = await request.read()
        self._note(request, body)
        return web.Response(body=b"sha256=" + hashlib.sha256(body).hexdigest().encode())

    async def ref(self, request: web.Request) -> web.Response:
        self._note(request, await request.read())
        data = Path(request.headers["BITS-Request-DataFile-Name"]).read_bytes()
        Path(request.headers["BITS-Response-DataFile-Name"]).write_bytes(data[::-1])
        return web.Response()

    async def static(self, request: web.Request) -> web.Response:
        self._note(request, await request.read())
        return web.Response(headers={"BITS-Static-Response-URL": "/replies/fixed.txt"})

    async def copy(self, request: web.Request) -> web.Response:
        self._note(request, await request.read())
        return web.Response(body=b"kept", headers={"BITS-Copy-File-To-Destination": "true"})

    async def flaky(self, request: web.Request) -> web.Response:
        self._note(request, await request.read())
        if not self.healthy:
            return web.Response(status=503)
        return web.Response(body=b"better now")


@pytest.fixture
def backend() -> Iterator[Backend]:
    b = Backend()
    b.server.start()
    yield b
    b.server.stop()


def _server(base: Path, servers: list[FerryServer], url: str, kind: str) -> FerryServer:
    s = FerryServer(
        base / "root", ["--notify-url", url, "--notify-type", kind], state_dir=base / "state"
    ).start()
    servers.append(s)
    return s


def _reply(url: str) -> bytes:
    rest = url.split("//", 1)[1]
    hostport, _, path = rest.partition("/")
    got = raw_request(int(hostport.rsplit(":", 1)[1]), "GET", "/" + path)
    assert got.status == 200, (url, got.status)
    return got.body


def test_by_value(base: Path, servers: list[FerryServer], backend: Backend) -> None:
    s = _server(base, servers, f"{backend.server.base}/value", "by-value")
    data = os.urandom(300_000)
    sid = create(s.port, "/up.bin")
    a = fragment(s.port, "/up.bin", sid, data[:100_000], 0, len(data))
    assert a.status == 200 and a.h("BITS-Reply-URL") is None  # only on the last Ack
    a = fragment(s.port, "/up.bin", sid, data[100_000:], 100_000, len(data))
    assert a.status == 200, a.headers
    url = a.h("BITS-Reply-URL")
    assert url and url.startswith(f"http://127.0.0.1:{s.port}/")
    assert _reply(url) == b"sha256=" + hashlib.sha256(data).hexdigest().encode()
    assert backend.seen[0]["body"] == data
    assert backend.seen[0]["headers"]["BITS-Original-Request-URL"].endswith("/up.bin")
    # the same last fragment again (its Ack lost): the same reply, no second notification
    a = fragment(s.port, "/up.bin", sid, data[-5:], len(data) - 5, len(data))
    assert a.h("BITS-Reply-URL") == url and len(backend.seen) == 1
    assert bits(s.port, "/up.bin", "Close-Session", sid).status == 200
    # handed to the back end only: not stored at the destination; the reply is gone
    assert not (base / "root" / "up.bin").exists()
    assert raw_request(s.port, "GET", url.split(str(s.port), 1)[1]).status == 404


def test_by_reference(base: Path, servers: list[FerryServer], backend: Backend) -> None:
    s = _server(base, servers, f"{backend.server.base}/ref", "by-reference")
    sid = create(s.port, "/r.txt")
    a = fragment(s.port, "/r.txt", sid, b"hello world", 0, 11)
    assert a.status == 200, a.headers
    assert _reply(a.h("BITS-Reply-URL") or "") == b"dlrow olleh"
    h = backend.seen[0]["headers"]
    assert backend.seen[0]["body"] == b""
    assert Path(h["BITS-Request-DataFile-Name"]).is_relative_to(base / "state")
    path = (a.h("BITS-Reply-URL") or "").split(str(s.port), 1)[1]
    head = raw_request(s.port, "HEAD", path)
    assert head.status == 200 and head.h("Content-Length") == "11"
    ranged = raw_request(s.port, "GET", path, {"Range": "bytes=0-4"})
    assert ranged.status == 206 and ranged.body == b"dlrow"
    assert bits(s.port, "/r.txt", "Close-Session", sid).status == 200
    assert not (base / "root" / "r.txt").exists()


def test_static_response_url(base: Path, servers: list[FerryServer], backend: Backend) -> None:
    s = _server(base, servers, f"{backend.server.base}/static", "by-reference")
    sid = create(s.port, "/s")
    a = fragment(s.port, "/s", sid, b"x", 0, 1)
    assert a.h("BITS-Reply-URL") == f"{backend.server.base}/replies/fixed.txt"


def test_copy_file_to_destination(base: Path, servers: list[FerryServer], backend: Backend) -> None:
    s = _server(base, servers, f"{backend.server.base}/copy", "by-value")
    sid = create(s.port, "/kept.bin")
    a = fragment(s.port, "/kept.bin", sid, b"payload", 0, 7)
    assert _reply(a.h("BITS-Reply-URL") or "") == b"kept"
    assert not (base / "root" / "kept.bin").exists()  # not before Close
    assert bits(s.port, "/kept.bin", "Close-Session", sid).status == 200
    assert (base / "root" / "kept.bin").read_bytes() == b"payload"


def test_backend_failure_is_context_7(
    base: Path, servers: list[FerryServer], backend: Backend
) -> None:
    s = _server(base, servers, f"{backend.server.base}/flaky", "by-value")
    sid = create(s.port, "/f")
    a = fragment(s.port, "/f", sid, b"abc", 0, 3)
    assert a.status == 503
    assert a.h("BITS-Error-Code") == "0x801901F7"  # BG_E_HTTP_ERROR_503
    assert a.h("BITS-Error-Context") == "0x7"
    assert a.h("BITS-Reply-URL") is None
    backend.healthy = True
    a = fragment(s.port, "/f", sid, b"c", 2, 3)  # the client retries the last fragment
    assert a.status == 200
    assert _reply(a.h("BITS-Reply-URL") or "") == b"better now"


def test_backend_missing_route(base: Path, servers: list[FerryServer], backend: Backend) -> None:
    s = _server(base, servers, f"{backend.server.base}/nothing-here", "by-value")
    sid = create(s.port, "/m")
    a = fragment(s.port, "/m", sid, b"abc", 0, 3)
    assert a.status == 404 and a.h("BITS-Error-Context") == "0x7"
    assert a.h("BITS-Error-Code") == "0x80190194"


def test_backend_unreachable(base: Path, servers: list[FerryServer]) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s = _server(base, servers, f"http://127.0.0.1:{port}/x", "by-reference")
    sid = create(s.port, "/u")
    a = fragment(s.port, "/u", sid, b"abc", 0, 3)
    assert a.status == 502 and a.h("BITS-Error-Context") == "0x7"


def test_empty_upload_reply(base: Path, servers: list[FerryServer], backend: Backend) -> None:
    s = _server(base, servers, f"{backend.server.base}/value", "by-value")
    sid = create(s.port, "/zero")
    a = fragment(s.port, "/zero", sid, b"", 0, 0)
    assert a.status == 200
    assert (
        _reply(a.h("BITS-Reply-URL") or "") == b"sha256=" + hashlib.sha256(b"").hexdigest().encode()
    )


def test_cancel_drops_the_reply(base: Path, servers: list[FerryServer], backend: Backend) -> None:
    s = _server(base, servers, f"{backend.server.base}/value", "by-value")
    sid = create(s.port, "/c")
    url = fragment(s.port, "/c", sid, b"abc", 0, 3).h("BITS-Reply-URL") or ""
    assert bits(s.port, "/c", "Cancel-Session", sid).status == 200
    assert raw_request(s.port, "GET", url.split(str(s.port), 1)[1]).status == 404
