"""The lean HTTP/1.1 path (issue #15): plain ``http://`` GETs on ferryd's own kept-alive
sockets, for the downloads that need nothing else — no proxy, no credentials, no custom
headers, no byte ranges, no TLS. Everything else, and any redirect, goes through the aiohttp
transport (``http.py``) it wraps, so the two behave alike: the answer to a request is judged
by the very same code (``HttpTransport._accept_full`` / ``_accept_partial`` /
``_range_not_satisfiable``), failures get the same BITS codes, and the bytes go through the
same ``Sink`` (bandwidth pacing, overlapped checkpoints, the idle-bandwidth controller's view
of the socket). What it saves per file is aiohttp's request machinery (URL and header objects,
the connector, the response and payload objects, its stream reader's copies): the body is
read with ``recv_into`` into a buffer that is reused and written from there with ``pwrite``.

Connections are kept per (host, port, background) and reused LIFO for ``IDLE_SECONDS``; one
that became readable while idle (the server closed it, or sent bytes nobody asked for) is
dropped, and a request whose reused connection dies before the first byte of its answer is
sent again once on a fresh one (GET is idempotent). A connection is kept only after a whole,
well-framed response with nothing after it.

``FERRY_LEAN_HTTP=0`` in ferryd's environment turns the path off (everything through
aiohttp), for comparisons (``FERRYD_AB`` in benchmarks/transfer_bench.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from dataclasses import dataclass, field
from typing import Any, cast

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ..errors import http_error_code
from ..model.types import ErrorContext
from .base import DownloadRequest, Sink, TransferError
from .http import (
    BACKGROUND_CHUNK,
    BACKGROUND_RCVBUF,
    REDIRECT_STATUSES,
    USER_AGENT,
    HttpTransport,
    retry_after_of,
    validator_of,
)
from .proxy import DIRECT

log = logging.getLogger("ferry.transfer")

ENV_SWITCH = "FERRY_LEAN_HTTP"
BUFFER = 1 << 20  # a foreground response's receive buffer (reused across responses)
HEAD_MAX = 64 << 10  # the most a status line and headers may take
WATCH_MIN = BACKGROUND_RCVBUF  # a body with more than this to come is shown to the controller
YIELD_BYTES = 4 << 20  # a body that never makes us wait yields to the loop this often
IDLE_SECONDS = 15.0  # how long an idle connection is kept (aiohttp's keepalive_timeout)
IDLE_PER_HOST = 16  # idle connections kept per host
DNS_SECONDS = 10.0  # how long a name's addresses are reused (aiohttp's ttl_dns_cache)
_STATUS = re.compile(rb"^HTTP/(\d)\.(\d) (\d{3})(?: (.*))?$")
_CHUNK_SIZE = re.compile(rb"^([0-9A-Fa-f]{1,15})[ \t]*(?:;.*)?$")


def enabled(environ: Any = None) -> bool:
    """Whether ferryd mounts the lean path for http (``FERRY_LEAN_HTTP``; on by default)."""
    value = (os.environ if environ is None else environ).get(ENV_SWITCH, "1")
    return value.strip().lower() not in {"0", "off", "no", "false"}


class _Closed(Exception):
    """The connection ended (EOF or a socket error) before the response did."""

    def __init__(self, why: str, answered: bool) -> None:
        super().__init__(why)
        self.why = why
        self.answered = answered  # some byte of the response had arrived


@dataclass(slots=True, eq=False)
class _Conn:
    sock: socket.socket
    key: tuple[str, int, bool]
    reused: bool = False
    idle_since: float = 0.0


@dataclass(slots=True, eq=False)
class _Reader:
    """Buffered reads of one response from one connection: ``buf[start:end]`` is received
    and not consumed yet."""

    conn: _Conn
    buf: bytearray
    view: memoryview
    limit: int  # the most one recv takes (small for background downloads: fine pacing)
    loop: asyncio.AbstractEventLoop
    timeout: asyncio.Timeout
    stall: float
    start: int = 0
    end: int = 0
    got: int = 0  # bytes of this response received so far
    eof: bool = False
    burst: int = 0  # bytes taken without waiting since the loop last ran others

    async def fill(self) -> int:
        """Receive more (after what is buffered); 0 at EOF."""
        if self.start == self.end:
            self.start = self.end = 0
        elif self.end == len(self.view):
            if self.start == 0:
                raise _invalid_plain("a response line or header is too long")
            size = self.end - self.start
            self.view[:size] = self.view[self.start : self.end]
            self.start, self.end = 0, size
        room = min(len(self.view), self.end + self.limit)
        target = self.view[self.end : room]
        try:
            # What has arrived is taken at once, without the loop's reader registration or
            # a deadline; only a read that has to wait goes through the loop, under the
            # stall timeout. A steady stream yields to the loop every YIELD_BYTES.
            n = self.conn.sock.recv_into(target)
        except BlockingIOError:
            n = await self._wait_recv(target)
        except OSError as exc:
            raise _Closed(str(exc) or type(exc).__name__, self.got > 0) from None
        else:
            self.burst += n
            if self.burst >= YIELD_BYTES:
                self.burst = 0
                await asyncio.sleep(0)
        if n == 0:
            self.eof = True
        self.end += n
        self.got += n
        return n

    async def _wait_recv(self, target: memoryview) -> int:
        self.burst = 0
        self.timeout.reschedule(self.loop.time() + self.stall)
        try:
            return await self.loop.sock_recv_into(self.conn.sock, target)
        except OSError as exc:
            if isinstance(exc, TimeoutError):
                raise
            raise _Closed(str(exc) or type(exc).__name__, self.got > 0) from None
        finally:
            _disarm(self.timeout)

    async def head(self) -> bytes:
        """The status line and header fields up to the empty line, without it."""
        scan = self.start
        while True:
            at = self.buf.find(b"\r\n\r\n", scan, self.end)
            if at >= 0:
                out = bytes(self.buf[self.start : at])
                self.start = at + 4
                return out
            if self.end - self.start > HEAD_MAX:
                raise _invalid_plain("the response's headers are too long")
            scan = max(self.start, self.end - 3)
            moved = self.start
            if await self.fill() == 0:
                raise _Closed("the server closed the connection", self.got > 0)
            scan = max(self.start, scan - (moved - self.start))  # data moved to the start

    async def line(self) -> bytes:
        """One CRLF-terminated line, without its CRLF."""
        while True:
            at = self.buf.find(b"\r\n", self.start, self.end)
            if at >= 0:
                out = bytes(self.buf[self.start : at])
                self.start = at + 2
                return out
            if await self.fill() == 0:
                raise _Closed("the server closed the connection", self.got > 0)


@dataclass(slots=True, eq=False)
class _Head:
    version: tuple[int, int]
    status: int
    reason: str
    headers: CIMultiDictProxy[str]
    raw: list[tuple[str, str]] = field(default_factory=list)


class _Resp:
    """What http.py's answer checks read of a response (``status``, ``reason``, ``headers``,
    ``url``), for the lean path's responses."""

    __slots__ = ("status", "reason", "headers", "url")

    def __init__(self, head: _Head, url: URL) -> None:
        self.status = head.status
        self.reason = head.reason
        self.headers = head.headers
        self.url = url


def _remote(
    code: str, message: str, *, transient: bool, retry_after: float | None = None
) -> TransferError:
    return TransferError(code, message, context=ErrorContext.REMOTE_FILE, transient=transient,
                         retry_after=retry_after)  # fmt: skip


def _transport(code: str, message: str, *, transient: bool) -> TransferError:
    return TransferError(code, message, context=ErrorContext.GENERAL_TRANSPORT, transient=transient)


def _invalid_plain(message: str) -> TransferError:
    return _remote("BG_E_INVALID_SERVER_RESPONSE", message, transient=False)


def _os_text(err: OSError) -> str:
    if err.errno:
        return os.strerror(err.errno)
    return err.strerror or type(err).__name__


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class LeanHttpTransport:
    """A DownloadTransport for ``http``: the lean path where it applies, ``fallback`` (the
    aiohttp transport, mounted for https too and closed there) for everything else."""

    schemes = frozenset({"http"})

    def __init__(
        self,
        fallback: HttpTransport,
        *,
        connect_timeout: float | None = None,
        read_timeout: float | None = None,
    ) -> None:
        self._fallback = fallback
        timeout = fallback._timeout
        self._connect_timeout = connect_timeout or timeout.sock_connect or timeout.connect or 60.0
        self._stall = read_timeout or timeout.sock_read or 120.0
        self._idle: dict[tuple[str, int, bool], list[_Conn]] = {}
        self._buffers: list[bytearray] = []
        self._dns: dict[tuple[str, int], tuple[float, list[Any]]] = {}
        self._closed = False
        # What the lean path did (tests and benchmarks read it; never in an answer).
        self.stats = {"requests": 0, "connections": 0, "reused": 0, "fallbacks": 0, "retries": 0}

    async def close(self) -> None:
        """Close the idle connections (the fallback is closed where it is mounted)."""
        self._closed = True
        for conns in self._idle.values():
            for c in conns:
                c.sock.close()
        self._idle.clear()

    def _eligible(self, request: DownloadRequest, url: URL) -> bool:
        return (
            url.scheme == "http"
            and request.http_method == "GET"
            and request.ranges is None
            and request.auth is None
            and not request.custom_headers
            and request.sealed_headers is None
            and url.user is None
            and url.password is None
            and bool(url.host)
            and not self._closed
        )

    async def download(self, request: DownloadRequest, sink: Sink) -> None:
        url = URL(request.url)
        if not self._eligible(request, url) or (
            await self._fallback.proxy_router.route(request.proxy, url) != DIRECT
        ):
            self.stats["fallbacks"] += 1
            log.debug("lean http: %s goes through aiohttp", request.url)
            await self._fallback.download(request, sink)
            return
        if sink.offset > 0 and (request.dynamic_content or not request.validator):
            # As http.py: partial data we cannot prove belongs to the current file, or
            # dynamic content (never resumed), starts over.
            await sink.truncate(0)
        if not await self._download(request, url, sink):
            # A redirect: the aiohttp transport follows it under the job's policy.
            self.stats["fallbacks"] += 1
            log.debug("lean http: %s redirects; aiohttp follows it", request.url)
            await self._fallback.download(request, sink)

    # ---- one request ----------------------------------------------------------------------

    async def _download(self, request: DownloadRequest, url: URL, sink: Sink) -> bool:
        """The file from ``sink.offset`` on; False when the answer was a redirect (nothing
        written)."""
        loop = asyncio.get_running_loop()
        host, port = url.raw_host or "", url.port or 80
        key = (host, port, request.background)
        offset = sink.offset
        lines = [
            f"GET {url.raw_path_qs or '/'} HTTP/1.1",
            f"Host: {url.raw_authority}",
            f"User-Agent: {USER_AGENT}",
            "Accept: */*",
            "Accept-Encoding: identity",
        ]
        if offset > 0 and request.validator:
            lines.append(f"Range: bytes={offset}-")
            lines.append(f"If-Range: {request.validator}")
        wire = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        buf = self._buffers.pop() if self._buffers else bytearray(BUFFER)
        limit = BACKGROUND_CHUNK if request.background else BUFFER
        self.stats["requests"] += 1
        log.debug("lean http: GET %s from byte %d", request.url, offset)
        try:
            for attempt in (1, 2):
                conn = await self._connection(key, url, request.url, fresh=attempt > 1)
                keep = False
                try:
                    async with asyncio.timeout(None) as timeout:
                        reader = _Reader(
                            conn, buf, memoryview(buf), limit, loop, timeout, self._stall
                        )
                        try:
                            await self._send(conn, wire, timeout)
                            head = await self._head(reader)
                        except _Closed as closed:
                            if conn.reused and not closed.answered and attempt == 1:
                                self.stats["retries"] += 1
                                log.debug("lean http: a kept-alive connection to %s:%d was "
                                          "gone (%s); sending again", host, port, closed.why)
                                continue  # a stale kept-alive connection: once more, fresh
                            raise _transport(
                                "BG_E_CONNECTION_CLOSED",
                                f"the connection to {request.url} closed early: {closed.why}",
                                transient=True,
                            ) from None
                        keep, redirect = await self._answer(request, url, sink, reader, head)
                        return not redirect
                except TimeoutError:
                    raise _transport(
                        "ERROR_WINHTTP_TIMEOUT", f"{request.url} did not answer in time",
                        transient=True,
                    ) from None  # fmt: skip
                except _Closed as closed:
                    raise _transport(
                        "BG_E_CONNECTION_CLOSED",
                        f"the connection to {request.url} closed early: {closed.why}",
                        transient=True,
                    ) from None
                finally:
                    self._release(conn, keep)
            raise AssertionError("unreachable")
        finally:
            self._buffers.append(buf)

    async def _send(self, conn: _Conn, wire: bytes, timeout: asyncio.Timeout) -> None:
        """The request; a whole one fits the socket's buffer at once, as a rule."""
        try:
            sent = conn.sock.send(wire)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise _Closed(str(exc), False) from None
        if sent == len(wire):
            return
        loop = asyncio.get_running_loop()
        timeout.reschedule(loop.time() + self._stall)
        try:
            await loop.sock_sendall(conn.sock, wire[sent:])
        except OSError as exc:
            if isinstance(exc, TimeoutError):
                raise
            raise _Closed(str(exc), False) from None
        finally:
            _disarm(timeout)

    async def _head(self, reader: _Reader) -> _Head:
        """The status line and headers (1xx interim answers skipped)."""
        while True:
            first, *fields = (await reader.head()).split(b"\r\n")
            m = _STATUS.match(first)
            if m is None:
                raise _invalid_plain(f"malformed status line {first[:80]!r}")
            raw: list[tuple[str, str]] = []
            for line in fields:
                name, colon, value = line.partition(b":")
                if not colon or not name or name != name.strip() or line[:1] in b" \t":
                    raise _invalid_plain(f"malformed header line {line[:80]!r}")
                raw.append((name.decode("latin-1"), value.strip().decode("latin-1")))
            status = int(m.group(3))
            if 100 <= status < 200 and status != 101:
                continue
            return _Head(
                (int(m.group(1)), int(m.group(2))),
                status,
                (m.group(4) or b"").decode("latin-1").strip(),
                CIMultiDictProxy(CIMultiDict(raw)),
                raw,
            )

    async def _answer(
        self, request: DownloadRequest, url: URL, sink: Sink, reader: _Reader, head: _Head
    ) -> tuple[bool, bool]:
        """Judge the answer as http.py does and write its body; returns (the connection may
        be kept, it was a redirect)."""
        fb = self._fallback
        resp = cast(Any, _Resp(head, url))
        offset = sink.offset
        status = head.status
        request.response_headers = _headers_text(head)
        if status in REDIRECT_STATUSES:
            return False, True
        if status == 416 and offset > 0:
            await fb._range_not_satisfiable(request, resp, offset, sink)
            return False, False
        shown = f"{url} answered {status} {head.reason}".rstrip()
        if status in (408, 429) or 500 <= status <= 599:
            raise _remote(http_error_code(status), shown, transient=True,
                          retry_after=retry_after_of(head.headers))  # fmt: skip
        if status >= 300:
            raise _remote(http_error_code(status), shown, transient=False)
        validator = validator_of(head.headers)
        end: int | None
        if status == 206:
            end = await fb._accept_partial(request, resp, offset, validator, sink)
        elif status in (200, 203):
            end = await fb._accept_full(request, resp, offset, validator, sink)
        else:
            raise _invalid_plain(f"{url} answered {status}, which is not a file")
        request.final_url = str(url)
        await sink.response()
        on_socket = getattr(sink, "on_socket", None)
        if on_socket is not None and (
            end is None or end - sink.offset - (reader.end - reader.start) > WATCH_MIN
        ):
            # The idle-bandwidth controller steers a transfer through its receive window: a
            # body that has (nearly) arrived with the headers cannot be steered, and was
            # never watched on aiohttp's path either (its connection was released by then).
            on_socket(reader.conn.sock)
        return await self._body(request, url, sink, reader, head, end), False

    async def _body(
        self,
        request: DownloadRequest,
        url: URL,
        sink: Sink,
        reader: _Reader,
        head: _Head,
        end: int | None,
    ) -> bool:
        """Write the body; ``end`` is the file's size (None: dynamic content of unknown
        size). Returns whether the connection may carry another request."""
        headers = head.headers
        te = headers.get("Transfer-Encoding")
        keep = head.version >= (1, 1)
        connection = headers.get("Connection", "").lower()
        if "close" in connection:
            keep = False
        elif "keep-alive" in connection:
            keep = True
        if te is not None:
            if te.split(",")[-1].strip().lower() != "chunked":
                await self._until_close(request, url, sink, reader, end)
                return False
            await self._chunked(request, url, sink, reader, end)
            return keep and "Content-Length" not in headers
        length = headers.get("Content-Length")
        if length is None:
            await self._until_close(request, url, sink, reader, end)
            return False
        if not length.strip().isdigit():
            raise _invalid_plain(f"invalid Content-Length {length!r}")
        await self._counted(request, url, sink, reader, int(length.strip()), end, last=True)
        self._complete(request, url, sink, end)
        return keep

    async def _counted(
        self,
        request: DownloadRequest,
        url: URL,
        sink: Sink,
        reader: _Reader,
        count: int,
        end: int | None,
        *,
        last: bool,
    ) -> None:
        """``count`` body bytes into the sink. ``last``: nothing may follow them (a
        response framed by Content-Length): bytes after them are a malformed response,
        found before the last piece is written."""
        while count > 0:
            if reader.start == reader.end and await reader.fill() == 0:
                raise _Closed(
                    f"the server closed the connection with {count} body bytes to come", True
                )
            take = min(count, reader.end - reader.start)
            if last and take == count and reader.end - reader.start > take:
                raise _invalid_plain(f"{url} sent bytes after the response's body")
            if end is not None and sink.offset + take > end:
                raise _invalid_plain(f"{url} sent more bytes than it announced ({end})")
            sink.write(reader.view[reader.start : reader.start + take])
            reader.start += take
            count -= take
            await sink.checkpoint()

    async def _chunked(
        self, request: DownloadRequest, url: URL, sink: Sink, reader: _Reader, end: int | None
    ) -> None:
        while True:
            line = await reader.line()
            m = _CHUNK_SIZE.match(line.strip())
            if m is None:
                raise _invalid_plain(f"{url}: malformed chunk size {line[:40]!r}")
            size = int(m.group(1), 16)
            if size == 0:
                while await reader.line():  # trailer fields, then the empty line
                    pass
                if reader.start != reader.end:
                    raise _invalid_plain(f"{url} sent bytes after the response's body")
                self._complete(request, url, sink, end)
                return
            await self._counted(request, url, sink, reader, size, end, last=False)
            if await reader.line() != b"":
                raise _invalid_plain(f"{url}: a chunk is longer than its size")

    async def _until_close(
        self, request: DownloadRequest, url: URL, sink: Sink, reader: _Reader, end: int | None
    ) -> None:
        while True:
            if reader.start == reader.end and await reader.fill() == 0:
                break
            take = reader.end - reader.start
            if end is not None and sink.offset + take > end:
                raise _invalid_plain(f"{url} sent more bytes than it announced ({end})")
            sink.write(reader.view[reader.start : reader.end])
            reader.start = reader.end
            await sink.checkpoint()
        self._complete(request, url, sink, end)

    @staticmethod
    def _complete(request: DownloadRequest, url: URL, sink: Sink, end: int | None) -> None:
        if end is not None and sink.offset < end:
            raise _transport(
                "BG_E_CONNECTION_CLOSED",
                f"{url} closed the connection after {sink.offset} of {end} bytes",
                transient=True,
            )

    # ---- connections ----------------------------------------------------------------------

    async def _connection(
        self, key: tuple[str, int, bool], url: URL, shown: str, *, fresh: bool
    ) -> _Conn:
        if not fresh:
            idle = self._idle.get(key)
            now = time.monotonic()
            while idle:
                conn = idle.pop()
                if now - conn.idle_since < IDLE_SECONDS and _quiet(conn.sock):
                    conn.reused = True
                    self.stats["reused"] += 1
                    return conn
                conn.sock.close()
        return await self._connect(key, url, shown)

    async def _connect(self, key: tuple[str, int, bool], url: URL, shown: str) -> _Conn:
        host, port, background = key
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                infos = await self._resolve(host, port)
                failure: OSError | None = None
                for family, type_, proto, _, addr in infos:
                    sock = socket.socket(family, type_, proto)
                    try:
                        sock.setblocking(False)
                        if background:
                            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BACKGROUND_RCVBUF)
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        await loop.sock_connect(sock, addr)
                    except OSError as exc:
                        sock.close()
                        if isinstance(exc, TimeoutError):
                            raise
                        failure = exc
                        continue
                    except BaseException:
                        sock.close()
                        raise
                    self.stats["connections"] += 1
                    log.debug("lean http: connected to %s", _host_port(host, port))
                    return _Conn(sock, key)
        except TimeoutError:
            raise _transport(
                "ERROR_WINHTTP_TIMEOUT", f"{shown} did not answer in time", transient=True
            ) from None
        except socket.gaierror:
            raise _transport(
                "ERROR_WINHTTP_NAME_NOT_RESOLVED", f"cannot resolve the host of {shown}",
                transient=True,
            ) from None  # fmt: skip
        why = _os_text(failure) if failure is not None else "no address"
        raise _transport(
            "ERROR_WINHTTP_CANNOT_CONNECT",
            f"cannot connect to {_host_port(url.host or host, port)}: {why}",
            transient=True,
        )

    async def _resolve(self, host: str, port: int) -> list[Any]:
        try:  # an address needs no lookup (and no worker thread)
            return socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
            )
        except socket.gaierror:
            pass
        now = time.monotonic()
        hit = self._dns.get((host, port))
        if hit is not None and hit[0] > now:
            return hit[1]
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM
        )
        if len(self._dns) > 256:
            self._dns.clear()
        self._dns[(host, port)] = (now + DNS_SECONDS, infos)
        return infos

    def _release(self, conn: _Conn, keep: bool) -> None:
        if not keep or self._closed:
            conn.sock.close()
            return
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= IDLE_PER_HOST:
            idle.pop(0).sock.close()
        conn.idle_since = time.monotonic()
        idle.append(conn)


def _disarm(timeout: asyncio.Timeout) -> None:
    """No deadline while the sink works (pacing may sleep); an expired one stays."""
    if not timeout.expired():
        timeout.reschedule(None)


def _quiet(sock: socket.socket) -> bool:
    """An idle connection has nothing to read: not EOF, not stray bytes."""
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def _headers_text(head: _Head) -> str:
    """As http.py's ``response_headers_text``: the status line and headers, CRLF-separated."""
    major, minor = head.version
    lines = [f"HTTP/{major}.{minor} {head.status} {head.reason}".rstrip()]
    lines += [f"{name}: {value}" for name, value in head.raw]
    return "\r\n".join(lines) + "\r\n"


