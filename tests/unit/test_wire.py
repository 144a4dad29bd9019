"""The sync client's HTTP/1.1 framing against canned responses on a real socket pair.

ferryd (aiohttp) always frames JSON with Content-Length; these tests also pin the other
framings a peer may legally use and what counts as a broken connection.
"""

from __future__ import annotations

import socket
import threading

import pytest

from ferry.client import wire


def _serve(chunks: list[bytes], close: bool = False) -> tuple[wire.Connection, list[bytes]]:
    """A connection whose peer reads one request, then writes ``chunks`` one send each."""
    ours, theirs = socket.socketpair()
    ours.settimeout(5)
    seen: list[bytes] = []

    def peer() -> None:
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += theirs.recv(65536)
        seen.append(buf)
        for c in chunks:
            theirs.sendall(c)
        if close:
            theirs.close()

    threading.Thread(target=peer, daemon=True).start()
    return wire.Connection(ours), seen


def test_request_is_framed_in_one_piece() -> None:
    req = wire.encode_request("POST", "/v1/jobs", b'{"a":1}', {"Content-Type": "application/json"})
    head, _, body = req.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"POST /v1/jobs HTTP/1.1"
    assert b"Content-Length: 7" in head and b"Host: localhost" in head
    assert body == b'{"a":1}'
    get = wire.encode_request("GET", "/v1/status", None, {})
    assert get.endswith(b"\r\n\r\n") and b"Content-Length" not in get


def test_content_length_body_split_across_sends() -> None:
    conn, seen = _serve(
        [b"HTTP/1.1 201 Created\r\nContent-Le", b"ngth: 11\r\n\r\nhello", b" world"]
    )
    r = conn.request("GET", "/x", None, {})
    assert (r.status, r.body, r.will_close) == (201, b"hello world", False)
    assert seen[0].startswith(b"GET /x HTTP/1.1\r\n")


def test_chunked_body_with_trailer() -> None:
    conn, _ = _serve(
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n",
         b"6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n"]
    )
    r = conn.request("GET", "/x", None, {})
    assert r.body == b"hello world" and not r.will_close


def test_body_until_close_marks_connection_closed() -> None:
    conn, _ = _serve([b"HTTP/1.1 200 OK\r\n\r\nall of it"], close=True)
    r = conn.request("GET", "/x", None, {})
    assert (r.body, r.will_close) == (b"all of it", True)


def test_connection_close_header_and_http10() -> None:
    conn, _ = _serve([b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"])
    assert conn.request("GET", "/x", None, {}).will_close
    conn, _ = _serve([b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"])
    assert conn.request("GET", "/x", None, {}).will_close
    conn, _ = _serve([b"HTTP/1.1 204 No Content\r\n\r\n"])
    r = conn.request("DELETE", "/x", None, {})
    assert (r.status, r.body, r.will_close) == (204, b"", False)


@pytest.mark.parametrize(
    ("chunks", "close"),
    [
        ([], True),  # closed before any response
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"], True),  # truncated body
        ([b"HTTP/1.1 200 OK\r\nContent-Len"], True),  # truncated head
        ([b"SSH-2.0-OpenSSH\r\n\r\n"], False),  # not HTTP
        ([b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n"], False),  # malformed header
        ([b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"], False),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"], False),
        ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"], False),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"], False),
        ([b"HTTP/1.1 200 OK\r\nX: " + b"a" * (wire.MAX_HEAD + 10)], False),  # endless head
    ],
)
def test_broken_responses_are_connection_lost(chunks: list[bytes], close: bool) -> None:
    conn, _ = _serve(chunks, close=close)
    with pytest.raises(wire.ConnectionLost):
        conn.request("GET", "/x", None, {})
    assert issubclass(wire.ConnectionLost, ConnectionError)
