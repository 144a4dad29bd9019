"""The BITS Upload Protocol client (SPEC §9; [MC-BUP], summarised in the shared reference):
an UploadTransport for http and https.

Every request is ``BITS_POST`` on the destination URL (or on the farm host the server named
in ``BITS-Host-Id``), one at a time per session. ``upload`` creates a session (or resumes the
request's), sends the source in fragments from the offset the server acknowledges and, for
upload-reply jobs, learns the reply's URL from the Ack of the last fragment. It does not
close the session: ``complete`` does (``close_session``), and ``cancel`` cancels it
(``cancel_session``). The engine persists the session before any fragment is sent and turns
the server's acknowledgements into progress (the ``Source``), so a drop, a restart or a
``kill -9`` of ferryd resumes where the server says it is.

Lenient in what it reads, as Windows is: an Ack without a session id, ``BITS-Error`` for
``BITS-Error-Code``, 201 for Create-Session, a fragment answered 416 with the offset the server
wants, 413 (the fragment shrinks, never below 5 KB). Strict in what it sends: mixed-case
packet types as Windows writes them, ``Content-Length`` on every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ..errors import CODES, http_error_code, name_of
from ..model.types import ErrorContext
from .base import Source, TransferError, UploadRequest
from .http import USER_AGENT, HttpTransport, map_client_error, retry_after_of

log = logging.getLogger("ferry.upload")

PROTOCOL_GUID = "{7df0354d-249b-430f-820d-3d2a9bef4931}"
FRAGMENT_SIZE = 32 << 20  # what a fragment starts at
FRAGMENT_MIN = 5 * 1024  # 413 shrinks fragments, never below this
RETRIES = 4  # drops in a row retried inside one run (then a transient error)
RETRY_DELAY = 0.5  # doubling between those retries

SESSION_NOT_FOUND = CODES["BG_E_SESSION_NOT_FOUND"]
TOO_LARGE = CODES["BG_E_TOO_LARGE"]
_CONTEXTS = {0x5: ErrorContext.REMOTE_FILE, 0x7: ErrorContext.REMOTE_APPLICATION}
# Server errors (context 0x5) that no retry can mend.
_FATAL_HRESULTS = frozenset(
    {TOO_LARGE, CODES["E_ACCESSDENIED"], CODES["E_INVALIDARG"], CODES["E_NOTIMPL"]}
)


class _Drop(Exception):
    """The connection failed before an answer came: retried from the last acknowledged
    offset (after a Ping), a few times in a row."""

    def __init__(self, error: TransferError) -> None:
        super().__init__(error.message)
        self.error = error


def _invalid(message: str) -> TransferError:
    return TransferError(
        "BG_E_INVALID_SERVER_RESPONSE", message, context=ErrorContext.REMOTE_FILE, transient=False
    )


def _hex(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return int(value.strip(), 16) & 0xFFFFFFFF
    except ValueError:
        return None


def _transient_status(status: int, application: bool) -> bool:
    """Whether a failure status may go away by itself. For the server application (context
    0x7) the rules of BITS's upload-reply: 3xx transient except 300-305 and 307, 4xx fatal
    except 408 and 409, 5xx transient except 501 and 505. For the BITS server itself the
    same, but 409 (the file exists and may not be overwritten) is final."""
    if 300 <= status < 400:
        return not (300 <= status <= 305 or status == 307)
    if 400 <= status < 500:
        return status in (408, 429) or (application and status == 409)
    if status >= 500:
        return status not in (501, 505)
    return False


def answer_error(
    status: int, headers: CIMultiDictProxy[str] | Mapping[str, str], url: str, what: str
) -> TransferError:
    """The job error a failed answer means: the server's BITS error code (``BITS-Error-Code``,
    or ``BITS-Error`` as [MC-BUP] spells it) in its context (0x5 the BITS server,
    REMOTE_FILE; 0x7 the server application, REMOTE_APPLICATION), else the HTTP status."""
    hresult = _hex(headers.get("BITS-Error-Code")) or _hex(headers.get("BITS-Error"))
    context_value = _hex(headers.get("BITS-Error-Context"))
    context = _CONTEXTS.get(context_value or 0x5, ErrorContext.REMOTE_FILE)
    application = context is ErrorContext.REMOTE_APPLICATION
    if hresult is not None and hresult & 0x80000000:
        code = name_of(hresult)
        transient = _transient_status(status, application)
        if not application and hresult in _FATAL_HRESULTS:
            transient = False
        if hresult == SESSION_NOT_FOUND:
            transient = True
    else:
        code, hresult = http_error_code(status), None
        transient = _transient_status(status, application)
    where = "the server application" if application else "the server"
    return TransferError(
        code,
        f"{what} at {url}: {where} answered {status}",
        context=context,
        transient=transient,
        retry_after=retry_after_of(headers) if isinstance(headers, CIMultiDictProxy) else None,
        hresult=hresult,
    )


def _received(headers: CIMultiDictProxy[str], url: str) -> int | None:
    value = headers.get("BITS-Received-Content-Range")
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit():
        raise _invalid(f"{url} sent an invalid BITS-Received-Content-Range {value!r}")
    return int(value)


def content_range(start: int, end: int, total: int) -> str:
    """``bytes S-E/TOTAL`` (inclusive); an empty file is ``bytes */0``."""
    if total == 0:
        return "bytes */0"
    return f"bytes {start}-{end}/{total}"


PIECE = 1 << 20  # what one read of a fragment's body takes from the source


class _Body:
    """A fragment's bytes, read from the source piece by piece as the request sends them."""

    def __init__(self, source: Source, start: int, length: int) -> None:
        self.source = source
        self.start = start
        self.length = length
        self.error: TransferError | None = None
        self._first: bytes | None = None

    async def prefetch(self) -> None:
        if self.length:
            self._first = await self.source.read(self.start, min(PIECE, self.length))

    async def stream(self) -> AsyncIterator[bytes]:
        sent = 0
        try:
            while sent < self.length:
                if self._first is not None:
                    piece, self._first = self._first, None
                else:
                    n = min(PIECE, self.length - sent)
                    piece = await self.source.read(self.start + sent, n)
                if not piece:
                    raise TransferError(
                        "BG_E_LOCAL_FILE_CHANGED",
                        "the local file became shorter",
                        context=ErrorContext.LOCAL_FILE,
                        transient=False,
                        file_index=0,
                    )
                sent += len(piece)
                yield piece
        except TransferError as exc:
            self.error = exc
            raise


class _Target:
    """Where requests go: the farm host of ``BITS-Host-Id`` while it answers (or until its
    fallback timeout has run out without a byte getting through), else the URL's own host."""

    def __init__(self, request: UploadRequest) -> None:
        self.request = request

    @property
    def url(self) -> URL:
        url = URL(self.request.url)
        host = self.request.host_id
        if not host:
            return url
        if "://" in host:  # a whole base URL: its scheme (http or https) and authority
            base = URL(host)
            if base.scheme not in ("http", "https") or not base.host:
                return url
            return (
                url.with_scheme(base.scheme)
                .with_host(base.host or url.host or "")
                .with_port(base.explicit_port)
            )
        authority = URL(f"{url.scheme}://{host}")
        return url.with_host(authority.host or url.host or "").with_port(authority.explicit_port)

    def succeeded(self) -> None:
        self.request.host_failing_since = None

    def failed(self) -> bool:
        """A request to the target failed: True when this made it fall back to the
        origin (the pinned host has failed for longer than its fallback timeout)."""
        if not self.request.host_id:
            return False
        # Wall-clock time, kept in the request (and the job record): the timer runs across
        # runs of the job and restarts of ferryd, as it does across BITS's retries.
        now = time.time()
        if self.request.host_failing_since is None:
            self.request.host_failing_since = now
        since = self.request.host_failing_since
        limit = self.request.host_fallback
        if limit is not None and now - since >= limit:
            log.info(
                "%s: host %s failed for %.0f s: back to the origin",
                self.request.url,
                self.request.host_id,
                now - since,
            )
            self.request.host_id = None
            self.request.host_fallback = None
            self.request.host_failing_since = None
            return True
        return False


class BitsUploadTransport:
    """http and https uploads (an UploadTransport) over one kept-alive ClientSession."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 60.0,
        read_timeout: float = 300.0,
        fragment_size: int = FRAGMENT_SIZE,
        retries: int = RETRIES,
        retry_delay: float = RETRY_DELAY,
        http: HttpTransport | None = None,
    ) -> None:
        self._ssl = ssl_context if ssl_context is not None else ssl.create_default_context()
        # The request path of downloads (transfer/http.py), which every packet takes: the
        # job's proxies, SERVER/PROXY credentials, custom headers and TLS options (issue
        # #12). ferryd passes its download transport (one proxy router, one authenticator);
        # without one, a private one with the same trust store.
        self._own_http = http is None
        self._http = http if http is not None else HttpTransport(ssl_context=self._ssl)
        # Windows gives a request 2 minutes to be sent and its answer 5: sock_read bounds
        # each silence while waiting, no total (a fragment on a slow link takes long).
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=connect_timeout,
            sock_connect=connect_timeout,
            sock_read=read_timeout,
        )
        self.fragment_size = max(FRAGMENT_MIN, fragment_size)
        self._retries = retries
        self._retry_delay = retry_delay
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=0),
                timeout=self._timeout,
                auto_decompress=False,
                trust_env=False,
                headers={"User-Agent": USER_AGENT},
                # Only the status and headers of an Ack matter; a body is discarded.
                read_bufsize=1 << 16,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._own_http:
            await self._http.close()

    # ---- one packet ------------------------------------------------------------------------

    async def _post(
        self,
        target: _Target,
        packet: str,
        session_id: str | None,
        body: _Body | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> tuple[int, CIMultiDictProxy[str]]:
        """Send one packet and read its answer (status, headers). A failure of the
        connection is a _Drop; an answer of any status is returned. A fragment's body is
        streamed from the source in pieces (no fragment-sized buffer), its length declared
        up front: a local read failure stops the request and is raised as itself."""
        length = 0 if body is None else body.length
        headers: CIMultiDict[str] = CIMultiDict(
            {"BITS-Packet-Type": packet, "Content-Length": str(length)}
        )
        if session_id is not None:
            headers["BITS-Session-Id"] = session_id
        if extra:
            headers.update(extra)
        url = target.url
        request = target.request
        # The job's SERVER credentials go to the origin of its URL only, not to a farm host
        # of another origin (as downloads keep them from a redirect's other host).
        same_origin = (url.scheme, url.host, url.port) == (
            (origin := URL(request.url)).scheme,
            origin.host,
            origin.port,
        )
        data = b"" if body is None or not length else body.stream
        try:
            resp = await self._http.send_as_job(
                self._get_session(), request, url, headers, same_origin=same_origin, data=data
            )
            async with resp:
                await resp.read()
                return resp.status, resp.headers
        except (aiohttp.ClientError, OSError) as exc:
            if body is not None and body.error is not None:
                raise body.error from None
            raise _Drop(map_client_error(exc, str(url))) from None

    # ---- upload ------------------------------------------------------------------------------

    async def upload(self, request: UploadRequest, source: Source) -> None:
        target = _Target(request)
        size = source.size
        fragment = self.fragment_size
        offset = min(request.offset, size)
        drops = 0
        restarted = False
        if request.session_id is None:
            await self._with_retries(target, lambda: self._create(target, request, source))
            offset = 0
        else:
            # A resumed session: make sure the host answers before a fragment goes.
            await self._with_retries(target, lambda: self._ping(target))
        await source.response()
        while True:
            whole = offset >= size and (size > 0 or request.offset_confirmed)
            if whole and (not request.reply or request.reply_url):
                return
            # The fragment to send: from the acknowledged offset; a reply job whose reply
            # URL was lost resends its last byte (that Ack carries the URL).
            start = min(offset, size - 1) if size else 0
            end = min(size, start + fragment) - 1 if size else -1
            try:
                body = _Body(source, start, end - start + 1)
                await body.prefetch()  # a changed file fails before anything is sent
                status, headers = await self._post(
                    target,
                    "Fragment",
                    request.session_id,
                    body,
                    {"Content-Range": content_range(start, end, size)},
                )
            except _Drop as drop:
                drops += 1
                fell_back = target.failed()
                if fell_back:
                    await source.session(request.session_id)
                if drops > self._retries:
                    raise drop.error from None
                log.info("%s: %s; retrying from byte %d", request.url, drop.error.message, offset)
                await asyncio.sleep(self._retry_delay * (1 << (drops - 1)))
                with contextlib.suppress(_Drop, TransferError):
                    await self._ping(target)  # else the next fragment tells
                continue
            target.succeeded()
            drops = 0
            if status == 413:
                if fragment <= FRAGMENT_MIN or end - start + 1 <= FRAGMENT_MIN:
                    raise answer_error(status, headers, request.url, "a fragment of the upload")
                fragment = max(FRAGMENT_MIN, min(fragment, end - start + 1) // 2)
                log.info("%s: 413 for a fragment; fragments of %d bytes now", request.url, fragment)
                continue
            if status == 416:
                expected = _received(headers, request.url)
                if expected is None or expected > size:
                    raise _invalid(f"{request.url} answered 416 without a usable offset")
                offset = expected
                continue
            if not 200 <= status < 300:
                error = answer_error(status, headers, request.url, "a fragment of the upload")
                if error.hresult == SESSION_NOT_FOUND and not restarted:
                    # The server forgot the session (expired, or lost): a new one, from 0.
                    log.info(
                        "%s: session %s not found; a new session", request.url, request.session_id
                    )
                    restarted = True
                    request.session_id = None
                    request.reply_url = None
                    request.offset_confirmed = False
                    await self._with_retries(target, lambda: self._create(target, request, source))
                    offset = 0
                    await source.acknowledged(0)
                    continue
                raise error
            received = _received(headers, request.url)
            offset = end + 1 if received is None else received
            if offset > size:
                raise _invalid(f"{request.url} acknowledged {offset} bytes of {size}")
            request.offset_confirmed = True
            if offset >= size and request.reply:
                reply_url = headers.get("BITS-Reply-URL")
                if not reply_url:
                    raise _invalid(
                        f"{request.url} acknowledged the last fragment of an upload-reply job "
                        "without a BITS-Reply-URL"
                    )
                request.reply_url = str(target.url.join(URL(reply_url.strip())))
            await source.acknowledged(offset)

    async def _with_retries(self, target: _Target, step: Callable[[], Awaitable[None]]) -> None:
        drops = 0
        while True:
            try:
                await step()
                target.succeeded()
                return
            except _Drop as drop:
                drops += 1
                target.failed()
                if drops > self._retries:
                    raise drop.error from None
                await asyncio.sleep(self._retry_delay * (1 << (drops - 1)))

    async def _ping(self, target: _Target) -> None:
        status, headers = await self._post(target, "Ping", None)
        if not 200 <= status < 300:
            raise answer_error(status, headers, target.request.url, "Ping")

    async def _create(self, target: _Target, request: UploadRequest, source: Source) -> None:
        """Create-Session; the session (and a farm host) persisted before any fragment."""
        request.host_id = None  # a new session is made at the origin
        request.host_fallback = None
        status, headers = await self._post(
            target, "Create-Session", None, extra={"BITS-Supported-Protocols": PROTOCOL_GUID}
        )
        if not 200 <= status < 300:
            raise answer_error(status, headers, request.url, "Create-Session")
        session_id = (headers.get("BITS-Session-Id") or "").strip()
        if not session_id:
            raise _invalid(f"{request.url} created a session without a BITS-Session-Id")
        protocol = (headers.get("BITS-Protocol") or PROTOCOL_GUID).strip().strip("{}").lower()
        if protocol != PROTOCOL_GUID.strip("{}"):
            raise _invalid(f"{request.url} chose an unknown protocol {protocol!r}")
        request.session_id = session_id
        request.offset = 0
        request.offset_confirmed = False
        host = (headers.get("BITS-Host-Id") or "").strip()
        request.host_id = host or None
        timeout = (headers.get("BITS-Host-Id-Fallback-Timeout") or "").strip()
        request.host_fallback = None
        if host and timeout.isdigit() and int(timeout) < 0xFFFFFFFF:
            request.host_fallback = float(int(timeout))
        await source.session(session_id)

    # ---- the end of a session ------------------------------------------------------------

    async def close_session(self, request: UploadRequest) -> None:
        """Close-Session: the server moves the upload to its destination. 5xx answers and
        drops are retried a few times (not BG_E_SESSION_NOT_FOUND); raises TransferError."""
        target = _Target(request)
        drops = 0
        while True:
            try:
                status, headers = await self._post(target, "Close-Session", request.session_id)
            except _Drop as drop:
                drops += 1
                target.failed()
                if drops > self._retries:
                    raise drop.error from None
                await asyncio.sleep(self._retry_delay * (1 << (drops - 1)))
                continue
            if 200 <= status < 300:
                return
            error = answer_error(status, headers, request.url, "Close-Session")
            if status >= 500 and error.hresult != SESSION_NOT_FOUND and drops < self._retries:
                drops += 1
                await asyncio.sleep(self._retry_delay * (1 << (drops - 1)))
                continue
            raise error

    async def cancel_session(self, request: UploadRequest, timeout: float = 10.0) -> bool:
        """Cancel-Session, best effort (a job is cancelled whether or not the server hears
        of it; an unheard session expires there). True when the server acknowledged."""
        try:
            async with asyncio.timeout(timeout):
                status, _ = await self._post(_Target(request), "Cancel-Session", request.session_id)
        except (_Drop, TimeoutError) as exc:
            log.info("%s: Cancel-Session not delivered: %s", request.url, exc)
            return False
        if not 200 <= status < 300:
            log.info("%s: Cancel-Session answered %d", request.url, status)
        return 200 <= status < 300
