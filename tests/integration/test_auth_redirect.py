"""SERVER credentials stay with the origin the job named (SPEC §8.2: "sent only to the target
they were given for"): a redirect to another origin — another port is enough — is followed
without them, so an open redirect cannot collect a job's password. Two Basic-protected aiohttp
servers on loopback record every Authorization header they receive; ferryd is a real child
process."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from harness.aio import AppServer
from harness.ferryd import Daemon

import ferry

DATA = os.urandom(50_000)
USER, PASSWORD = "bob", "red1rect-s3cret"
GOOD = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


class BasicServer(AppServer):
    """Serves /file.bin to Basic bob:PASSWORD; /away redirects to ``redirect_to``."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str | None]] = []  # (path, Authorization)
        self.redirect_to = ""

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/file.bin", self.file)
        app.router.add_get("/away", self.away)
        return app

    def _authorized(self, request: web.Request) -> bool:
        value = request.headers.get("Authorization")
        self.seen.append((request.path, value))
        return value == GOOD

    async def file(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="t"'})
        return web.Response(body=DATA)

    async def away(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="t"'})
        raise web.HTTPFound(self.redirect_to)


@pytest.fixture
def servers() -> Iterator[tuple[BasicServer, BasicServer]]:
    with BasicServer() as home, BasicServer() as other:
        yield home, other


def test_server_credentials_not_sent_to_another_origin(
    ferryd: Daemon, servers: tuple[BasicServer, BasicServer], tmp_path: Path
) -> None:
    home, other = servers
    assert home.port != other.port
    home.redirect_to = f"{other.base}/file.bin"
    with ferry.Client(ferryd.socket) as c:
        job = c.create_job("cross-origin")
        job.add_file(f"{home.base}/away", str(tmp_path / "x.bin"))
        job.set_credentials("SERVER", "BASIC", USER, PASSWORD)
        job.resume()
        assert job.wait(timeout=30) is ferry.JobState.ERROR, job.data
        assert job.data["error"]["code"] == "BG_E_HTTP_ERROR_401", job.data
    # The home origin asked and got the password; the other origin asked and got nothing.
    assert (("/away", GOOD)) in home.seen, home.seen
    assert other.seen and all(auth is None for _path, auth in other.seen), other.seen
    assert PASSWORD not in ferryd.log(10_000_000)


def test_server_credentials_follow_a_redirect_on_the_same_origin(
    ferryd: Daemon, servers: tuple[BasicServer, BasicServer], tmp_path: Path
) -> None:
    """The grant beside the denial: a redirect within the origin keeps the credentials."""
    home, _other = servers
    home.redirect_to = f"{home.base}/file.bin"
    with ferry.Client(ferryd.socket) as c:
        job = c.create_job("same-origin")
        job.add_file(f"{home.base}/away", str(tmp_path / "y.bin"))
        job.set_credentials("SERVER", "BASIC", USER, PASSWORD)
        job.resume()
        assert job.wait(timeout=30) is ferry.JobState.TRANSFERRED, job.data
        assert job.complete() == "S_OK"
    assert (tmp_path / "y.bin").read_bytes() == DATA
    assert ("/file.bin", GOOD) in home.seen, home.seen
