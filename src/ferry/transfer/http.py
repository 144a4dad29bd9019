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

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from ..errors import FerryError, http_error_code
from ..model.ranges import resolved, total_length
from ..model.types import ErrorContext
from .base import DownloadRequest, Sink, TransferError
from .ranged import RangedSink

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

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                # Concurrency is bounded by the scheduler (running jobs), not here.
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=0),
                timeout=self._timeout,
                read_bufsize=READ_BUFSIZE,
                # The bytes as served: ranges count encoded bytes, so never decode.
                auto_decompress=False,
                # Proxies are configured per job (later issue), never taken from the
                # daemon's environment.
                trust_env=False,
                headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def download(self, request: DownloadRequest, sink: Sink) -> None:
        if request.ranges is not None:
            try:
                await self._download_ranges(request, sink)
            except TransferError:
                raise
            except (aiohttp.ClientError, OSError) as exc:
                raise map_client_error(exc, request.url) from None
            return
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
        session = self._get_session()
        url = URL(request.url)
        for _hop in range(self._max_redirects + 1):
            headers = dict(ranged) if ranged is not None else {}
            if ranged is None and offset > 0 and request.validator:
                headers["Range"] = f"bytes={offset}-"
                headers["If-Range"] = request.validator
            resp = await session.get(url, headers=headers, allow_redirects=False)
            if resp.status not in REDIRECT_STATUSES:
                return resp
            location = resp.headers.get("Location")
            resp.release()
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
            if url.scheme == "https" and target.scheme == "http" and not self._allow_downgrade:
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
