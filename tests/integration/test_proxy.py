"""Proxies end to end (SPEC §8.1): a real squid started here on loopback, a real ferryd, and
the job's proxy settings set through the API, the CLI and both clients. squid's access log
is the witness of which requests went through it; the origin is the fault server."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from harness import squid
from harness.env import short_tmpdir
from harness.faultserver import FaultServer
from harness.ferryd import Daemon
from harness.wait import wait_state

from ferry import AsyncClient, Client, FerryError
from tests.helpers.jobs import act, add, assert_error, create, get
from tests.integration.cli_helpers import Cli

pytestmark = pytest.mark.skipif(
    not squid.available(), reason=f"squid not found ({squid.SQUID}); .ci/run installs it"
)

DATA = os.urandom(300_000)


@pytest.fixture
def proxy() -> Iterator[squid.Squid]:
    with squid.Squid() as server:
        yield server


def dead_proxy() -> str:
    return f"http://127.0.0.1:{squid.free_port()}"


def through(server: squid.Squid, url: str) -> bool:
    return any(e.url == url for e in server.wait_access(lambda e: e.url == url, timeout=5))


def download(ferryd: Daemon, url: str, local: Path, **props: object) -> tuple[str, dict]:
    job = create(ferryd, local.name, **props)
    add(ferryd, job, url, local)
    act(ferryd, job, "resume")
    state = wait_state(ferryd, job, {"TRANSFERRED", "ERROR", "TRANSIENT_ERROR"}, timeout=60)
    return job, state


def test_override_tries_the_list_in_order(
    ferryd: Daemon, proxy: squid.Squid, http_server: FaultServer, dest: Path
) -> None:
    url = http_server.add("a.bin", DATA)
    settings = {"usage": "OVERRIDE", "list": [dead_proxy(), proxy.url], "bypass": None}
    job, state = download(ferryd, url, dest / "a.bin", proxy=settings)
    assert state["state"] == "TRANSFERRED", state
    act(ferryd, job, "complete")
    assert (dest / "a.bin").read_bytes() == DATA
    hits = [e for e in proxy.wait_access(lambda e: e.url == url) if e.url == url]
    assert hits and hits[0].method == "GET" and hits[0].status == 200, proxy.access()


@pytest.mark.parametrize(
    ("bypass", "host"),
    [
        (["127.0.0.1"], "127.0.0.1"),
        (["127.0.0.0/8"], "127.0.0.1"),
        (["<local>"], "localhost"),
        ([".example.test", "localhost"], "localhost"),
    ],
)
def test_bypass_goes_direct(
    ferryd: Daemon,
    proxy: squid.Squid,
    http_server: FaultServer,
    dest: Path,
    bypass: list[str],
    host: str,
) -> None:
    url = http_server.add("b.bin", DATA).replace("127.0.0.1", host)
    settings = {"usage": "OVERRIDE", "list": [proxy.url], "bypass": bypass}
    job, state = download(ferryd, url, dest / "b.bin", proxy=settings)
    assert state["state"] == "TRANSFERRED", state
    # A second URL, not bypassed (the address itself when the name was bypassed and the
    # other way round), goes through squid: the bypass matched only what it names.
    assert not through(proxy, url)


def test_bypass_not_matching_goes_through_the_proxy(
    ferryd: Daemon, proxy: squid.Squid, http_server: FaultServer, dest: Path
) -> None:
    url = http_server.add("c.bin", DATA)
    settings = {"usage": "OVERRIDE", "list": [proxy.url], "bypass": ["<local>", "10.0.0.0/8"]}
    _, state = download(ferryd, url, dest / "c.bin", proxy=settings)
    assert state["state"] == "TRANSFERRED", state
    assert through(proxy, url)


def test_every_proxy_dead_is_a_transient_transport_error(
    ferryd: Daemon, http_server: FaultServer, dest: Path
) -> None:
    url = http_server.add("d.bin", DATA)
    dead = dead_proxy()
    settings = {"usage": "OVERRIDE", "list": [dead_proxy(), dead], "bypass": None}
    job, state = download(ferryd, url, dest / "d.bin", proxy=settings)
    assert_error(state, "TRANSIENT_ERROR ERROR_WINHTTP_CANNOT_CONNECT 0x80072EFD GENERAL_TRANSPORT")
    assert dead in state["error"]["description"]
    # Nothing reached the origin.
    assert http_server.requests_for("d.bin") == []
    act(ferryd, job, "cancel")


def test_preconfig_from_the_config_file(
    short_tmp: Path, proxy: squid.Squid, http_server: FaultServer, dest: Path
) -> None:
    bypassed = http_server.add("direct.bin", DATA).replace("127.0.0.1", "localhost")
    config = f'[proxy]\nhttp = "{proxy.url}"\nno_proxy = "localhost,.example.test"\n'
    d = Daemon(short_tmp, config=config, env={"http_proxy": dead_proxy()})
    d.start()
    try:
        url = http_server.add("pre.bin", DATA)
        _, state = download(d, url, dest / "pre.bin")
        assert state["state"] == "TRANSFERRED", state
        assert through(proxy, url)
        _, state = download(d, bypassed, dest / "direct.bin")
        assert state["state"] == "TRANSFERRED", state
        # NO_PROXY: direct even though a proxy is configured.
        url2 = http_server.add("np.bin", DATA)
        _, state = download(d, url2, dest / "np.bin", proxy={"usage": "NO_PROXY"})
        assert state["state"] == "TRANSFERRED", state
        assert not through(proxy, bypassed) and not through(proxy, url2)
    finally:
        assert d.stop() == 0, d.log()


def test_preconfig_from_the_environment(
    short_tmp: Path, proxy: squid.Squid, http_server: FaultServer, dest: Path
) -> None:
    d = Daemon(short_tmp, env={"http_proxy": proxy.url, "no_proxy": "localhost"})
    d.start()
    try:
        url = http_server.add("env.bin", DATA)
        _, state = download(d, url, dest / "env.bin")
        assert state["state"] == "TRANSFERRED", state
        assert through(proxy, url)
        direct = http_server.add("env2.bin", DATA).replace("127.0.0.1", "localhost")
        _, state = download(d, direct, dest / "env2.bin")
        assert state["state"] == "TRANSFERRED", state
        assert not through(proxy, direct)
    finally:
        assert d.stop() == 0, d.log()


def test_a_password_in_the_environment_proxy_is_neither_used_nor_shown(
    short_tmp: Path, proxy: squid.Squid, http_server: FaultServer, dest: Path
) -> None:
    """http_proxy with user:password@: the proxy is still used (no silent bypass of an
    egress proxy), without those credentials, and the password appears nowhere."""
    secret = "env-pr0xy-s3cret"
    with_password = proxy.url.replace("http://", f"http://carol:{secret}@")
    d = Daemon(short_tmp, env={"http_proxy": with_password})
    d.start()
    try:
        url = http_server.add("cred-env.bin", DATA)
        _, state = download(d, url, dest / "cred-env.bin")
        assert state["state"] == "TRANSFERRED", state
        assert through(proxy, url)
        log = d.log(10_000_000)
        assert "carries a user name and password" in log, log
        assert secret not in log
    finally:
        assert d.stop() == 0, d.log()


def test_without_configuration_preconfig_is_direct(
    ferryd: Daemon, proxy: squid.Squid, http_server: FaultServer, dest: Path
) -> None:
    url = http_server.add("plain.bin", DATA)
    _, state = download(ferryd, url, dest / "plain.bin")
    assert state["state"] == "TRANSFERRED", state
    assert not through(proxy, url)


BAD = "BG_E_INVALID_PROXY_INFO"


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ({"usage": "OVERRIDE", "list": None, "bypass": None}, BAD),
        ({"usage": "OVERRIDE", "list": ["ftp://p:21"], "bypass": None}, BAD),
        ({"usage": "OVERRIDE", "list": ["http://u:pw@p:3128"]}, BAD),
        ({"usage": "OVERRIDE", "list": ["http://p:3128/path"]}, BAD),
        ({"usage": "OVERRIDE", "list": ["http://p:99999"]}, BAD),
        ({"usage": "OVERRIDE", "list": ["http://p:1"], "bypass": ["a b"]}, BAD),
        ({"usage": "OVERRIDE", "list": ["http://p:1"], "bypass": ["10.0.0.0/99"]}, BAD),
        ({"usage": "PRECONFIG", "list": ["http://p:1"]}, BAD),
        ({"usage": "NO_PROXY", "bypass": ["<local>"]}, BAD),
        ({"usage": "SOMETIMES"}, BAD),
        ({"usage": "OVERRIDE", "list": ["http://p:1"] * 400}, "BG_E_PROXY_LIST_TOO_LARGE"),
        (
            {"usage": "OVERRIDE", "list": ["http://p:1"], "bypass": ["a.b"] * 1500},
            "BG_E_PROXY_BYPASS_LIST_TOO_LARGE",
        ),
    ],
)
def test_bad_proxy_settings_change_nothing(ferryd: Daemon, value: dict, code: str) -> None:
    job = create(ferryd, "bad", priority="normal")
    ok = {"usage": "OVERRIDE", "list": ["http://good.example:3128"], "bypass": ["<local>"]}
    status, body = ferryd.call("PATCH", f"/v1/jobs/{job}", {"proxy": ok})
    assert status == 200, body
    before = get(ferryd, job)
    status, body = ferryd.call("PATCH", f"/v1/jobs/{job}", {"proxy": value, "description": "x"})
    assert status == 400, body
    assert body["error"]["code"] == code, body
    after = get(ferryd, job)
    assert after == before


def test_set_through_cli_and_clients_and_survive_restart(ferryd: Daemon) -> None:
    cli = Cli(ferryd.socket)
    cli.ok("create", "px")
    shown = cli.ok(
        "set",
        "px",
        "--proxy-usage",
        "override",
        "--proxy-list",
        "http://p1.example:3128 https://p2.example:8443",
        "--proxy-bypass",
        "<local>,.corp.example,10.0.0.0/8,192.0.2.7",
    )
    expected = {
        "usage": "OVERRIDE",
        "list": ["http://p1.example:3128", "https://p2.example:8443"],
        "bypass": ["<local>", ".corp.example", "10.0.0.0/8", "192.0.2.7"],
    }
    assert shown["proxy"] == expected
    human = cli("info", "px", json=False).stdout
    assert "OVERRIDE: http://p1.example:3128 https://p2.example:8443" in human
    assert ".corp.example" in human
    r = cli("set", "px", "--proxy-usage", "override", json=True)
    assert r.returncode == 1 and "BG_E_INVALID_PROXY_INFO" in r.stdout + r.stderr, r
    ferryd.restart()
    assert cli.ok("info", "px")["proxy"] == expected
    with Client(ferryd.socket) as c:
        job = c.get_job("px")
        assert job.proxy_settings == expected
        job.set_proxy_settings("NO_PROXY")
        assert job.proxy_settings == {"usage": "NO_PROXY", "list": None, "bypass": None}
        with pytest.raises(FerryError) as err:
            job.set_proxy_settings("no_proxy", "http://p:1")
        assert err.value.code == "BG_E_INVALID_PROXY_INFO"

    async def aio() -> None:
        async with AsyncClient(ferryd.socket) as c:
            job = await c.get_job("px")
            await job.set_proxy_settings("override", "http://p3.example:3128", ["*.x.example"])
            assert job.proxy_settings == {
                "usage": "OVERRIDE",
                "list": ["http://p3.example:3128"],
                "bypass": [".x.example"],
            }

    asyncio.run(aio())
    ferryd.restart()
    assert cli.ok("info", "px")["proxy"]["list"] == ["http://p3.example:3128"]
    cli.ok("set", "px", "--proxy-usage", "preconfig")
    assert cli.ok("info", "px")["proxy"] == {"usage": "PRECONFIG", "list": None, "bypass": None}


# ---- https through CONNECT, and proxies that refuse --------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def https_server(ca: trustme.CA) -> Iterator[FaultServer]:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    with FaultServer(ssl=ctx) as server:
        yield server


@pytest.fixture
def tls_ferryd(short_tmp: Path, ca: trustme.CA) -> Iterator[Daemon]:
    pem = short_tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(pem))
    d = Daemon(short_tmp, config=f'[daemon]\nca_file = "{pem}"\n')
    d.start()
    yield d
    assert d.stop() == 0, d.log()


def test_https_goes_through_a_connect_tunnel(
    tls_ferryd: Daemon, proxy: squid.Squid, https_server: FaultServer, dest: Path
) -> None:
    url = https_server.add("s.bin", DATA)
    assert url.startswith("https://")
    settings = {"usage": "OVERRIDE", "list": [dead_proxy(), proxy.url], "bypass": None}
    job, state = download(tls_ferryd, url, dest / "s.bin", proxy=settings)
    assert state["state"] == "TRANSFERRED", state
    act(tls_ferryd, job, "complete")
    assert (dest / "s.bin").read_bytes() == DATA
    port = url.split("/")[2].split(":")[1]
    # squid logs a tunnel when it closes: when ferryd's kept-alive connection goes idle
    # (aiohttp closes idle connections after 15 s).
    tunnels = [
        e
        for e in proxy.wait_access(lambda e: e.method == "CONNECT", timeout=60)
        if e.method == "CONNECT" and e.url == f"127.0.0.1:{port}"
    ]
    assert tunnels and tunnels[0].status == 200, proxy.access()
    # squid saw no request line of its own: the GET went inside the tunnel.
    assert not any(e.method == "GET" for e in proxy.access())


def test_a_proxy_that_refuses_is_its_http_status(
    tls_ferryd: Daemon, http_server: FaultServer, https_server: FaultServer, dest: Path
) -> None:
    with squid.Squid(open_access=False) as closed:
        settings = {"usage": "OVERRIDE", "list": [closed.url], "bypass": None}
        url = https_server.add("t.bin", DATA)
        _, state = download(tls_ferryd, url, dest / "t.bin", proxy=settings)
        assert_error(state, "ERROR BG_E_HTTP_ERROR_403 0x80190193 GENERAL_TRANSPORT")
        assert closed.url in state["error"]["description"]
        url = http_server.add("t2.bin", DATA)
        _, state = download(tls_ferryd, url, dest / "t2.bin", proxy=settings)
        assert state["state"] == "ERROR" and state["error"]["code"] == "BG_E_HTTP_ERROR_403"


def test_407_without_credentials_is_fatal(
    tls_ferryd: Daemon, http_server: FaultServer, https_server: FaultServer, dest: Path
) -> None:
    helper = "/usr/lib/squid/basic_ncsa_auth"
    if not os.access(helper, os.X_OK):
        pytest.skip(f"{helper} not found (squid's basic helper)")
    passwd = short_tmpdir("fy-pw-") / "passwd"
    passwd.write_text("")
    passwd.parent.chmod(0o755)
    extra = (
        f"auth_param basic program {helper} {passwd}\n"
        'auth_param basic realm "ferry test"\n'
        "acl authed proxy_auth REQUIRED\n"
        "http_access allow authed\n"
    )
    try:
        with squid.Squid(extra=extra, open_access=False) as auth:
            settings = {"usage": "OVERRIDE", "list": [auth.url], "bypass": None}
            url = http_server.add("u.bin", DATA)
            _, state = download(tls_ferryd, url, dest / "u.bin", proxy=settings)
            assert state["state"] == "ERROR", state
            assert state["error"]["code"] == "BG_E_HTTP_ERROR_407", state
            url = https_server.add("u2.bin", DATA)
            _, state = download(tls_ferryd, url, dest / "u2.bin", proxy=settings)
            assert_error(state, "ERROR BG_E_HTTP_ERROR_407 0x80190197 GENERAL_TRANSPORT")
    finally:
        shutil.rmtree(passwd.parent, ignore_errors=True)


# ---- AUTODETECT: a PAC script ----------------------------------------------------------------

PAC = """
function FindProxyForURL(url, host) {
    if (isPlainHostName(host)) return "DIRECT";
    if (shExpMatch(url, "*/f/socks*")) return "SOCKS 127.0.0.1:1080";
    return "PROXY %s; PROXY %s; DIRECT";
}
"""


def test_autodetect_uses_the_pac_script(
    short_tmp: Path, proxy: squid.Squid, http_server: FaultServer, dest: Path
) -> None:
    dead = dead_proxy().removeprefix("http://")
    script = PAC % (dead, proxy.url.removeprefix("http://"))
    # Served over http by the origin itself (fetched directly, never through a proxy).
    pac_url = http_server.add("proxy.pac", script.encode())
    d = Daemon(short_tmp, config=f'[proxy]\npac_url = "{pac_url}"\n')
    d.start()
    try:
        auto = {"usage": "AUTODETECT"}
        url = http_server.add("auto.bin", DATA)
        _, state = download(d, url, dest / "auto.bin", proxy=auto)
        assert state["state"] == "TRANSFERRED", state
        assert through(proxy, url)
        assert not through(proxy, pac_url)
        # isPlainHostName: direct.
        plain = http_server.add("auto2.bin", DATA).replace("127.0.0.1", "localhost")
        _, state = download(d, plain, dest / "auto2.bin", proxy=auto)
        assert state["state"] == "TRANSFERRED", state
        assert not through(proxy, plain)
        # SOCKS is not ferry's: nothing usable means direct.
        socks = http_server.add("socks.bin", DATA)
        _, state = download(d, socks, dest / "socks.bin", proxy=auto)
        assert state["state"] == "TRANSFERRED", state
        assert not through(proxy, socks)
        # The PAC script only counts for AUTODETECT: PRECONFIG (nothing configured) is direct.
        url3 = http_server.add("auto3.bin", DATA)
        _, state = download(d, url3, dest / "auto3.bin")
        assert state["state"] == "TRANSFERRED", state
        assert not through(proxy, url3)
    finally:
        assert d.stop() == 0, d.log()


def test_autodetect_without_a_script_falls_back_to_preconfig(
    short_tmp: Path, proxy: squid.Squid, http_server: FaultServer, dest: Path
) -> None:
    missing = short_tmp / "no-such.pac"
    config = f'[proxy]\npac_url = "file://{missing}"\nhttp = "{proxy.url}"\n'
    d = Daemon(short_tmp, config=config)
    d.start()
    try:
        url = http_server.add("fb.bin", DATA)
        _, state = download(d, url, dest / "fb.bin", proxy={"usage": "AUTODETECT"})
        assert state["state"] == "TRANSFERRED", state
        assert through(proxy, url)
    finally:
        assert d.stop() == 0, d.log()
