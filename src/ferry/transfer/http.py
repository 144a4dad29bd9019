"""The http/https transport (aiohttp): one file's download, resumable with Range + If-Range,
and the mapping of HTTP and network failures to BITS codes (SPEC §2.1, §3). A job with
dynamic content accepts a body without Content-Length and never resumes. It acts as nobody
(no local file, no implicit credentials yet) and verifies nothing: the engine does both.

Body bytes go from aiohttp's buffer straight to the temporary file with pwrite on the loop
thread: page-cache writes of 1 MiB take well under a millisecond, far cheaper than a thread
hop per chunk, and the fsyncs that can block run on workers (see the engine's sink).
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import time
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ..errors import FerryError, http_error_code
from ..model.httpopts import REDIRECT_DISALLOW, header_pairs, redirect_policy
from ..model.types import ErrorContext
from ..security.secretbox import SecretBox
from .base import DownloadRequest, Sink, TransferError
from .httpopts import open_sealed_headers
from .proxy import ProxyRouter
from .tls import TlsContexts

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK = 1 << 20
# aiohttp's default read buffer (64 KiB) makes the loop pause and resume the socket for
# every few segments; 4 MiB lets a loopback or LAN download run at disk speed.
READ_BUFSIZE = 4 << 20
USER_AGENT = "ferry/0.1 (background intelligent transfer service)"
_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)


def _remote(
    code: str, message: str, *, transient: bool, retry_after: float | None = None
) -> TransferError:
    return TransferError(
        code,
        message,
        context=ErrorContext.REMOTE_FILE,
        transient=transient,
        retry_after=retry_after,
    )


def _transport(code: str, message: str, *, transient: bool) -> TransferError:
    return TransferError(code, message, context=ErrorContext.GENERAL_TRANSPORT, transient=transient)


def _invalid(message: str) -> TransferError:
    return _remote("BG_E_INVALID_SERVER_RESPONSE", message, transient=False)


def _changed(url: str) -> TransferError:
    return _remote(
        "BG_E_REMOTE_FILE_CHANGED",
        f"{url} changed since its transfer began; its partial data was discarded",
        transient=False,
    )


def validator_of(headers: CIMultiDictProxy[str]) -> str | None:
    """The strong validator If-Range may carry: a strong ETag, else Last-Modified.
    A weak ETag (W/...) must not be used for a range (RFC 9110 §13.1.5)."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified") or None


def retry_after_of(headers: CIMultiDictProxy[str], now: float | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP-date."""
    value = headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _content_length(resp: aiohttp.ClientResponse) -> int | None:
    value = resp.headers.get("Content-Length")
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit():
        raise _invalid(f"invalid Content-Length {value!r}")
    return int(value)


def _host_port(host: str, port: int | None) -> str:
    """HOST:PORT as a user writes it (brackets around an IPv6 address)."""
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


def _os_text(err: OSError) -> str:
    """The OS's own words for a socket error. aiohttp's text names its connection key
    (``ssl:default`` on a plain http URL) and asyncio's strerror is a Python repr
    ("Connect call failed ('127.0.0.1', 9)"): neither means anything to a user."""
    if err.errno:
        return os.strerror(err.errno)
    return err.strerror or type(err).__name__


def map_client_error(exc: BaseException, url: str) -> TransferError:
    """The BITS code for an aiohttp/network failure. Order matters: aiohttp's connector
    errors are OSError subclasses, and its TLS errors are connector errors."""
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return _transport(
            "ERROR_WINHTTP_SECURE_FAILURE", f"TLS failure talking to {url}: {exc}", transient=False
        )
    dns_error = getattr(aiohttp, "ClientConnectorDNSError", None)
    if (dns_error is not None and isinstance(exc, dns_error)) or (
        isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, socket.gaierror)
    ):
        return _transport(
            "ERROR_WINHTTP_NAME_NOT_RESOLVED", f"cannot resolve the host of {url}", transient=True
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _transport(
            "ERROR_WINHTTP_CANNOT_CONNECT",
            f"cannot connect to {_host_port(exc.host, exc.port)}: {_os_text(exc.os_error)}",
            transient=True,
        )
    if isinstance(exc, TimeoutError):
        return _transport("ERROR_WINHTTP_TIMEOUT", f"{url} did not answer in time", transient=True)
    if isinstance(exc, aiohttp.ClientResponseError):
        # We never raise for status: this is a response aiohttp could not parse, such as
        # bytes past the announced body on the same connection.
        return _invalid(f"malformed response from {url}: {exc.message}")
    if isinstance(
        exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError | aiohttp.ClientOSError
    ):
        return _transport(
            "BG_E_CONNECTION_CLOSED", f"the connection to {url} closed early: {exc}", transient=True
        )
    if isinstance(exc, aiohttp.InvalidURL):
        return _remote("E_INVALIDARG", f"invalid URL {url}", transient=False)
    if isinstance(exc, OSError):
        # Any other socket-level failure mid-transfer (reset, broken pipe, ...).
        return _transport(
            "BG_E_CONNECTION_CLOSED", f"the connection to {url} failed: {exc}", transient=True
        )
    return _transport(
        "ERROR_WINHTTP_CONNECTION_ERROR", f"transfer from {url} failed: {exc!r}", transient=True
    )


def _is_proxy_failure(exc: aiohttp.ClientConnectorError) -> bool:
    """With a proxy, ferryd connects (and resolves names) only for the proxy: a connector
    failure is the proxy's, but a TLS failure is the origin's, through the tunnel."""
    return not isinstance(exc, aiohttp.ClientSSLError)


def proxy_unreachable(exc: BaseException, proxy: str) -> TransferError:
    """A proxy that could not be reached: transient, GENERAL_TRANSPORT, the WinHTTP code of
    the failure (the next proxy of the list is tried first)."""
    if isinstance(exc, TimeoutError):
        return _transport(
            "ERROR_WINHTTP_TIMEOUT", f"the proxy {proxy} did not answer in time", transient=True
        )
    os_error = getattr(exc, "os_error", None)
    if isinstance(os_error, socket.gaierror) or (
        getattr(aiohttp, "ClientConnectorDNSError", None) is not None
        and isinstance(exc, aiohttp.ClientConnectorDNSError)
    ):
        return _transport(
            "ERROR_WINHTTP_NAME_NOT_RESOLVED",
            f"cannot resolve the proxy {proxy}",
            transient=True,
        )
    why = _os_text(os_error) if isinstance(os_error, OSError) else str(exc)
    return _transport(
        "ERROR_WINHTTP_CANNOT_CONNECT",
        f"cannot connect to the proxy {proxy}: {why}",
        transient=True,
    )


def proxy_status_error(status: int, proxy: str, url: URL) -> TransferError:
    """The proxy answered a CONNECT with an error status. 407 (no usable proxy credentials)
    is fatal; 5xx and 408/429 are the proxy's passing trouble (transient); the rest fatal."""
    transient = status in (408, 429) or 500 <= status <= 599
    return _transport(
        http_error_code(status),
        f"the proxy {proxy} answered {status} to CONNECT {url.host}:{url.port}",
        transient=transient,
    )


def response_headers_text(resp: aiohttp.ClientResponse) -> str:
    """The status line and headers as received (BITS_FILE_PROPERTY_ID_HTTP_RESPONSE_HEADERS),
    CRLF-separated."""
    v = resp.version
    version = f"HTTP/{v.major}.{v.minor}" if v is not None else "HTTP/1.1"
    lines = [f"{version} {resp.status} {resp.reason or ''}".rstrip()]
    for name, value in resp.raw_headers:
        lines.append(f"{name.decode('latin-1')}: {value.decode('latin-1')}")
    return "\r\n".join(lines) + "\r\n"


class HttpTransport:
    """http and https (a DownloadTransport). One ClientSession for the daemon, so
    connections are kept alive across the files of a job and across jobs to the same
    server."""

    # What a redirect may lead to (the daemon mounts this transport for both).
    schemes = frozenset({"http", "https"})

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 60.0,
        read_timeout: float = 120.0,
        max_redirects: int = 10,
        allow_https_to_http: bool = False,
        proxy_router: ProxyRouter | None = None,
        secrets: SecretBox | None = None,
    ) -> None:
        # The system trust store unless the caller (config, tests) says otherwise.
        self._ssl = ssl_context if ssl_context is not None else ssl.create_default_context()
        # connect bounds DNS + TCP + TLS of a new connection (the pool is unbounded, so it
        # never includes waiting for a free one); sock_read bounds each silence while the
        # response arrives (the stall timeout: no byte for that long is the transient
        # ERROR_WINHTTP_TIMEOUT). No total: a large file may take hours.
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=connect_timeout,
            sock_connect=connect_timeout,
            sock_read=read_timeout,
        )
        self._max_redirects = max_redirects
        self._allow_downgrade = allow_https_to_http
        self._session: aiohttp.ClientSession | None = None
        # Which proxies a request tries (SPEC §8.1); ferryd passes its configured router.
        self.proxy_router = proxy_router if proxy_router is not None else ProxyRouter()
        # Opens write-only custom headers (SPEC §8.3) for the request that sends them.
        self._secrets = secrets
        self._tls = TlsContexts(self._ssl)

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                # Concurrency is bounded by the scheduler (running jobs), not here.
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=0),
                timeout=self._timeout,
                read_bufsize=READ_BUFSIZE,
                # The bytes as served: ranges count encoded bytes, so never decode.
                auto_decompress=False,
                # Proxies are chosen per job and request (transfer/proxy.py), never by
                # aiohttp from the daemon's environment.
                trust_env=False,
                headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        self.proxy_router.close()

    async def download(self, request: DownloadRequest, sink: Sink) -> None:
        if request.http_method != "GET":
            # BITS: another method never resumes (each attempt starts at byte 0), and what
            # would be a transient error is ERROR (the client resumes: from the start).
            if sink.offset > 0:
                await sink.truncate(0)
            request.validator = None
            try:
                await self._download_any(request, sink)
            except TransferError as exc:
                exc.transient = False
                exc.retry_after = None
                raise
            return
        await self._download_any(request, sink)

    async def _download_any(self, request: DownloadRequest, sink: Sink) -> None:
        if sink.offset > 0 and (request.dynamic_content or not request.validator):
            # Partial data we cannot prove belongs to the current file, or dynamic content,
            # which is never resumed: start over.
            await sink.truncate(0)
        try:
            await self._download(request, sink)
        except TransferError:
            raise
        except (aiohttp.ClientError, OSError) as exc:
            # OSError covers TimeoutError and ssl.SSLError; disk failures never get here
            # (the sink raises them as TransferError).
            raise map_client_error(exc, request.url) from None

    async def _open(self, request: DownloadRequest, offset: int) -> aiohttp.ClientResponse:
        """Send the request, following redirects by hand so the policy (count, no https to
        http) is ours and the final URL is known."""
        session = self._get_session()
        url = URL(request.url)
        custom = self._custom_headers(request)
        policy = redirect_policy(request.security_flags)
        downgrade = self._allow_downgrade or "ALLOW_HTTPS_TO_HTTP" in request.security_flags
        for _hop in range(self._max_redirects + 1):
            headers: CIMultiDict[str] = CIMultiDict(custom)
            if offset > 0 and request.validator and request.http_method == "GET":
                headers["Range"] = f"bytes={offset}-"
                headers["If-Range"] = request.validator
            resp = await self._send(session, request, url, headers)
            request.response_headers = response_headers_text(resp)
            if resp.status not in REDIRECT_STATUSES:
                return resp
            location = resp.headers.get("Location")
            resp.release()
            if policy == REDIRECT_DISALLOW:
                raise _remote(
                    http_error_code(resp.status),
                    f"{url} redirects ({resp.status} to {location}); the job's redirect policy "
                    "is REDIRECT_POLICY_DISALLOW",
                    transient=False,
                )
            if not location:
                raise _invalid(f"{url} answered {resp.status} without a Location")
            try:
                target = url.join(URL(location))
            except ValueError:
                raise _remote(
                    "ERROR_WINHTTP_REDIRECT_FAILED",
                    f"{url} redirects to an invalid location {location!r}",
                    transient=False,
                ) from None
            if target.scheme not in self.schemes:
                raise _remote(
                    "ERROR_WINHTTP_REDIRECT_FAILED",
                    f"{url} redirects to an unsupported scheme: {target}",
                    transient=False,
                )
            if url.scheme == "https" and target.scheme == "http" and not downgrade:
                raise _remote(
                    "ERROR_WINHTTP_REDIRECT_FAILED",
                    f"{url} redirects from https to http ({target}); not allowed",
                    transient=False,
                )
            url = target
        raise _remote(
            "ERROR_WINHTTP_REDIRECT_FAILED",
            f"more than {self._max_redirects} redirects starting at {request.url}",
            transient=False,
        )

    def _custom_headers(self, request: DownloadRequest) -> list[tuple[str, str]]:
        lines: tuple[str, ...] | list[str] = request.custom_headers
        if request.sealed_headers is not None:
            if self._secrets is None:
                raise _transport(
                    "E_FAIL", "write-only custom headers cannot be opened here", transient=False
                )
            try:
                lines = open_sealed_headers(self._secrets, request.job_id, request.sealed_headers)
            except FerryError as exc:
                raise _transport(exc.code, exc.message, transient=False) from None
        return header_pairs(lines)

    def proxy_options(self, request: DownloadRequest, proxy: str) -> dict[str, object]:
        """Extra keyword arguments of aiohttp's request when it goes through ``proxy``
        (``proxy_auth``, ``proxy_headers``): none without proxy credentials."""
        return {}

    async def _send(
        self,
        session: aiohttp.ClientSession,
        request: DownloadRequest,
        url: URL,
        headers: CIMultiDict[str],
    ) -> aiohttp.ClientResponse:
        """One request to ``url``, through the proxies its route names, in order: a proxy
        that cannot be reached is skipped for the next one; when none can, the last failure
        is the (transient, GENERAL_TRANSPORT) error. https goes through a CONNECT tunnel."""
        route = await self.proxy_router.route(request.proxy, url)
        tls = await self._tls.for_request(request) if url.scheme == "https" else None
        extra: dict[str, Any] = {} if tls is None else {"ssl": tls}
        method = request.http_method
        failure: TransferError | None = None
        for proxy in route:
            if proxy is None:
                return await session.request(
                    method, url, headers=headers, allow_redirects=False, **extra
                )
            try:
                return await session.request(
                    method,
                    url,
                    headers=headers,
                    allow_redirects=False,
                    proxy=proxy,
                    **extra,
                    **self.proxy_options(request, proxy),  # type: ignore[arg-type]
                )
            except aiohttp.ClientHttpProxyError as exc:
                # The proxy refused the CONNECT tunnel (https): its status is the answer.
                raise proxy_status_error(exc.status, proxy, url) from None
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                if isinstance(exc, aiohttp.ClientConnectorError) and not _is_proxy_failure(exc):
                    raise
                failure = proxy_unreachable(exc, proxy)
        assert failure is not None
        raise failure

    async def _download(self, request: DownloadRequest, sink: Sink) -> None:
        offset = sink.offset
        resp = await self._open(request, offset)
        try:
            status = resp.status
            if status == 416 and offset > 0:
                await self._range_not_satisfiable(request, resp, offset, sink)
                return
            if status in (408, 429) or 500 <= status <= 599:
                raise _remote(
                    http_error_code(status),
                    f"{resp.url} answered {status} {resp.reason or ''}".rstrip(),
                    transient=True,
                    retry_after=retry_after_of(resp.headers),
                )
            if status >= 300:
                raise _remote(
                    http_error_code(status),
                    f"{resp.url} answered {status} {resp.reason or ''}".rstrip(),
                    transient=False,
                )
            validator = validator_of(resp.headers)
            end: int | None
            if status == 206:
                end = await self._accept_partial(request, resp, offset, validator, sink)
            elif status in (200, 203):
                end = await self._accept_full(request, resp, offset, validator, sink)
            else:
                raise _invalid(f"{resp.url} answered {status}, which is not a file")
            request.final_url = str(resp.url)
            await sink.response()
            await self._receive(resp, sink, end)
        finally:
            resp.release()

    async def _accept_full(
        self,
        request: DownloadRequest,
        resp: aiohttp.ClientResponse,
        offset: int,
        validator: str | None,
        sink: Sink,
    ) -> int | None:
        """The size the body must have; None (dynamic content only): read to EOF."""
        total = _content_length(resp)
        if offset > 0:
            # We asked for a range and got the whole file. Same validator: the server does
            # not do ranges, so start over quietly. Otherwise the file changed (SPEC §3).
            same = request.validator is not None and validator == request.validator
            await sink.truncate(0)
            if not same:
                request.validator = None
                request.bytes_total = None
                raise _changed(request.url)
        if request.dynamic_content:
            # BITS_JOB_PROPERTY_DYNAMIC_CONTENT: the length is optional, and no validator is
            # kept, so no later request carries a Range: an interruption starts over.
            request.validator = None
            request.bytes_total = total
            return total
        if total is None:
            raise _remote(
                "BG_E_MISSING_FILE_SIZE",
                f"{resp.url} did not announce the file's size (no Content-Length)",
                transient=False,
            )
        request.validator = validator
        request.bytes_total = total
        return total

    async def _accept_partial(
        self,
        request: DownloadRequest,
        resp: aiohttp.ClientResponse,
        offset: int,
        validator: str | None,
        sink: Sink,
    ) -> int:
        if offset == 0:
            raise _invalid(f"{resp.url} answered 206 to a request without a range")
        m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if m is None or m.group(3) == "*":
            raise _invalid(f"{resp.url} answered 206 with an unusable Content-Range")
        start, last, total = int(m.group(1)), int(m.group(2)), int(m.group(3))
        if start != offset or last != total - 1:
            raise _invalid(
                f"{resp.url} sent bytes {start}-{last}/{total}; asked for {offset}- to the end"
            )
        length = _content_length(resp)
        if length is not None and length != total - offset:
            raise _invalid(f"{resp.url}: Content-Length {length} disagrees with Content-Range")
        if (validator is not None and validator != request.validator) or (
            request.bytes_total is not None and request.bytes_total != total
        ):
            await sink.truncate(0)
            request.validator = None
            request.bytes_total = None
            raise _changed(request.url)
        request.bytes_total = total
        return total

    async def _range_not_satisfiable(
        self, request: DownloadRequest, resp: aiohttp.ClientResponse, offset: int, sink: Sink
    ) -> None:
        """416 to ``Range: bytes=N-`` with a matching If-Range: nothing after byte N. When N
        is the file's size the earlier run already got every byte (it stopped between the
        last write and reporting completion)."""
        m = re.match(r"^\s*bytes\s+\*/(\d+)\s*$", resp.headers.get("Content-Range", ""))
        total = int(m.group(1)) if m else request.bytes_total
        if total == offset:
            request.bytes_total = total
            request.final_url = str(resp.url)
            await sink.response()
            return
        await sink.truncate(0)
        request.validator = None
        request.bytes_total = None
        raise _changed(request.url)

    async def _receive(self, resp: aiohttp.ClientResponse, sink: Sink, end: int | None) -> None:
        """Write the body; ``end`` is the file's size, None to read to EOF (dynamic content;
        a chunked body cut short still fails in aiohttp as an incomplete payload)."""
        async for chunk in resp.content.iter_chunked(CHUNK):
            if end is not None and sink.offset + len(chunk) > end:
                raise _invalid(f"{resp.url} sent more bytes than it announced ({end})")
            sink.write(chunk)
            await sink.checkpoint()
        if end is not None and sink.offset < end:
            raise _transport(
                "BG_E_CONNECTION_CLOSED",
                f"{resp.url} closed the connection after {sink.offset} of {end} bytes",
                transient=True,
            )
