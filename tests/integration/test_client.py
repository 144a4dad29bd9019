"""The Python client library (SPEC §7), sync and asyncio, against a real ferryd and real
HTTP servers."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.faultserver import FaultServer
from harness.ferryd import Daemon
from harness.wait import wait_until

import ferry
from ferry import AsyncClient, Client, FerryError, JobState, Priority
from tests.integration.cli_helpers import SlowServer, others_in


@pytest.fixture
def client(ferryd: Daemon) -> Iterator[Client]:
    with Client(ferryd.socket) as c:
        yield c


@pytest.fixture
def slow_server() -> Iterator[SlowServer]:
    server = SlowServer().start()
    yield server
    server.stop()


def test_public_names() -> None:
    for name in (
        "Client",
        "AsyncClient",
        "Job",
        "AsyncJob",
        "Event",
        "JobState",
        "JobType",
        "Priority",
        "ErrorContext",
        "TokenFlags",
        "NotifyFlags",
        "FerryError",
    ):
        assert hasattr(ferry, name), name
    assert ferry.__version__ == "0.1.0"


def test_status_names_the_caller(client: Client) -> None:
    st = client.status()
    assert st["caller"]["uid"] == os.getuid()
    assert st["mode"] == "user"


def test_download_round_trip(client: Client, http_server: FaultServer, dest: Path) -> None:
    payloads = {"a.bin": os.urandom(200_000), "b.bin": os.urandom(1234)}
    job = client.create_job("round trip", priority=Priority.FOREGROUND, description="two files")
    assert isinstance(job, ferry.Job)
    assert job.state is JobState.SUSPENDED
    assert (job.display_name, job.description, job.priority) == (
        "round trip",
        "two files",
        Priority.FOREGROUND,
    )
    job.add_files([(http_server.add(n, b), str(dest / n)) for n, b in payloads.items()])
    assert job.progress["files_total"] == 2
    assert [f.local_name for f in job.files()] == [str(dest / n) for n in payloads]
    job.resume()
    assert job.wait(timeout=60) is JobState.TRANSFERRED
    assert job.progress["bytes_transferred"] == sum(map(len, payloads.values()))
    assert all(f.completed for f in job.files())
    assert not any((dest / n).exists() for n in payloads)  # nothing before complete
    assert job.complete() == "S_OK"
    assert job.data["state"] == "ACKNOWLEDGED"  # refreshed from the answer to complete
    for n, b in payloads.items():
        assert (dest / n).read_bytes() == b
    assert others_in(dest, *payloads) == []


def test_file_url(client: Client, tmp_path: Path, dest: Path) -> None:
    src = tmp_path / "source.bin"
    src.write_bytes(os.urandom(300_000))
    job = client.create_job("file url")
    job.add_file(src.as_uri(), str(dest / "copy.bin"))
    job.resume()
    assert job.wait(60) is JobState.TRANSFERRED
    assert job.complete() == "S_OK"
    assert (dest / "copy.bin").read_bytes() == src.read_bytes()


def test_relative_local_name_is_made_absolute(
    client: Client, http_server: FaultServer, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(dest)
    job = client.create_job("relative")
    job.add_file(http_server.add("r.bin", b"relative"), "r.bin")
    assert job.files()[0].local_name == str(dest / "r.bin")
    job.resume()
    assert job.wait(60) is JobState.TRANSFERRED
    job.complete()
    assert (dest / "r.bin").read_bytes() == b"relative"


@pytest.mark.parametrize("remote", ["ftp://example.org/x", "etc/hostname", "gopher:x"])
def test_bad_remote_is_invalid_arg(client: Client, dest: Path, remote: str) -> None:
    job = client.create_job("bad remote")
    with pytest.raises(FerryError) as e:
        job.add_file(remote, str(dest / "x"))
    assert (e.value.code, e.value.hresult) == ("E_INVALIDARG", 0x80070057)
    assert job.info().progress["files_total"] == 0  # all or none


def test_lookup_by_name_unknown_and_ambiguous(client: Client) -> None:
    job = client.create_job("unique name")
    assert client.get_job("unique name").id == job.id
    assert client.get_job(job.id).display_name == "unique name"
    with pytest.raises(FerryError) as e:
        client.get_job("no such job")
    assert (e.value.code, e.value.hresult) == ("BG_E_NOT_FOUND", 0x80200001)
    client.create_job("twin")
    client.create_job("twin")
    with pytest.raises(FerryError) as e:
        client.get_job("twin")
    assert e.value.code == "BG_E_NOT_FOUND"


def test_jobs_listing_and_equality(client: Client) -> None:
    a = client.create_job("a")
    b = client.create_job("b")
    listed = client.jobs()
    assert a in listed and b in listed
    assert all(isinstance(j, ferry.Job) for j in listed)


def test_state_rules_surface_as_ferry_errors(client: Client, dest: Path) -> None:
    job = client.create_job("empty")
    with pytest.raises(FerryError) as e:
        job.resume()
    assert e.value.code == "BG_E_EMPTY"
    assert job.info().state is JobState.SUSPENDED
    job.cancel()
    assert job.state is JobState.CANCELLED
    with pytest.raises(FerryError) as e:
        job.resume()
    assert e.value.code == "BG_E_INVALID_STATE"


def test_set_properties(client: Client) -> None:
    job = client.create_job("props")
    job.set(
        display_name="renamed",
        description="d",
        priority=Priority.HIGH,
        min_retry_delay=60,
        no_progress_timeout=0,
        notify_flags=ferry.NotifyFlags.JOB_TRANSFERRED | ferry.NotifyFlags.FILE_TRANSFERRED,
        notify_cmdline="/bin/echo 'a b'",
    )
    d = job.info().data
    assert (d["display_name"], d["description"], d["priority"]) == ("renamed", "d", "high")
    assert (d["min_retry_delay"], d["no_progress_timeout"], d["notify_flags"]) == (60, 0, 0x11)
    assert d["notify_cmdline"] == ["/bin/echo", "a b"]
    job.set(notify_cmdline=None)
    assert job.data["notify_cmdline"] is None
    with pytest.raises(FerryError) as e:
        job.set(min_retry_delay=1)
    assert e.value.code == "E_INVALIDARG"
    job.take_ownership()
    assert job.data["owner"]["uid"] == os.getuid()


def test_wait_timeout_is_a_ferry_error(
    client: Client, http_server: FaultServer, dest: Path
) -> None:
    job = client.create_job("never resumed")
    job.add_file(http_server.add("t.bin", b"x"), str(dest / "t.bin"))
    with pytest.raises(FerryError) as e:
        job.wait(timeout=0.3)
    assert e.value.code == "BG_E_WATCHDOG_TIMEOUT"


def test_wait_returns_error_then_resume_recovers(
    client: Client, http_server: FaultServer, dest: Path
) -> None:
    job = client.create_job("404")
    job.add_file(http_server.url("later.bin"), str(dest / "later.bin"))
    job.resume()
    assert job.wait(60) is JobState.ERROR
    assert job.error is not None
    assert (job.error["code"], job.error["hresult"]) == ("BG_E_HTTP_ERROR_404", "0x80190194")
    http_server.add("later.bin", b"now it exists")
    job.resume()
    assert job.wait(60) is JobState.TRANSFERRED
    job.complete()
    assert (dest / "later.bin").read_bytes() == b"now it exists"


def test_events_iterator_sees_transitions(
    client: Client, http_server: FaultServer, dest: Path
) -> None:
    job = client.create_job("watched")
    job.add_file(http_server.add("w.bin", os.urandom(50_000)), str(dest / "w.bin"))
    seen: list[tuple[str, JobState | None]] = []
    with client.events(job.id, all_events=True) as stream:
        job.resume()  # the stream is already subscribed: nothing can be missed
        for ev in stream:
            assert ev.job_id == job.id
            seen.append((ev.type, ev.state))
            if ev.type == "job-transferred":
                break
    assert seen[0] == ("job-snapshot", JobState.SUSPENDED)
    states = [s for _, s in seen]
    assert JobState.QUEUED in states
    order = [JobState.SUSPENDED, JobState.QUEUED, JobState.TRANSFERRED]
    assert [s for s in states if s in order] == sorted(
        (s for s in states if s in order), key=order.index
    )
    assert seen[-1] == ("job-transferred", JobState.TRANSFERRED)
    assert ("file-transferred", JobState.TRANSFERRED) in seen


def test_all_events_stream_starts_with_snapshots(client: Client) -> None:
    a = client.create_job("snap a")
    b = client.create_job("snap b")
    with client.events() as stream:
        first = {next(stream).job_id, next(stream).job_id}
    assert first == {a.id, b.id}


def test_cancel_leaves_no_temporary_file_and_keeps_local_name(
    client: Client, slow_server: SlowServer, dest: Path
) -> None:
    local = dest / "target.bin"
    local.write_bytes(b"old content")
    job = client.create_job("to cancel", priority=Priority.FOREGROUND)
    job.add_file(slow_server.url("c"), str(local))
    job.resume()
    wait_until(lambda: others_in(dest, "target.bin") != [], what="the temporary file")
    job.cancel()
    assert job.state is JobState.CANCELLED
    slow_server.release()
    assert others_in(dest, "target.bin") == []
    assert local.read_bytes() == b"old content"


def test_partial_complete(
    client: Client, slow_server: SlowServer, http_server: FaultServer, dest: Path
) -> None:
    job = client.create_job("partial", priority=Priority.FOREGROUND)
    job.add_files(
        [
            (http_server.add("quick.bin", b"quick"), str(dest / "quick.bin")),
            (slow_server.url("p"), str(dest / "slow.bin")),
        ]
    )
    job.resume()
    wait_until(lambda: job.info().progress["files_transferred"] == 1, what="the first file")
    assert job.complete() == "BG_S_PARTIAL_COMPLETE"
    slow_server.release()
    assert (dest / "quick.bin").read_bytes() == b"quick"
    assert others_in(dest, "quick.bin") == []


def test_daemon_not_running(tmp_path: Path) -> None:
    path = str(tmp_path / "nobody.sock")
    with Client(path) as c, pytest.raises(FerryError) as e:
        c.create_job("x")
    assert e.value.code == "E_FAIL"
    assert f"ferryd is not running at {path}" in e.value.message


def test_client_survives_daemon_restart(client: Client, ferryd: Daemon) -> None:
    job = client.create_job("persistent")
    ferryd.restart()
    # The kept-alive connection died with the old daemon; the client reconnects once.
    assert client.get_job(job.id).display_name == "persistent"


def test_wait_rides_out_a_restart(
    client: Client, ferryd: Daemon, http_server: FaultServer, dest: Path
) -> None:
    job = client.create_job("across restart")
    job.add_file(http_server.add("x.bin", os.urandom(10_000)), str(dest / "x.bin"))
    result: list[JobState | BaseException] = []

    other = Client(ferryd.socket)
    same_job = other.get_job(job.id)

    def waiter() -> None:
        try:
            result.append(same_job.wait(timeout=60))
        except BaseException as e:  # reported below
            result.append(e)

    t = threading.Thread(target=waiter)
    t.start()
    ferryd.restart()
    job.resume()
    t.join(90)
    other.close()
    assert result == [JobState.TRANSFERRED]


# ---- asyncio --------------------------------------------------------------------------------


async def test_async_client_same_surface(
    ferryd: Daemon, http_server: FaultServer, dest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(dest)
    async with AsyncClient(ferryd.socket) as c:
        assert (await c.status())["caller"]["uid"] == os.getuid()
        job = await c.create_job("async job", priority=Priority.FOREGROUND)
        assert isinstance(job, ferry.AsyncJob)
        data = os.urandom(70_000)
        await job.add_file(http_server.add("async.bin", data), "async.bin")
        await job.add_files([(http_server.add("two.bin", b"2"), str(dest / "two.bin"))])
        assert [f.local_name for f in await job.files()] == [
            str(dest / "async.bin"),
            str(dest / "two.bin"),
        ]
        assert (await c.get_job("async job")).id == job.id
        assert job in await c.jobs()
        await job.set(description="via asyncio")
        assert (await job.info()).description == "via asyncio"
        await job.suspend()
        await job.take_ownership()
        with pytest.raises(FerryError) as e:
            await job.wait(timeout=0.2)
        assert e.value.code == "BG_E_WATCHDOG_TIMEOUT"

        states: list[JobState | None] = []
        async with c.events(job.id) as stream:
            await job.resume()
            async for ev in stream:
                states.append(ev.state)
                if ev.state is JobState.TRANSFERRED:
                    break
        assert states[0] is JobState.SUSPENDED and states[-1] is JobState.TRANSFERRED
        assert await job.wait(30) is JobState.TRANSFERRED
        assert await job.complete() == "S_OK"
        assert (dest / "async.bin").read_bytes() == data

        with pytest.raises(FerryError) as e:
            await c.get_job("no such job")
        assert e.value.code == "BG_E_NOT_FOUND"
        cancelled = await c.create_job("async cancel")
        await cancelled.cancel()
        assert cancelled.state is JobState.CANCELLED


async def test_async_daemon_not_running(tmp_path: Path) -> None:
    async with AsyncClient(str(tmp_path / "none.sock")) as c:
        with pytest.raises(FerryError) as e:
            await c.jobs()
    assert e.value.code == "E_FAIL" and "ferryd is not running" in e.value.message
