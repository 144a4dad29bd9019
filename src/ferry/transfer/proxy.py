"""Which proxy an HTTP request takes (SPEC §8.1): the job's proxy settings against ferryd's
own proxy configuration. ``ProxyRouter.route(settings, url)`` is the one place that decides;
the http transport tries what it answers in order, and anything that must know the proxy a
request went through (proxy credentials) asks the same function.

* ``PRECONFIG``: ferryd's ``[proxy]`` configuration (``http``, ``https``, ``no_proxy``), else
  the ``http_proxy`` / ``https_proxy`` / ``no_proxy`` variables of ferryd's environment, read
  once when ferryd starts. ``no_proxy`` follows curl: names match themselves and their
  subdomains, a leading dot or ``*.`` means the same, IP addresses and CIDR ranges match
  literal addresses, ``*`` matches everything.
* ``NO_PROXY``: direct.
* ``OVERRIDE``: direct for a bypassed host, else the job's list, in order.
* ``AUTODETECT``: the PAC script's answer (``transfer/pac.py``), else PRECONFIG.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from yarl import URL

from ..errors import FerryError
from ..model.proxy import (
    ProxySettings,
    ProxyUsage,
    host_bypassed,
    normalize_proxy_url,
    shown_proxy,
    strip_proxy_userinfo,
)

log = logging.getLogger("ferry.transfer")

# A route: the proxies to try in order; None stands for a direct connection.
Route = tuple[str | None, ...]
DIRECT: Route = (None,)


def _no_proxy_entries(value: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    return tuple(v.strip().lower() for v in value if v.strip())


def no_proxy_matches(host: str, entries: tuple[str, ...]) -> bool:
    """curl's reading of ``no_proxy``: ``*`` matches all; ``example.com``, ``.example.com``
    and ``*.example.com`` match the name and its subdomains; addresses and CIDR ranges match
    address literals. A ``:port`` on an entry is ignored."""
    name = host.strip("[]").rstrip(".").lower()
    try:
        addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(name)
    except ValueError:
        addr = None
    for raw in entries:
        if raw == "*":
            return True
        entry = raw
        if entry.startswith("[") and "]" in entry:
            entry = entry[1 : entry.index("]")]
        elif entry.count(":") == 1:
            entry = entry.split(":", 1)[0]
        if addr is not None:
            try:
                if addr in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        entry = entry.removeprefix("*").removeprefix(".")
        if entry and (name == entry or name.endswith("." + entry)):
            return True
    return False


@dataclass(frozen=True, slots=True)
class PreconfiguredProxy:
    """ferryd's own proxy: from its configuration, else from its environment."""

    http: str | None = None
    https: str | None = None
    no_proxy: tuple[str, ...] = ()
    source: str = "none"  # "config", "environment" or "none", for logs and docs

    @classmethod
    def build(
        cls,
        http: str | None = None,
        https: str | None = None,
        no_proxy: str | list[str] | tuple[str, ...] | None = None,
        source: str = "config",
    ) -> PreconfiguredProxy:
        """Validated like a job's proxy list; raises FerryError (BG_E_INVALID_PROXY_INFO)."""
        return cls(
            normalize_proxy_url(http) if http else None,
            normalize_proxy_url(https) if https else None,
            _no_proxy_entries(no_proxy),
            source,
        )

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> PreconfiguredProxy:
        """``http_proxy``, ``https_proxy``, ``no_proxy`` (lower case first, as curl reads
        them; the upper-case spellings otherwise). An unusable value is ignored rather than
        stopping ferryd (a later request goes direct, as curl would not), with a warning.

        A ``user:password@`` in a proxy variable is not used (ferryd takes no credentials
        from its environment; jobs set PROXY credentials) and never logged: the proxy is
        still used, without them, so a job never silently bypasses an egress proxy; a
        warning says so."""

        def var(name: str) -> str | None:
            return environ.get(name) or environ.get(name.upper()) or None

        def proxy(name: str) -> str | None:
            value = var(name)
            if not value:
                return None
            text = value.strip().rstrip("/")
            bare = strip_proxy_userinfo(text)
            if bare != text:
                log.warning(
                    "%s in ferryd's environment carries a user name and password: ferryd "
                    "takes no credentials from its environment and goes through %s without "
                    "them (give jobs PROXY credentials instead)",
                    name,
                    shown_proxy(bare),
                )
            try:
                return normalize_proxy_url(bare)
            except FerryError as exc:
                log.warning("%s in ferryd's environment is not used: %s", name, exc.message)
                return None

        http, https = proxy("http_proxy"), proxy("https_proxy")
        if http is None and https is None:
            return cls()
        return cls(http, https, _no_proxy_entries(var("no_proxy")), "environment")

    def route(self, url: URL) -> Route:
        proxy = self.https if url.scheme == "https" else self.http
        if proxy is None or no_proxy_matches(url.host or "", self.no_proxy):
            return DIRECT
        return (proxy,)


class PacResolver(Protocol):
    """What AUTODETECT asks (transfer/pac.py): the PAC script's route for a URL, or None when
    there is no script (then PRECONFIG applies)."""

    async def route(self, url: URL) -> Route | None: ...

    def close(self) -> None: ...


class ProxyRouter:
    """The proxies a job's request to ``url`` tries, in order (None: direct)."""

    def __init__(self, preconfig: PreconfiguredProxy | None = None, pac: PacResolver | None = None):
        self.preconfig = preconfig if preconfig is not None else PreconfiguredProxy()
        self.pac = pac

    def close(self) -> None:
        if self.pac is not None:
            self.pac.close()

    async def route(self, settings: ProxySettings, url: URL | str) -> Route:
        if not isinstance(url, URL):
            url = URL(url)
        usage = settings.usage
        if usage is ProxyUsage.NO_PROXY:
            return DIRECT
        if usage is ProxyUsage.OVERRIDE:
            if host_bypassed(url.host or "", settings.bypass) or not settings.list:
                return DIRECT
            return settings.list
        if usage is ProxyUsage.AUTODETECT and self.pac is not None:
            found = await self.pac.route(url)
            if found is not None:
                return found
        return self.preconfig.route(url)
