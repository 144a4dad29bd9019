"""The pure proxy rules (SPEC §8.1): validation of a job's settings, the bypass list,
no_proxy, the PRECONFIG and OVERRIDE routes, PAC answers and WPAD names."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from yarl import URL

from ferry.daemon.config import load_config
from ferry.daemon.network import preconfigured_proxy
from ferry.errors import FerryError
from ferry.model.proxy import (
    ProxySettings,
    ProxyUsage,
    host_bypassed,
    normalize_proxy_url,
    shown_proxy,
)
from ferry.transfer.pac import parse_pac_answer, wpad_urls
from ferry.transfer.proxy import PreconfiguredProxy, ProxyRouter, no_proxy_matches


def test_proxy_urls_are_normalized() -> None:
    assert normalize_proxy_url("p.example:3128") == "http://p.example:3128"
    assert normalize_proxy_url("https://P.example") == "https://p.example:443"
    assert normalize_proxy_url("http://[::1]:8080/") == "http://[::1]:8080"
    for bad in ("ftp://p:1", "http://u:p@h:1", "http://h:1/x", "http://h:0x", "", " h:1", "h :1"):
        with pytest.raises(FerryError) as e:
            normalize_proxy_url(bad)
        assert e.value.code == "BG_E_INVALID_PROXY_INFO", bad


def test_settings_parse() -> None:
    s = ProxySettings.parse(
        {"usage": "override", "list": "p1:1 https://p2:2", "bypass": "*.a.example, <LOCAL>"}
    )
    assert s == ProxySettings(
        ProxyUsage.OVERRIDE, ("http://p1:1", "https://p2:2"), (".a.example", "<local>")
    )
    assert ProxySettings.parse({"usage": "PRECONFIG", "list": None}).to_json() == {
        "usage": "PRECONFIG",
        "list": None,
        "bypass": None,
    }
    assert ProxySettings.from_record(s.to_json()) == s


@pytest.mark.parametrize(
    ("host", "bypass", "hit"),
    [
        ("intranet", ("<local>",), True),
        ("intranet.corp", ("<local>",), False),
        ("a.corp.example", (".corp.example",), True),
        ("corp.example", (".corp.example",), True),
        ("xcorp.example", (".corp.example",), False),
        ("host.example", ("host.example",), True),
        ("sub.host.example", ("host.example",), False),
        ("10.1.2.3", ("10.0.0.0/8",), True),
        ("11.1.2.3", ("10.0.0.0/8",), False),
        ("::1", ("::1",), True),
        ("[::1]", ("::/0",), True),
        ("192.0.2.1", ("<local>",), False),
    ],
)
def test_bypass(host: str, bypass: tuple[str, ...], hit: bool) -> None:
    assert host_bypassed(host, bypass) is hit


@pytest.mark.parametrize(
    ("host", "entries", "hit"),
    [
        ("a.example.com", ("example.com",), True),
        ("example.com", (".example.com",), True),
        ("badexample.com", ("example.com",), False),
        ("10.0.0.7", ("10.0.0.0/24",), True),
        ("anything", ("*",), True),
        ("localhost", ("localhost:8080",), True),
    ],
)
def test_no_proxy(host: str, entries: tuple[str, ...], hit: bool) -> None:
    assert no_proxy_matches(host, entries) is hit


def test_routes() -> None:
    pre = PreconfiguredProxy.build("http://h:1", None, "skip.example")
    router = ProxyRouter(pre)
    override = ProxySettings(ProxyUsage.OVERRIDE, ("http://a:1", "http://b:2"), ("<local>",))

    async def run() -> None:
        default = ProxySettings()
        assert await router.route(default, "http://x.example/f") == ("http://h:1",)
        assert await router.route(default, "https://x.example/f") == (None,)
        assert await router.route(default, "http://a.skip.example/f") == (None,)
        assert await router.route(ProxySettings(ProxyUsage.NO_PROXY), "http://x.example/") == (
            None,
        )
        assert await router.route(override, "http://x.example/") == ("http://a:1", "http://b:2")
        assert await router.route(override, "http://intranet/") == (None,)
        # AUTODETECT without a PAC resolver: PRECONFIG.
        auto = ProxySettings(ProxyUsage.AUTODETECT)
        assert await router.route(auto, "http://x.example/") == ("http://h:1",)

    asyncio.run(run())


def test_environment() -> None:
    env = {"HTTPS_PROXY": "http://s:3", "http_proxy": "h:4", "no_proxy": "a,b"}
    pre = PreconfiguredProxy.from_environment(env)
    assert (pre.http, pre.https, pre.no_proxy, pre.source) == (
        "http://h:4",
        "http://s:3",
        ("a", "b"),
        "environment",
    )
    assert PreconfiguredProxy.from_environment({"http_proxy": "bad url"}).source == "none"


def test_pac_answers() -> None:
    assert parse_pac_answer("PROXY p:1; DIRECT") == ("http://p:1", None)
    assert parse_pac_answer("HTTPS p:443;PROXY q:8") == ("https://p:443", "http://q:8")
    assert parse_pac_answer("SOCKS s:1") == (None,)
    assert parse_pac_answer("") == (None,)
    assert parse_pac_answer("PROXY bad host:1; PROXY ok:2") == ("http://ok:2",)


def test_wpad_names() -> None:
    assert wpad_urls("host.dept.corp.example") == [
        "http://wpad.dept.corp.example/wpad.dat",
        "http://wpad.corp.example/wpad.dat",
    ]
    assert wpad_urls("localhost") == []


def test_config_section(tmp_path: Path) -> None:
    conf = tmp_path / "f.toml"
    conf.write_text(
        '[proxy]\nhttp = "p:3128"\nhttps = "https://q:443"\nno_proxy = ["a", ".b"]\n'
        'pac_url = "file:///x.pac"\nwpad = false\n'
    )
    cfg = load_config(False, conf)
    assert (cfg.proxy_pac_url, cfg.proxy_wpad) == ("file:///x.pac", False)
    pre = preconfigured_proxy(cfg, {"http_proxy": "http://env:1"})
    assert (pre.http, pre.https, pre.no_proxy, pre.source) == (
        "http://p:3128",
        "https://q:443",
        ("a", ".b"),
        "config",
    )
    conf.write_text('[proxy]\nhttp = "ftp://nope"\n')
    with pytest.raises(FerryError) as e:
        preconfigured_proxy(load_config(False, conf), {})
    assert e.value.code == "E_INVALIDARG"
    conf.write_text("[proxy]\nport = 1\n")
    with pytest.raises(FerryError):
        load_config(False, conf)


SECRET = "s3cret-pw"


@pytest.mark.parametrize(
    "entry",
    [
        f"http://alice:{SECRET}@proxy.example:3128",
        f"alice:{SECRET}@proxy.example:3128",
        f"ftp://alice:{SECRET}@proxy.example:21",
        f"http://alice:{SECRET}@bad host:1",
        f"http://alice:{SECRET}@proxy.example:3128/path",
        f"http://alice:{SECRET}",  # the @ forgotten: the password looks like a port
        f"http://proxy.example:{SECRET}",
    ],
)
def test_proxy_errors_never_echo_a_password(entry: str) -> None:
    with pytest.raises(FerryError) as exc:
        normalize_proxy_url(entry)
    assert exc.value.code == "BG_E_INVALID_PROXY_INFO"
    assert SECRET not in exc.value.message, exc.value.message
    with pytest.raises(FerryError) as exc:
        ProxySettings.parse({"usage": "OVERRIDE", "list": [entry]})
    assert SECRET not in exc.value.message


def test_shown_proxy() -> None:
    assert shown_proxy("http://u:p@h:1") == "http://***@h:1"
    assert shown_proxy("http://h:1/x?y") == "http://h:1/…"
    assert shown_proxy("http://[::1]:3128") == "http://[::1]:3128"
    assert shown_proxy("u:p") == "u:***"
    assert shown_proxy("http://h:8080") == "http://h:8080"


def test_environment_proxy_with_a_password(caplog: pytest.LogCaptureFixture) -> None:
    """Used without the credentials (never a silent direct connection), said loudly, and
    the password is not in what is logged."""
    env = {"http_proxy": f"http://alice:{SECRET}@proxy.example:3128/"}
    with caplog.at_level(logging.WARNING, logger="ferry.transfer"):
        pre = PreconfiguredProxy.from_environment(env)
    assert (pre.http, pre.source) == ("http://proxy.example:3128", "environment")
    assert "user name and password" in caplog.text
    assert SECRET not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ferry.transfer"):
        bad = PreconfiguredProxy.from_environment({"https_proxy": f"http://alice:{SECRET}"})
    assert bad.source == "none"
    assert "https_proxy" in caplog.text and SECRET not in caplog.text


def test_config_proxy_with_a_password_stops_ferryd_without_showing_it(tmp_path: Path) -> None:
    conf = tmp_path / "ferryd.toml"
    conf.write_text(f'[proxy]\nhttp = "http://alice:{SECRET}@proxy.example:3128"\n')
    cfg = load_config(False, conf, str(tmp_path / "s"), str(tmp_path / "st"), None)
    with pytest.raises(FerryError) as exc:
        preconfigured_proxy(cfg, {})
    assert exc.value.code == "E_INVALIDARG"
    assert "no user or password" in exc.value.message and SECRET not in exc.value.message


def test_wpad_is_off_unless_asked_for(tmp_path: Path) -> None:
    """WPAD's script comes over plain http from whoever answers for wpad.DOMAIN: not by
    default (a LAN attacker would choose the proxy and collect PROXY passwords)."""
    from ferry.daemon.network import proxy_router
    from ferry.transfer.pac import PacResolver

    assert load_config(False, None).proxy_wpad is False
    assert PacResolver(None).wpad is False
    router = proxy_router(load_config(False, None), {})
    assert isinstance(router.pac, PacResolver) and router.pac.wpad is False
    conf = tmp_path / "on.toml"
    conf.write_text("[proxy]\nwpad = true\n")
    assert load_config(False, conf).proxy_wpad is True

    async def nothing_asked() -> None:
        asked: list[str] = []
        pac = PacResolver(None, fqdn=lambda: asked.append("fqdn") or "h.corp.example")
        assert await pac.route(URL("http://x.example/")) is None  # no script: PRECONFIG
        assert asked == []  # WPAD's names were never even computed
        pac.close()

    asyncio.run(nothing_asked())
