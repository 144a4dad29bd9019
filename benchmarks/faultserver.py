"""An HTTP server for the benchmarks and the torture run that counts every body byte it
sends and drops connections on purpose.

It serves the files under a directory at ``/f/PATH`` with what a resuming client needs
(Content-Length, a strong ETag, Last-Modified, ``Range`` with ``If-Range``), and can:

* drop the connection at planned absolute offsets of a file (``plan_drops``), each planned
  drop happening once: the bandwidth benchmark forces exactly N drops at random places;
* drop a random fraction of responses at a random offset (``drop_probability``);
* pace each response to ``rate`` bytes/s, so a transfer is still running when the torture
  run kills ferryd.

``served[PATH]`` is the number of body bytes handed to the kernel for that file, across
all requests: comparing it with the file size tells how much was fetched twice.

The server runs its own event loop on a thread, so a synchronous driver can use it.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import threading
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path

from aiohttp import web

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
CHUNK = 256 * 1024
PACED_CHUNK = 64 * 1024


@dataclass
class Served:
    """One response: which file, from which offset, how many body bytes, dropped or not."""

    path: str
    start: int
    sent: int
    dropped: bool


class FaultServer:
    def __init__(
        self,
        root: Path,
        *,
        rate: float | None = None,
        drop_probability: float = 0.0,
        seed: int | None = None,
    ) -> None:
        self.root = root.resolve()
        self.rate = rate
        self.drop_probability = drop_probability
        self.served: dict[str, int] = {}
        self.log: list[Served] = []
        self._drops: dict[str, list[int]] = {}
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # ---- control ---------------------------------------------------------------------------

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/f/{path}"

    def plan_drops(self, path: str, offsets: list[int]) -> None:
        """Drop the connection once when a response of ``path`` reaches each offset."""
        with self._lock:
            self._drops[path] = sorted(offsets)

    def drops_left(self, path: str) -> int:
        with self._lock:
            return len(self._drops.get(path, []))

    def bytes_served(self) -> dict[str, int]:
        with self._lock:
            return dict(self.served)

    def reset_counts(self) -> None:
        with self._lock:
            self.served.clear()
            self.log.clear()

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FaultServer:
        self._thread = threading.Thread(target=self._run, name="fault-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("the fault server did not start")
        if self._error is not None:
            raise RuntimeError(f"the fault server did not start: {self._error}")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(15)
            self._thread = None

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        app = web.Application()
        app.router.add_get("/f/{path:.+}", self._file)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        self._runner = runner
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.port = runner.addresses[0][1]
        except BaseException as exc:  # reported by start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    # ---- the handler -------------------------------------------------------------------------

    def _resolve(self, rel: str) -> Path:
        path = (self.root / rel).resolve()
        if self.root not in path.parents or not path.is_file():
            raise web.HTTPNotFound()
        return path

    def _drop_point(self, rel: str, start: int, end: int) -> int | None:
        """Where this response (bytes start..end-1) is cut, if it is."""
        with self._lock:
            planned = self._drops.get(rel)
            if planned:
                for i, off in enumerate(planned):
                    if start < off < end:
                        del planned[i]
                        return off
                    if off <= start:
                        continue
                    break
            if self.drop_probability and self._random.random() < self.drop_probability:
                return self._random.randrange(start, end) if end > start else None
        return None

    async def _file(self, request: web.Request) -> web.StreamResponse:
        rel = request.match_info["path"]
        path = self._resolve(rel)
        st = path.stat()
        size = st.st_size
        etag = f'"{st.st_mtime_ns:x}-{size:x}"'
        headers = {
            "ETag": etag,
            "Last-Modified": formatdate(st.st_mtime, usegmt=True),
            "Accept-Ranges": "bytes",
        }
        start, end, status = 0, size, 200
        rng = request.headers.get("Range")
        if_range = request.headers.get("If-Range")
        if rng and (if_range is None or if_range in (etag, headers["Last-Modified"])):
            m = _RANGE.match(rng.strip())
            if m:
                start = int(m.group(1))
                if start >= size:
                    headers["Content-Range"] = f"bytes */{size}"
                    return web.Response(status=416, headers=headers)
                end = min(int(m.group(2)) + 1, size) if m.group(2) else size
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = end - start
        await resp.prepare(request)
        cut = self._drop_point(rel, start, end)
        stop_at = cut if cut is not None else end
        sent = 0
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        chunk = PACED_CHUNK if self.rate else CHUNK
        fd = os.open(path, os.O_RDONLY)
        try:
            pos = start
            while pos < stop_at:
                data = os.pread(fd, min(chunk, stop_at - pos), pos)
                if not data:
                    break
                try:
                    await resp.write(data)
                except (ConnectionError, RuntimeError):
                    break  # the client went away (ferryd killed): counted what we sent
                pos += len(data)
                sent += len(data)
                with self._lock:
                    self.served[rel] = self.served.get(rel, 0) + len(data)
                if self.rate:
                    ahead = sent / self.rate - (loop.time() - t0)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        finally:
            os.close(fd)
            with self._lock:
                self.log.append(Served(rel, start, sent, cut is not None))
        if cut is not None and request.transport is not None:
            request.transport.close()
            return resp
        await resp.write_eof()
        return resp
