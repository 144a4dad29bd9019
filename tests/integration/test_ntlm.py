"""Explicit NTLM credentials (SPEC §8.2) against a server that accepts NTLM the way IIS does:
three legs bound to one kept-alive connection (negotiate, challenge, authenticate), checked by
pyspnego's real NTLM acceptor against a user file. The server runs on loopback in this process;
ferryd is a real child process."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from harness.aio import AppServer
from harness.ferryd import Daemon

import ferry

DATA = os.urandom(100_000)


class NtlmServer(AppServer):
    def __init__(self) -> None:
        super().__init__()
        self.users: list[str] = []
        self.legs = 0
        self._contexts: dict[int, Any] = {}

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/ntlm/file.bin", self.handle)
        app.router.add_get("/ntlm/garbled.bin", self.garbled)
        return app

    async def garbled(self, request: web.Request) -> web.StreamResponse:
        """A server whose NTLM challenge is not base64 (a broken or hostile one)."""
        if not request.headers.get("Authorization", "").startswith("NTLM "):
            return web.Response(status=401, headers={"WWW-Authenticate": "NTLM"})
        return web.Response(status=401, headers={"WWW-Authenticate": "NTLM abc"})

    async def handle(self, request: web.Request) -> web.StreamResponse:
        import spnego

        conn = id(request.transport)
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("NTLM "):
            return web.Response(status=401, headers={"WWW-Authenticate": "NTLM"})
        self.legs += 1
        ctx = self._contexts.get(conn)
        if ctx is None:
            ctx = spnego.server(protocol="ntlm")
            self._contexts[conn] = ctx
        try:
            out = ctx.step(base64.b64decode(auth[5:]))
        except Exception:
            self._contexts.pop(conn, None)
            return web.Response(status=401, headers={"WWW-Authenticate": "NTLM"})
        if not ctx.complete:
            token = base64.b64encode(out or b"").decode()
            return web.Response(status=401, headers={"WWW-Authenticate": f"NTLM {token}"})
        self._contexts.pop(conn, None)
        self.users.append(str(ctx.client_principal))
        return web.Response(body=DATA)


@pytest.fixture
def ntlm_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NtlmServer]:
    pytest.importorskip("spnego")
    users = tmp_path / "ntlm-users"
    users.write_text("CORP:alice:Al1ce-pw\n")
    monkeypatch.setenv("NTLM_USER_FILE", str(users))
    with NtlmServer() as server:
        yield server


def test_ntlm_three_legs_on_one_connection(
    ferryd: Daemon, ntlm_server: NtlmServer, tmp_path: Path
) -> None:
    url = f"{ntlm_server.base}/ntlm/file.bin"
    with ferry.Client(ferryd.socket) as c:
        good = c.create_job("ntlm")
        good.add_file(url, str(tmp_path / "good.bin"))
        good.set_credentials("SERVER", "NTLM", "CORP\\alice", "Al1ce-pw")
        good.resume()
        assert good.wait(timeout=30) is ferry.JobState.TRANSFERRED, good.data
        assert good.complete() == "S_OK"
        assert (tmp_path / "good.bin").read_bytes() == DATA
        assert any("alice" in u.lower() for u in ntlm_server.users), ntlm_server.users

        bad = c.create_job("ntlm-bad")
        bad.add_file(url, str(tmp_path / "bad.bin"))
        bad.set_credentials("SERVER", "NTLM", "CORP\\alice", "wrong")
        bad.resume()
        assert bad.wait(timeout=30) is ferry.JobState.ERROR
        assert bad.data["error"]["code"] == "BG_E_HTTP_ERROR_401"


def test_a_garbled_challenge_is_a_401_not_an_internal_error(
    ferryd: Daemon, ntlm_server: NtlmServer, tmp_path: Path
) -> None:
    with ferry.Client(ferryd.socket) as c:
        job = c.create_job("ntlm-garbled")
        job.add_file(f"{ntlm_server.base}/ntlm/garbled.bin", str(tmp_path / "g.bin"))
        job.set_credentials("SERVER", "NTLM", "CORP\\alice", "Al1ce-pw")
        job.resume()
        assert job.wait(timeout=30) is ferry.JobState.ERROR, job.data
        assert job.data["error"]["code"] == "BG_E_HTTP_ERROR_401", job.data
        assert "not base64" in job.data["error"]["description"], job.data


def test_parallel_files_each_have_their_own_ntlm_exchange(
    ferryd: Daemon, ntlm_server: NtlmServer, tmp_path: Path
) -> None:
    """A job's files go up to eight at a time to the same origin: each request's three
    legs are its own (a challenge answered with another request's context fails)."""
    with ferry.Client(ferryd.socket) as c:
        job = c.create_job("ntlm-parallel")
        for i in range(12):
            job.add_file(f"{ntlm_server.base}/ntlm/file.bin?n={i}", str(tmp_path / f"p{i}.bin"))
        job.set_credentials("SERVER", "NTLM", "CORP\\alice", "Al1ce-pw")
        job.resume()
        assert job.wait(timeout=60) is ferry.JobState.TRANSFERRED, job.data
        assert job.complete() == "S_OK"
    for i in range(12):
        assert (tmp_path / f"p{i}.bin").read_bytes() == DATA
    assert len(ntlm_server.users) >= 12, ntlm_server.users
