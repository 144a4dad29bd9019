"""A job's proxy settings (IBackgroundCopyJob::SetProxySettings, SPEC §8.1) and the pure
rules around them: what a valid proxy list and bypass list are, and whether a host is
bypassed. Which proxy a request actually takes (ferryd's own configuration, PAC) is the
transport's business (``transfer/proxy.py``); this module has no I/O.

Wire shape: ``{"usage": "PRECONFIG"|"NO_PROXY"|"OVERRIDE"|"AUTODETECT", "list": [URL…] | null,
"bypass": [entry…] | null}``. ``list`` and ``bypass`` are only allowed with ``OVERRIDE``
(as in BITS, where they must be NULL for the other usages), and ``list`` is required there.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from ..errors import FerryError

# BITS limits each list to 4,000 characters (not counting the terminator).
MAX_LIST_CHARS = 4000
LOCAL = "<local>"
_HOST_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


class ProxyUsage(StrEnum):
    """BG_JOB_PROXY_USAGE."""

    PRECONFIG = "PRECONFIG"
    NO_PROXY = "NO_PROXY"
    OVERRIDE = "OVERRIDE"
    AUTODETECT = "AUTODETECT"


def _invalid(message: str) -> FerryError:
    return FerryError("BG_E_INVALID_PROXY_INFO", message)


def _valid_hostname(host: str) -> bool:
    if not host or len(host) > 253:
        return False
    return all(_HOST_LABEL.match(label) for label in host.rstrip(".").split("."))


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return _valid_hostname(host)


def _authority_span(entry: str) -> tuple[int, int]:
    """Where the ``[user[:password]@]host[:port]`` part of a proxy URL starts and ends."""
    scheme_end = entry.find("://")
    start = scheme_end + 3 if scheme_end >= 0 else 0
    end = len(entry)
    for sep in "/?#":
        i = entry.find(sep, start)
        if i >= 0:
            end = min(end, i)
    return start, end


def strip_proxy_userinfo(entry: str) -> str:
    """``entry`` without a ``user:password@`` in front of its host (unchanged without)."""
    start, end = _authority_span(entry)
    authority = entry[start:end]
    if "@" not in authority:
        return entry
    return entry[:start] + authority.rsplit("@", 1)[1] + entry[end:]


def shown_proxy(entry: str) -> str:
    """A proxy entry as it may appear in an error text or a log: ``scheme://host:port``
    with a user and password replaced by ``***@``, a port that is not a number (which may be
    a password missing its ``@``) by ``***``, and anything after the host by ``/…``."""
    if not isinstance(entry, str):
        return "?"
    start, end = _authority_span(entry)
    authority = entry[start:end]
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    host, sep, port = authority.rpartition(":")
    if sep and not port.isdigit() and not authority.endswith("]"):
        authority = host + ":***"
    rest = "/…" if end < len(entry) else ""
    return entry[:start] + authority + rest


def normalize_proxy_url(entry: str) -> str:
    """One proxy of a list as ``scheme://host:port``: ``http://`` or ``https://`` (a bare
    ``host:port``, as BITS writes it, means ``http://``). No user or password (credentials
    are set apart, never in a property that is shown), no path. Raises
    BG_E_INVALID_PROXY_INFO."""
    # Error texts show the entry only as shown_proxy() does: a user:password@ written into
    # a proxy URL must not come back in an answer, an event or a log.
    shown = shown_proxy(entry)
    if not isinstance(entry, str) or not entry or entry != entry.strip():
        raise _invalid(f"invalid proxy {shown!r}")
    if any(c.isspace() or ord(c) < 0x20 or c == "\x7f" for c in entry):
        raise _invalid(f"invalid proxy {shown!r}: contains blanks or control characters")
    text = entry if "://" in entry else "http://" + entry
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise _invalid(f"invalid proxy {shown!r}: not scheme://host:port") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise _invalid(f"invalid proxy {shown!r}: the scheme must be http or https")
    if parts.username is not None or parts.password is not None:
        raise _invalid(
            f"invalid proxy {shown!r}: no user or password in a proxy URL "
            "(set proxy credentials instead)"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise _invalid(f"invalid proxy {shown!r}: a proxy is scheme://host:port, no path")
    host = parts.hostname or ""
    if not _valid_host(host):
        raise _invalid(f"invalid proxy {shown!r}: bad host name")
    scheme = parts.scheme.lower()
    if port is None:
        port = 443 if scheme == "https" else 80
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


def normalize_bypass(entry: str) -> str:
    """One bypass entry: ``<local>``, a host name, ``.suffix`` (``*.suffix`` is the same),
    an IP address or a CIDR range. Raises BG_E_INVALID_PROXY_INFO."""
    if not isinstance(entry, str) or not entry.strip():
        raise _invalid(f"invalid bypass entry {entry!r}")
    text = entry.strip()
    if text.lower() == LOCAL:
        return LOCAL
    if text.startswith("*."):
        text = text[1:]
    if "/" in text:
        try:
            return str(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise _invalid(f"invalid bypass entry {entry!r}: not a CIDR range") from None
    bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    name = text[1:] if text.startswith(".") else text
    if not _valid_hostname(name):
        raise _invalid(f"invalid bypass entry {entry!r}")
    return text.lower()


def _as_list(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        # The BITS spelling: one string, separated by blanks (or commas, for the bypass).
        return [p for p in re.split(r"[\s,;]+", value) if p]
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return list(value)
    raise _invalid(f"proxy {what} must be a list of strings")


@dataclass(frozen=True, slots=True)
class ProxySettings:
    usage: ProxyUsage = ProxyUsage.PRECONFIG
    list: tuple[str, ...] = ()
    bypass: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "usage": self.usage.value,
            "list": list(self.list) if self.list else None,
            "bypass": list(self.bypass) if self.bypass else None,
        }

    @classmethod
    def from_record(cls, d: Any) -> ProxySettings:
        """From a stored record (trusted: already validated when it was set)."""
        if not d:
            return DEFAULT_PROXY
        usage = ProxyUsage(d.get("usage", "PRECONFIG"))
        if usage is ProxyUsage.PRECONFIG and not d.get("list") and not d.get("bypass"):
            return DEFAULT_PROXY
        return cls(usage, tuple(d.get("list") or ()), tuple(d.get("bypass") or ()))

    @classmethod
    def parse(cls, value: Any) -> ProxySettings:
        """SetProxySettings' checks on a wire value; raises BG_E_INVALID_PROXY_INFO (or
        BG_E_PROXY_LIST_TOO_LARGE / BG_E_PROXY_BYPASS_LIST_TOO_LARGE) and changes
        nothing."""
        if not isinstance(value, dict):
            raise _invalid("proxy must be an object {usage, list, bypass}")
        unknown = set(value) - {"usage", "list", "bypass"}
        if unknown:
            raise _invalid(f"unknown proxy fields {sorted(unknown)}")
        raw_usage = value.get("usage", ProxyUsage.PRECONFIG.value)
        if not isinstance(raw_usage, str):
            raise _invalid("proxy usage must be a string")
        try:
            usage = ProxyUsage(raw_usage.strip().upper())
        except ValueError:
            known = ", ".join(u.value for u in ProxyUsage)
            raise _invalid(f"unknown proxy usage {raw_usage!r} (one of {known})") from None
        proxies = _as_list(value.get("list"), "list")
        bypass = _as_list(value.get("bypass"), "bypass")
        if len(" ".join(proxies)) > MAX_LIST_CHARS:
            raise FerryError(
                "BG_E_PROXY_LIST_TOO_LARGE", f"the proxy list exceeds {MAX_LIST_CHARS} characters"
            )
        if len(" ".join(bypass)) > MAX_LIST_CHARS:
            raise FerryError(
                "BG_E_PROXY_BYPASS_LIST_TOO_LARGE",
                f"the bypass list exceeds {MAX_LIST_CHARS} characters",
            )
        if usage is ProxyUsage.OVERRIDE:
            if not proxies:
                raise _invalid("OVERRIDE needs a proxy list")
        elif proxies or bypass:
            raise _invalid(
                f"a proxy or bypass list is only allowed with OVERRIDE, not {usage.value}"
            )
        norm = tuple(normalize_proxy_url(p) for p in proxies)
        norm_bypass = tuple(dict.fromkeys(normalize_bypass(b) for b in bypass))
        if usage is ProxyUsage.PRECONFIG:
            return DEFAULT_PROXY
        return cls(usage, norm, norm_bypass)


DEFAULT_PROXY = ProxySettings()


def host_bypassed(host: str, bypass: tuple[str, ...] | list[str]) -> bool:
    """Whether ``host`` (a URL's host, without brackets) matches one of ``bypass``
    (normalized entries): ``<local>`` matches names without a dot; ``.suffix`` a name
    ending in it (or the suffix itself without its dot); a name matches itself; an IP
    address or CIDR range matches an address literal in it."""
    if not bypass:
        return False
    name = host.strip("[]").rstrip(".").lower()
    try:
        addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(name)
    except ValueError:
        addr = None
    for entry in bypass:
        if entry == LOCAL:
            if addr is None and "." not in name:
                return True
        elif addr is not None:
            if "/" in entry:
                try:
                    if addr in ipaddress.ip_network(entry, strict=False):
                        return True
                except ValueError:
                    continue
            else:
                try:
                    if addr == ipaddress.ip_address(entry):
                        return True
                except ValueError:
                    continue
        elif entry.startswith("."):
            if name.endswith(entry) or name == entry[1:]:
                return True
        elif name == entry:
            return True
    return False
