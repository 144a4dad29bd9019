"""Client certificates (SPEC §8.3) with real uids against a system-mode ferryd: the files are
read as the job's owner when a transfer starts, so a key only root may read is refused for
a plain user's job (and never read by ferryd as root); and the BITS rule that a job whose
NETWORK helper token acts cannot use its non-root owner's key (0x80072F9A). The server is an
https server that requires a client certificate from a throwaway CA. Root only."""

from __future__ import annotations

import os
import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from harness.aio import AppServer
from harness.ferryd import Daemon
from harness.wait import wait_state

from tests.helpers.jobs import owned_dir
from tests.helpers.session_agent import SessionAgent

A = 40311  # the job owner, a plain user
B = 40312  # a helper identity

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")
DATA = os.urandom(100_000)


class MutualTls(AppServer):
    """Serves DATA at /d/NAME to clients with a certificate of the CA; records their names."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        super().__init__(ssl=ctx)
        self.clients: list[Any] = []

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/d/{name}", self._data)
        return app

    async def _data(self, request: web.Request) -> web.StreamResponse:
        cert = request.transport.get_extra_info("peercert") if request.transport else None
        self.clients.append(cert)
        return web.Response(body=DATA)

    def url(self, name: str) -> str:
        return f"https://127.0.0.1:{self.port}/d/{name}"


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def d(short_tmp: Path, ca: trustme.CA) -> Iterator[Daemon]:
    pem = short_tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    config = f'[daemon]\nsession_poll_interval = 0.2\nca_file = "{pem}"\n'
    daemon = Daemon(short_tmp, system=True, config=config)
    daemon.start()
    yield daemon
    assert daemon.stop() == 0, daemon.log()


@pytest.fixture
def server(ca: trustme.CA) -> Iterator[MutualTls]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    ca.configure_trust(ctx)
    ctx.verify_mode = ssl.CERT_REQUIRED
    with MutualTls(ctx) as srv:
        yield srv


@pytest.fixture
def world(short_tmp: Path) -> Iterator[Path]:
    base = short_tmp / "w"
    base.mkdir()
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def owner() -> Iterator[SessionAgent]:
    with SessionAgent(A) as agent:
        yield agent


def job_with_cert(
    d: Daemon, who: SessionAgent, url: str, local: Path, cert: Path, key: Path | None
) -> str:
    status, job = who.call(d.socket, "POST", "/v1/jobs", {"display_name": "cc"})
    assert status == 201, job
    opts = {"client_certificate": {"cert": str(cert), "key": None if key is None else str(key)}}
    status, body = who.call(d.socket, "PATCH", f"/v1/jobs/{job['id']}/http-options", opts)
    assert status == 200, body
    files = {"files": [{"remote_name": url, "local_name": str(local)}]}
    assert who.call(d.socket, "POST", f"/v1/jobs/{job['id']}/files", files)[0] == 200
    assert who.call(d.socket, "POST", f"/v1/jobs/{job['id']}/resume", {})[0] == 200
    return str(job["id"])


def client_files(ca: trustme.CA, where: Path, uid: int, key_mode: int = 0o600) -> tuple[Path, Path]:
    leaf = ca.issue_cert("ferry-client@example.test")
    cert, key = where / "client.pem", where / "client.key"
    cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    for p in (cert, key):
        os.chown(p, uid, uid)
    os.chmod(cert, 0o644)
    os.chmod(key, key_mode)
    return cert, key


def test_the_owner_s_certificate_is_read_as_the_owner(
    d: Daemon, server: MutualTls, ca: trustme.CA, world: Path, owner: SessionAgent
) -> None:
    mine = owned_dir(world / "a-keys", A, 0o700)
    cert, key = client_files(ca, mine, A)
    dest = owned_dir(world / "a-dest", A, 0o755)
    job = job_with_cert(d, owner, server.url("ok.bin"), dest / "ok.bin", cert, key)
    state = wait_state(d, job, {"TRANSFERRED", "ERROR"}, timeout=60)
    assert state["state"] == "TRANSFERRED", state
    assert server.clients and server.clients[-1], server.clients
    # Without a certificate the server refuses the handshake.
    status, job2 = owner.call(d.socket, "POST", "/v1/jobs", {"display_name": "nocert"})
    files = {"files": [{"remote_name": server.url("no.bin"), "local_name": str(dest / "no")}]}
    owner.call(d.socket, "POST", f"/v1/jobs/{job2['id']}/files", files)
    owner.call(d.socket, "POST", f"/v1/jobs/{job2['id']}/resume", {})
    state = wait_state(d, job2["id"], {"TRANSFERRED", "ERROR", "TRANSIENT_ERROR"}, timeout=60)
    assert state["state"] in ("ERROR", "TRANSIENT_ERROR"), state
    assert state["error"]["context"] == "GENERAL_TRANSPORT", state


def test_a_key_only_root_may_read_is_refused(
    d: Daemon, server: MutualTls, ca: trustme.CA, world: Path, owner: SessionAgent
) -> None:
    # The certificate is public, the key belongs to root (0600): ferryd runs as root and
    # could read it, but it reads as the owner, who cannot.
    keys = owned_dir(world / "root-keys", 0, 0o755)
    cert, key = client_files(ca, keys, 0, key_mode=0o600)
    dest = owned_dir(world / "a-dest2", A, 0o755)
    job = job_with_cert(d, owner, server.url("deny.bin"), dest / "deny.bin", cert, key)
    state = wait_state(d, job, {"TRANSFERRED", "ERROR"}, timeout=60)
    assert state["state"] == "ERROR", state
    assert (state["error"]["code"], state["error"]["context"]) == (
        "E_ACCESSDENIED",
        "GENERAL_TRANSPORT",
    ), state
    assert server.clients == []  # no request reached the server
    # A symbolic link the owner made to root's key changes nothing.
    link_dir = owned_dir(world / "a-links", A, 0o755)
    (link_dir / "k").symlink_to(key)
    job = job_with_cert(d, owner, server.url("deny2.bin"), dest / "deny2.bin", cert, link_dir / "k")
    state = wait_state(d, job, {"TRANSFERRED", "ERROR"}, timeout=60)
    assert state["error"]["code"] == "E_ACCESSDENIED", state


def test_network_helper_cannot_use_the_owner_s_key(
    d: Daemon, server: MutualTls, ca: trustme.CA, world: Path, owner: SessionAgent
) -> None:
    mine = owned_dir(world / "a-keys3", A, 0o700)
    cert, key = client_files(ca, mine, A)
    dest = owned_dir(world / "a-dest3", A, 0o755)
    status, job = owner.call(d.socket, "POST", "/v1/jobs", {"display_name": "helper-cc"})
    jid = job["id"]
    opts = {"client_certificate": {"cert": str(cert), "key": str(key)}}
    assert owner.call(d.socket, "PATCH", f"/v1/jobs/{jid}/http-options", opts)[0] == 200
    files = {"files": [{"remote_name": server.url("h.bin"), "local_name": str(dest / "h.bin")}]}
    assert owner.call(d.socket, "POST", f"/v1/jobs/{jid}/files", files)[0] == 200
    status, h = owner.call(
        d.socket, "POST", f"/v1/jobs/{jid}/handles", {"interface": "token-options"}
    )
    assert status == 201, h
    with SessionAgent(B) as helper:
        status, body = helper.call(d.socket, "PUT", f"/v1/handles/{h['handle']}/helper-token", {})
        assert status == 200, body
        status, body = owner.call(
            d.socket, "PUT", f"/v1/jobs/{jid}/helper-token/flags", {"flags": 2}
        )
        assert status == 200, body
        owner.call(d.socket, "POST", f"/v1/jobs/{jid}/resume", {})
        state = wait_state(d, jid, {"TRANSFERRED", "ERROR"}, timeout=60)
        assert state["state"] == "ERROR", state
        assert (state["error"]["code"], state["error"]["hresult"]) == (
            "ERROR_WINHTTP_CLIENT_CERT_NO_ACCESS_PRIVATE_KEY",
            "0x80072F9A",
        ), state
    assert server.clients == []
