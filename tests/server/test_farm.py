"""A server farm: two real ferry-server processes sharing one state directory, each with its
own --host-id. A session created on one continues on either (the client pinned by
BITS-Host-Id, or fallen back to the origin), one request at a time."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from harness.upserver import FerryServer, bits, create, fragment


def _farm(base: Path, servers: list[FerryServer]) -> tuple[FerryServer, FerryServer]:
    a = FerryServer(
        base / "root",
        ["--host-id", "host-a", "--host-id-fallback-timeout", "30"],
        state_dir=base / "state",
    ).start()
    servers.append(a)
    b = FerryServer(base / "root", ["--host-id", "host-b"], state_dir=base / "state").start()
    servers.append(b)
    return a, b


def test_host_id_headers(base: Path, servers: list[FerryServer]) -> None:
    a, b = _farm(base, servers)
    ans = bits(a.port, "/x", "Create-Session")
    assert ans.h("BITS-Host-Id") == "host-a"
    assert ans.h("BITS-Host-Id-Fallback-Timeout") == "30"
    ans = bits(b.port, "/x", "Create-Session")
    assert ans.h("BITS-Host-Id") == "host-b"
    assert ans.h("BITS-Host-Id-Fallback-Timeout") is None


def test_session_moves_between_hosts(base: Path, servers: list[FerryServer]) -> None:
    a, b = _farm(base, servers)
    data = os.urandom(300_000)
    sid = create(a.port, "/farm.bin")
    off = 0
    for i, step in enumerate(range(0, len(data), 50_000)):
        host = (a, b)[i % 2]
        ans = fragment(host.port, "/farm.bin", sid, data[step : step + 50_000], step, len(data))
        assert ans.status == 200, ans.headers
        off = int(ans.h("BITS-Received-Content-Range") or 0)
    assert off == len(data)
    # host a is gone (the pinned host fails): the client falls back, the session is there
    a.kill()
    ans = fragment(b.port, "/farm.bin", sid, data[-10:], len(data) - 10, len(data))
    assert ans.status == 200 and ans.h("BITS-Received-Content-Range") == str(len(data))
    assert bits(b.port, "/farm.bin", "Close-Session", sid).status == 200
    assert (base / "root" / "farm.bin").read_bytes() == data


def test_concurrent_requests_on_both_hosts(base: Path, servers: list[FerryServer]) -> None:
    """The same fragments sent to both hosts at once (a client retrying on the origin while
    its first try still runs on the host): the session lock keeps the data whole."""
    a, b = _farm(base, servers)
    data = os.urandom(2 << 20)
    sid = create(a.port, "/c.bin")
    chunk = 256 << 10
    for start in range(0, len(data), chunk):
        answers: list[int] = []

        def send(port: int, start: int = start, answers: list[int] = answers) -> None:
            ans = fragment(port, "/c.bin", sid, data[start : start + chunk], start, len(data))
            answers.append(ans.status)

        threads = [threading.Thread(target=send, args=(p,)) for p in (a.port, b.port)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert answers == [200, 200]
    assert bits(b.port, "/c.bin", "Close-Session", sid).status == 200
    assert (base / "root" / "c.bin").read_bytes() == data


def test_cancel_on_one_host_is_seen_by_the_other(base: Path, servers: list[FerryServer]) -> None:
    a, b = _farm(base, servers)
    sid = create(a.port, "/k")
    assert fragment(a.port, "/k", sid, b"abc", 0, 6).status == 200
    assert bits(b.port, "/k", "Cancel-Session", sid).status == 200
    ans = fragment(a.port, "/k", sid, b"def", 3, 6)
    assert ans.status == 500 and ans.h("BITS-Error-Code") == "0x8020001F"
