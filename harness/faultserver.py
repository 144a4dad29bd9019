"""The fault server: an aiohttp HTTP(S) server on 127.0.0.1 that serves files the way a
resuming client needs (Content-Length, a strong ETag and/or Last-Modified, Range with
If-Range, 416) and misbehaves in the ways each test configures. It runs in the caller's
loop (``async with FaultServer() as srv``) or on a thread of its own (``with``, or
``start()``/``stop()``); see harness.aio.

What it serves, at ``/f/NAME``:

* ``add(NAME, data, **options)`` — bytes in memory (returns the URL); the options of
  ``Resource``: ``etag``/``last_modified``/``send_etag`` (validators), ``ranges=False``
  (always 200, like a server without range support), ``rate`` (bytes/s per response),
  ``delay`` (before the first byte), ``pause_after`` (the first response stops after that
  many bytes until ``release(NAME)``);
* with ``root``, any file under that directory (``/f/sub/NAME``): read from disk at each
  request, ETag and Last-Modified from its mtime and size, as aiohttp's static files.

Faults of ``/f/NAME``, each configured per test:

* ``script[NAME] = [Drop(n), Status(503, {"Retry-After": "5"}), ...]`` — the next requests
  take one step each: answer as usual but close the connection after ``n`` body bytes, or
  answer that status; once the list is empty ``/f/NAME`` behaves normally again;
* ``plan_drops(NAME, offsets)`` — cut the connection once when a response reaches each
  absolute offset of the file; ``drop_probability`` (with ``seed``) cuts a random share
  of all responses at a random offset;
* ``rate`` on the server paces every response (a resource's own ``rate`` wins).

And routes for the odd things servers do:

* ``/status/CODE?retry_after=S`` — that status (with Retry-After)
* ``/drop/NAME?after=N`` — announces the whole file, sends N bytes, closes the connection
* ``/stall/NAME?after=N`` — sends N bytes, then nothing until the server closes
* ``/nolength/NAME`` — the file, chunked, with no Content-Length
* ``/longer/NAME?extra=N`` — announces the file's length but sends N more bytes
* ``/redirect/K/NAME`` — K redirects (302) before ``/f/NAME``; ``/loop`` — to itself;
  ``/to?url=URL`` — one redirect to any URL

What it saw: ``requests`` (every request: method, path, headers, time, file name, peer;
``seen(prefix)``, ``requests_for(NAME)``, ``request_times(path)``), ``responses`` (every
body it started to send: offset, bytes sent, dropped or not, and which files' responses
overlapped it), ``bytes_served()`` (body bytes per file, across requests), ``active`` and
``max_active`` (responses being sent at once) and ``peers`` (one address per connection).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import re
import ssl as ssl_module
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from harness.aio import AppServer

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
CHUNK = 256 * 1024  # body bytes per write
PACED_CHUNK = 16 * 1024  # ... when a response is paced: smooth enough at a few 100 kB/s


def http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


@dataclass
class Resource:
    """What ``/f/NAME`` serves: ``data`` in memory, or the file at ``path``."""

    data: bytes | None = None
    etag: str | None = None  # None: a strong ETag derived from the content
    last_modified: str | None = None
    ranges: bool = True
    send_etag: bool = True
    rate: float | None = None  # bytes per second per response; None: the server's rate
    delay: float = 0.0  # seconds before the first body byte of every response
    pause_after: int | None = None  # the first response stops after this many bytes...
    path: Path | None = None
    size: int = 0
    gate: asyncio.Event | None = field(default=None, repr=False)  # ...until release()
    paused: bool = False  # the first response has reached its pause

    def __post_init__(self) -> None:
        if self.path is not None:
            st = self.path.stat()
            self.size = st.st_size
            if self.etag is None and self.send_etag:
                self.etag = f'"{st.st_mtime_ns:x}-{st.st_size:x}"'
            if self.last_modified is None:
                self.last_modified = http_date(st.st_mtime)
        else:
            if self.data is None:
                raise ValueError("a resource has data or a path")
            self.size = len(self.data)
            if self.etag is None and self.send_etag:
                self.etag = '"' + hashlib.sha256(self.data).hexdigest()[:16] + '"'
        if self.pause_after is not None:
            self.gate = asyncio.Event()  # bound to a loop only when first awaited

    def body(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()

    def validators(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.etag is not None and self.send_etag:
            headers["ETag"] = self.etag
        if self.last_modified is not None:
            headers["Last-Modified"] = self.last_modified
        return headers


@dataclass(frozen=True)
class Drop:
    """A script step: answer as usual, send ``after`` body bytes, wait ``pause`` seconds,
    close the connection. (A client loses what is still in its buffers when the
    connection dies, so the pause lets it take in all ``after`` bytes first.)"""

    after: int
    pause: float = 0.2


@dataclass(frozen=True)
class Status:
    """A script step: that status, with those headers (``Retry-After`` ...)."""

    code: int
    headers: dict[str, str] = field(default_factory=dict)


Step = Drop | Status


@dataclass
class Seen:
    """One request the server received."""

    method: str
    path: str
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)
    name: str | None = None  # the file it is for, on the routes that name one
    time: float = 0.0  # time.time() when it arrived
    peer: Any = None  # the client's address: one per connection

    @property
    def range(self) -> str | None:
        return self.headers.get("Range")


@dataclass
class Response:
    """One response of a file route with a body being sent."""

    name: str
    range: str | None  # the request's Range header
    start: int = 0  # the file offset of its first body byte
    sent: int = 0  # body bytes written
    done: bool = False  # its last body byte is written
    dropped: bool = False  # cut on purpose (a Drop step, a planned or random drop)
    outcome: str = ""  # "end", "drop" or "abort" (the client went away) once over
    # Files whose responses started while this one still had body bytes to send.
    overlapped: set[str] = field(default_factory=set)


class FaultServer(AppServer):
    def __init__(
        self,
        *,
        root: Path | None = None,
        ssl: ssl_module.SSLContext | None = None,
        rate: float | None = None,
        drop_probability: float = 0.0,
        seed: int | None = None,
    ) -> None:
        super().__init__(ssl=ssl)
        self.root = root.resolve() if root is not None else None
        self.rate = rate
        self.drop_probability = drop_probability
        self.files: dict[str, Resource] = {}
        self.script: dict[str, list[Step]] = {}
        self.requests: list[Seen] = []
        self.responses: list[Response] = []
        self.served: dict[str, int] = {}
        self.active = 0
        self.max_active = 0
        self.peers: set[Any] = set()
        self._drops: dict[str, list[int]] = {}
        self._random = random.Random(seed)
        self._lock = threading.Lock()  # the counters are read from other threads
        self._sending: list[Response] = []
        self._closing: asyncio.Event | None = None

    # ---- configuration --------------------------------------------------------------------

    def add(self, name: str, data: bytes, **options: Any) -> str:
        """Serve ``data`` at /f/NAME (replacing what was there); returns its URL."""
        self.files[name] = Resource(data, **options)
        return self.url(name)

    def url(self, name_or_path: str) -> str:
        """The URL of file NAME (``/f/NAME``), or of a path given with its leading slash
        (``url("/status/503")``)."""
        if name_or_path.startswith("/"):
            return self.base + name_or_path
        return f"{self.base}/f/{name_or_path}"

    def release(self, name: str | None = None) -> None:
        """Let a paused response of NAME (of every file, without a name) go on."""
        for key, res in list(self.files.items()):
            if res.gate is not None and name in (None, key):
                self.call_soon(res.gate.set)

    def paused(self, name: str) -> bool:
        """The first response of NAME has sent its ``pause_after`` bytes and waits."""
        return self.files[name].paused

    def plan_drops(self, name: str, offsets: list[int]) -> None:
        """Drop the connection once when a response of NAME reaches each offset."""
        with self._lock:
            self._drops[name] = sorted(offsets)

    def drops_left(self, name: str) -> int:
        with self._lock:
            return len(self._drops.get(name, []))

    # ---- what it saw ------------------------------------------------------------------------

    def seen(self, prefix: str) -> list[Seen]:
        return [s for s in list(self.requests) if s.path.startswith(prefix)]

    def requests_for(self, name: str) -> list[Seen]:
        """The requests of /f/NAME, in order."""
        return [s for s in list(self.requests) if s.name == name and s.path.startswith("/f/")]

    def request_times(self, path: str) -> list[float]:
        return [s.time for s in list(self.requests) if s.path == path]

    def bytes_served(self) -> dict[str, int]:
        """Body bytes handed to the kernel per file name, across all requests."""
        with self._lock:
            return dict(self.served)

    def reset_counts(self) -> None:
        with self._lock:
            self.served.clear()
            self.responses.clear()

    # ---- the application ------------------------------------------------------------------

    def make_app(self) -> web.Application:
        self._closing = asyncio.Event()
        app = web.Application(middlewares=[self._record])
        r = app.router
        r.add_get("/f/{name:.+}", self._file)
        r.add_get("/status/{code}", self._status)
        r.add_get("/drop/{name}", self._drop)
        r.add_get("/stall/{name}", self._stall)
        r.add_get("/nolength/{name}", self._nolength)
        r.add_get("/longer/{name}", self._longer)
        r.add_get("/redirect/{hops}/{name}", self._redirect)
        r.add_get("/loop", self._loop_route)
        r.add_get("/to", self._to)
        return app

    async def closing(self) -> None:
        if self._closing is not None:
            self._closing.set()
        for res in self.files.values():
            if res.gate is not None:
                res.gate.set()

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.requests.append(
            Seen(
                request.method,
                request.path,
                CIMultiDict(request.headers),
                request.match_info.get("name"),
                time.time(),
                peer,
            )
        )
        if peer is not None:
            self.peers.add(peer)
        resp: web.StreamResponse = await handler(request)
        return resp

    def _resource(self, name: str) -> Resource:
        res = self.files.get(name)
        if res is not None:
            return res
        if self.root is not None:
            path = (self.root / name).resolve()
            if self.root in path.parents and path.is_file():
                return Resource(path=path)
        raise web.HTTPNotFound()

    # ---- /f/NAME ----------------------------------------------------------------------------

    async def _file(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        steps = self.script.get(name)
        step = steps.pop(0) if steps else None
        if isinstance(step, Status):
            return web.Response(
                status=step.code, text=f"status {step.code}\n", headers=step.headers
            )
        res = self._resource(name)
        headers = res.validators()
        size = res.size
        start, end, status = 0, size, 200
        rng = request.headers.get("Range")
        if res.ranges:
            headers["Accept-Ranges"] = "bytes"
        if rng and res.ranges:
            if_range = request.headers.get("If-Range")
            if if_range is None or if_range in {res.etag, res.last_modified} - {None}:
                m = _RANGE.match(rng.strip())
                if m:
                    start = int(m.group(1))
                    if start >= size:
                        headers["Content-Range"] = f"bytes */{size}"
                        return web.Response(status=416, headers=headers)
                    end = min(int(m.group(2)) + 1, size) if m.group(2) else size
                    status = 206
                    headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        if isinstance(step, Drop):
            cut: int | None = min(start + step.after, end)
            pause = step.pause
        else:
            cut, pause = self._drop_point(name, start, end), 0.0
        return await self._send(request, name, res, status, headers, start, end, cut, pause)

    def _drop_point(self, name: str, start: int, end: int) -> int | None:
        """Where this response (bytes start..end-1) is cut, if it is."""
        with self._lock:
            planned = self._drops.get(name)
            if planned:
                for i, off in enumerate(planned):
                    if start < off < end:
                        del planned[i]
                        return off
                    if off > start:
                        break
            if self.drop_probability and self._random.random() < self.drop_probability:
                return self._random.randrange(start, end) if end > start else None
        return None

    async def _send(
        self,
        request: web.Request,
        name: str,
        res: Resource,
        status: int,
        headers: dict[str, str],
        start: int,
        end: int,
        cut: int | None,
        pause: float,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = end - start
        await resp.prepare(request)
        mine = Response(name, request.headers.get("Range"), start)
        for other in self._sending:
            if not other.done:
                other.overlapped.add(name)
                mine.overlapped.add(other.name)
        self._sending.append(mine)
        with self._lock:
            self.responses.append(mine)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        rate = res.rate or self.rate
        chunk = PACED_CHUNK if rate else CHUNK
        stop_at = end if cut is None else cut
        loop = asyncio.get_running_loop()
        fd = os.open(res.path, os.O_RDONLY) if res.path is not None else None
        memory = res.data or b""
        try:
            if res.delay:
                await asyncio.sleep(res.delay)
            t0, paced = loop.time(), 0
            pos = start
            while pos < stop_at:
                n = min(chunk, stop_at - pos)
                if res.gate is not None and res.pause_after is not None and not res.paused:
                    if pos >= res.pause_after:
                        res.paused = True
                        await res.gate.wait()
                        t0, paced = loop.time(), 0
                    else:
                        n = min(n, res.pause_after - pos)
                data = os.pread(fd, n, pos) if fd is not None else memory[pos : pos + n]
                if not data:
                    break  # the file shrank under us
                try:
                    await resp.write(data)
                except ConnectionError:
                    mine.outcome = "abort"  # the client went away
                    return resp
                pos += len(data)
                paced += len(data)
                mine.sent += len(data)
                mine.done = pos == end
                with self._lock:
                    self.served[name] = self.served.get(name, 0) + len(data)
                if rate and not mine.done:
                    ahead = paced / rate - (loop.time() - t0)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            mine.done = True
            if cut is not None:
                if pause:
                    await asyncio.sleep(pause)
                mine.dropped, mine.outcome = True, "drop"
                if request.transport is not None:
                    request.transport.close()
                return resp
            await resp.write_eof()
            mine.outcome = "end"
        except BaseException:
            mine.outcome = "abort"
            raise
        finally:
            if fd is not None:
                os.close(fd)
            self._sending.remove(mine)
            with self._lock:
                self.active -= 1
        return resp

    # ---- the other routes -------------------------------------------------------------------

    async def _status(self, request: web.Request) -> web.StreamResponse:
        code = int(request.match_info["code"])
        headers = {}
        if "retry_after" in request.query:
            headers["Retry-After"] = request.query["retry_after"]
        return web.Response(status=code, text=f"status {code}\n", headers=headers)

    async def _partial(self, request: web.Request) -> web.StreamResponse:
        res = self._resource(request.match_info["name"])
        after = int(request.query.get("after", "0"))
        resp = web.StreamResponse(headers=res.validators())
        resp.content_length = res.size
        await resp.prepare(request)
        await resp.write(res.body()[:after])
        return resp

    async def _drop(self, request: web.Request) -> web.StreamResponse:
        resp = await self._partial(request)
        assert request.transport is not None
        request.transport.close()
        return resp

    async def _stall(self, request: web.Request) -> web.StreamResponse:
        resp = await self._partial(request)
        assert self._closing is not None
        await self._closing.wait()
        return resp

    async def _nolength(self, request: web.Request) -> web.StreamResponse:
        res = self._resource(request.match_info["name"])
        resp = web.StreamResponse(headers=res.validators())
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(res.body())
        await resp.write_eof()
        return resp

    async def _longer(self, request: web.Request) -> web.StreamResponse:
        # aiohttp's own writer stops at Content-Length, so this reply is written raw. One
        # write: headers, the announced body and the excess reach the client together.
        res = self._resource(request.match_info["name"])
        extra = int(request.query.get("extra", "16"))
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {res.size}\r\n"
        for k, v in res.validators().items():
            head += f"{k}: {v}\r\n"
        transport = request.transport
        assert transport is not None
        transport.write(head.encode() + b"\r\n" + res.body() + b"X" * extra)
        transport.close()
        raise asyncio.CancelledError  # the connection is gone; aiohttp treats it as such

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        hops = int(request.match_info["hops"])
        name = request.match_info["name"]
        target = f"/redirect/{hops - 1}/{name}" if hops > 1 else f"/f/{name}"
        raise web.HTTPFound(target)

    async def _loop_route(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/loop")

    async def _to(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(request.query["url"])
