"""``ferry set``'s network options (SPEC §8): the spellings the specification gives for the
structured ``proxy`` property (``--proxy-usage``, ``--proxy-list``, ``--proxy-bypass``), and
the rows ``ferry info`` shows for the network properties. ``ferry set`` takes these options
through ``options`` and merges what ``collect`` returns into its one PATCH."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

PROXY_USAGE = click.Choice(
    ["preconfig", "no_proxy", "override", "autodetect"], case_sensitive=False
)


def options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The extra options of ``ferry set``."""
    f = click.option(
        "--proxy-bypass",
        "proxy_bypass",
        metavar="'HOST,.SUFFIX,CIDR,<local>'",
        help="With --proxy-usage override: hosts reached directly (names, .suffix, IP "
        "addresses, CIDR ranges, <local> = names without a dot), separated by commas.",
    )(f)
    f = click.option(
        "--proxy-list",
        "proxy_list",
        metavar="'URL URL...'",
        help="With --proxy-usage override: proxies tried in order (http://host:port or "
        "https://host:port), separated by blanks.",
    )(f)
    f = click.option(
        "--proxy-usage",
        "proxy_usage",
        type=PROXY_USAGE,
        help="preconfig (ferryd's proxy configuration; the default), no_proxy, override "
        "(--proxy-list, --proxy-bypass) or autodetect (PAC).  [bitsadmin /setproxysettings]",
    )(f)
    return f


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [p for p in text.replace(",", " ").split() if p] or None


def collect(opts: dict[str, Any]) -> dict[str, Any]:
    """The properties the network options ask for (wire values)."""
    props: dict[str, Any] = {}
    usage, plist, bypass = opts.get("proxy_usage"), opts.get("proxy_list"), opts.get("proxy_bypass")
    if usage is not None or plist is not None or bypass is not None:
        if opts.get("proxy") is not None:
            raise click.UsageError(
                "give either --proxy or --proxy-usage/--proxy-list/--proxy-bypass"
            )
        if usage is None:
            if plist is None:
                raise click.UsageError(
                    "--proxy-bypass needs --proxy-usage override and --proxy-list"
                )
            usage = "override"
        props["proxy"] = {"usage": usage.upper(), "list": _split(plist), "bypass": _split(bypass)}
    return props


def info_rows(j: dict[str, Any]) -> list[tuple[str, str]]:
    """``ferry info``'s lines for the network properties (only what differs from the
    defaults)."""
    rows: list[tuple[str, str]] = []
    proxy = j.get("proxy")
    if isinstance(proxy, dict) and proxy.get("usage") not in (None, "PRECONFIG"):
        text = str(proxy.get("usage"))
        if proxy.get("list"):
            text += ": " + " ".join(str(p) for p in proxy["list"])
        rows.append(("Proxy", text))
        if proxy.get("bypass"):
            rows.append(("Proxy bypass", ", ".join(str(b) for b in proxy["bypass"])))
    return rows
