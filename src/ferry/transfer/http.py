"""The http/https transport (aiohttp): one file's download, resumable with Range + If-Range,
and the mapping of HTTP and network failures to BITS codes (SPEC §2.1, §3). A job with
dynamic content accepts a body without Content-Length and never resumes. It acts as nobody
(no local file, no implicit credentials yet) and verifies nothing: the engine does both.

Body bytes go from aiohttp's buffer straight to the temporary file with pwrite on the loop
thread: page-cache writes of 1 MiB take well under a millisecond, far cheaper than a thread
hop per chunk, and the fsyncs that can block run on workers (see the engine's sink).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import ssl
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ..errors import FerryError, http_error_code
from ..model.httpopts import REDIRECT_DISALLOW, header_pairs, redirect_policy
from ..model.ranges import resolved, total_length
from ..model.types import ErrorContext
from ..security.secretbox import SecretBox
from .auth import Authenticator, challenge_header
from .base import DownloadRequest, HttpJobRequest, JobAuth, Sink, TransferError
from .httpopts import open_sealed_headers
from .proxy import ProxyRouter
from .ranged import RangedSink
from .tls import TlsContexts

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK = 1 << 20
# aiohttp's default read buffer (64 KiB) makes the loop pause and resume the socket for
# every few segments; 4 MiB lets a loopback or LAN download run at disk speed.
READ_BUFSIZE = 4 << 20
# Background downloads (SPEC §10) may be throttled or yield to other traffic: a small read
# buffer lets TCP's receive window close soon after ferry stops reading, so the sender slows
# at once rather than after megabytes.
BACKGROUND_READ_BUFSIZE = 64 << 10
BACKGROUND_CHUNK = 64 << 10  # and bytes handed to the sink at a time: limits pace finely
# ... and a fixed receive buffer, set before connecting (so the window scale suits it; the
# kernel doubles it for its bookkeeping): a sender of a throttled download never has more
# than about this much window to pour into the bottleneck's queue (transfer/ledbat.py).
BACKGROUND_RCVBUF = 256 << 10
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


def _inside(request: DownloadRequest, size: int) -> None:
    """Every range of a ranged file lies inside a remote file of ``size`` bytes, or the
    transfer fails with BG_E_INVALID_RANGE (not worth retrying)."""
    try:
        resolved(request.ranges or (), size)
    except FerryError as exc:
        raise _remote(exc.code, exc.message, transient=False) from None


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


async def _drain(resp: aiohttp.ClientResponse, limit: int = 64 << 10) -> None:
    """Read a challenge's small body so its connection can carry the answer (NTLM's legs
    need the same connection); a large one is not worth it and closes the connection."""
    length = resp.headers.get("Content-Length", "")
    try:
        if length.isdigit() and int(length) <= limit:
            await resp.read()
    except (aiohttp.ClientError, OSError):
        pass
    resp.release()


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
        self._auth = Authenticator()
        # Which proxies a request tries (SPEC §8.1); ferryd passes its configured router.
        self.proxy_router = proxy_router if proxy_router is not None else ProxyRouter()
        self._background_session: aiohttp.ClientSession | None = None
        # Opens write-only custom headers (SPEC §8.3) for the request that sends them.
        self._secrets = secrets
        self._tls = TlsContexts(self._ssl)

    def _get_session(self, background: bool = False) -> aiohttp.ClientSession:
        if background:
            if self._background_session is None or self._background_session.closed:
                self._background_session = self._new_session(
                    BACKGROUND_READ_BUFSIZE, _background_socket
                )
            return self._background_session
        if self._session is None or self._session.closed:
            self._session = self._new_session(READ_BUFSIZE)
        return self._session

    def _new_session(
        self, read_bufsize: int, socket_factory: Any = None
    ) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            # Concurrency is bounded by the scheduler (running jobs), not here.
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=0, socket_factory=socket_factory),
            timeout=self._timeout,
            read_bufsize=read_bufsize,
            # The bytes as served: ranges count encoded bytes, so never decode.
            auto_decompress=False,
            # Proxies are chosen per job and request (transfer/proxy.py), never by
            # aiohttp from the daemon's environment.
            trust_env=False,
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        self._auth.close()
        self.proxy_router.close()
        if self._background_session is not None:
            await self._background_session.close()
            self._background_session = None

    async def download(self, request: DownloadRequest, sink: Sink) -> None:
        if request.ranges is not None:
            try:
                await self._download_ranges(request, sink)
            except TransferError:
                raise
            except (aiohttp.ClientError, OSError) as exc:
                raise map_client_error(exc, request.url) from None
            return
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

    async def _open(
        self, request: DownloadRequest, offset: int, ranged: dict[str, str] | None = None
    ) -> aiohttp.ClientResponse:
        """Send the request, following redirects by hand so the policy (count, no https to
        http) is ours and the final URL is known. ``ranged``: the headers of a range of a
        ranged file, instead of the resume from ``offset``."""
        session = self._get_session(request.background)
        url = URL(request.url)
        home = _origin(url)
        custom = self._custom_headers(request)
        policy = redirect_policy(request.security_flags)
        downgrade = self._allow_downgrade or "ALLOW_HTTPS_TO_HTTP" in request.security_flags
        for _hop in range(self._max_redirects + 1):
            headers: CIMultiDict[str] = CIMultiDict(custom)
            if ranged is not None:
                headers.update(ranged)
            elif offset > 0 and request.validator and request.http_method == "GET":
                headers["Range"] = f"bytes={offset}-"
                headers["If-Range"] = request.validator
            # The job's SERVER credentials go only to the origin of its URL, never to
            # another host a redirect leads to (a password for one server is not another's).
            resp = await self._get_authenticated(
                session, request, url, headers, same_origin=_origin(url) == home
            )
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

    def _custom_headers(self, request: HttpJobRequest) -> list[tuple[str, str]]:
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

    def proxy_options(self, request: HttpJobRequest, proxy: str) -> dict[str, object]:
        """Extra keyword arguments of aiohttp's request when it goes through ``proxy``
        (``proxy_auth``, ``proxy_headers``): none without proxy credentials."""
        return {}

    async def _send(
        self,
        session: aiohttp.ClientSession,
        request: HttpJobRequest,
        url: URL,
        headers: CIMultiDict[str],
        extra: dict[str, Any] | None = None,
    ) -> aiohttp.ClientResponse:
        """One request to ``url``, through the proxies its route names, in order: a proxy
        that cannot be reached is skipped for the next one; when none can, the last failure
        is the (transient, GENERAL_TRANSPORT) error. https goes through a CONNECT tunnel.
        A proxy's 407 is answered with the job's PROXY credentials (``_via_proxy``)."""
        extra = dict(extra or {})
        route = await self.proxy_router.route(request.proxy, url)
        tls = await self._tls.for_request(request) if url.scheme == "https" else None
        if tls is not None:
            extra["ssl"] = tls
        method = request.http_method
        failure: TransferError | None = None
        for proxy in route:
            if proxy is None:
                return await session.request(
                    method, url, headers=headers, allow_redirects=False, **_fresh(extra)
                )
            try:
                return await self._via_proxy(session, request, url, headers, proxy, extra)
            except aiohttp.ClientHttpProxyError as exc:
                # The proxy refused the CONNECT tunnel (https): its status is the answer.
                error = proxy_status_error(exc.status, proxy, url)
                if exc.status == 407 and request.auth_note:
                    error.message += f" ({request.auth_note})"
                raise error from None
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                if isinstance(exc, aiohttp.ClientConnectorError) and not _is_proxy_failure(exc):
                    raise
                failure = proxy_unreachable(exc, proxy)
        assert failure is not None
        raise failure

    async def _via_proxy(
        self,
        session: aiohttp.ClientSession,
        request: HttpJobRequest,
        url: URL,
        headers: CIMultiDict[str],
        proxy: str,
        extra: dict[str, Any],
    ) -> aiohttp.ClientResponse:
        """A request through ``proxy``, answering its 407 challenges with the job's PROXY
        credentials (transfer/auth.py): in the request's headers for an http URL (the proxy
        reads them), in the CONNECT request's for https. A 407 that cannot be answered is
        returned (http) or raised (CONNECT), and becomes BG_E_HTTP_ERROR_407."""
        auth = request.auth
        proxy_url = URL(proxy)
        tunnel = url.scheme == "https"
        options: dict[str, Any] = dict(self.proxy_options(request, proxy))
        answer: dict[str, str] = {}
        if auth is not None and auth.for_target("PROXY"):
            answer = await self._auth.preemptive(auth, proxy_url, "PROXY")
        sent: set[str] = set()
        for _leg in range(5):
            send_headers = headers if tunnel else _with(headers, answer)
            if tunnel and answer:
                options["proxy_headers"] = answer
            try:
                resp = await session.request(
                    request.http_method, url, headers=send_headers, allow_redirects=False,
                    proxy=proxy, **options, **_fresh(extra),
                )  # fmt: skip
            except aiohttp.ClientHttpProxyError as exc:
                if exc.status != 407 or auth is None or not auth.for_target("PROXY"):
                    raise
                challenges = exc.headers.getall("Proxy-Authenticate", []) if exc.headers else []
                answer_or_none, why = await self._auth.answer(
                    auth, proxy_url, list(challenges), "PROXY", sent
                )
                if answer_or_none is None:
                    request.auth_note = why or request.auth_note
                    raise
                answer = answer_or_none
                continue
            if resp.status != 407 or auth is None or not auth.for_target("PROXY"):
                return resp
            answer_or_none, why = await self._auth.answer(
                auth, proxy_url, resp.headers.getall(challenge_header("PROXY"), []), "PROXY", sent
            )
            if answer_or_none is None:
                request.auth_note = why or request.auth_note
                return resp
            answer = answer_or_none
            await _drain(resp)
        return resp

    async def _get_authenticated(
        self,
        session: aiohttp.ClientSession,
        request: HttpJobRequest,
        url: URL,
        headers: CIMultiDict[str],
        *,
        same_origin: bool = True,
        base: dict[str, Any] | None = None,
    ) -> aiohttp.ClientResponse:
        """Request ``url``, answering 401 challenges with the job's SERVER credentials
        (transfer/auth.py) when ``url`` is on the origin the job named. The last response is
        returned: a 401 after the credentials were tried becomes BG_E_HTTP_ERROR_401 like any
        other. ``base``: more keyword arguments of the request (a ``data`` that is callable
        is called for each request sent, so a body can be sent again)."""
        auth = request.auth
        if auth is None or not auth.for_target("SERVER") or not same_origin:
            return await self._send(session, request, url, headers, base)
        lock = self._auth.handshake_lock(auth, url, "SERVER")
        if lock is None:
            return await self._answering(session, request, auth, url, headers, base)
        async with lock:  # NTLM: one handshake of this job and origin at a time
            return await self._answering(session, request, auth, url, headers, base)

    async def _answering(
        self,
        session: aiohttp.ClientSession,
        request: HttpJobRequest,
        auth: JobAuth,
        url: URL,
        headers: CIMultiDict[str],
        base: dict[str, Any] | None = None,
    ) -> aiohttp.ClientResponse:
        extra: dict[str, Any] = dict(base or {})
        middlewares = self._auth.middlewares(auth, url)
        if middlewares:
            extra["middlewares"] = middlewares
        pre = await self._auth.preemptive(auth, url, "SERVER")
        resp = await self._send(session, request, url, _with(headers, pre), extra)
        sent: set[str] = set()
        for _leg in range(4):
            if resp.status != 401:
                if not pre and not sent:
                    self._auth.accepted(auth, url, "SERVER")
                break
            answer, why = await self._auth.answer(
                auth,
                url,
                resp.headers.getall(challenge_header("SERVER"), []),
                "SERVER",
                sent,
                preempted=bool(pre),
            )
            if answer is None:
                if why:
                    request.auth_note = why
                break
            await _drain(resp)
            resp = await self._send(session, request, url, _with(headers, answer), extra)
        return resp

    async def send_as_job(
        self,
        session: aiohttp.ClientSession,
        request: HttpJobRequest,
        url: URL,
        headers: CIMultiDict[str],
        *,
        same_origin: bool,
        data: bytes | Callable[[], Any] = b"",
    ) -> aiohttp.ClientResponse:
        """One request (``request.http_method``, no redirect followed) on another transport's
        ``session`` with the job's network identity, exactly as a download's: its custom
        headers (``headers`` win over them), its proxy route with 407 answered from its PROXY
        credentials, 401 answered from its SERVER credentials when ``same_origin``, and its
        TLS options. ``data``: the body, or a callable making a fresh one for each request
        sent (a challenge answered sends it again). The BITS upload client's packets go this
        way (transfer/bits_upload.py)."""
        full: CIMultiDict[str] = CIMultiDict(self._custom_headers(request))
        for name in headers:
            full.popall(name, None)
        full.extend(headers)
        return await self._get_authenticated(
            session, request, url, full, same_origin=same_origin, base={"data": data}
        )

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
                note = (
                    f" ({request.auth_note})" if status in (401, 407) and request.auth_note else ""
                )
                raise _remote(
                    http_error_code(status),
                    f"{resp.url} answered {status} {resp.reason or ''}".rstrip() + note,
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
            _tell_socket(resp, sink)
            await self._receive(resp, sink, end, BACKGROUND_CHUNK if request.background else CHUNK)
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

    async def _download_ranges(self, request: DownloadRequest, sink: Sink) -> None:
        """AddFileWithRanges: one request per range (``Range: bytes=A-B``, with If-Range once
        a validator is known), each answer written at the range's offset by the RangedSink.
        A 200 is a server without ranges (BG_E_INSUFFICIENT_RANGE_SUPPORT) unless its
        validator shows the file changed; a 416, or a range past the file's end, is
        BG_E_INVALID_RANGE."""
        assert isinstance(sink, RangedSink) and request.ranges is not None
        answered = False
        while (span := sink.next_span()) is not None:
            at, left = span
            if request.remote_size is not None:
                _inside(request, request.remote_size)
                if left == 0:
                    break
            last = "" if left is None else str(at + left - 1)
            headers = {"Range": f"bytes={at}-{last}"}
            if request.validator:
                headers["If-Range"] = request.validator
            resp = await self._open(request, 0, headers)
            try:
                count = await self._accept_range(request, resp, sink, at, left)
                request.final_url = str(resp.url)
                if not answered:
                    answered = True
                    await sink.response()
                end = sink.offset + count
                async for chunk in resp.content.iter_chunked(CHUNK):
                    if sink.offset + len(chunk) > end:
                        raise _invalid(f"{resp.url} sent more bytes than its range ({count})")
                    sink.write(chunk)
                    await sink.checkpoint()
                if sink.offset < end:
                    raise _transport(
                        "BG_E_CONNECTION_CLOSED",
                        f"{resp.url} closed the connection inside the range at {at}",
                        transient=True,
                    )
            finally:
                resp.release()
        if not answered:
            # Every byte was already here (the last run stopped before reporting it).
            await sink.response()

    async def _accept_range(
        self,
        request: DownloadRequest,
        resp: aiohttp.ClientResponse,
        sink: Sink,
        at: int,
        left: int | None,
    ) -> int:
        """Check the answer to one range's request; returns how many body bytes to write."""
        status = resp.status
        shown = f"{resp.url} answered {status} {resp.reason or ''}".rstrip()
        if status == 416:
            m = re.match(r"^\s*bytes\s+\*/(\d+)\s*$", resp.headers.get("Content-Range", ""))
            size = f" ({m.group(1)} bytes)" if m else ""
            raise _remote(
                "BG_E_INVALID_RANGE",
                f"the range at {at} is outside the remote file{size}: {shown}",
                transient=False,
            )
        if status in (408, 429) or 500 <= status <= 599:
            raise _remote(
                http_error_code(status),
                shown,
                transient=True,
                retry_after=retry_after_of(resp.headers),
            )
        if status >= 300:
            raise _remote(http_error_code(status), shown, transient=False)
        validator = validator_of(resp.headers)
        if status in (200, 203):
            if request.validator is not None and validator != request.validator:
                await self._forget(request, sink)
                raise _changed(request.url)
            raise _remote(
                "BG_E_INSUFFICIENT_RANGE_SUPPORT",
                f"{resp.url} does not serve byte ranges (it answered a range request with "
                "the whole file)",
                transient=False,
            )
        if status != 206:
            raise _invalid(f"{shown}, which is not a file")
        m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if m is None or m.group(3) == "*":
            raise _invalid(f"{resp.url} answered 206 with an unusable Content-Range")
        start, last, total = int(m.group(1)), int(m.group(2)), int(m.group(3))
        if (request.remote_size is not None and request.remote_size != total) or (
            request.validator is not None and validator is not None
            and validator != request.validator
        ):
            await self._forget(request, sink)
            raise _changed(request.url)
        request.remote_size = total
        request.bytes_total = total_length(request.ranges or (), total)
        if request.validator is None:
            request.validator = validator
        _inside(request, total)
        want = total - 1 if left is None else at + left - 1
        if start != at or last != want:
            raise _invalid(f"{resp.url} sent bytes {start}-{last}/{total}; asked for {at}-{want}")
        length = _content_length(resp)
        if length is not None and length != last - start + 1:
            raise _invalid(f"{resp.url}: Content-Length {length} disagrees with Content-Range")
        return last - start + 1

    @staticmethod
    async def _forget(request: DownloadRequest, sink: Sink) -> None:
        await sink.truncate(0)
        request.validator = None
        request.remote_size = None
        request.bytes_total = total_length(request.ranges or (), None)

    async def _receive(
        self, resp: aiohttp.ClientResponse, sink: Sink, end: int | None, chunk_size: int = CHUNK
    ) -> None:
        """Write the body; ``end`` is the file's size, None to read to EOF (dynamic content;
        a chunked body cut short still fails in aiohttp as an incomplete payload)."""
        async for chunk in resp.content.iter_chunked(chunk_size):
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


def _origin(url: URL) -> tuple[str, str, int | None]:
    """Scheme, host and port: what a credential given for a server is bound to."""
    return (url.scheme, (url.host or "").lower(), url.port)


def _fresh(extra: dict[str, Any]) -> dict[str, Any]:
    """A request's keyword arguments with a callable ``data`` made into this send's body."""
    data = extra.get("data")
    return {**extra, "data": data()} if callable(data) else extra


def _with(headers: CIMultiDict[str], more: dict[str, str]) -> CIMultiDict[str]:
    """``headers`` plus ``more`` (replacing same-named ones), as a new mapping."""
    out = CIMultiDict(headers)
    out.update(more)
    return out


def _background_socket(addr_info: Any) -> socket.socket:
    """aiohttp's socket factory for background downloads: a fixed receive buffer."""
    family, type_, proto = addr_info[0], addr_info[1], addr_info[2]
    sock = socket.socket(family, type_, proto)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BACKGROUND_RCVBUF)
    return sock


def _tell_socket(resp: aiohttp.ClientResponse, sink: Sink) -> None:
    """Hand the connection's socket to a sink that watches it (SPEC §10: the idle-bandwidth
    controller measures the path to its server). Optional for a sink, so looked up by name."""
    on_socket = getattr(sink, "on_socket", None)
    if on_socket is None or resp.connection is None or resp.connection.transport is None:
        return
    sock = resp.connection.transport.get_extra_info("socket")
    if sock is not None:
        on_socket(sock)
