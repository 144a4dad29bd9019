"""Scheduling (SPEC §2.4) through a real ferryd: foreground jobs beside full background
slots, the background limit, priority order, pre-emption, round robin among equals, and a
job of many small files whose completions are reported in file order.

Transfers are made slow or held by a server on loopback (harness/faultserver.py)
so states can be observed; every wait has a deadline, nothing asserts on durations.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.faultserver import FaultServer
from harness.ferryd import Daemon

ACTIVE = {"CONNECTING", "TRANSFERRING"}
DEADLINE = 60.0


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as srv:
        yield srv


def start_daemon(base: Path, **daemon: Any) -> Daemon:
    config = base / "ferryd.toml"
    config.write_text("[daemon]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in daemon.items()))
    d = Daemon(base, ["--config", str(config)])
    d.start()
    return d


@pytest.fixture
def daemon_factory(short_tmp: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def make(**daemon: Any) -> Daemon:
        d = start_daemon(short_tmp, **daemon)
        started.append(d)
        return d

    yield make
    for d in started:
        code = d.stop()
        assert code == 0, f"ferryd exited with {code}:\n{d.log()}"


def new_job(d: Daemon, name: str, priority: str, *pairs: tuple[str, Path]) -> str:
    status, job = d.call("POST", "/v1/jobs", {"display_name": name, "priority": priority})
    assert status == 201, job
    files = [{"remote_name": r, "local_name": str(loc)} for r, loc in pairs]
    status, body = d.call("POST", f"/v1/jobs/{job['id']}/files", {"files": files})
    assert status == 200, body
    return str(job["id"])


def resume(d: Daemon, job: str) -> None:
    status, body = d.call("POST", f"/v1/jobs/{job}/resume", {})
    assert status == 200, body


def jobs(d: Daemon) -> dict[str, dict[str, Any]]:
    status, body = d.call("GET", "/v1/jobs")
    assert status == 200, body
    return {j["id"]: j for j in body["jobs"]}


def wait_for(
    d: Daemon, what: str, check: Callable[[dict[str, dict[str, Any]]], bool]
) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + DEADLINE
    while True:
        seen = jobs(d)
        for j in seen.values():
            assert j["state"] not in ("ERROR", "TRANSIENT_ERROR"), (j, d.log())
        if check(seen):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {seen}\n{d.log()}")
        time.sleep(0.02)


def states(seen: dict[str, dict[str, Any]], *ids: str) -> list[str]:
    return [seen[i]["state"] for i in ids]


def complete_and_check(d: Daemon, job: str, expected: dict[Path, bytes]) -> None:
    status, body = d.call("POST", f"/v1/jobs/{job}/complete", {})
    assert status == 200 and body["result"]["code"] == "S_OK", body
    for path, data in expected.items():
        assert path.read_bytes() == data, path


# ---- foreground and the background limit ---------------------------------------------------


def test_foreground_runs_beside_full_background_slots(
    daemon_factory: Callable[..., Daemon], server: FaultServer, dest: Path
) -> None:
    d = daemon_factory(max_background_jobs=2, time_slice=0)
    data = {n: os.urandom(200_000) for n in ("b1", "b2", "b3", "fg")}
    urls = {n: server.add(n, b, pause_after=50_000 if n != "fg" else None) for n, b in data.items()}
    ids = {n: new_job(d, n, "normal", (urls[n], dest / n)) for n in ("b1", "b2", "b3")}
    for n in ("b1", "b2", "b3"):
        resume(d, ids[n])
    # Two background jobs hold the two slots (their servers are paused); the third waits.
    seen = wait_for(
        d,
        "two background jobs transferring",
        lambda s: sum(s[ids[n]]["state"] in ACTIVE for n in ("b1", "b2", "b3")) == 2,
    )
    waiting = next(n for n in ("b1", "b2", "b3") if seen[ids[n]]["state"] == "QUEUED")
    running = [n for n in ("b1", "b2", "b3") if n != waiting]
    # A foreground job starts at once and finishes while the slots stay full.
    ids["fg"] = new_job(d, "fg", "foreground", (urls["fg"], dest / "fg"))
    resume(d, ids["fg"])
    seen = wait_for(d, "the foreground job", lambda s: s[ids["fg"]]["state"] == "TRANSFERRED")
    assert states(seen, *(ids[n] for n in running)) == ["TRANSFERRING"] * 2
    assert seen[ids[waiting]]["state"] == "QUEUED"
    for n in ("b1", "b2", "b3"):
        server.release(n)
    wait_for(d, "everything", lambda s: all(j["state"] == "TRANSFERRED" for j in s.values()))
    for n, job in ids.items():
        complete_and_check(d, job, {dest / n: data[n]})


def test_max_background_jobs_is_respected(
    daemon_factory: Callable[..., Daemon], server: FaultServer, dest: Path
) -> None:
    d = daemon_factory(max_background_jobs=2, time_slice=0)
    data = {f"j{i}": os.urandom(120_000) for i in range(5)}
    ids = {
        n: new_job(d, n, p, (server.add(n, b, rate=400_000), dest / n))
        for (n, b), p in zip(data.items(), ["low", "normal", "high", "normal", "low"], strict=True)
    }
    for job in ids.values():
        resume(d, job)
    most = 0

    def check(seen: dict[str, dict[str, Any]]) -> bool:
        nonlocal most
        active = sum(j["state"] in ACTIVE for j in seen.values())
        assert active <= 2, seen
        most = max(most, active)
        return all(j["state"] == "TRANSFERRED" for j in seen.values())

    wait_for(d, "all five jobs", check)
    assert most >= 1
    assert 1 <= server.max_active <= 2, "one connection per single-file job, two jobs at most"
    for n, job in ids.items():
        complete_and_check(d, job, {dest / n: data[n]})


# ---- priorities ----------------------------------------------------------------------------


def test_background_jobs_start_in_priority_order(
    daemon_factory: Callable[..., Daemon], server: FaultServer, dest: Path
) -> None:
    d = daemon_factory(max_background_jobs=1, time_slice=0)
    blocker_data = os.urandom(100_000)
    blocker = new_job(
        d, "blocker", "high", (server.add("blocker", blocker_data, pause_after=10_000), dest / "b")
    )
    resume(d, blocker)
    wait_for(d, "the blocker", lambda s: s[blocker]["state"] in ACTIVE)
    data = {n: os.urandom(30_000) for n in ("low", "normal", "high")}
    ids = {}
    for n in ("low", "normal", "high"):  # queued lowest first
        ids[n] = new_job(d, n, n, (server.add(n, data[n]), dest / n))
        resume(d, ids[n])
    seen = jobs(d)
    assert states(seen, *ids.values()) == ["QUEUED"] * 3
    server.release("blocker")
    wait_for(d, "all jobs", lambda s: all(j["state"] == "TRANSFERRED" for j in s.values()))
    order = [r.name for r in server.requests if r.name in data]
    assert order == ["high", "normal", "low"], server.requests
    complete_and_check(d, blocker, {dest / "b": blocker_data})
    for n, job in ids.items():
        complete_and_check(d, job, {dest / n: data[n]})


def test_higher_priority_pre_empts_and_the_lower_job_resumes(
    daemon_factory: Callable[..., Daemon], server: FaultServer, dest: Path
) -> None:
    d = daemon_factory(max_background_jobs=1, time_slice=0)
    low_data, high_data = os.urandom(400_000), os.urandom(100_000)
    low = new_job(d, "low", "low", (server.add("low", low_data, pause_after=150_000), dest / "low"))
    resume(d, low)
    deadline = time.monotonic() + DEADLINE
    while not server.paused("low"):  # 150,000 bytes sent; the rest held back
        assert time.monotonic() < deadline, d.log()
        time.sleep(0.02)
    high = new_job(
        d, "high", "high", (server.add("high", high_data, pause_after=20_000), dest / "high")
    )
    resume(d, high)
    # The low job is stopped at a checkpoint and queued again while the high one runs (held
    # by its server until released).
    seen = wait_for(
        d,
        "pre-emption",
        lambda s: s[low]["state"] == "QUEUED" and s[high]["state"] in ACTIVE,
    )
    assert seen[low]["progress"]["bytes_transferred"] == 150_000, "the checkpoint was saved"
    server.release("high")
    wait_for(d, "both jobs", lambda s: states(s, low, high) == ["TRANSFERRED"] * 2)
    # The low job went on from its checkpoint, with a range request.
    assert [r.range for r in server.requests_for("low")] == [None, "bytes=150000-"]
    order = [r.name for r in server.requests]
    assert order == ["low", "high", "low"], server.requests
    complete_and_check(d, low, {dest / "low": low_data})
    complete_and_check(d, high, {dest / "high": high_data})


def test_equal_priorities_share_the_slot_round_robin(
    daemon_factory: Callable[..., Daemon], server: FaultServer, dest: Path
) -> None:
    d = daemon_factory(max_background_jobs=1, time_slice=0.3)
    data = {n: os.urandom(600_000) for n in ("a", "b")}
    ids = {
        n: new_job(d, n, "normal", (server.add(n, data[n], rate=400_000), dest / n)) for n in data
    }
    for job in ids.values():
        resume(d, job)
    most = 0

    def check(seen: dict[str, dict[str, Any]]) -> bool:
        nonlocal most
        active = sum(j["state"] in ACTIVE for j in seen.values())
        assert active <= 1, seen
        most = max(most, active)
        return all(j["state"] == "TRANSFERRED" for j in seen.values())

    wait_for(d, "both jobs", check)
    # Both made progress before either finished: each gave the slot up part-way and came
    # back with a range request, and each started before the other's last request.
    order = [r.name for r in server.requests]
    for me, other in (("a", "b"), ("b", "a")):
        ranges = [r.range for r in server.requests_for(me)]
        assert ranges[0] is None and len(ranges) > 1 and None not in ranges[1:], ranges
        last_of_other = len(order) - 1 - order[::-1].index(other)
        assert order.index(me) < last_of_other, server.requests
    for n, job in ids.items():
        complete_and_check(d, job, {dest / n: data[n]})


def test_stops_and_restarts_in_quick_succession_lose_nothing(
    daemon_factory: Callable[..., Daemon], server: FaultServer, dest: Path
) -> None:
    """Suspend, resume and priority changes while transfers run and rotate: every stop
    waits for the job's task, so a job never runs twice and each run resumes where the
    last one stopped."""
    d = daemon_factory(max_background_jobs=1, time_slice=0.2)
    data = {n: os.urandom(500_000) for n in ("x", "y", "z")}
    ids = {
        n: new_job(d, n, "normal", (server.add(n, b, rate=1_000_000), dest / n))
        for n, b in data.items()
    }
    for job in ids.values():
        resume(d, job)
    priorities = ["high", "low", "normal", "foreground"]
    for i in range(20):
        job = ids[("x", "y", "z")[i % 3]]
        if i % 2:
            status, body = d.call("POST", f"/v1/jobs/{job}/suspend", {})
            assert status == 200, body
            resume(d, job)
        else:
            status, body = d.call("PATCH", f"/v1/jobs/{job}", {"priority": priorities[i % 4]})
            assert status == 200, body
        time.sleep(0.03)
    wait_for(d, "all jobs", lambda s: all(j["state"] == "TRANSFERRED" for j in s.values()))
    for n, job in ids.items():
        complete_and_check(d, job, {dest / n: data[n]})
    # Runs after the first resumed from their checkpoints.
    assert any(r.range is not None for r in server.requests), server.requests


# ---- many small files ----------------------------------------------------------------------


class EventStream:
    """A raw subscription to GET /v1/events (SSE), independent of the client library."""

    def __init__(self, d: Daemon, query: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(DEADLINE)
        self.sock.connect(d.socket)
        self.sock.sendall(f"GET /v1/events?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        self.buf = b""
        while b": ready\n\n" not in self.buf:
            self.buf += self.sock.recv(65536)
        self.buf = self.buf.split(b": ready\n\n", 1)[1]

    def events(self) -> Iterator[tuple[str, dict[str, Any]]]:
        while True:
            while b"\n\n" not in self.buf:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    return
                self.buf += chunk
            block, self.buf = self.buf.split(b"\n\n", 1)
            name, data = "", ""
            for line in block.decode().splitlines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    data += line[6:]
            if name:  # chunked-encoding framing and comments carry no event
                yield name, json.loads(data)

    def close(self) -> None:
        self.sock.close()


def test_many_small_files_complete_in_file_order(
    daemon_factory: Callable[..., Daemon], server: FaultServer, dest: Path
) -> None:
    d = daemon_factory()
    count = 120
    sizes = [1000 + 97 * i for i in range(count)]
    data = [os.urandom(n) for n in sizes]
    # Each response waits a little, so files overlap; one early file is much slower, so
    # the files after it finish first and must wait to be reported.
    pairs = [
        (server.add(f"s{i}", b, delay=0.4 if i == 5 else 0.01), dest / f"s{i}")
        for i, b in enumerate(data)
    ]
    job = new_job(d, "small", "normal", *pairs)
    status, body = d.call("PATCH", f"/v1/jobs/{job}", {"notify_flags": 0x13})
    assert status == 200, body
    stream = EventStream(d, f"job={job}")
    try:
        resume(d, job)
        counts: list[int] = []
        progress: list[int] = []
        prefixes_checked = 0
        for name, event in stream.events():
            if name == "file-transferred":
                counts.append(event["job"]["progress"]["files_transferred"])
                progress.append(event["job"]["progress"]["bytes_transferred"])
                if len(counts) % 10 == 0:
                    # What is completed is always a prefix of the file list.
                    status, files = d.call("GET", f"/v1/jobs/{job}/files")
                    done = [f["completed"] for f in files["files"]]
                    assert done == sorted(done, reverse=True), done
                    prefixes_checked += 1
            elif name == "job-transferred":
                break
            elif name == "job-error":
                raise AssertionError(event)
    finally:
        stream.close()
    # One event per file, in order, with counters that only grow and count whole files.
    assert counts == list(range(1, count + 1)), counts
    assert progress == sorted(progress)
    for k, got in enumerate(progress):
        assert got >= sum(sizes[: k + 1]), (k, got)
    assert prefixes_checked > 0
    assert server.max_active > 1, "small files of one job overlap"
    # Kept-alive connections: far fewer than files.
    assert len(server.peers) <= count // 4, len(server.peers)
    status, body = d.call("GET", f"/v1/jobs/{job}")
    assert body["progress"] == {
        "bytes_total": sum(sizes),
        "bytes_transferred": sum(sizes),
        "files_total": count,
        "files_transferred": count,
    }
    complete_and_check(d, job, {dest / f"s{i}": b for i, b in enumerate(data)})
