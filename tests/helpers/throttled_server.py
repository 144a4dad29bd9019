"""A slow HTTP server on loopback for scheduling tests: in-memory files sent at a limited
rate, optionally pausing mid-file until the test releases them, with Range + If-Range (a
strong ETag) so stopped transfers resume; it records every request and how many responses
were being sent at once. It runs on its own thread, so synchronous tests (a real ferryd in
a subprocess) and asyncio tests can both use it.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

_RANGE = re.compile(r"^bytes=(\d+)-$")


@dataclass
class SlowFile:
    data: bytes
    rate: float | None = None  # bytes per second per response; None: as fast as possible
    delay: float = 0.0  # seconds before the first byte of every response
    pause_after: int | None = None  # the first response stops after this many bytes...
    gate: asyncio.Event | None = None  # ...until release() sets this
    paused: bool = False  # the first response has reached its pause
    etag: str = ""

    def __post_init__(self) -> None:
        self.etag = '"' + hashlib.sha256(self.data).hexdigest()[:16] + '"'


@dataclass(frozen=True)
class Request:
    name: str
    range: str | None  # the Range header, when the request resumes


@dataclass
class Response:
    name: str
    range: str | None
    # Files whose responses started while this one still had body bytes to send.
    overlapped: set[str] = field(default_factory=set)
    sent: bool = False  # its last body byte is written
    outcome: str = ""  # "end" or "abort" once over


@dataclass
class ThrottledServer:
    chunk: int = 16 * 1024
    files: dict[str, SlowFile] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    # ("start" | "end" | "abort", name) in the order they happened.
    log: list[tuple[str, str]] = field(default_factory=list)
    active: int = 0
    responses: list[Response] = field(default_factory=list)
    max_active: int = 0
    peers: set[Any] = field(default_factory=set)  # client addresses: one per connection
    port: int = 0

    def __post_init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._sending: list[Response] = []

    # ---- lifecycle ----------------------------------------------------------------

    def start(self) -> ThrottledServer:
        self._thread = threading.Thread(target=self._run, name="throttled-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the throttled server did not start")
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        loop.run_until_complete(self._serve())
        loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_get("/f/{name}", self._file)
        # Cancel a handler when its client goes away, so ``active`` counts real responses.
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]
        self._ready.set()
        await self._stop.wait()
        for f in self.files.values():
            if f.gate is not None:
                f.gate.set()
        await runner.cleanup()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> ThrottledServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---- files ----------------------------------------------------------------------

    def add(
        self,
        name: str,
        data: bytes,
        *,
        rate: float | None = None,
        delay: float = 0.0,
        pause_after: int | None = None,
    ) -> str:
        """Serve ``data`` at /f/NAME; returns its URL."""
        f = SlowFile(data, rate=rate, delay=delay, pause_after=pause_after)
        if pause_after is not None:
            assert self._loop is not None, "start the server first"
            f.gate = self._call(asyncio.Event)
        self.files[name] = f
        return f"http://127.0.0.1:{self.port}/f/{name}"

    def release(self, name: str) -> None:
        """Let a paused response go on."""
        gate = self.files[name].gate
        assert gate is not None and self._loop is not None
        self._loop.call_soon_threadsafe(gate.set)

    def paused(self, name: str) -> bool:
        """The first response of NAME has sent its ``pause_after`` bytes and waits."""
        return self.files[name].paused

    def requests_for(self, name: str) -> list[Request]:
        return [r for r in list(self.requests) if r.name == name]

    def _call(self, fn: Any) -> Any:
        """Run ``fn`` on the server's loop (asyncio objects belong to their loop)."""
        assert self._loop is not None
        done = threading.Event()
        out: list[Any] = []

        def run() -> None:
            out.append(fn())
            done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(10)
        return out[0]

    # ---- the handler ------------------------------------------------------------------

    async def _file(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        f = self.files.get(name)
        if f is None:
            raise web.HTTPNotFound()
        size = len(f.data)
        rng = request.headers.get("Range")
        self.requests.append(Request(name, rng))
        if request.transport is not None:
            self.peers.add(request.transport.get_extra_info("peername"))
        headers = {"ETag": f.etag, "Accept-Ranges": "bytes"}
        start, status = 0, 200
        m = _RANGE.match(rng or "")
        if m and request.headers.get("If-Range", f.etag) == f.etag:
            start = int(m.group(1))
            if start >= size:
                headers["Content-Range"] = f"bytes */{size}"
                return web.Response(status=416, headers=headers)
            status = 206
            headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = size - start
        await resp.prepare(request)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.log.append(("start", name))
        mine = Response(name, rng)
        for other in self._sending:
            if not other.sent:
                other.overlapped.add(name)
                mine.overlapped.add(other.name)
        self._sending.append(mine)
        self.responses.append(mine)
        try:
            if f.delay:
                await asyncio.sleep(f.delay)
            pos = start
            while pos < size:
                end = min(size, pos + self.chunk)
                if f.gate is not None and not f.paused and f.pause_after is not None:
                    if pos >= f.pause_after:
                        f.paused = True
                        await f.gate.wait()
                    else:
                        end = min(end, f.pause_after)
                await resp.write(f.data[pos:end])
                mine.sent = end == size
                if f.rate and not mine.sent:
                    await asyncio.sleep((end - pos) / f.rate)
                pos = end
            mine.sent = True
            await resp.write_eof()
            self.log.append(("end", name))
            mine.outcome = "end"
        except BaseException:
            self.log.append(("abort", name))
            mine.outcome = "abort"
            raise
        finally:
            self.active -= 1
            self._sending.remove(mine)
        return resp
