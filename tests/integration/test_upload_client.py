"""Upload and upload-reply jobs (SPEC §9) through a real ferryd against a deliberately odd
BITS server (tests/helpers/oddbits.py): mixed-case packet types, no session id on Acks,
BITS-Error instead of BITS-Error-Code, 201 for Create-Session, 413 on big fragments,
connections dropped mid-fragment, sessions forgotten, application errors, a farm host."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.ferryd import Daemon, api_call
from harness.wait import wait_state, wait_until

from ferry import Client, FerryError, JobState
from tests.helpers.oddbits import OddBitsServer
from tests.integration.api_schema import assert_response, assert_valid
from tests.integration.cli_helpers import run_ferry

CONFIG = "[daemon]\nupload_fragment_size = 65536\nupload_retries = 6\n"


@pytest.fixture
def ferryd(short_tmp: Path) -> Iterator[Daemon]:
    daemon = Daemon(short_tmp, config=CONFIG)
    daemon.start()
    yield daemon
    code = daemon.stop()
    assert code == 0, f"ferryd exited with {code}:\n{daemon.log()}"


@pytest.fixture
def client(ferryd: Daemon) -> Iterator[Client]:
    with Client(ferryd.socket) as c:
        yield c


@pytest.fixture
def odd() -> Iterator[OddBitsServer]:
    server = OddBitsServer()
    server.start()
    yield server
    server.stop()


def _file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def _upload(client: Client, odd: OddBitsServer, src: Path, name: str = "up", **kw: object):
    job = client.create_job(name, type=kw.pop("type", "upload"))  # type: ignore[arg-type]
    job.add_file(odd.url(name), str(src))
    job.resume()
    return job


@pytest.mark.parametrize("size", [0, 1, 5 * 1024, 200_000])
def test_upload_to_an_odd_server(
    ferryd: Daemon, client: Client, odd: OddBitsServer, tmp_path: Path, size: int
) -> None:
    data = _file(tmp_path / "src", size)
    job = _upload(client, odd, tmp_path / "src")
    body = wait_state(ferryd, job.id, "TRANSFERRED", "ERROR")
    assert body["state"] == "TRANSFERRED", (body["error"], ferryd.log())
    assert body["progress"]["bytes_total"] == size == body["progress"]["bytes_transferred"]
    assert body["reply"] is None
    assert_valid("Job", body)
    assert "up" not in odd.published  # nothing visible before Close-Session
    code = job.complete()
    assert code == "S_OK"
    assert odd.published["up"] == data
    assert job.state is JobState.ACKNOWLEDGED
    assert odd.count("Close-Session") == 1 and not odd.sessions
    # Windows's spelling on the wire.
    assert {p[2]["BITS-Packet-Type"] for p in odd.packets} >= {"Create-Session", "Fragment"}


def test_413_shrinks_fragments_and_drops_resume(
    ferryd: Daemon, client: Client, odd: OddBitsServer, tmp_path: Path
) -> None:
    odd.max_fragment = 20_000
    odd.drop_at = [7000, 100, 15_000]
    data = _file(tmp_path / "src", 300_000)
    job = _upload(client, odd, tmp_path / "src")
    body = wait_state(ferryd, job.id, "TRANSFERRED", "ERROR", timeout=60)
    assert body["state"] == "TRANSFERRED", body
    job.complete()
    assert odd.published["up"] == data
    sizes = [int(p[2]["Content-Length"]) for p in odd.packets if p[0] == "fragment"]
    assert max(sizes[-5:]) <= 20_000 and min(sizes[:-1]) >= 5 * 1024
    assert odd.count("ping") >= 3  # a drop is followed by a Ping


def test_413_at_the_smallest_fragment_fails(
    ferryd: Daemon, client: Client, odd: OddBitsServer, tmp_path: Path
) -> None:
    odd.max_fragment = 1000
    _file(tmp_path / "src", 50_000)
    job = _upload(client, odd, tmp_path / "src")
    body = wait_state(ferryd, job.id, "ERROR")
    assert body["error"]["code"] == "BG_E_HTTP_ERROR_413", body
    assert body["error"]["context"] == "REMOTE_FILE"


def test_session_not_found_starts_a_new_session(
    ferryd: Daemon, client: Client, odd: OddBitsServer, tmp_path: Path
) -> None:
    odd.forget_at = 130_000
    data = _file(tmp_path / "src", 250_000)
    job = _upload(client, odd, tmp_path / "src")
    assert wait_state(ferryd, job.id, "TRANSFERRED", "ERROR")["state"] == "TRANSFERRED"
    assert odd.count("create-session") == 2
    job.complete()
    assert odd.published["up"] == data


def test_transient_create_error_with_bits_error_header_retries(
    ferryd: Daemon, client: Client, odd: OddBitsServer, tmp_path: Path
) -> None:
    odd.fail_creates = 1
    data = _file(tmp_path / "src", 1000)
    job = _upload(client, odd, tmp_path / "src")
    body = wait_state(ferryd, job.id, "TRANSIENT_ERROR")
    # The spec's spelling, BITS-Error, read like BITS-Error-Code.
    assert body["error"]["code"] == "ERROR_DISK_FULL" or body["error"]["hresult"] == "0x80070070"
    assert body["error"]["context"] == "REMOTE_FILE"
    job.resume()
    assert wait_state(ferryd, job.id, "TRANSFERRED")["state"] == "TRANSFERRED"
    job.complete()
    assert odd.published["up"] == data


def test_cancel_sends_cancel_session(
    ferryd: Daemon, client: Client, odd: OddBitsServer, tmp_path: Path
) -> None:
    _file(tmp_path / "src", 1000)
    job = _upload(client, odd, tmp_path / "src")
    wait_state(ferryd, job.id, "TRANSFERRED")
    assert len(odd.sessions) == 1
    job.cancel()
    assert odd.count("cancel-session") == 1 and not odd.sessions and not odd.published


def test_a_local_file_that_changes_fails_naming_it(
    ferryd: Daemon, client: Client, odd: OddBitsServer, tmp_path: Path
) -> None:
    odd.drop_at = [100] * 4  # slow it down: the file changes while it is retried
    src = tmp_path / "src"
    _file(src, 200_000)
    job = _upload(client, odd, src)
    wait_until(lambda: odd.count("fragment") >= 1, "a first fragment")
    with open(src, "ab") as f:
        f.write(b"more")
    body = wait_state(ferryd, job.id, "ERROR", timeout=60)
    assert body["error"]["code"] == "BG_E_LOCAL_FILE_CHANGED", body
    assert body["error"]["context"] == "LOCAL_FILE"
    assert str(src) in body["error"]["description"]


def test_upload_reply_with_the_reply_file(
    ferryd: Daemon, client: Client, odd: OddBitsServer, tmp_path: Path
) -> None:
    odd.reply_for["rr"] = b"the application's answer\n" * 10
    data = _file(tmp_path / "src", 100_000)
    job = client.create_job("rr", type="upload-reply")
    job.add_file(odd.url("rr"), str(tmp_path / "src"))
    assert job.data["reply"] == {
        "file": str(tmp_path / "src.reply"),
        "bytes_total": None,
        "bytes_transferred": 0,
    }
    job.set_reply_file(str(tmp_path / "answer"))
    with pytest.raises(FerryError) as exc:
        job.reply_data()
    assert exc.value.code == "BG_E_INVALID_STATE"
    job.resume()
    body = wait_state(ferryd, job.id, "TRANSFERRED", "ERROR")
    assert body["state"] == "TRANSFERRED", body
    assert body["reply"] == {
        "file": str(tmp_path / "answer"),
        "bytes_total": 250,
        "bytes_transferred": 250,
    }
    assert_valid("Job", body)
    assert job.reply_data() == odd.reply_for["rr"]
    # The two upload-reply routes answer as the OpenAPI document says.
    for method, path, req in [
        ("GET", "/v1/jobs/{job}/reply", None),
        ("PUT", "/v1/jobs/{job}/reply-file", {"reply_file": str(tmp_path / "answer")}),
    ]:
        status, answer = api_call(ferryd.socket, method, path.replace("{job}", job.id), req)
        if method == "PUT":  # the reply is being (has been) fetched: too late to move it
            assert status == 409 and answer["error"]["code"] == "BG_E_INVALID_STATE"
            continue
        assert status == 200, answer
        assert_response(method, path, status, answer)
    # The reply sits in a hidden temporary file beside its name until complete.
    assert not (tmp_path / "answer").exists()
    hidden = [p for p in tmp_path.iterdir() if p.name.startswith(".answer.")]
    assert len(hidden) == 1
    # The CLI: the reply on stdout, and in JSON.
    out = run_ferry("reply", job.id, socket=ferryd.socket, json_mode=False)
    assert out.returncode == 0 and out.stdout == odd.reply_for["rr"].decode()
    info = run_ferry("info", job.id, socket=ferryd.socket, json_mode=False)
    assert "Reply file" in info.stdout and str(tmp_path / "answer") in info.stdout
    job.complete()
    assert odd.published == {} or odd.published["rr"] == data
    assert (tmp_path / "answer").read_bytes() == odd.reply_for["rr"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".answer.")]
    assert odd.count("close-session") == 1


def test_reply_over_one_mib_is_too_large_and_cli_set_reply_file(
    ferryd: Daemon, client: Client, odd: OddBitsServer, tmp_path: Path
) -> None:
    odd.reply_for["big"] = os.urandom((1 << 20) + 1)
    _file(tmp_path / "src", 10)
    job = client.create_job("big", type="upload-reply")
    job.add_file(odd.url("big"), str(tmp_path / "src"))
    r = run_ferry("set", job.id, "--reply-file", str(tmp_path / "big.out"), socket=ferryd.socket)
    assert r.returncode == 0, r.stderr
    job.resume()
    assert wait_state(ferryd, job.id, "TRANSFERRED", "ERROR")["state"] == "TRANSFERRED"
    with pytest.raises(FerryError) as exc:
        job.reply_data()
    assert exc.value.code == "BG_E_TOO_LARGE"
    job.complete()
    assert (tmp_path / "big.out").read_bytes() == odd.reply_for["big"]


def test_application_error_is_remote_application(
    ferryd: Daemon, client: Client, odd: OddBitsServer, tmp_path: Path
) -> None:
    odd.reply_for["app"] = b"x"
    odd.app_error_status = 400
    _file(tmp_path / "src", 10)
    job = client.create_job("app", type="upload-reply")
    job.add_file(odd.url("app"), str(tmp_path / "src"))
    job.resume()
    body = wait_state(ferryd, job.id, "ERROR")
    assert body["error"]["context"] == "REMOTE_APPLICATION", body
    assert body["error"]["hresult"] == "0x80004005"


def test_upload_rules_at_add_time(
    ferryd: Daemon, client: Client, odd: OddBitsServer, tmp_path: Path
) -> None:
    _file(tmp_path / "a", 10)
    _file(tmp_path / "b", 10)
    job = client.create_job("rules", type="upload")
    for remote, local, code in [
        (f"file://{tmp_path}/x", str(tmp_path / "a"), "E_INVALIDARG"),
        (odd.url("x"), str(tmp_path / "missing"), "ERROR_FILE_NOT_FOUND"),
        (odd.url("x"), str(tmp_path), "E_INVALIDARG"),
    ]:
        with pytest.raises(FerryError) as exc:
            job.add_file(remote, local)
        assert exc.value.code == code, (remote, local)
    job.add_file(odd.url("x"), str(tmp_path / "a"))
    with pytest.raises(FerryError) as exc:
        job.add_file(odd.url("y"), str(tmp_path / "b"))
    assert exc.value.code == "BG_E_TOO_MANY_FILES"
    assert len(job.files()) == 1
    with pytest.raises(FerryError) as exc:
        job.set_remote_name(0, odd.url("z"))
    assert exc.value.code == "E_NOTIMPL"
    r = run_ferry("replace-remote-prefix", job.id, odd.url(""), "http://h/", socket=ferryd.socket)
    assert r.returncode == 1 and "E_NOTIMPL" in r.stdout + r.stderr
    with pytest.raises(FerryError) as exc:
        job.set_reply_file(str(tmp_path / "r"))
    assert exc.value.code == "E_NOTIMPL"
    # the CLI creates upload jobs
    r = run_ferry("create", "--type", "upload-reply", "viacli", socket=ferryd.socket)
    assert r.returncode == 0 and '"upload-reply"' in r.stdout


def test_kill_9_mid_upload_resumes_the_session(
    ferryd: Daemon, odd: OddBitsServer, tmp_path: Path
) -> None:
    odd.drop_at = [10] * 3
    data = _file(tmp_path / "src", 2_000_000)
    with Client(ferryd.socket) as client:
        job = _upload(client, odd, tmp_path / "src")
        jid = job.id
    wait_until(lambda: odd.fragment_bytes >= 600_000, "some fragments", timeout=60)
    os.kill(ferryd.pid, signal.SIGKILL)
    ferryd.proc.wait()  # type: ignore[union-attr]
    ferryd.start()
    body = wait_state(ferryd, jid, "TRANSFERRED", "ERROR", timeout=60)
    assert body["state"] == "TRANSFERRED", body
    assert odd.count("create-session") == 1  # the same session, resumed
    with Client(ferryd.socket) as client:
        client.get_job(jid).complete()
    assert odd.published["up"] == data


def test_host_id_is_used_then_falls_back(
    ferryd: Daemon, client: Client, odd: OddBitsServer, tmp_path: Path
) -> None:
    # The farm host answers on another address of the same server: 127.0.0.2 is loopback.
    odd.host_id = f"localhost:{odd.port}"
    data = _file(tmp_path / "src", 100_000)
    job = _upload(client, odd, tmp_path / "src")
    assert wait_state(ferryd, job.id, "TRANSFERRED")["state"] == "TRANSFERRED"
    hosts = {p[2].get("Host") for p in odd.packets if p[0] == "fragment"}
    assert hosts == {f"localhost:{odd.port}"}
    job.complete()
    assert odd.published["up"] == data

    # A host that never answers: back to the origin after the fallback timeout.
    odd.packets.clear()
    odd.host_id = "127.0.0.1:9"
    odd.host_fallback = 1
    job = _upload(client, odd, tmp_path / "src", name="up2")
    assert wait_state(ferryd, job.id, "TRANSFERRED", "ERROR", timeout=60)["state"] == "TRANSFERRED"
    job.complete()
    assert odd.published["up2"] == data


def test_close_session_not_found_starts_the_upload_over(
    ferryd: Daemon, client: Client, odd: OddBitsServer, tmp_path: Path
) -> None:
    data = _file(tmp_path / "src", 100_000)
    job = _upload(client, odd, tmp_path / "src")
    wait_state(ferryd, job.id, "TRANSFERRED")
    odd.sessions.clear()  # the server forgot it (expired)
    with pytest.raises(FerryError) as exc:
        job.complete()
    assert exc.value.code == "BG_E_SESSION_NOT_FOUND"
    body = wait_state(ferryd, job.id, "TRANSFERRED", "ERROR")
    assert body["state"] == "TRANSFERRED" and odd.count("create-session") == 2
    assert job.complete() == "S_OK"
    assert odd.published["up"] == data


async def test_async_client_reply(ferryd: Daemon, odd: OddBitsServer, tmp_path: Path) -> None:
    from ferry import AsyncClient

    odd.reply_for["ar"] = b"async reply"
    _file(tmp_path / "src", 3000)
    async with AsyncClient(ferryd.socket) as c:
        job = await c.create_job("ar", type="upload-reply")
        await job.add_file(odd.url("ar"), str(tmp_path / "src"))
        await job.set_reply_file(str(tmp_path / "ar.out"))
        assert job.reply == {
            "file": str(tmp_path / "ar.out"),
            "bytes_total": None,
            "bytes_transferred": 0,
        }
        await job.resume()
        assert await job.wait(timeout=30) is JobState.TRANSFERRED
        assert await job.reply_data() == b"async reply"
        assert await job.complete() == "S_OK"
    assert (tmp_path / "ar.out").read_bytes() == b"async reply"


def test_events_and_notification_for_uploads(
    ferryd: Daemon, client: Client, odd: OddBitsServer, tmp_path: Path
) -> None:
    """Uploads announce progress and TRANSFERRED like downloads, run notify_cmdline, and
    honour priorities (a foreground job starts at once)."""
    _file(tmp_path / "src", 200_000)
    marker = tmp_path / "notified"
    job = client.create_job("ev", type="upload")
    job.add_file(odd.url("ev"), str(tmp_path / "src"))
    job.set(
        priority="foreground", notify_cmdline=["/bin/sh", "-c", f"echo $FERRY_EVENT > {marker}"]
    )
    seen: list[str] = []
    job.resume()
    for event in job.follow(timeout=30):
        seen.append(event.job["state"] if event.job else event.type)
        if event.job and event.job["state"] in ("TRANSFERRED", "ERROR"):
            break
    assert seen[-1] == "TRANSFERRED" and "TRANSFERRING" in seen, seen
    wait_until(lambda: marker.exists() and marker.read_text().strip(), "the notification")
    assert marker.read_text().strip() == "JOB_TRANSFERRED"
    job.complete()


def test_a_reply_url_that_is_not_http_is_refused(
    ferryd: Daemon, client: Client, odd: OddBitsServer, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("not for the server to choose")
    odd.reply_for["fu"] = b"x"
    odd.reply_url = secret.as_uri()
    _file(tmp_path / "src", 10)
    job = client.create_job("fu", type="upload-reply")
    job.add_file(odd.url("fu"), str(tmp_path / "src"))
    job.resume()
    body = wait_state(ferryd, job.id, "ERROR")
    assert body["error"]["code"] == "BG_E_INVALID_SERVER_RESPONSE", body["error"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".src.reply")]
