"""``wire``'s streamed bodies (the sync client's event streams, issue #15: no http.client):
a chunked body split anywhere, a body framed by length or by the close, an error answer read
whole, and a stream that breaks off."""

from __future__ import annotations

import pytest

from ferry.client import wire

from .test_wire import _serve

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def _drain(conn: wire.Connection) -> bytes:
    out = b""
    while True:
        piece = conn.read_some()
        if not piece:
            return out
        out += piece


def _chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


@pytest.mark.parametrize("split", [1, 2, 3, 7, 1000])
def test_chunked_stream_split_anywhere(split: int) -> None:
    raw = HEAD + _chunked(b": ready\n\n", b"event: a\ndata: {}\n\n", b"x" * 300)
    conn, seen = _serve([raw[i : i + split] for i in range(0, len(raw), split)], close=True)
    assert conn.open_stream("/v1/events", {"Accept": "text/event-stream"}) is None
    assert seen[0].startswith(b"GET /v1/events HTTP/1.1\r\n")
    assert _drain(conn) == b": ready\n\nevent: a\ndata: {}\n\n" + b"x" * 300


def test_stream_framed_by_length_and_by_close() -> None:
    conn, _ = _serve([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"])
    assert conn.open_stream("/s", {}) is None
    assert _drain(conn) == b"hello"
    conn, _ = _serve([b"HTTP/1.1 200 OK\r\n\r\nup to", b" the close"], close=True)
    assert conn.open_stream("/s", {}) is None
    assert _drain(conn) == b"up to the close"


def test_error_answer_is_read_whole() -> None:
    body = b'{"error":{"code":"BG_E_NOT_FOUND","message":"no such job"}}'
    head = b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n" % len(body)
    conn, _ = _serve([head + body])
    answer = conn.open_stream("/v1/events?job=x", {})
    assert answer is not None and answer.status == 404 and answer.body == body


def test_stream_cut_in_a_chunk_is_a_lost_connection() -> None:
    conn, _ = _serve([HEAD + b"20\r\nonly part"], close=True)
    assert conn.open_stream("/s", {}) is None
    assert conn.read_some() == b"only part"
    with pytest.raises(wire.ConnectionLost):
        conn.read_some()
