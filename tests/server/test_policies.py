"""Overwrite policy, --max-upload-size, --session-timeout, and durability across a
``kill -9`` of the server mid-fragment: each on a server of its own."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from harness.upserver import FerryServer, bits, create, fragment, upload
from harness.wait import wait_until

NOT_FOUND = "0x8020001F"


def _server(base: Path, servers: list[FerryServer], *args: str) -> FerryServer:
    s = FerryServer(base / "root", list(args), state_dir=base / "state").start()
    servers.append(s)
    return s


def _session_dirs(base: Path) -> list[Path]:
    return [p for p in (base / "state" / "sessions").iterdir() if not p.name.startswith(".")]


# -- overwrite ------------------------------------------------------------------------------


def test_existing_file_is_not_overwritten(base: Path, servers: list[FerryServer]) -> None:
    s = _server(base, servers)
    (base / "root" / "f").write_bytes(b"old")
    a = bits(s.port, "/f", "Create-Session")
    assert a.status == 403 and a.h("BITS-Error-Code") == "0x80070005"
    assert (base / "root" / "f").read_bytes() == b"old"


def test_file_appearing_before_close_is_not_replaced(
    base: Path, servers: list[FerryServer]
) -> None:
    s = _server(base, servers)
    sid = create(s.port, "/f")
    assert fragment(s.port, "/f", sid, b"new", 0, 3).status == 200
    (base / "root" / "f").write_bytes(b"someone else's")
    a = bits(s.port, "/f", "Close-Session", sid)
    assert a.status == 403 and a.h("BITS-Error-Code") == "0x80070005"
    assert (base / "root" / "f").read_bytes() == b"someone else's"


def test_allow_overwrite(base: Path, servers: list[FerryServer]) -> None:
    s = _server(base, servers, "--allow-overwrite")
    (base / "root" / "f").write_bytes(b"old")
    sid = create(s.port, "/f")
    assert fragment(s.port, "/f", sid, b"new!", 0, 4).status == 200
    assert (base / "root" / "f").read_bytes() == b"old"  # not before Close
    assert bits(s.port, "/f", "Close-Session", sid).status == 200
    assert (base / "root" / "f").read_bytes() == b"new!"
    # a directory is never replaced, even with overwrite allowed
    (base / "root" / "d").mkdir()
    assert bits(s.port, "/d", "Create-Session").status == 403


# -- size -----------------------------------------------------------------------------------


def test_max_upload_size(base: Path, servers: list[FerryServer]) -> None:
    s = _server(base, servers, "--max-upload-size", "10")
    sid = create(s.port, "/big")
    a = fragment(s.port, "/big", sid, b"x" * 5, 0, 11)
    assert a.status == 500
    assert a.h("BITS-Error-Code") == "0x80200020"  # BG_E_TOO_LARGE
    assert a.h("BITS-Error-Context") == "0x5"
    upload(s.port, "/fits", b"y" * 10, chunk=4)
    assert (base / "root" / "fits").read_bytes() == b"y" * 10


# -- expiry ---------------------------------------------------------------------------------


def test_session_expiry(base: Path, servers: list[FerryServer]) -> None:
    s = _server(base, servers, "--session-timeout", "1")
    sid = create(s.port, "/e")
    assert fragment(s.port, "/e", sid, b"abc", 0, 6).status == 200
    # used within the timeout: alive
    time.sleep(0.6)
    assert fragment(s.port, "/e", sid, b"d", 3, 6).status == 200
    # idle past it: gone, for the sweep and for the next request
    wait_until(lambda: not _session_dirs(base), "the sweep to delete the session", 30)
    a = fragment(s.port, "/e", sid, b"ef", 4, 6)
    assert a.status == 500 and a.h("BITS-Error-Code") == NOT_FOUND
    assert bits(s.port, "/e", "Close-Session", sid).h("BITS-Error-Code") == NOT_FOUND
    assert not (base / "root" / "e").exists()
    # a new session from byte 0 works
    upload(s.port, "/e", b"abcdef")
    assert (base / "root" / "e").read_bytes() == b"abcdef"


def test_expired_on_use_before_the_sweep(base: Path, servers: list[FerryServer]) -> None:
    """A server restarted after the timeout finds the session expired on first use."""
    s = _server(base, servers, "--session-timeout", "3600")
    sid = create(s.port, "/e")
    s.stop()
    meta = base / "state" / "sessions" / sid.strip("{}") / "meta.json"
    old = time.time() - 7200
    os.utime(meta, (old, old))
    s.start()
    a = fragment(s.port, "/e", sid, b"ab", 0, 2)
    assert a.status == 500 and a.h("BITS-Error-Code") == NOT_FOUND


# -- durability -----------------------------------------------------------------------------


def test_kill_9_mid_fragment_then_resume(base: Path, servers: list[FerryServer]) -> None:
    s = _server(base, servers)
    data = os.urandom(6 << 20)
    sid = create(s.port, "/d.bin")
    a = fragment(s.port, "/d.bin", sid, data[: 1 << 20], 0, len(data))
    assert a.h("BITS-Received-Content-Range") == str(1 << 20)
    stored = base / "state" / "sessions" / sid.strip("{}") / "data"
    # a 4 MiB fragment of which 2.5 MiB are sent, then the server is killed
    start, length = 1 << 20, 4 << 20
    head = (
        f"BITS_POST /d.bin HTTP/1.1\r\nHost: x\r\nBITS-Packet-Type: Fragment\r\n"
        f"BITS-Session-Id: {sid}\r\nContent-Length: {length}\r\n"
        f"Content-Range: bytes {start}-{start + length - 1}/{len(data)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", s.port), 30) as sock:
        sock.sendall(head + data[start : start + (5 << 19)])
        wait_until(lambda: stored.stat().st_size > (1 << 20) + (1 << 19), "bytes on disk")
        s.kill()
    on_disk = stored.stat().st_size
    assert (1 << 20) < on_disk <= start + (5 << 19)
    s.start()
    # Ping, then a fragment from the last acknowledged offset: the answer says what is stored
    assert bits(s.port, "/d.bin", "Ping").status == 200
    a = fragment(s.port, "/d.bin", sid, data[1 << 20 : 2 << 20], 1 << 20, len(data))
    assert a.status == 200
    got = int(a.h("BITS-Received-Content-Range") or 0)
    assert got == max(on_disk, 2 << 20)
    assert stored.read_bytes() == data[:got]
    a = fragment(s.port, "/d.bin", sid, data[got:], got, len(data))
    assert a.status == 200 and a.h("BITS-Received-Content-Range") == str(len(data))
    assert not (base / "root" / "d.bin").exists()
    assert bits(s.port, "/d.bin", "Close-Session", sid).status == 200
    assert (base / "root" / "d.bin").read_bytes() == data


def test_restart_between_fragments(base: Path, servers: list[FerryServer]) -> None:
    s = _server(base, servers)
    sid = create(s.port, "/r")
    assert fragment(s.port, "/r", sid, b"hello ", 0, 11).status == 200
    s.restart()
    a = fragment(s.port, "/r", sid, b"world", 6, 11)
    assert a.status == 200 and a.h("BITS-Received-Content-Range") == "11"
    s.kill()
    s.start()  # the last byte's Ack given, then a crash before Close: Close still works
    assert bits(s.port, "/r", "Close-Session", sid).status == 200
    assert (base / "root" / "r").read_bytes() == b"hello world"


def test_cut_connection_keeps_what_arrived(base: Path, servers: list[FerryServer]) -> None:
    s = _server(base, servers)
    sid = create(s.port, "/c")
    head = (
        f"BITS_POST /c HTTP/1.1\r\nHost: x\r\nBITS-Packet-Type: Fragment\r\n"
        f"BITS-Session-Id: {sid}\r\nContent-Length: 100000\r\n"
        f"Content-Range: bytes 0-99999/100000\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", s.port), 30) as sock:
        sock.sendall(head + b"z" * 40000)
        stored = base / "state" / "sessions" / sid.strip("{}") / "data"
        wait_until(lambda: stored.stat().st_size == 40000, "the partial fragment stored")
    time.sleep(0.2)  # the server sees the connection go
    assert stored.stat().st_size == 40000
    a = fragment(s.port, "/c", sid, b"z" * 100000, 0, 100000)
    assert a.status == 200 and a.h("BITS-Received-Content-Range") == "100000"
    assert s.alive()


def test_damaged_session_is_not_found(base: Path, servers: list[FerryServer]) -> None:
    s = _server(base, servers)
    sid = create(s.port, "/dm")
    (base / "state" / "sessions" / sid.strip("{}") / "meta.json").write_text("{not json")
    a = fragment(s.port, "/dm", sid, b"ab", 0, 2)
    assert a.status == 500 and a.h("BITS-Error-Code") == NOT_FOUND
    assert s.alive()


def test_close_repeated_after_a_crash_in_the_commit(
    base: Path, servers: list[FerryServer]
) -> None:
    """The server died after linking the upload into place but before recording the
    session closed: the client's repeated Close succeeds (the name holds this upload)."""
    s = _server(base, servers)
    sid = create(s.port, "/cc")
    assert fragment(s.port, "/cc", sid, b"committed", 0, 9).status == 200
    s.kill()
    os.link(base / "state" / "sessions" / sid.strip("{}") / "data", base / "root" / "cc")
    s.start()
    assert bits(s.port, "/cc", "Close-Session", sid).status == 200
    assert (base / "root" / "cc").read_bytes() == b"committed"
    assert not [p for p in (base / "root").iterdir() if p.name.startswith(".ferry-")]


def test_overwrite_leaves_no_temporary_names(base: Path, servers: list[FerryServer]) -> None:
    s = _server(base, servers, "--allow-overwrite")
    for content in (b"one", b"two", b"three"):
        upload(s.port, "/ow", content)
        assert (base / "root" / "ow").read_bytes() == content
    assert sorted(p.name for p in (base / "root").iterdir()) == ["ow"]
