"""Bugs the ferry-server fuzzing (harness/serverfuzz.py) found, each reproduced on a real
ferry-server process: every test here failed before its fix."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from harness.upserver import FerryServer, bits, create, raw_request, read_answer, upload


def test_get_keeps_the_connection_and_logs_no_traceback(
    base: Path, servers: list[FerryServer]
) -> None:
    """aiohttp prepared the file response a second time after the handler had sent it,
    re-opening /proc/self/fd/N after N was closed (a traceback, the connection dropped) —
    or after N was reused by another open file, whose bytes would follow the answer."""
    s = FerryServer(base / "root", state_dir=base / "state").start()
    servers.append(s)
    data = os.urandom(50_000)
    upload(s.port, "/f.bin", data)
    with socket.create_connection(("127.0.0.1", s.port), 30) as sock:
        for rng in ("", "bytes=10-19", ""):
            extra = f"Range: {rng}\r\n" if rng else ""
            sock.sendall(f"GET /f.bin HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
            a = read_answer(sock, "GET")  # the connection stays usable
            assert a.body == (data[10:20] if rng else data)
            assert a.status == (206 if rng else 200)
        sock.sendall(b"HEAD /f.bin HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answer(sock, "HEAD").status == 200
    s.stop()
    assert "Traceback" not in s.log(100_000)


def test_gzip_fragment_is_refused_without_inflating(
    base: Path, servers: list[FerryServer]
) -> None:
    """aiohttp inflated a "Content-Encoding: gzip" body itself (a decompression bomb could
    go through it) and logged a traceback when the body was not gzip; the Fragment is
    refused with E_INVALIDARG and nothing stored."""
    s = FerryServer(base / "root", state_dir=base / "state").start()
    servers.append(s)
    sid = create(s.port, "/g.bin")
    a = bits(s.port, "/g.bin", "Fragment", sid, b"not gzip at all",
             extra={"Content-Range": "bytes 0-14/15", "Content-Encoding": "gzip"})
    assert a.status == 400 and a.h("BITS-Error-Code") == "0x80070057"
    a = bits(s.port, "/g.bin", "Fragment", sid, b"x", extra={"Content-Range": "bytes 0-0/15"})
    assert a.status == 200 and a.h("BITS-Received-Content-Range") == "1"
    s.stop()
    assert "Traceback" not in s.log(100_000)


def test_malformed_http_is_one_log_line(base: Path, servers: list[FerryServer]) -> None:
    """Requests aiohttp's parser refuses (a repeated Content-Range, a header line over
    8 KiB) were logged at ERROR with a whole traceback each: a client could flood the log."""
    s = FerryServer(base / "root", state_dir=base / "state").start()
    servers.append(s)
    sid = create(s.port, "/m.bin")
    a = raw_request(s.port, "BITS_POST", "/m.bin", [
        ("BITS-Packet-Type", "Fragment"), ("BITS-Session-Id", sid),
        ("Content-Range", "bytes 0-0/1"), ("Content-Range", "bytes 0-0/2")], b"x")
    assert a.status == 400
    a = raw_request(s.port, "BITS_POST", "/m.bin", {"BITS-Packet-Type": "Ping",
                                                    "X-Big": "a" * 10_000})
    assert a.status == 400
    s.stop()
    log = s.log(100_000)
    assert "Traceback" not in log
    assert "Duplicate 'Content-Range'" in log  # -v: one line says what was refused


def test_client_gone_before_100_continue(base: Path, servers: list[FerryServer]) -> None:
    """A client that sent ``Expect: 100-continue`` and went away before the interim answer
    was written made aiohttp's expect handler raise (a traceback in the log each time)."""
    s = FerryServer(base / "root", state_dir=base / "state").start()
    servers.append(s)
    sid = create(s.port, "/e.bin")
    head = (f"BITS_POST /e.bin HTTP/1.1\r\nHost: x\r\nBITS-Packet-Type: Fragment\r\n"
            f"BITS-Session-Id: {sid}\r\nContent-Range: bytes 0-999/1000\r\n"
            f"Expect: 100-continue\r\nContent-Length: 1000\r\n\r\n").encode()
    for _ in range(40):
        sock = socket.create_connection(("127.0.0.1", s.port), 30)
        sock.sendall(head + b"x" * 10)
        sock.close()
    ok = bits(s.port, "/e.bin", "Fragment", sid, b"y" * 1000,
              extra={"Content-Range": "bytes 0-999/1000"})
    assert ok.status == 200
    a = bits(s.port, "/e.bin", "Ping", extra={"Expect": "something-else"})
    assert a.status == 417
    s.stop()
    assert "Traceback" not in s.log(200_000)


def test_idle_and_stalled_connections_are_dropped(
    base: Path, servers: list[FerryServer]
) -> None:
    """A connection that never sent a whole request stayed open for an hour (aiohttp's
    default), and a Fragment whose body stalled held its session's lock for ever (every
    other request on the session then got 503 after a minute): --idle-timeout bounds both."""
    s = FerryServer(base / "root", ["--idle-timeout", "1"], state_dir=base / "state").start()
    servers.append(s)
    sid = create(s.port, "/s.bin")
    idle = socket.create_connection(("127.0.0.1", s.port), 30)
    half = socket.create_connection(("127.0.0.1", s.port), 30)
    half.sendall(b"BITS_POST /s.bin HTTP/1.1\r\nHost: x\r\nBITS-Pack")
    stalled = socket.create_connection(("127.0.0.1", s.port), 30)
    stalled.sendall(f"BITS_POST /s.bin HTTP/1.1\r\nHost: x\r\nBITS-Packet-Type: Fragment\r\n"
                    f"BITS-Session-Id: {sid}\r\nContent-Range: bytes 0-99/100\r\n"
                    f"Content-Length: 100\r\n\r\n".encode() + b"a" * 40)
    for sock in (idle, half):
        sock.settimeout(20)
        assert sock.recv(100) == b""  # closed by the server
        sock.close()
    stalled.settimeout(20)
    a = read_answer(stalled)  # the stalled fragment is refused; what arrived is kept
    assert a.status == 400
    stalled.close()
    a = bits(s.port, "/s.bin", "Fragment", sid, b"b" * 60,
             extra={"Content-Range": "bytes 40-99/100"}, timeout=20)
    assert a.status == 200 and a.h("BITS-Received-Content-Range") == "100"
    assert bits(s.port, "/s.bin", "Close-Session", sid).status == 200
    assert (base / "root" / "s.bin").read_bytes() == b"a" * 40 + b"b" * 60
