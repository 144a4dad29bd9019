"""Ranges (SPEC §11, IBackgroundCopyJob3::AddFileWithRanges) against a real ferryd and the
fault server: only the ranges are fetched, each into the local file at its own offset; bad
ranges are refused with their BITS codes and change nothing; a server without ranges and a
range past the end fail the job; a ``kill -9`` of ferryd mid-range resumes inside the range."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.faultserver import FaultServer
from harness.ferryd import Daemon
from harness.wait import wait_until

from ferry import AsyncClient, Client, FerryError, Job, JobState
from tests.integration.api_schema import assert_valid
from tests.integration.cli_helpers import Cli

SIZE = 1_000_000


@pytest.fixture
def client(ferryd: Daemon) -> Iterator[Client]:
    with Client(ferryd.socket) as c:
        yield c


def _expected(data: bytes, ranges: list[tuple[int, int | None]]) -> bytes:
    out = bytearray(len(data))
    for offset, length in ranges:
        end = len(data) if length is None else offset + length
        out[offset:end] = data[offset:end]
    return bytes(out)


def _done(job: Job) -> JobState:
    wait_until(lambda: job.info().state in (JobState.TRANSFERRED, JobState.ERROR), "the transfer")
    return job.state


def test_cli_fetches_only_the_ranges_at_their_offsets(
    ferryd: Daemon, http_server: FaultServer, dest: Path
) -> None:
    data = os.urandom(SIZE)
    url = http_server.add("img", data, etag='"r1"')
    cli = Cli(ferryd.socket)
    job = cli.ok("create", "parts")["id"]
    out = dest / "img.bin"
    # Given out of order: ferryd sorts them.
    added = cli.ok("add", job, url, str(out), "--ranges", "900000:eof,100:200,5000:1000")
    assert_valid("Job", added)
    assert added["progress"]["bytes_total"] is None  # the eof range's length is not known yet
    files = cli.ok("files", job)
    assert files[0]["ranges"] == [
        {"offset": 100, "length": 200},
        {"offset": 5000, "length": 1000},
        {"offset": 900000, "length": "eof"},
    ]
    assert_valid("File", files[0])
    cli.ok("resume", job)
    with Client(ferryd.socket) as c:
        j = c.get_job(job)
        assert _done(j) is JobState.TRANSFERRED, j.data
        assert j.progress["bytes_total"] == 200 + 1000 + 100_000
        assert j.progress["bytes_transferred"] == j.progress["bytes_total"]
    assert cli.ok("complete", job)["result"]["code"] == "S_OK"
    got = out.read_bytes()
    assert len(got) == SIZE  # the remote file's size; the rest are holes
    assert got == _expected(data, [(100, 200), (5000, 1000), (900000, None)])
    asked = [s.range for s in http_server.requests_for("img")]
    # Once the first answer gave the file's size, the eof range is asked for exactly.
    assert asked == ["bytes=100-299", "bytes=5000-5999", "bytes=900000-999999"]
    assert http_server.bytes_served()["img"] == 101_200  # nothing else was fetched
    human = cli("files", job, json=False)
    assert human.returncode == 0 and "ranges 100:200,5000:1000,900000:eof" in human.stdout


def test_library_sync_and_asyncio(
    ferryd: Daemon, client: Client, http_server: FaultServer, dest: Path
) -> None:
    data = os.urandom(SIZE)
    url = http_server.add("lib", data)
    job = client.create_job("sync")
    job.add_file(url, str(dest / "a"), ranges=[(10, 90), (500_000, None)])
    (f,) = job.files()
    assert f.ranges == [(10, 90), (500_000, None)]
    job.resume()
    assert _done(job) is JobState.TRANSFERRED, job.data
    job.complete()
    assert (dest / "a").read_bytes() == _expected(data, [(10, 90), (500_000, None)])

    async def aio() -> None:
        async with AsyncClient(ferryd.socket) as ac:
            aj = await ac.create_job("aio")
            await aj.add_file(url, str(dest / "b"), ranges="0:16,999984:16")
            (af,) = await aj.files()
            assert af.ranges == [(0, 16), (999_984, 16)]
            assert aj.progress["bytes_total"] == 32
            await aj.resume()
            await aj.wait(timeout=60)
            await aj.complete()

    asyncio.run(aio())
    assert (dest / "b").read_bytes() == _expected(data, [(0, 16), (999_984, 16)])


@pytest.mark.parametrize(
    ("ranges", "code"),
    [
        ("0:100,50:10", "BG_E_OVERLAPPING_RANGES"),
        ("0:100,0:100", "BG_E_OVERLAPPING_RANGES"),
        ("0:eof,500:10", "BG_E_OVERLAPPING_RANGES"),
        ("10:0", "BG_E_INVALID_RANGE"),
        ("-1:10", "BG_E_INVALID_RANGE"),
        ("18446744073709551615:10", "BG_E_INVALID_RANGE"),
        ("10", "E_INVALIDARG"),
        ("a:b", "E_INVALIDARG"),
    ],
)
def test_bad_ranges_are_refused_and_change_nothing(
    ferryd: Daemon, http_server: FaultServer, dest: Path, ranges: str, code: str
) -> None:
    url = http_server.add("x", b"x" * 1000)
    cli = Cli(ferryd.socket)
    job = cli.ok("create", "bad")["id"]
    r = cli("add", job, url, str(dest / "x"), "--ranges", ranges)
    assert r.returncode != 0 and code in r.stderr, r
    assert cli.ok("files", job) == []


def test_api_refusals(client: Client, http_server: FaultServer, dest: Path) -> None:
    url = http_server.add("y", b"y" * 1000)
    job = client.create_job("api")
    with pytest.raises(FerryError) as e:
        job.add_files([(url, str(dest / "y"), "0" * 64, "0:10")])
    assert e.value.code == "E_INVALIDARG"  # a digest is of a whole file
    with pytest.raises(FerryError) as e:
        job.add_files([(url, str(dest / "y"), None, [])])
    assert e.value.code == "E_INVALIDARG"
    assert job.files() == []


def test_range_past_the_end_fails_the_job(
    client: Client, http_server: FaultServer, dest: Path
) -> None:
    url = http_server.add("short", b"s" * 1000)
    for name, ranges in (("a", "10:10,2000:10"), ("b", "10:10,990:20")):
        job = client.create_job(name)
        job.add_file(url, str(dest / name), ranges=ranges)
        job.resume()
        assert _done(job) is JobState.ERROR
        assert job.data["error"]["code"] == "BG_E_INVALID_RANGE", job.data
        job.cancel()


def test_server_without_range_support(client: Client, http_server: FaultServer, dest: Path) -> None:
    url = http_server.add("whole", b"w" * 5000, ranges=False)
    job = client.create_job("noranges")
    job.add_file(url, str(dest / "w"), ranges="0:10")
    job.resume()
    assert _done(job) is JobState.ERROR
    assert job.data["error"]["code"] == "BG_E_INSUFFICIENT_RANGE_SUPPORT", job.data
    assert job.data["error"]["hresult"] == "0x80200013"


def test_file_url_ranges(client: Client, tmp_path: Path, dest: Path) -> None:
    data = os.urandom(100_000)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    job = client.create_job("local")
    job.add_file(str(src), str(dest / "l"), ranges="1:2,50000:eof")
    job.resume()
    assert _done(job) is JobState.TRANSFERRED, job.data
    job.complete()
    assert (dest / "l").read_bytes() == _expected(data, [(1, 2), (50_000, None)])


def test_resume_mid_range_after_kill_9(ferryd: Daemon, dest: Path) -> None:
    data = os.urandom(3_000_000)
    with FaultServer(rate=400_000) as server:
        url = server.add("slow", data, etag='"k1"')
        ranges = [(1000, 200), (1_000_000, 1_500_000), (2_900_000, None)]
        with Client(ferryd.socket) as c:
            job = c.create_job("crash")
            job.add_file(url, str(dest / "k"), ranges=ranges)
            job.resume()
            # Inside the big second range, past a checkpoint.
            wait_until(
                lambda: job.info().progress["bytes_transferred"] > 600_000, "a checkpoint", 60
            )
        ferryd.kill()
        ferryd.start()
        with Client(ferryd.socket) as c:
            job = c.get_job(job.id)
            kept = job.progress["bytes_transferred"]
            assert 200 < kept < 1_500_200
            assert _done(job) is JobState.TRANSFERRED, job.data
            job.complete()
        asked = [s.range for s in server.requests_for("slow")]
        assert asked[0] == "bytes=1000-1199" and asked[1] == "bytes=1000000-2499999"
        resumed = [r for r in asked[2:] if r.startswith("bytes=1") or r.startswith("bytes=2")]
        start = int(resumed[0].removeprefix("bytes=").split("-")[0])
        assert 1_000_000 < start < 2_500_000, asked  # inside the range, not from its start
        assert resumed[0].endswith("-2499999") and asked[-1] == "bytes=2900000-2999999"
    got = (dest / "k").read_bytes()
    assert got == _expected(data, ranges)
    time.sleep(0)
