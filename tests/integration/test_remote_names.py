"""Changing remote names (SPEC §11, IBackgroundCopyFile2::SetRemoteName) against a real
ferryd and a fault server whose URLs expire: the swap keeps the partial data when the new URL
serves the same bytes with the same validator, and starts over when it serves others."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.faultserver import FaultServer, Status
from harness.ferryd import Daemon
from harness.wait import wait_until

from ferry import AsyncClient, Client, FerryError, Job, JobState
from tests.integration.api_schema import assert_valid
from tests.integration.cli_helpers import run_ferry

SIZE = 300_000
HEAD = 100_000


@pytest.fixture
def client(ferryd: Daemon) -> Iterator[Client]:
    with Client(ferryd.socket) as c:
        yield c


def _expired(
    client: Client, server: FaultServer, dest: Path, data: bytes, **kw: Any
) -> tuple[Job, int]:
    """A job whose one file got some bytes from ``/f/old`` before the URL expired (the
    transfer was interrupted, and the next request was answered 403): the job is in ERROR.
    Returns the job and how many bytes it kept."""
    old = server.add("old", data, pause_after=HEAD, **kw)
    job = client.create_job("expiring")
    job.add_file(old, str(dest / "out.bin"))
    job.resume()
    wait_until(lambda: server.paused("old"), "the transfer to pause")
    time.sleep(0.3)  # ferryd takes in what was sent
    job.suspend()
    server.script["old"] = [Status(403)]
    server.release("old")
    job.resume()
    wait_until(lambda: job.info().state is JobState.ERROR, "the URL to expire")
    assert job.data["error"]["code"] == "BG_E_HTTP_ERROR_403"
    (f,) = job.files()
    kept = f.data["bytes_transferred"]
    assert 0 < kept <= HEAD
    return job, kept


def _finish(job: Job) -> None:
    job.resume()
    wait_until(
        lambda: job.info().state in (JobState.TRANSFERRED, JobState.ERROR), "the transfer"
    )
    assert job.state is JobState.TRANSFERRED, job.data
    assert job.complete() == "S_OK"


def test_swap_keeps_partial_data_when_the_new_url_serves_the_same_file(
    client: Client, http_server: FaultServer, dest: Path
) -> None:
    data = os.urandom(SIZE)
    job, kept = _expired(client, http_server, dest, data, etag='"v1"')
    new = http_server.add("new", data, etag='"v1"')
    job.set_remote_name(0, new)
    assert_valid("Job", job.data)
    (f,) = job.files()
    assert f.data["remote_name"] == new
    assert f.data["bytes_transferred"] == kept  # nothing is discarded yet
    assert f.data["final_url"] is None  # the old URL's redirect target is forgotten
    _finish(job)
    ranges = [s.range for s in http_server.requests_for("new")]
    assert ranges == [f"bytes={kept}-"]  # it resumed where the old URL stopped
    assert (dest / "out.bin").read_bytes() == data


def test_swap_starts_over_when_the_new_url_serves_another_file(
    client: Client, http_server: FaultServer, dest: Path
) -> None:
    job, kept = _expired(client, http_server, dest, os.urandom(SIZE), etag='"v1"')
    other = os.urandom(SIZE + 5)
    new = http_server.add("new", other, etag='"v2"')
    job.set_remote_name(0, new)
    _finish(job)
    # It asked to resume; the server's answer (the whole file: If-Range did not match)
    # started the file over instead of failing it with BG_E_REMOTE_FILE_CHANGED.
    assert [s.range for s in http_server.requests_for("new")] == [f"bytes={kept}-", None]
    assert (dest / "out.bin").read_bytes() == other


def test_swap_to_a_server_without_ranges_starts_over(
    client: Client, http_server: FaultServer, dest: Path
) -> None:
    job, kept = _expired(client, http_server, dest, os.urandom(SIZE), etag='"v1"')
    other = os.urandom(SIZE)
    new = http_server.add("new", other, etag='"v1"', ranges=False)
    job.set_remote_name(0, new)
    _finish(job)
    assert (dest / "out.bin").read_bytes() == other


def test_swap_while_transferring_stops_changes_and_requeues(
    client: Client, http_server: FaultServer, dest: Path
) -> None:
    first = os.urandom(SIZE)
    old = http_server.add("old", first, pause_after=HEAD)
    job = client.create_job("moving")
    job.add_file(old, str(dest / "out.bin"))
    job.resume()
    wait_until(lambda: http_server.paused("old"), "the transfer to pause")
    other = os.urandom(SIZE)
    new = http_server.add("new", other)
    job.set_remote_name(0, new)
    assert job.state in (JobState.QUEUED, JobState.CONNECTING, JobState.TRANSFERRING)
    wait_until(lambda: job.info().state is JobState.TRANSFERRED, "the new transfer")
    assert job.complete() == "S_OK"
    assert (dest / "out.bin").read_bytes() == other
    http_server.release()


def test_set_remote_name_refusals_change_nothing(
    client: Client, http_server: FaultServer, dest: Path
) -> None:
    url = http_server.add("a", b"x" * 10)
    job = client.create_job("refusals")
    job.add_file(url, str(dest / "a"))
    cases = [
        (0, "ftp://host/x", "E_INVALIDARG"),
        (0, "not a url", "E_INVALIDARG"),
        (1, http_server.url("b"), "E_INVALIDARG"),
    ]
    for index, remote, code in cases:
        with pytest.raises(FerryError) as exc:
            job.set_remote_name(index, remote)
        assert exc.value.code == code, (index, remote, exc.value)
    assert job.files()[0].data["remote_name"] == url

    # A transferred file's remote name is final.
    job.resume()
    wait_until(lambda: job.info().state is JobState.TRANSFERRED, "the transfer")
    with pytest.raises(FerryError) as exc:
        job.set_remote_name(0, http_server.url("b"))
    assert exc.value.code == "BG_E_INVALID_STATE"
    # A final job refuses.
    job.complete()
    with pytest.raises(FerryError) as exc:
        job.set_remote_name(0, http_server.url("b"))
    assert exc.value.code == "BG_E_INVALID_STATE"

    up = client.create_job("up", type="upload")
    (dest / "a").write_bytes(b"a")  # an upload's local file must exist
    up.add_file(http_server.url("up"), str(dest / "a"))
    with pytest.raises(FerryError) as exc:
        up.set_remote_name(0, http_server.url("other"))
    assert exc.value.code == "E_NOTIMPL"
    assert up.files()[0].data["remote_name"] == http_server.url("up")
    up.cancel()


def test_cli_set_remote(ferryd: Daemon, http_server: FaultServer, dest: Path) -> None:
    url = http_server.add("a", b"x" * 10)
    new = http_server.add("b", b"y" * 10)
    assert run_ferry("create", "j", socket=ferryd.socket).returncode == 0
    assert run_ferry("add", "j", url, str(dest / "a"), socket=ferryd.socket).returncode == 0
    r = run_ferry("set-remote", "j", "0", new, socket=ferryd.socket)
    assert r.returncode == 0, r
    assert r.json["display_name"] == "j"
    r = run_ferry("files", "j", socket=ferryd.socket)
    assert [f["remote_name"] for f in r.json] == [new]
    r = run_ferry("set-remote", "j", "3", new, socket=ferryd.socket)
    assert r.returncode == 1 and r.json["error"]["code"] == "E_INVALIDARG", r
    r = run_ferry("set-remote", "j", "0", new, socket=ferryd.socket, json_mode=False)
    assert r.returncode == 0 and "now comes from" in r.stdout, r


async def test_async_client_set_remote_name(
    ferryd: Daemon, http_server: FaultServer, dest: Path
) -> None:
    url, new = http_server.add("a", b"x" * 10), http_server.add("b", b"y" * 10)
    async with AsyncClient(ferryd.socket) as c:
        job = await c.create_job("async remote")
        await job.add_file(url, str(dest / "a"))
        await job.set_remote_name(0, new)
        assert [f.remote_name for f in await job.files()] == [new]
        with pytest.raises(FerryError) as exc:
            await job.set_remote_name(0, "gopher://h/x")
        assert exc.value.code == "E_INVALIDARG"
        await job.cancel()


# ---- ReplaceRemotePrefix ---------------------------------------------------------------


def test_replace_prefix_swaps_an_expired_url_and_keeps_the_data(
    client: Client, http_server: FaultServer, dest: Path
) -> None:
    data = os.urandom(SIZE)
    job, kept = _expired(client, http_server, dest, data, etag='"v1"')
    http_server.add("new", data, etag='"v1"')
    assert job.replace_remote_prefix(http_server.url("old"), http_server.url("new")) == "S_OK"
    assert_valid("Job", job.data)
    assert [f.remote_name for f in job.files()] == [http_server.url("new")]
    _finish(job)
    assert [s.range for s in http_server.requests_for("new")] == [f"bytes={kept}-"]
    assert (dest / "out.bin").read_bytes() == data


def test_replace_prefix_all_or_nothing(
    client: Client, http_server: FaultServer, dest: Path
) -> None:
    job = client.create_job("prefix")
    names = ["http://h.example/a?x=1", "http://h.example/b", "https://h.example/c"]
    job.add_files([(n, str(dest / str(i))) for i, n in enumerate(names)])
    before = [f.data for f in job.files()]
    # No match (case-sensitive): S_FALSE, nothing changes.
    assert job.replace_remote_prefix("HTTP://h.example/", "http://m.example/") == "S_FALSE"
    # One resulting name is invalid (a file URL has no query): nothing changes.
    for old, new, code in [
        ("http://h.example/", "file:///srv/", "E_INVALIDARG"),
        ("", "http://m.example/", "E_INVALIDARG"),
        ("http://h.example/", "", "E_INVALIDARG"),
        ("http://h.example/", "http://m.example/" + "x" * 9000, "BG_E_STRING_TOO_LONG"),
    ]:
        with pytest.raises(FerryError) as exc:
            job.replace_remote_prefix(old, new)
        assert exc.value.code == code, (old, new, exc.value)
    assert [f.data for f in job.files()] == before
    assert job.replace_remote_prefix("http://h.example/", "https://m.example/") == "S_OK"
    assert [f.remote_name for f in job.files()] == [
        "https://m.example/a?x=1",
        "https://m.example/b",
        "https://h.example/c",
    ]
    up = client.create_job("up", type="upload")
    (dest / "up").write_bytes(b"u")
    up.add_file("http://h.example/up", str(dest / "up"))
    with pytest.raises(FerryError) as exc:
        up.replace_remote_prefix("http://", "https://")
    assert exc.value.code == "E_NOTIMPL"
    job.cancel()
    up.cancel()
    with pytest.raises(FerryError) as exc:
        job.replace_remote_prefix("http://", "https://")
    assert exc.value.code == "BG_E_INVALID_STATE"


def test_cli_replace_remote_prefix(ferryd: Daemon, dest: Path) -> None:
    s = ferryd.socket
    assert run_ferry("create", "j", socket=s).returncode == 0
    r = run_ferry("add", "j", "http://h.example/a", str(dest / "a"), socket=s)
    assert r.returncode == 0, r
    r = run_ferry("replace-remote-prefix", "j", "http://h.example/", "https://m.example/", socket=s)
    assert r.returncode == 0, r
    assert r.json["result"] == {"code": "S_OK", "hresult": "0x00000000"}
    assert_valid("ActionResult", r.json)
    r = run_ferry("replace-remote-prefix", "j", "http://h.example/", "https://x/", socket=s)
    assert r.returncode == 0 and r.json["result"] == {"code": "S_FALSE", "hresult": "0x00000001"}
    r = run_ferry("replace-remote-prefix", "j", "https://", "ftp://", socket=s)
    assert r.returncode == 1 and r.json["error"]["code"] == "E_INVALIDARG", r
    r = run_ferry("files", "j", socket=s)
    assert [f["remote_name"] for f in r.json] == ["https://m.example/a"]
    r = run_ferry("replace-remote-prefix", "j", "x", "y", socket=s, json_mode=False)
    assert r.returncode == 0 and "S_FALSE" in r.stdout, r


async def test_async_client_replace_remote_prefix(ferryd: Daemon, dest: Path) -> None:
    async with AsyncClient(ferryd.socket) as c:
        job = await c.create_job("async prefix")
        await job.add_file("http://h.example/a", str(dest / "a"))
        assert await job.replace_remote_prefix("http://h.", "https://m.") == "S_OK"
        assert [f.remote_name for f in await job.files()] == ["https://m.example/a"]
        assert await job.replace_remote_prefix("http://h.", "https://m.") == "S_FALSE"
        await job.cancel()


# ---- a plain absolute path as a remote name ----------------------------------------------


def test_cli_plain_path_remote_is_a_file_url(ferryd: Daemon, tmp_path: Path, dest: Path) -> None:
    src_dir = tmp_path / "src dir"
    src_dir.mkdir()
    src = src_dir / "a?#%.bin"
    data = os.urandom(70_000)
    src.write_bytes(data)
    s = ferryd.socket
    assert run_ferry("create", "plain", socket=s).returncode == 0
    r = run_ferry("add", "plain", str(src), str(dest / "a"), socket=s)
    assert r.returncode == 0, r
    (f,) = run_ferry("files", "plain", socket=s).json
    assert f["remote_name"] == f"file://{src_dir.as_posix().replace(' ', '%20')}/a%3F%23%25.bin"
    assert run_ferry("resume", "plain", socket=s).returncode == 0
    r = run_ferry("wait", "plain", "--timeout", "30", socket=s)
    assert r.returncode == 0 and r.json["state"] == "TRANSFERRED", r
    assert run_ferry("complete", "plain", socket=s).returncode == 0
    assert (dest / "a").read_bytes() == data
    # set-remote takes a plain path too; a relative one is no remote name.
    assert run_ferry("create", "plain2", socket=s).returncode == 0
    r = run_ferry("add", "plain2", "http://h.example/x", str(dest / "b"), socket=s)
    assert r.returncode == 0, r
    r = run_ferry("set-remote", "plain2", "0", str(src), socket=s)
    assert r.returncode == 0, r
    assert run_ferry("files", "plain2", socket=s).json[0]["remote_name"].startswith("file:///")
    r = run_ferry("set-remote", "plain2", "0", "relative/path", socket=s)
    assert r.returncode == 1 and r.json["error"]["code"] == "E_INVALIDARG", r
