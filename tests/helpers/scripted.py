"""The fault-injecting server (httpserver.FaultServer) for tests that drive a real ferryd:
run on its own thread and loop (the tests are synchronous), with request times recorded,
and with a *script* per file so a fault can happen once and the next attempt succeed.

``server.script[NAME]`` is a list of steps; each request to ``/f/NAME`` takes the next one,
and once the list is empty ``/f/NAME`` behaves normally (ranges, If-Range):

* ``Drop(n)`` — answer as ``/f/NAME`` would (200, or 206 to a satisfiable range), send ``n``
  bytes of the body, wait ``pause`` seconds, close the connection. (A client loses what is
  still in its buffers when the connection dies — aiohttp drops buffered data once the
  payload has an error — so the pause lets it take in all ``n`` bytes first.)
* ``Status(code, headers)`` — that status, with those headers (``Retry-After`` …).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

from tests.helpers.httpserver import FaultServer

T = TypeVar("T")


@dataclass(frozen=True)
class Drop:
    after: int
    pause: float = 0.2


@dataclass(frozen=True)
class Status:
    code: int
    headers: dict[str, str] = field(default_factory=dict)


Step = Drop | Status


class ScriptedServer(FaultServer):
    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(ssl_context)
        self.script: dict[str, list[Step]] = {}
        self.times: list[tuple[float, str]] = []  # (time.time(), path) of every request

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.times.append((time.time(), request.path))
        return await super()._record(request, handler)

    async def _file(self, request: web.Request) -> web.StreamResponse:
        steps = self.script.get(request.match_info["name"])
        if not steps:
            return await super()._file(request)
        step = steps.pop(0)
        if isinstance(step, Status):
            return web.Response(
                status=step.code, text=f"status {step.code}\n", headers=step.headers
            )
        # Work out the answer /f/NAME would give, then send only part of its body.
        full = await super()._file(request)
        assert isinstance(full, web.Response) and isinstance(full.body, bytes)
        body = full.body
        resp = web.StreamResponse(status=full.status, headers=full.headers)
        resp.content_length = len(body)
        await resp.prepare(request)
        await resp.write(body[: step.after])
        await asyncio.sleep(step.pause)
        assert request.transport is not None
        request.transport.close()
        return resp

    def request_times(self, path: str) -> list[float]:
        return [t for t, p in self.times if p == path]


class ServerThread:
    """Runs a ScriptedServer on a private event loop in a thread."""

    def __init__(self, server: ScriptedServer) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self.call(self.server.start())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.call(self.server.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def on_loop(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the server's loop (to change what it serves between requests)."""

        async def run() -> T:
            return fn()

        return self.call(run())
