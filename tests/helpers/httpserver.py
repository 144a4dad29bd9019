"""A fault-injecting HTTP(S) server on 127.0.0.1 for transfer tests: real aiohttp, real
sockets, with routes for the odd things servers do (errors, dropped connections, missing or
wrong lengths, redirect chains and loops, ignored ranges).

Routes (``name`` is a key of ``server.files``):

* ``/f/NAME`` — the file, with Range + If-Range (ETag or Last-Modified) unless the
  resource says ``ranges=False`` (then always 200, like a server without range support)
* ``/status/CODE?retry_after=S`` — that status code
* ``/drop/NAME?after=N`` — announces the whole file, sends N bytes, closes the connection
* ``/stall/NAME?after=N`` — sends N bytes and then nothing until the server closes
* ``/nolength/NAME`` — the file, chunked, with no Content-Length
* ``/longer/NAME?extra=N`` — announces the file's length but sends N more bytes
* ``/redirect/K/NAME`` — K redirects (302) before ``/f/NAME``
* ``/loop`` — redirects to itself
* ``/to?url=URL`` — one redirect to any URL
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import ssl
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

from aiohttp import web
from multidict import CIMultiDict


@dataclass
class Resource:
    data: bytes
    etag: str | None = None  # None: derived from the data (a strong ETag)
    last_modified: str | None = None
    ranges: bool = True
    send_etag: bool = True

    def __post_init__(self) -> None:
        if self.etag is None and self.send_etag:
            self.etag = '"' + hashlib.sha256(self.data).hexdigest()[:16] + '"'


@dataclass
class Seen:
    """One request the server received."""

    method: str
    path: str
    headers: CIMultiDict[str] = field(default_factory=CIMultiDict)


_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class FaultServer:
    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.files: dict[str, Resource] = {}
        self.requests: list[Seen] = []
        self._ssl = ssl_context
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self.port = 0

    # ---- lifecycle ----------------------------------------------------------------

    async def start(self) -> FaultServer:
        app = web.Application()
        app.middlewares.append(self._record)
        r = app.router
        r.add_get("/f/{name}", self._file)
        r.add_get("/status/{code}", self._status)
        r.add_get("/drop/{name}", self._drop)
        r.add_get("/stall/{name}", self._stall)
        r.add_get("/nolength/{name}", self._nolength)
        r.add_get("/longer/{name}", self._longer)
        r.add_get("/redirect/{hops}/{name}", self._redirect)
        r.add_get("/loop", self._loop)
        r.add_get("/to", self._to)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._ssl)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FaultServer:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    @property
    def base(self) -> str:
        scheme = "https" if self._ssl is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def add(self, name: str, data: bytes, **kwargs: Any) -> str:
        """Serve ``data`` at /f/NAME; returns its URL."""
        self.files[name] = Resource(data, **kwargs)
        return self.url(f"/f/{name}")

    def seen(self, prefix: str) -> list[Seen]:
        return [s for s in self.requests if s.path.startswith(prefix)]

    # ---- handlers -----------------------------------------------------------------

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append(Seen(request.method, request.path, CIMultiDict(request.headers)))
        resp: web.StreamResponse = await handler(request)
        return resp

    def _resource(self, request: web.Request) -> Resource:
        try:
            return self.files[request.match_info["name"]]
        except KeyError:
            raise web.HTTPNotFound() from None

    @staticmethod
    def _validators(res: Resource) -> dict[str, str]:
        headers: dict[str, str] = {}
        if res.etag is not None and res.send_etag:
            headers["ETag"] = res.etag
        if res.last_modified is not None:
            headers["Last-Modified"] = res.last_modified
        return headers

    async def _file(self, request: web.Request) -> web.StreamResponse:
        res = self._resource(request)
        headers = self._validators(res)
        size = len(res.data)
        rng = request.headers.get("Range")
        if rng and res.ranges:
            if_range = request.headers.get("If-Range")
            current = {res.etag, res.last_modified} - {None}
            if if_range is None or if_range in current:
                m = _RANGE.match(rng)
                if m:
                    start = int(m.group(1))
                    end = int(m.group(2)) if m.group(2) else size - 1
                    if start >= size:
                        headers["Content-Range"] = f"bytes */{size}"
                        return web.Response(status=416, headers=headers)
                    end = min(end, size - 1)
                    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
                    return web.Response(status=206, body=res.data[start : end + 1], headers=headers)
        return web.Response(status=200, body=res.data, headers=headers)

    async def _status(self, request: web.Request) -> web.StreamResponse:
        code = int(request.match_info["code"])
        headers = {}
        if "retry_after" in request.query:
            headers["Retry-After"] = request.query["retry_after"]
        return web.Response(status=code, text=f"status {code}\n", headers=headers)

    async def _partial(self, request: web.Request) -> tuple[web.StreamResponse, bytes]:
        res = self._resource(request)
        after = int(request.query.get("after", "0"))
        resp = web.StreamResponse(headers=self._validators(res))
        resp.content_length = len(res.data)
        await resp.prepare(request)
        await resp.write(res.data[:after])
        return resp, res.data

    async def _drop(self, request: web.Request) -> web.StreamResponse:
        resp, _ = await self._partial(request)
        assert request.transport is not None
        request.transport.close()
        return resp

    async def _stall(self, request: web.Request) -> web.StreamResponse:
        resp, _ = await self._partial(request)
        await self._closing.wait()
        return resp

    async def _nolength(self, request: web.Request) -> web.StreamResponse:
        res = self._resource(request)
        resp = web.StreamResponse(headers=self._validators(res))
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(res.data)
        await resp.write_eof()
        return resp

    async def _longer(self, request: web.Request) -> web.StreamResponse:
        # aiohttp's own writer stops at Content-Length, so this reply is written raw. One
        # write: headers, the announced body and the excess reach the client together.
        res = self._resource(request)
        extra = int(request.query.get("extra", "16"))
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(res.data)}\r\n"
        for k, v in self._validators(res).items():
            head += f"{k}: {v}\r\n"
        transport = request.transport
        assert transport is not None
        transport.write(head.encode() + b"\r\n" + res.data + b"X" * extra)
        transport.close()
        raise asyncio.CancelledError  # the connection is gone; aiohttp treats it as such

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        hops = int(request.match_info["hops"])
        name = request.match_info["name"]
        target = f"/redirect/{hops - 1}/{name}" if hops > 1 else f"/f/{name}"
        raise web.HTTPFound(target)

    async def _loop(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/loop")

    async def _to(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(request.query["url"])


def http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)
