"""asyncio servers beside synchronous code: an event loop on a thread of its own, and the
base of the harness's aiohttp servers, which run either in the caller's loop
(``async with server``: in-process engine tests) or on such a thread (``with server``, or
``start()``/``stop()``: tests that drive a ferryd subprocess, the benchmarks, the demo).
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Generic, Protocol, Self, TypeVar

from aiohttp import web

T = TypeVar("T")


class LoopThread:
    """An asyncio event loop running on a daemon thread; ``call`` runs a coroutine there
    and returns its result, ``on_loop`` a plain function (asyncio objects belong to their
    loop). ``stop`` cancels what is left, closes the loop and joins the thread."""

    def __init__(self, name: str = "harness-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10) -> None:
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
        elif not self.loop.is_closed():
            self.loop.close()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def on_loop(self, fn: Callable[[], T], timeout: float = 30) -> T:
        async def run() -> T:
            return fn()

        return self.call(run(), timeout)


class AsyncServer(Protocol):
    async def astart(self) -> Any: ...
    async def aclose(self) -> None: ...


S = TypeVar("S", bound=AsyncServer)


class ServerThread(Generic[S]):
    """Runs ``server`` (``astart``/``aclose``) on a LoopThread of its own, for synchronous
    code: ``with ServerThread(FaultServer()) as t: t.server.url(...)``; ``t.call`` and
    ``t.on_loop`` reach the server's loop."""

    def __init__(self, server: S, name: str = "harness-server") -> None:
        self.server = server
        self.thread = LoopThread(name)

    def start(self) -> Self:
        self.thread.start()
        try:
            self.thread.call(self.server.astart())
        except BaseException:
            self.thread.stop()
            raise
        return self

    def stop(self) -> None:
        try:
            self.thread.call(self.server.aclose())
        finally:
            self.thread.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return self.thread.call(coro, timeout)

    def on_loop(self, fn: Callable[[], T], timeout: float = 30) -> T:
        """Run ``fn`` on the server's loop (to change what it serves between requests)."""
        return self.thread.on_loop(fn, timeout)


class AppServer:
    """An aiohttp application on 127.0.0.1 and an ephemeral port (HTTPS with ``ssl``).

    Pass the application, or subclass and build it in ``make_app``. ``async with`` (or
    ``astart``/``aclose``) runs it in the running loop; ``with`` (or ``start``/``stop``) on
    a thread of its own. A handler is cancelled when its client goes away, and the server
    gives running handlers half a second when it closes."""

    def __init__(
        self,
        app: web.Application | None = None,
        *,
        ssl: ssl_module.SSLContext | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self._app = app
        self._ssl = ssl
        self.host = host
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: ServerThread[Self] | None = None

    def make_app(self) -> web.Application:
        if self._app is None:
            raise NotImplementedError("pass an application or override make_app")
        return self._app

    # ---- in the running loop --------------------------------------------------------------

    async def astart(self) -> Self:
        self._loop = asyncio.get_running_loop()
        runner = web.AppRunner(
            self.make_app(), access_log=None, handler_cancellation=True, shutdown_timeout=0.5
        )
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, self.host, 0, ssl_context=self._ssl)
        await site.start()
        self.port = runner.addresses[0][1]
        return self

    async def closing(self) -> None:
        """Called first when the server closes: let held handlers go (for subclasses)."""

    async def aclose(self) -> None:
        await self.closing()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- on a thread of its own -----------------------------------------------------------

    def start(self) -> Self:
        self._thread = ServerThread(self, name=type(self).__name__).start()
        return self

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- for both -----------------------------------------------------------------------

    def call_soon(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the server's loop: now when called there (or before the server
        started), else as soon as that loop gets to it."""
        loop = self._loop
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if loop is None or loop is here or loop.is_closed():
            fn()
        else:
            loop.call_soon_threadsafe(fn)

    @property
    def base(self) -> str:
        scheme = "https" if self._ssl is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"
