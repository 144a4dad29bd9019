"""ferry-server behind a real nginx (the configuration of docs/uploads.md): TLS at nginx,
BITS_POST passed through, fragments streamed, reply URLs in https, escapes still refused."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from aiohttp import web
from harness import nginx
from harness.aio import AppServer
from harness.upserver import FerryServer, NginxFront, bits, create, fragment, raw_request

pytestmark = pytest.mark.skipif(not nginx.available(), reason="nginx is not installed")


@pytest.fixture
def front(base: Path) -> Iterator[tuple[NginxFront, FerryServer, ssl.SSLContext]]:
    async def reply(request: web.Request) -> web.Response:
        return web.Response(body=b"reply:" + await request.read())

    app = web.Application(client_max_size=1 << 30)
    app.router.add_post("/app", reply)
    backend = AppServer(app).start()
    s = FerryServer(
        base / "root",
        ["--notify-url", f"{backend.base}/app", "--notify-type", "by-value"],
        state_dir=base / "state",
    ).start()
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(base / "cert.pem"))
    cert.private_key_pem.write_to_path(str(base / "key.pem"))
    (base / "nginx").mkdir()
    n = NginxFront(base / "nginx", s.port, base / "cert.pem", base / "key.pem").start()
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    yield n, s, ctx
    n.stop()
    s.stop()
    backend.stop()


def test_upload_through_nginx(
    front: tuple[NginxFront, FerryServer, ssl.SSLContext], base: Path
) -> None:
    n, _, ctx = front
    data = os.urandom(3 << 20)
    sid = create(n.port, "/via-nginx.bin", tls=ctx)
    off = 0
    last = None
    while off < len(data):
        last = fragment(
            n.port, "/via-nginx.bin", sid, data[off : off + (1 << 20)], off, len(data), tls=ctx
        )
        assert last.status == 200, (last.status, last.headers, n.error_log())
        assert last.h("BITS-Packet-Type") == "Ack"
        off = int(last.h("BITS-Received-Content-Range") or 0)
    assert last is not None
    url = last.h("BITS-Reply-URL") or ""
    assert url.startswith(f"https://127.0.0.1:{n.port}/"), url  # X-Forwarded-Proto honoured
    got = raw_request(n.port, "GET", url.split(str(n.port), 1)[1], tls=ctx)
    assert got.status == 200 and got.body == b"reply:" + data
    assert bits(n.port, "/via-nginx.bin", "Close-Session", sid, tls=ctx).status == 200


def test_errors_pass_through_nginx(
    front: tuple[NginxFront, FerryServer, ssl.SSLContext], base: Path
) -> None:
    n, _, ctx = front
    sid = create(n.port, "/g", tls=ctx)
    assert fragment(n.port, "/g", sid, b"0123", 0, 10, tls=ctx).status == 200
    a = fragment(n.port, "/g", sid, b"89", 8, 10, tls=ctx)
    assert a.status == 416 and a.h("BITS-Received-Content-Range") == "4"
    a = bits(
        n.port,
        "/g",
        "Fragment",
        "{C85B4E0A-9EB9-4114-BFA4-8A43B4710091}",
        b"x",
        extra={"Content-Range": "bytes 0-0/1"},
        tls=ctx,
    )
    assert a.status == 500 and a.h("BITS-Error-Code") == "0x8020001F"
    assert a.h("BITS-Error-Context") == "0x5"
    for path in ("/%2e%2e/x", "/a%00b", "/..%2Fx"):
        a = bits(n.port, path, "Create-Session", tls=ctx)
        assert a.status in (400, 403), (path, a.status)
    a = bits(n.port, "/../x", "Create-Session", tls=ctx)
    assert a.status == 400  # nginx itself refuses a path above the root
