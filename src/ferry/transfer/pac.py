"""AUTODETECT (SPEC §8.1): the proxy a PAC script names for a URL.

The script comes from ferryd's configured ``pac_url`` (``http://``, ``https://`` or
``file://``; the administrator's choice), else from WPAD: ``http://wpad.DOMAIN/wpad.dat`` for
the machine's DNS domain and its parents (never a bare top-level domain) — only when
``wpad`` is on (off by default: see docs/network.md). It is fetched
directly (a PAC script is never fetched through a proxy), kept for ``ttl`` seconds, and
evaluated by pypac's ``PACFile`` (the standard helper functions, in the embedded Duktape
interpreter of dukpy: no file or network access from the script) on one worker thread,
so a slow script never blocks the event loop and evaluations never run concurrently.

No script (none configured, none found, unreadable, not valid JavaScript): ``route`` answers
None and the router falls back to PRECONFIG; failures are logged once per fetch.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from ..model.proxy import normalize_proxy_url
from .proxy import DIRECT, Route

log = logging.getLogger("ferry.transfer")

MAX_SCRIPT = 1 << 20  # a PAC script larger than 1 MiB is not one


def parse_pac_answer(answer: str) -> Route:
    """``PROXY h:p; HTTPS h:p; DIRECT`` as a route: PROXY is an http proxy, HTTPS an https
    one, DIRECT None; SOCKS and anything unknown or malformed are skipped. Nothing usable
    means direct (as browsers do)."""
    route: list[str | None] = []
    for part in answer.split(";"):
        words = part.split()
        if not words:
            continue
        kind = words[0].upper()
        if kind == "DIRECT":
            route.append(None)
        elif kind in ("PROXY", "HTTP", "HTTPS") and len(words) == 2:
            scheme = "https" if kind == "HTTPS" else "http"
            try:
                route.append(normalize_proxy_url(f"{scheme}://{words[1]}"))
            except Exception:  # noqa: BLE001 - a malformed entry of the script is skipped
                continue
    return tuple(dict.fromkeys(route)) or DIRECT


def wpad_urls(fqdn: str) -> list[str]:
    """WPAD's candidates for a host name: wpad.a.b.c, wpad.b.c (never wpad.TLD)."""
    labels = [x for x in fqdn.lower().rstrip(".").split(".") if x]
    out = []
    for i in range(1, len(labels) - 1):
        out.append(f"http://wpad.{'.'.join(labels[i:])}/wpad.dat")
    return out


class PacResolver:
    """The PacResolver of transfer/proxy.py on a PAC script (pypac)."""

    def __init__(
        self,
        pac_url: str | None,
        *,
        wpad: bool = False,
        ttl: float = 300.0,
        fetch_timeout: float = 10.0,
        fqdn: Callable[[], str] = socket.getfqdn,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pac_url = pac_url
        self.wpad = wpad
        self.ttl = ttl
        self.fetch_timeout = fetch_timeout
        self._fqdn = fqdn
        self._clock = clock
        self._pac: Any = None  # pypac.parser.PACFile, or None when there is no script
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()
        self._pool: ThreadPoolExecutor | None = None

    @property
    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="ferry-pac")
        return self._pool

    def close(self) -> None:
        """Stop the worker (a later use starts another and fetches the script again)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
            self._pac = None
            self._fetched_at = None

    async def route(self, url: URL) -> Route | None:
        pac = await self._script()
        if pac is None:
            return None
        # As browsers do for https: the script sees no path or query (they are secret).
        target = str(url.origin()) + "/" if url.scheme == "https" else str(url)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.fetch_timeout):
                answer = await loop.run_in_executor(
                    self._executor, pac.find_proxy_for_url, target, url.host
                )
        except Exception as exc:  # noqa: BLE001 - a script error means "no script"
            log.warning(
                "PAC script failed for %s: %s; using the preconfigured proxy", url.host, exc
            )
            return None
        return parse_pac_answer(str(answer or ""))

    async def _script(self) -> Any:
        async with self._lock:
            now = self._clock()
            if self._fetched_at is not None and now - self._fetched_at < self.ttl:
                return self._pac
            self._pac = await self._load()
            self._fetched_at = self._clock()
            return self._pac

    async def _load(self) -> Any:
        candidates = [self.pac_url] if self.pac_url else []
        if not candidates and self.wpad:
            candidates = wpad_urls(self._fqdn())
        for candidate in candidates:
            try:
                text = await self._fetch(candidate)
            except Exception as exc:  # noqa: BLE001 - any failure: try the next, else none
                log.info("no PAC script at %s: %s", candidate, exc)
                continue
            try:
                return await asyncio.get_running_loop().run_in_executor(
                    self._executor, _compile, text
                )
            except Exception as exc:  # noqa: BLE001 - not a PAC script
                log.warning("the PAC script at %s is not usable: %s", candidate, exc)
        return None

    async def _fetch(self, where: str) -> str:
        u = URL(where)
        if u.scheme == "file":
            data = await asyncio.to_thread(_read_file, Path(u.path))
            return data.decode("utf-8", "replace")
        if u.scheme not in ("http", "https"):
            raise ValueError(f"unsupported PAC URL scheme {u.scheme!r}")
        timeout = aiohttp.ClientTimeout(total=self.fetch_timeout)
        async with (
            aiohttp.ClientSession(timeout=timeout, trust_env=False) as session,
            session.get(u) as resp,
        ):
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            data = await resp.content.read(MAX_SCRIPT + 1)
            if len(data) > MAX_SCRIPT:
                raise ValueError("larger than 1 MiB")
            return data.decode(resp.get_encoding() if resp.charset else "utf-8", "replace")


def _read_file(path: Path) -> bytes:
    with open(path, "rb") as f:
        data = f.read(MAX_SCRIPT + 1)
    if len(data) > MAX_SCRIPT:
        raise ValueError("larger than 1 MiB")
    return data


def _compile(text: str) -> Any:
    from pypac.parser import PACFile  # type: ignore[import-untyped]  # loaded on first use

    return PACFile(text)
