"""``http.client`` over a Unix socket: the client's event streams, and the tests,
benchmarks and demo for raw API calls. A module of its own so that only what needs it pays
for importing ``http.client`` (which imports ``ssl`` and ``email``)."""

from __future__ import annotations

import http.client
import socket


class UnixHTTPConnection(http.client.HTTPConnection):
    """An ``http.client`` connection whose transport is a Unix socket; everything above
    ``connect`` (request framing, keep-alive, chunked decoding) is the standard library's.
    The client's event streams use it, and so do the tests, benchmarks and demo for raw
    API calls."""

    def __init__(self, path: str, timeout: float | None = 10.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.unix_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
