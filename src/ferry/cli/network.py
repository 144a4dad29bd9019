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
        "--http-method",
        "http_method",
        metavar="METHOD",
        help="HTTP method of the requests (default GET; another one makes the job FOREGROUND "
        "and never resumes it).  [SetHttpMethod]",
    )(f)
    f = click.option(
        "--security-flags",
        "security_flags",
        metavar="NAME,NAME",
        help="ENABLE_CRL_CHECK, IGNORE_CERT_CN_INVALID, IGNORE_CERT_DATE_INVALID, "
        "IGNORE_UNKNOWN_CA, IGNORE_CERT_WRONG_USAGE, REDIRECT_POLICY_ALLOW_SILENT, "
        "REDIRECT_POLICY_ALLOW_REPORT, REDIRECT_POLICY_DISALLOW, ALLOW_HTTPS_TO_HTTP; 'none' "
        "clears.  [SetSecurityFlags]",
    )(f)
    f = click.option(
        "--no-client-cert", "no_client_cert", is_flag=True, help="Remove the client certificate."
    )(f)
    f = click.option(
        "--client-key",
        "client_key",
        metavar="PATH",
        help="The client certificate's private key (PEM), when not in --client-cert's file.",
    )(f)
    f = click.option(
        "--client-cert",
        "client_cert",
        metavar="PATH",
        help="Client certificate (PEM), read as the job's owner when a transfer starts.  "
        "[SetClientCertificateByName]",
    )(f)
    f = click.option(
        "--headers-write-only",
        "headers_write_only",
        is_flag=True,
        help="Make the custom headers unreadable for good (still sent).  "
        "[MakeCustomHeadersWriteOnly]",
    )(f)
    f = click.option(
        "--clear-headers", "clear_headers", is_flag=True, help="Remove the custom headers."
    )(f)
    f = click.option(
        "--header",
        "header",
        multiple=True,
        metavar="'NAME: VALUE'",
        help="A custom header sent with every request (repeatable; replaces the job's set of "
        "custom headers).  [SetCustomHeaders]",
    )(f)
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


def collect_http(opts: dict[str, Any]) -> dict[str, Any]:
    """The HTTP options (PATCH /v1/jobs/JOB/http-options) the options ask for."""
    out: dict[str, Any] = {}
    headers = opts.get("header") or ()
    if headers and opts.get("clear_headers"):
        raise click.UsageError("give either --header or --clear-headers")
    if headers:
        out["custom_headers"] = list(headers)
    elif opts.get("clear_headers"):
        out["custom_headers"] = None
    if opts.get("headers_write_only"):
        out["custom_headers_write_only"] = True
    cert, key = opts.get("client_cert"), opts.get("client_key")
    if opts.get("no_client_cert"):
        if cert or key:
            raise click.UsageError("give either --client-cert/--client-key or --no-client-cert")
        out["client_certificate"] = None
    elif cert:
        out["client_certificate"] = {"cert": cert, "key": key}
    elif key:
        raise click.UsageError("--client-key needs --client-cert")
    if opts.get("security_flags") is not None:
        out["security_flags"] = opts["security_flags"]
    if opts.get("http_method") is not None:
        out["http_method"] = opts["http_method"]
    return out


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
    headers = j.get("custom_headers")
    if isinstance(headers, str):
        rows.append(("Custom headers", headers))
    elif isinstance(headers, list) and headers:
        rows.append(("Custom headers", " | ".join(str(h) for h in headers)))
    cert = j.get("client_certificate")
    if isinstance(cert, dict):
        key = cert.get("key")
        rows.append(
            ("Client certificate", str(cert.get("cert")) + (f" (key {key})" if key else ""))
        )
    if j.get("security_flags"):
        rows.append(("Security flags", ", ".join(str(f) for f in j["security_flags"])))
    if j.get("http_method") not in (None, "GET"):
        rows.append(("HTTP method", f"{j['http_method']} (foreground, never resumed)"))
    return rows
