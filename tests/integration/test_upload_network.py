"""Uploads with the job's network identity, as downloads have it (issue #12): through a real
squid chosen by OVERRIDE proxy settings (and its 407 answered with the job's PROXY
credentials), to a ferry-server behind a Basic check answered with the job's SERVER
credentials, with the job's custom headers on every packet. Denials too: a wrong password is
BG_E_HTTP_ERROR_401 (or 407) and nothing is published."""

from __future__ import annotations

import base64
import os
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from harness import squid
from harness.aio import AppServer
from harness.env import short_tmpdir
from harness.ferryd import Daemon
from harness.upserver import FerryServer
from harness.wait import wait_state

from ferry import Client
from ferry.server import ServerConfig, make_app

CONFIG = "[daemon]\nupload_fragment_size = 65536\nupload_retries = 4\n"
USER, PASSWORD = "uploader", "up-s3cret-pw"
needs_squid = pytest.mark.skipif(
    not squid.available(), reason=f"squid not found ({squid.SQUID}); .ci/run installs it"
)


@pytest.fixture
def base() -> Iterator[Path]:
    path = short_tmpdir("fyn-")
    for d in ("root", "src"):
        (path / d).mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def ferryd(base: Path) -> Iterator[Daemon]:
    d = Daemon(base / "ferryd", config=CONFIG)
    d.start()
    yield d
    assert d.stop() == 0, d.log()


class CheckedServer(AppServer):
    """ferry-server (its aiohttp application, in process) behind a Basic check: a request
    without ``Authorization: Basic USER:PASSWORD`` is 401 with a Basic challenge. Every
    packet's type, whether it was authorised and its ``X-Ferry-Test`` header are recorded."""

    def __init__(self, root: Path, check: bool = True, ssl: Any = None) -> None:
        super().__init__(ssl=ssl)
        self.scheme = "https" if ssl is not None else "http"
        self.root = root
        self.check = check
        self.seen: list[tuple[str, bool, str | None]] = []

    def make_app(self) -> web.Application:
        app = make_app(ServerConfig(root=self.root))
        want = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

        @web.middleware
        async def basic(request: web.Request, handler: object) -> web.StreamResponse:
            ok = request.headers.get("Authorization") == want
            packet = request.headers.get("BITS-Packet-Type", request.method)
            self.seen.append((packet.lower(), ok, request.headers.get("X-Ferry-Test")))
            if self.check and not ok:
                await request.read()
                return web.Response(
                    status=401, headers={"WWW-Authenticate": 'Basic realm="ferry uploads"'}
                )
            return await handler(request)  # type: ignore[operator]

        app.middlewares.append(basic)
        return app

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/{path}"


def _src(base: Path, name: str, size: int = 300_000) -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = base / "src" / name
    path.write_bytes(data)
    return path, data


def _upload(ferryd: Daemon, url: str, src: Path, name: str, **setup: object) -> tuple[str, dict]:
    with Client(ferryd.socket) as c:
        job = c.create_job(name, type="upload")
        job.add_file(url, str(src))
        if "proxy" in setup:
            job.set_proxy_settings("OVERRIDE", [setup["proxy"]])
        for target, user, password in setup.get("credentials", []):  # type: ignore[attr-defined]
            job.set_credentials(target, "BASIC", user, password)
        if "headers" in setup:
            job.set_custom_headers(setup["headers"])  # type: ignore[arg-type]
        job.resume()
        body = wait_state(ferryd, job.id, "TRANSFERRED", "ERROR", timeout=120)
        if body["state"] == "TRANSFERRED":
            assert job.complete() == "S_OK"
        return job.id, body


@needs_squid
def test_upload_through_squid_with_override(ferryd: Daemon, base: Path) -> None:
    server = FerryServer(base / "root", state_dir=base / "state").start()
    try:
        with squid.Squid() as proxy:
            src, data = _src(base, "via")
            url = server.url("/via")
            _, body = _upload(ferryd, url, src, "via", proxy=proxy.url)
            assert body["state"] == "TRANSFERRED", (body["error"], ferryd.log())
            assert (base / "root" / "via").read_bytes() == data
            # Every packet went through squid: Create-Session, fragments, Close-Session.
            proxy.wait_access(lambda e: e.method == "BITS_POST" and e.url == url)
            posts = [e for e in proxy.access() if e.method == "BITS_POST" and e.url == url]
            assert len(posts) >= 2 + len(data) // 65536, proxy.access()
            assert all(e.status == 200 for e in posts), proxy.access()
    finally:
        server.stop()


@needs_squid
def test_upload_through_a_dead_proxy_fails_transiently(ferryd: Daemon, base: Path) -> None:
    server = FerryServer(base / "root", state_dir=base / "state").start()
    try:
        src, _ = _src(base, "dead", 1000)
        dead = f"http://127.0.0.1:{squid.free_port()}"
        with Client(ferryd.socket) as c:
            job = c.create_job("dead", type="upload")
            job.add_file(server.url("/dead"), str(src))
            job.set_proxy_settings("OVERRIDE", [dead])
            job.resume()
            body = wait_state(ferryd, job.id, "TRANSIENT_ERROR", "ERROR", timeout=120)
            assert body["state"] == "TRANSIENT_ERROR", body
            assert dead in body["error"]["description"], body["error"]
            job.cancel()
        assert not (base / "root" / "dead").exists()
    finally:
        server.stop()


@needs_squid
def test_upload_through_squid_with_proxy_credentials(ferryd: Daemon, base: Path) -> None:
    helper = Path("/usr/lib/squid/basic_ncsa_auth")
    if not os.access(helper, os.X_OK):
        pytest.skip(f"{helper} not found (squid's basic helper)")
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (.ci/run installs it)")
    work = short_tmpdir("fy-sqa-")
    passwd = work / "passwd"
    hashed = subprocess.run(["openssl", "passwd", "-apr1", "pr0xy-pw"], capture_output=True,
                            text=True, check=True).stdout.strip()  # fmt: skip
    passwd.write_text(f"carol:{hashed}\n")
    os.chmod(passwd, 0o644)
    extra = (
        f"auth_param basic program {helper} {passwd}\n"
        "auth_param basic realm ferry-test\n"
        "acl authed proxy_auth REQUIRED\n"
        "http_access allow authed\n"
    )
    server = FerryServer(base / "root", state_dir=base / "state").start()
    proxy = squid.Squid(work, extra=extra, open_access=False)
    proxy.start()
    try:
        src, data = _src(base, "authed")
        cred = [("PROXY", "carol", "pr0xy-pw")]
        _, body = _upload(ferryd, server.url("/authed"), src, "authed", proxy=proxy.url,
                          credentials=cred)  # fmt: skip
        assert body["state"] == "TRANSFERRED", (body["error"], ferryd.log())
        assert (base / "root" / "authed").read_bytes() == data
        assert any(e.user == "carol" for e in proxy.access()), proxy.access()
        # A wrong password: the proxy's 407 stays, a fatal error, nothing published.
        src, _ = _src(base, "denied", 1000)
        cred = [("PROXY", "carol", "wrong-pw")]
        _, body = _upload(ferryd, server.url("/denied"), src, "denied", proxy=proxy.url,
                          credentials=cred)  # fmt: skip
        assert body["state"] == "ERROR", body
        assert body["error"]["code"] == "BG_E_HTTP_ERROR_407", body["error"]
        assert not (base / "root" / "denied").exists()
        assert "pr0xy-pw" not in ferryd.log(10_000_000)
    finally:
        proxy.cleanup()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def test_upload_with_server_credentials_and_custom_headers(ferryd: Daemon, base: Path) -> None:
    with CheckedServer(base / "root") as server:
        src, data = _src(base, "basic")
        _, body = _upload(
            ferryd, server.url("basic"), src, "basic",
            credentials=[("SERVER", USER, PASSWORD)], headers=["X-Ferry-Test: upload-42"],
        )  # fmt: skip
        assert body["state"] == "TRANSFERRED", (body["error"], ferryd.log())
        assert (base / "root" / "basic").read_bytes() == data
        packets = [p for p, _, _ in server.seen]
        assert "create-session" in packets and "close-session" in packets
        assert packets.count("fragment") >= len(data) // 65536
        # The first Create-Session learns the challenge; after it every packet is authorised
        # up front (Basic is preemptive once the origin asked), and each carries the header.
        authorised = [p for p, ok, _ in server.seen if ok]
        assert "close-session" in authorised and authorised.count("fragment") == packets.count(
            "fragment"
        )
        assert all(h == "upload-42" for _, _, h in server.seen), server.seen
        assert PASSWORD not in ferryd.log(10_000_000)


def test_upload_with_a_wrong_password_is_401(ferryd: Daemon, base: Path) -> None:
    with CheckedServer(base / "root") as server:
        src, _ = _src(base, "nope", 1000)
        _, body = _upload(ferryd, server.url("nope"), src, "nope",
                          credentials=[("SERVER", USER, "wrong")])  # fmt: skip
        assert body["state"] == "ERROR", body
        assert body["error"]["code"] == "BG_E_HTTP_ERROR_401", body["error"]
        assert not (base / "root" / "nope").exists()
        # Without credentials at all: the same, and no Authorization was ever sent.
        server.seen.clear()
        _, body = _upload(ferryd, server.url("nope2"), src, "nope2")
        assert body["error"]["code"] == "BG_E_HTTP_ERROR_401", body["error"]
        assert not any(ok for _, ok, _ in server.seen)


@needs_squid
def test_https_upload_through_a_connect_tunnel_with_credentials(base: Path) -> None:
    """https: the tunnel through squid, the job's SERVER credentials and headers inside it,
    the server's certificate checked against ferryd's ca_file."""
    ca = trustme.CA()
    pem = base / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ferryd = Daemon(base / "ferryd", config=CONFIG + f'ca_file = "{pem}"\n')
    ferryd.start()
    try:
        with CheckedServer(base / "root", ssl=ctx) as server, squid.Squid() as proxy:
            src, data = _src(base, "tls")
            url = server.url("tls")
            _, body = _upload(
                ferryd, url, src, "tls", proxy=proxy.url,
                credentials=[("SERVER", USER, PASSWORD)], headers=["X-Ferry-Test: tls"],
            )  # fmt: skip
            assert body["state"] == "TRANSFERRED", (body["error"], ferryd.log())
            assert (base / "root" / "tls").read_bytes() == data
            assert all(h == "tls" for _, _, h in server.seen), server.seen
            assert "close-session" in [p for p, ok, _ in server.seen if ok]
            # squid logs a tunnel when it closes (an idle kept-alive connection: <= 15 s).
            tunnels = proxy.wait_access(lambda e: e.method == "CONNECT", timeout=60)
            assert any(e.url == f"127.0.0.1:{server.port}" for e in tunnels), proxy.access()
            assert not any(e.method == "BITS_POST" for e in proxy.access())
    finally:
        assert ferryd.stop() == 0, ferryd.log()
