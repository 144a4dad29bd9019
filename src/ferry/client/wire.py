"""HTTP/1.1 request/response framing for the synchronous client's kept-alive connection.

``http.client`` spends about 150 µs of CPU per call parsing response headers through the
``email`` package — as much as ferryd spends serving a job creation. Our peer is always
ferryd (aiohttp) on a local socket, so this module frames a request in one ``sendall`` and
reads the answer with a small parser: status line, headers, then a body framed by
``Content-Length``, by chunked encoding, or by the connection closing. Anything else is a
protocol error and the connection is dropped. Event streams (SSE) use the same framing:
``open_stream`` reads the head, ``read_some`` the body as it arrives (chunked, as aiohttp
sends a stream, by length, or up to the close).
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: ``ferry list`` imports this module (cli/fast.py)
if TYPE_CHECKING:
    import socket as _socket
    from collections.abc import Mapping

MAX_HEAD = 64 * 1024  # bytes of status line + headers we accept before calling it garbage
_RECV = 256 * 1024


class ConnectionLost(ConnectionError):
    """The daemon closed the connection (or sent garbage) before a whole response arrived."""


class Response:
    __slots__ = ("status", "body", "will_close")

    def __init__(self, status: int, body: bytes, will_close: bool) -> None:
        self.status = status
        self.body = body
        self.will_close = will_close


def encode_request(
    method: str, target: str, body: bytes | None, headers: Mapping[str, str]
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: localhost"]
    lines.extend(f"{k}: {v}" for k, v in headers.items())
    if body is not None or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body or b'')}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head + body if body else head


def _content_length(fields: dict[str, str]) -> int:
    try:
        length = int(fields["content-length"])
    except ValueError:
        raise ConnectionLost("bad Content-Length in response") from None
    if length < 0:
        raise ConnectionLost("bad Content-Length in response")
    return length


class Connection:
    """One kept-alive connection over a connected stream socket; not thread-safe."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray()

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            self._buf.clear()

    def request(
        self, method: str, target: str, body: bytes | None, headers: Mapping[str, str]
    ) -> Response:
        self._buf.clear()
        self.sock.sendall(encode_request(method, target, body, headers))
        return self._read_response(method)

    # ---- reading ---------------------------------------------------------------------

    def _fill(self) -> bool:
        chunk = self.sock.recv(_RECV)
        if not chunk:
            return False
        self._buf += chunk
        return True

    def _need(self, n: int) -> None:
        while len(self._buf) < n:
            if not self._fill():
                raise ConnectionLost("connection closed in the middle of a response body")

    def _read_line(self) -> bytes:
        while True:
            i = self._buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self._buf[:i])
                del self._buf[: i + 2]
                return line
            if len(self._buf) > MAX_HEAD:
                raise ConnectionLost("response line too long")
            if not self._fill():
                raise ConnectionLost("connection closed in the middle of a response")

    def _read_head(self) -> tuple[str, int, dict[str, str], bool]:
        """Status line and headers: (version, status, fields by lower-case name, will_close)."""
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(self._buf) > MAX_HEAD:
                raise ConnectionLost("response head too long")
            if not self._fill():
                raise ConnectionLost(
                    "connection closed before a response" if not self._buf
                    else "connection closed in the middle of a response head"
                )
        head = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        del self._buf[: end + 4]
        version, _, rest = head[0].partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise ConnectionLost(f"not an HTTP response: {head[0][:80]!r}")
        status = int(code)
        fields: dict[str, str] = {}
        for line in head[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise ConnectionLost(f"malformed response header: {line[:80]!r}")
            fields[name.strip().lower()] = value.strip()
        conn_hdr = fields.get("connection", "").lower()
        will_close = conn_hdr == "close" or (version == "HTTP/1.0" and conn_hdr != "keep-alive")
        if status == 101:
            raise ConnectionLost("unexpected protocol switch")
        return version, status, fields, will_close

    def _read_response(self, method: str) -> Response:
        _, status, fields, will_close = self._read_head()
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return Response(status, b"", will_close)
        body, to_close = self._read_body(fields)
        will_close = will_close or to_close
        if self._buf:
            raise ConnectionLost("the daemon sent more than one response")
        return Response(status, body, will_close)

    def _read_body(self, fields: dict[str, str]) -> tuple[bytes, bool]:
        """A whole body framed by ``fields``: chunked, by Content-Length, or up to the close
        (then True: the connection is done)."""
        if "chunked" in fields.get("transfer-encoding", "").lower():
            return self._read_chunked(), False
        if "content-length" in fields:
            length = _content_length(fields)
            self._need(length)
            body = bytes(self._buf[:length])
            del self._buf[:length]
            return body, False
        while self._fill():
            pass
        body = bytes(self._buf)
        self._buf.clear()
        return body, True

    # ---- a streamed body (the event stream) ---------------------------------------------

    def open_stream(self, target: str, headers: Mapping[str, str]) -> Response | None:
        """GET ``target`` whose answer is a stream (``GET /v1/events``): None once a 2xx
        head has arrived, its body then read piece by piece with ``read_some``; any other
        answer is read whole and returned. The connection serves nothing else afterwards."""
        self._buf.clear()
        self.sock.sendall(encode_request("GET", target, None, headers))
        _, status, fields, will_close = self._read_head()
        if not 200 <= status < 300:
            return Response(status, self._read_body(fields)[0], True)
        self._chunked = "chunked" in fields.get("transfer-encoding", "").lower()
        self._left: int | None = None  # bytes left of the chunk (or of the whole body)
        if not self._chunked and "content-length" in fields:
            self._left = _content_length(fields)
        self._between = False  # a chunk's data ended: its CRLF comes next
        return None

    def read_some(self) -> bytes:
        """The next bytes of a body opened by ``open_stream`` (whatever has arrived, at
        least one byte; waits under the socket's timeout); b"" at its end."""
        if self._chunked:
            if not self._left:
                if self._between:
                    self._need(2)
                    del self._buf[:2]
                    self._between = False
                size_line = self._read_line().split(b";", 1)[0].strip()
                try:
                    size = int(size_line, 16)
                except ValueError:
                    raise ConnectionLost("bad chunk size in response") from None
                if size == 0:
                    return b""
                self._left = size
        elif self._left == 0:
            return b""
        if not self._buf and not self._fill():
            if self._chunked or self._left is not None:
                raise ConnectionLost("connection closed in the middle of a response body")
            return b""
        n = len(self._buf) if self._left is None else min(len(self._buf), self._left)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        if self._left is not None:
            self._left -= n
            if self._chunked and self._left == 0:
                self._between = True
        return out

    def _read_chunked(self) -> bytes:
        out = bytearray()
        while True:
            size_line = self._read_line().split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise ConnectionLost("bad chunk size in response") from None
            if size == 0:
                while self._read_line():  # trailers, up to the empty line
                    pass
                return bytes(out)
            self._need(size + 2)
            out += self._buf[:size]
            del self._buf[: size + 2]
