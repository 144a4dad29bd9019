"""The upload-reply back end (what IIS calls the server application's notification).

When the last byte of an upload has arrived, the server POSTs to ``--notify-url``:

* ``by-reference``: an empty body; ``BITS-Request-DataFile-Name`` names the uploaded file and
  ``BITS-Response-DataFile-Name`` the file the application may write its reply to;
* ``by-value``: the upload is the body.

Both carry ``BITS-Original-Request-URL``. A 2xx answer is a success: its body (or, by
reference, the response file when the application wrote one) becomes the reply — unless it
names ``BITS-Static-Response-URL``, which becomes the reply URL as it is.
``BITS-Copy-File-To-Destination: true`` also keeps the upload at its destination (by
default, with a back end, it is handed over only). Anything else — another status, no
answer, a refused connection — is a back-end failure, reported to the client with context 0x7.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from ..errors import hresult_of

NOTIFY_TIMEOUT = aiohttp.ClientTimeout(total=300, sock_connect=30)
CHUNK = 1 << 20


class BackendFailed(Exception):
    """The back end did not answer with a 2xx: ``status`` is what the client is told (the
    application's status, or 502 when there was no answer), ``hresult`` the matching code."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.hresult = hresult_of(f"BG_E_HTTP_ERROR_{status}")


class Backend:
    def __init__(self, url: str, kind: str) -> None:
        self.url = url
        self.kind = kind
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=NOTIFY_TIMEOUT, auto_decompress=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def notify(self, request: web.Request, data: Path, reply: Path) -> dict[str, Any]:
        """Tell the back end about the upload in ``data``; the reply is written to
        ``reply``. Returns the session's reply record."""
        assert self._session is not None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(reply)  # a reply from an earlier, failed attempt
        headers = {
            "BITS-Original-Request-URL": str(request.url),
            "Content-Type": "application/octet-stream",
        }
        body: Any
        if self.kind == "by-reference":
            headers["BITS-Request-DataFile-Name"] = str(data)
            headers["BITS-Response-DataFile-Name"] = str(reply)
            body = b""
        else:
            headers["Content-Length"] = str(data.stat().st_size)
            body = _file_sender(data)
        try:
            async with self._session.post(self.url, data=body, headers=headers) as resp:
                if not 200 <= resp.status < 300:
                    status = resp.status if 300 <= resp.status <= 599 else 502
                    raise BackendFailed(status, f"back end answered {resp.status}")
                static = resp.headers.get("BITS-Static-Response-URL")
                copy = resp.headers.get("BITS-Copy-File-To-Destination", "").strip().lower()
                record: dict[str, Any] = {"copy": copy in ("true", "1", "yes")}
                if static:
                    record["url"] = str(URL(self.url).join(URL(static.strip())))
                    return record
                wrote = self.kind == "by-reference" and reply.exists()
                if not wrote:
                    await _save(resp, reply)
                record["file"] = True
                return record
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise BackendFailed(502, f"back end unreachable: {exc}") from exc


async def _file_sender(path: Path) -> Any:
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            yield block


async def _save(resp: aiohttp.ClientResponse, reply: Path) -> None:
    tmp = reply.with_name(f".{reply.name}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        async for block in resp.content.iter_chunked(CHUNK):
            os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, reply)
