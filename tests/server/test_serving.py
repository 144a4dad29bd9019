"""GET/HEAD with ranges of what was uploaded, HTTPS (--tls-cert/--tls-key), and
``make_app`` embedded as a sub-application (with the 413 of ``max_fragment_size``)."""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from aiohttp import web
from harness.aio import AppServer
from harness.upserver import FerryServer, bits, create, fragment, raw_request, upload

from ferry.server import ServerConfig, make_app


def test_get_and_head_with_ranges(base: Path, servers: list[FerryServer]) -> None:
    s = FerryServer(base / "root", state_dir=base / "state").start()
    servers.append(s)
    (base / "root" / "dir").mkdir()
    data = os.urandom(100_000)
    upload(s.port, "/dir/file.bin", data, chunk=30_000)
    g = raw_request(s.port, "GET", "/dir/file.bin")
    assert g.status == 200 and g.body == data
    assert g.h("Accept-Ranges") == "bytes"
    etag = g.h("ETag")
    assert etag
    h = raw_request(s.port, "HEAD", "/dir/file.bin")
    assert h.status == 200 and h.h("Content-Length") == str(len(data)) and h.body == b""
    r = raw_request(s.port, "GET", "/dir/file.bin", {"Range": "bytes=1000-1999"})
    assert r.status == 206 and r.body == data[1000:2000]
    assert r.h("Content-Range") == f"bytes 1000-1999/{len(data)}"
    r = raw_request(s.port, "GET", "/dir/file.bin", {"Range": "bytes=-10"})
    assert r.status == 206 and r.body == data[-10:]
    r = raw_request(s.port, "GET", "/dir/file.bin", {"Range": "bytes=5-", "If-Range": etag})
    assert r.status == 206 and r.body == data[5:]
    r = raw_request(s.port, "GET", "/dir/file.bin", {"Range": "bytes=5-", "If-Range": '"x"'})
    assert r.status == 200 and r.body == data
    r = raw_request(s.port, "GET", "/dir/file.bin", {"Range": "bytes=200000-"})
    assert r.status == 416
    assert raw_request(s.port, "GET", "/dir").status == 404  # no directory listings
    assert raw_request(s.port, "GET", "/nothing").status == 404
    assert raw_request(s.port, "PUT", "/dir/file.bin", body=b"x").status == 405
    # a partial upload is never served
    sid = create(s.port, "/dir/partial")
    assert fragment(s.port, "/dir/partial", sid, b"ab", 0, 4).status == 200
    assert raw_request(s.port, "GET", "/dir/partial").status == 404


def test_tls(base: Path, servers: list[FerryServer]) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(base / "server.pem"))
    cert.private_key_pem.write_to_path(str(base / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(base / "cert.pem"))
    s = FerryServer(
        base / "root",
        ["--tls-cert", str(base / "cert.pem"), "--tls-key", str(base / "key.pem")],
        state_dir=base / "state",
    ).start()
    servers.append(s)
    assert s.scheme == "https"
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    sid = create(s.port, "/t", tls=ctx)
    assert fragment(s.port, "/t", sid, b"secure", 0, 6, tls=ctx).status == 200
    assert bits(s.port, "/t", "Close-Session", sid, tls=ctx).status == 200
    assert raw_request(s.port, "GET", "/t", tls=ctx).body == b"secure"
    with pytest.raises(ssl.SSLError):  # not trusted without the CA
        raw_request(s.port, "GET", "/t", tls=ssl.create_default_context())


@pytest.fixture
def embedded(base: Path) -> Iterator[AppServer]:
    """make_app under /uploads/ of another application, in this process; aiohttp's request
    parser is put back afterwards (make_app switches it to accept BITS_POST)."""
    from aiohttp import web_protocol

    saved = web_protocol.HttpRequestParser  # type: ignore[attr-defined]
    outer = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hi")

    outer.router.add_get("/hello", hello)
    config = ServerConfig(root=base / "root", state_dir=base / "state", max_fragment_size=5000)
    outer.add_subapp("/uploads/", make_app(config))
    server = AppServer(outer).start()
    yield server
    server.stop()
    web_protocol.HttpRequestParser = saved  # type: ignore[attr-defined]


def test_sub_application(embedded: AppServer, base: Path) -> None:
    p = embedded.port
    assert raw_request(p, "GET", "/hello").body == b"hi"
    sid = create(p, "/uploads/sub.bin")
    data = os.urandom(12_000)
    a = fragment(p, "/uploads/sub.bin", sid, data, 0, len(data))
    assert a.status == 413 and a.h("BITS-Error-Code") == "0x80200020"
    off = 0
    while off < len(data):
        a = fragment(p, "/uploads/sub.bin", sid, data[off : off + 5000], off, len(data))
        assert a.status == 200, a.headers
        off = int(a.h("BITS-Received-Content-Range") or 0)
    assert bits(p, "/uploads/sub.bin", "Close-Session", sid).status == 200
    assert (base / "root" / "sub.bin").read_bytes() == data  # the prefix is not in the path
    assert raw_request(p, "GET", "/uploads/sub.bin").body == data
    assert bits(p, "/uploads/../x", "Create-Session").status == 400


def test_get_keeps_the_connection_and_logs_no_error(base: Path, servers: list[FerryServer]) -> None:
    """aiohttp prepares the response a handler returns a second time; a FileResponse then
    stats /proc/self/fd/N again after the server closed N. Found by the soak run (every
    reply fetch of an upload-reply job): an "Unhandled exception" per GET and the client's
    keep-alive connection closed under it. Three GETs (and a HEAD) on one connection."""
    import socket

    from harness.upserver import read_answer

    s = FerryServer(base / "root", state_dir=base / "state").start()
    servers.append(s)
    data = os.urandom(50_000)
    upload(s.port, "/k.bin", data)
    with socket.create_connection(("127.0.0.1", s.port), 30) as sock:
        for method in ("GET", "HEAD", "GET", "GET"):
            a = raw_request(s.port, method, "/k.bin", sock=sock)
            assert a.status == 200, (method, a.status)
            assert a.body == (data if method == "GET" else b"")
        # the connection is still open: one more request on it is answered
        sock.sendall(f"GET /k.bin HTTP/1.1\r\nHost: 127.0.0.1:{s.port}\r\n\r\n".encode())
        assert read_answer(sock, "GET").body == data
    s.stop()
    assert "Unhandled exception" not in s.log(200_000)
