"""HTTP options end to end (SPEC §8.3) through a real ferryd: custom headers (and write-only
ones, which must never be readable again nor stored in clear), the HTTP method, redirect
policies, the last response's headers per file, and the TLS security flags against https
servers made with a throwaway CA."""

from __future__ import annotations

import asyncio
import datetime
import os
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from harness.aio import AppServer
from harness.faultserver import FaultServer
from harness.ferryd import Daemon
from harness.wait import wait_state

from ferry import AsyncClient, Client, FerryError
from tests.helpers.jobs import act, add, assert_error, create, files, get
from tests.integration.cli_helpers import Cli

DATA = os.urandom(200_000)


class Echo(AppServer):
    """Serves DATA at /d/NAME for any method, a redirect at /r/NAME, and records every
    request's method and headers."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self.fail_next = 0

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/d/{name}", self._data)
        app.router.add_route("*", "/r/{name}", self._redirect)
        return app

    async def _data(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.path, dict(request.headers)))
        if self.fail_next:
            self.fail_next -= 1
            return web.Response(status=503, text="busy")
        return web.Response(body=DATA, headers={"X-Served-By": "echo", "ETag": '"v1"'})

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.path, dict(request.headers)))
        raise web.HTTPFound(f"/d/{request.match_info['name']}")

    def url(self, path: str) -> str:
        scheme = "https" if self._ssl is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"


@pytest.fixture
def echo() -> Iterator[Echo]:
    with Echo() as server:
        yield server


def run(ferryd: Daemon, url: str, local: Path, opts: dict[str, Any] | None = None, **props: Any):
    job = create(ferryd, local.name, **props)
    if opts:
        status, body = ferryd.call("PATCH", f"/v1/jobs/{job}/http-options", opts)
        assert status == 200, body
    add(ferryd, job, url, local)
    act(ferryd, job, "resume")
    state = wait_state(ferryd, job, {"TRANSFERRED", "ERROR", "TRANSIENT_ERROR"}, timeout=60)
    return job, state


# ---- custom headers -----------------------------------------------------------------------


def test_custom_headers_are_sent_and_shown(ferryd: Daemon, echo: Echo, dest: Path) -> None:
    opts = {"custom_headers": ["X-Ferry-Test: one", "X-Other:  two words "]}
    job, state = run(ferryd, echo.url("/d/h.bin"), dest / "h.bin", opts)
    assert state["state"] == "TRANSFERRED", state
    headers = echo.seen[-1][2]
    assert headers["X-Ferry-Test"] == "one" and headers["X-Other"] == "two words"
    assert get(ferryd, job)["custom_headers"] == ["X-Ferry-Test: one", "X-Other: two words"]
    # The last response's headers, per file.
    text = files(ferryd, job)[0]["response_headers"]
    assert text.startswith("HTTP/1.1 200 OK\r\n") and "X-Served-By: echo\r\n" in text
    cli_files = Cli(ferryd.socket).ok("files", job)
    assert cli_files[0]["response_headers"] == text


SECRET = "Bearer s3cr3t-ferry-token-4242"


def test_write_only_headers_never_come_back(short_tmp: Path, echo: Echo, dest: Path) -> None:
    d = Daemon(short_tmp)
    d.start()
    try:
        cli = Cli(d.socket)
        cli.ok("create", "wo")
        shown = cli.ok(
            "set", "wo", "--header", f"X-Api-Key: {SECRET}", "--header", "X-Plain: p",
            "--headers-write-only",
        )
        assert shown["custom_headers"] == "(write-only)"
        assert shown["custom_headers_write_only"] is True
        assert SECRET not in cli("info", "wo", json=False).stdout
        assert "(write-only)" in cli("info", "wo", json=False).stdout
        # Cannot be undone.
        status, body = d.call("PATCH", "/v1/jobs/wo/http-options",
                              {"custom_headers_write_only": False})
        assert status == 400 and body["error"]["code"] == "E_INVALIDARG", body
        # Survives a restart, still sent.
        d.restart()
        add(d, "wo", echo.url("/d/wo.bin"), dest / "wo.bin")
        act(d, "wo", "resume")
        state = wait_state(d, "wo", {"TRANSFERRED", "ERROR"}, timeout=60)
        assert state["state"] == "TRANSFERRED", state
        assert echo.seen[-1][2]["X-Api-Key"] == SECRET
        assert state["custom_headers"] == "(write-only)"
        # New headers on a write-only job are write-only at once.
        with Client(d.socket) as c:
            job = c.get_job("wo")
            job.set_custom_headers([f"X-Api-Key: {SECRET}-2"])
            assert job.data["custom_headers"] == "(write-only)"
        # Events carry the view: nothing there either. The state dir and log hold no clear text.
        d.call("GET", "/v1/jobs?all_users=true")
    finally:
        assert d.stop() == 0, d.log()
    found = []
    for root, _dirs, names in os.walk(d.state_dir):
        for name in names:
            data = Path(root, name).read_bytes()
            if b"s3cr3t-ferry-token" in data:
                found.append(name)
    assert found == []
    assert "s3cr3t-ferry-token" not in d.log(10**7)


@pytest.mark.parametrize(
    "value",
    [
        ["X-A: 1\r\nX-B: 2"],
        ["X-A: one\ntwo"],
        ["Host: example.com"],
        ["range: bytes=0-"],
        ["Authorization: Basic eDp5"],
        ["Proxy-Authorization: Basic eDp5"],
        ["Content-Length: 3"],
        ["If-Range: x"],
        ["No colon here"],
        ["Bad Name: x"],
        ["X-Big: " + "a" * 16_400],
        ["X-Ctl: a\x01b"],
    ],
)
def test_bad_headers_change_nothing(ferryd: Daemon, value: list[str]) -> None:
    job = create(ferryd, "bad", priority="normal")
    status, body = ferryd.call(
        "PATCH", f"/v1/jobs/{job}/http-options", {"custom_headers": ["X-Keep: 1"]}
    )
    assert status == 200, body
    before = get(ferryd, job)
    status, body = ferryd.call(
        "PATCH",
        f"/v1/jobs/{job}/http-options",
        {"custom_headers": value, "http_method": "POST", "security_flags": ["IGNORE_UNKNOWN_CA"]},
    )
    assert status == 400 and body["error"]["code"] == "E_INVALIDARG", body
    assert get(ferryd, job) == before


def test_other_bad_options_change_nothing(ferryd: Daemon) -> None:
    job = create(ferryd, "bad2", priority="normal")
    before = get(ferryd, job)
    for opts in (
        {"security_flags": ["IGNORE_EVERYTHING"]},
        {"security_flags": ["REDIRECT_POLICY_DISALLOW", "REDIRECT_POLICY_ALLOW_REPORT"]},
        {"http_method": "GE T"},
        {"http_method": "CONNECT"},
        {"client_certificate": {"cert": "relative.pem"}},
        {"client_certificate": {"cert": "/a.pem", "key": "b.pem"}},
        {"client_certificate": {"cert": "/a.pem", "password": "x"}},
        {"unknown": 1},
    ):
        status, body = ferryd.call("PATCH", f"/v1/jobs/{job}/http-options", opts)
        assert status == 400 and body["error"]["code"] == "E_INVALIDARG", (opts, body)
    assert get(ferryd, job) == before


# ---- method -------------------------------------------------------------------------------


def test_another_method_is_foreground_and_never_retried(
    ferryd: Daemon, echo: Echo, dest: Path
) -> None:
    job = create(ferryd, "post", priority="low")
    cli = Cli(ferryd.socket)
    shown = cli.ok("set", job, "--http-method", "POST")
    assert shown["http_method"] == "POST" and shown["priority"] == "foreground"
    human = cli("info", job, json=False).stdout
    assert "POST" in human
    r = cli("set", job, "--priority", "low")
    assert r.returncode == 1 and "E_INVALIDARG" in r.stdout + r.stderr
    r = cli("set", job, "--dynamic-content")
    assert r.returncode == 1 and "BG_E_UNSUPPORTED_JOB_CONFIGURATION" in r.stdout + r.stderr
    echo.fail_next = 1
    add(ferryd, job, echo.url("/d/p.bin"), dest / "p.bin")
    act(ferryd, job, "resume")
    state = wait_state(ferryd, job, {"TRANSFERRED", "ERROR", "TRANSIENT_ERROR"}, timeout=60)
    # A 503 would be retried for GET; with another method it is ERROR.
    assert_error(state, "ERROR BG_E_HTTP_ERROR_503 0x801901F7 REMOTE_FILE")
    act(ferryd, job, "resume")
    state = wait_state(ferryd, job, {"TRANSFERRED", "ERROR"}, timeout=60)
    assert state["state"] == "TRANSFERRED", state
    assert [m for m, p, _ in echo.seen if p == "/d/p.bin"] == ["POST", "POST"]
    assert all("Range" not in h for _, p, h in echo.seen if p == "/d/p.bin")


# ---- redirects ----------------------------------------------------------------------------


def test_redirect_policies(ferryd: Daemon, echo: Echo, dest: Path) -> None:
    url = echo.url("/r/x.bin")
    final = echo.url("/d/x.bin")
    job, state = run(ferryd, url, dest / "silent.bin")
    assert state["state"] == "TRANSFERRED"
    f = files(ferryd, job)[0]
    assert f["remote_name"] == url and f["final_url"] == final

    job, state = run(
        ferryd, url, dest / "report.bin", {"security_flags": ["REDIRECT_POLICY_ALLOW_REPORT"]}
    )
    assert state["state"] == "TRANSFERRED"
    assert files(ferryd, job)[0]["remote_name"] == final

    job, state = run(
        ferryd, url, dest / "never.bin", {"security_flags": "REDIRECT_POLICY_DISALLOW"}
    )
    assert_error(state, "ERROR BG_E_HTTP_ERROR_302 0x8019012E REMOTE_FILE")
    assert get(ferryd, job)["security_flags"] == ["REDIRECT_POLICY_DISALLOW"]


def test_https_to_http_redirect_needs_its_flag(
    tls: TlsWorld, echo: Echo, http_server: FaultServer, dest: Path
) -> None:
    target = echo.url("/d/down.bin")
    with FaultServer(ssl=tls.server_ctx()) as secure:
        url = secure.url("/to") + "?url=" + target
        _, state = run(tls.ferryd, url, dest / "down1.bin")
        assert_error(state, "ERROR ERROR_WINHTTP_REDIRECT_FAILED 0x80072F7C REMOTE_FILE")
        _, state = run(
            tls.ferryd, url, dest / "down2.bin", {"security_flags": ["ALLOW_HTTPS_TO_HTTP"]}
        )
        assert state["state"] == "TRANSFERRED", state


# ---- TLS flags ----------------------------------------------------------------------------


class TlsWorld:
    """A CA ferryd trusts (ca_file), and a ferryd using it."""

    def __init__(self, ferryd: Daemon, ca: trustme.CA) -> None:
        self.ferryd = ferryd
        self.ca = ca

    def server_ctx(self, *names: str, ca: trustme.CA | None = None, **kw: Any) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        issuer = ca or self.ca
        issuer.issue_cert(*(names or ("127.0.0.1",)), **kw).configure_cert(ctx)
        return ctx


@pytest.fixture
def tls(short_tmp: Path) -> Iterator[TlsWorld]:
    ca = trustme.CA()
    pem = short_tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    d = Daemon(short_tmp, config=f'[daemon]\nca_file = "{pem}"\n')
    d.start()
    yield TlsWorld(d, ca)
    assert d.stop() == 0, d.log()


@pytest.mark.parametrize(
    ("kind", "flag"),
    [
        ("unknown-ca", "IGNORE_UNKNOWN_CA"),
        ("wrong-name", "IGNORE_CERT_CN_INVALID"),
        ("expired", "IGNORE_CERT_DATE_INVALID"),
    ],
)
def test_tls_flags_waive_one_check(tls: TlsWorld, dest: Path, kind: str, flag: str) -> None:
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    if kind == "unknown-ca":
        ctx = tls.server_ctx(ca=trustme.CA())
    elif kind == "wrong-name":
        ctx = tls.server_ctx("other.example")
    else:
        ctx = tls.server_ctx(not_before=past - datetime.timedelta(days=30), not_after=past)
    with Echo(ssl=ctx) as server:
        url = server.url(f"/d/{kind}.bin")
        _, state = run(tls.ferryd, url, dest / f"{kind}-1.bin")
        assert_error(state, "ERROR ERROR_WINHTTP_SECURE_FAILURE 0x80072F8F GENERAL_TRANSPORT")
        _, state = run(tls.ferryd, url, dest / f"{kind}-2.bin", {"security_flags": [flag]})
        assert state["state"] == "TRANSFERRED", state
        if kind != "unknown-ca":
            # The other checks still hold: a flag waives only its own.
            other = "IGNORE_CERT_DATE_INVALID" if kind == "wrong-name" else "IGNORE_CERT_CN_INVALID"
            _, state = run(tls.ferryd, url, dest / f"{kind}-3.bin", {"security_flags": [other]})
            assert state["state"] == "ERROR", state


def test_crl_check_without_a_crl_fails(tls: TlsWorld, dest: Path) -> None:
    with Echo(ssl=tls.server_ctx()) as server:
        url = server.url("/d/crl.bin")
        _, state = run(tls.ferryd, url, dest / "crl.bin", {"security_flags": ["ENABLE_CRL_CHECK"]})
        assert_error(state, "ERROR ERROR_WINHTTP_SECURE_FAILURE 0x80072F8F GENERAL_TRANSPORT")


# ---- the libraries ------------------------------------------------------------------------


def test_http_options_through_both_clients_and_restart(ferryd: Daemon) -> None:
    with Client(ferryd.socket) as c:
        job = c.create_job("opts")
        job.set_http_options(
            custom_headers=["X-A: 1"],
            security_flags=["IGNORE_CERT_CN_INVALID", "REDIRECT_POLICY_ALLOW_REPORT"],
            client_certificate={"cert": "/etc/ssl/c.pem", "key": None},
        )
        with pytest.raises(FerryError) as err:
            job.set_http_options(custom_headers=["Host: x"])
        assert err.value.code == "E_INVALIDARG"

    async def aio() -> None:
        async with AsyncClient(ferryd.socket) as c:
            job = await c.get_job("opts")
            await job.set_http_options(http_method="PUT")
            assert job.data["priority"] == "foreground"
            await job.set_custom_headers(["X-B: 2"])

    asyncio.run(aio())
    ferryd.restart()
    info = Cli(ferryd.socket).ok("info", "opts")
    assert info["custom_headers"] == ["X-B: 2"]
    assert info["security_flags"] == ["IGNORE_CERT_CN_INVALID", "REDIRECT_POLICY_ALLOW_REPORT"]
    assert info["client_certificate"] == {"cert": "/etc/ssl/c.pem", "key": None}
    assert info["http_method"] == "PUT"
    cli = Cli(ferryd.socket)
    cleared = cli.ok(
        "set", "opts", "--clear-headers", "--no-client-cert", "--security-flags", "none",
        "--http-method", "GET",
    )
    assert (cleared["custom_headers"], cleared["client_certificate"]) == (None, None)
    assert (cleared["security_flags"], cleared["http_method"]) == ([], "GET")
