"""What a real ferryd does when servers misbehave: one scenario per route of the
fault-injecting server (harness/faultserver.py, with a script of faults per file),
each checking the job's final state, its error (code, hresult, context, file), and the
bytes on disk — in the temporary file before ``complete``, under the local name after.

One daemon serves the whole module, with a short stall timeout and a private CA among its
trust anchors (``ca_file``); every test cancels what it leaves behind.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from harness.aio import ServerThread
from harness.faultserver import Drop, FaultServer, Status, http_date
from harness.ferryd import Daemon
from harness.wait import wait_state

from tests.helpers.faults import cancel_leftovers, module_daemon, serve
from tests.helpers.jobs import (
    act,
    add,
    assert_error,
    create,
    files,
    get,
    only_temp,
    temps,
    when,
)

MiB = 1 << 20
STALL_TIMEOUT = 1.5


# ---- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trusted_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def d(trusted_ca: trustme.CA) -> Iterator[Daemon]:
    def config(base: Path) -> str:
        ca_file = base / "extra-ca.pem"
        trusted_ca.cert_pem.write_to_path(str(ca_file))
        return f'[daemon]\nstall_timeout = {STALL_TIMEOUT}\nca_file = "{ca_file}"\n'

    with module_daemon("fy-", config) as daemon:
        yield daemon


@pytest.fixture(autouse=True)
def _cancel_leftovers(d: Daemon) -> Iterator[None]:
    yield
    cancel_leftovers(d)


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerThread]:
    with ServerThread(FaultServer()) as thread:
        yield thread


def _tls_server(ca: trustme.CA) -> ServerThread:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    return ServerThread(FaultServer(ssl=ctx))


@pytest.fixture(scope="module")
def tls_srv(trusted_ca: trustme.CA) -> Iterator[ServerThread]:
    with _tls_server(trusted_ca) as thread:
        yield thread


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def completes(d: Daemon, job: str, dest: Path, local: Path, data: bytes) -> None:
    """TRANSFERRED with the right bytes in the temporary file; complete publishes them and
    leaves no temporary file behind."""
    j = wait_state(d, job, "TRANSFERRED", "ERROR")
    assert j["state"] == "TRANSFERRED", j
    assert j["error"] is None
    assert j["progress"]["bytes_transferred"] == j["progress"]["bytes_total"] == len(data)
    assert only_temp(dest).read_bytes() == data
    assert not local.exists()
    assert act(d, job, "complete")["result"]["code"] == "S_OK"
    assert local.read_bytes() == data
    assert temps(dest) == []


# ---- /f with a dropped connection: resume with Range + If-Range ----------------------------


def test_drop_mid_body_then_resume_retries_at_once_with_range(
    d: Daemon, srv: ServerThread, dest: Path
) -> None:
    data = serve(srv, "drop", 2 * MiB, Drop(700_000))
    url, local = srv.server.url("/f/drop"), dest / "drop.bin"
    job = create(d, "drop")  # min_retry_delay stays 600 s: only resume can retry in time
    add(d, job, url, local)
    act(d, job, "resume")
    j = wait_state(d, job, "TRANSIENT_ERROR", "ERROR", "TRANSFERRED")
    assert_error(
        j, "TRANSIENT_ERROR BG_E_CONNECTION_CLOSED 0x8020002E GENERAL_TRANSPORT", url, local
    )
    assert j["error_count"] == 1
    assert when(j["retry_at"]) == pytest.approx(when(j["times"]["modified"]) + 600, abs=0.01)
    (f,) = files(d, job)
    kept = f["bytes_transferred"]  # 700 000, less what aiohttp had not handed over yet
    assert 0 < kept <= 700_000 and (f["bytes_total"], f["completed"]) == (2 * MiB, False)
    assert only_temp(dest).read_bytes() == data[:kept], "what arrived is kept, durably"
    assert not local.exists()

    assert act(d, job, "resume")["job"]["retry_at"] is None
    completes(d, job, dest, local, data)
    first, second = srv.server.seen("/f/drop")
    assert "Range" not in first.headers
    assert second.headers["Range"] == f"bytes={kept}-"
    assert second.headers["If-Range"] == srv.server.files["drop"].etag


# ---- /status: 500 then retry after min_retry_delay; no-progress timeout across retries ------


def test_500_retries_after_min_retry_delay_and_no_progress_timeout_ends_retries(
    d: Daemon, srv: ServerThread, dest: Path
) -> None:
    data = serve(srv, "five", 100_000, Status(500))
    url, local = srv.server.url("/f/five"), dest / "five.bin"
    job = create(d, "500", min_retry_delay=5)
    add(d, job, url, local)
    # A second job whose transient errors go on: after the first retry its 3 s without
    # progress are over, and the job goes to ERROR.
    (dest / "other").mkdir()
    url503, local503 = srv.server.url("/status/503"), dest / "other" / "never.bin"
    doomed = create(d, "503", min_retry_delay=5, no_progress_timeout=3)
    add(d, doomed, url503, local503)
    act(d, job, "resume")
    act(d, doomed, "resume")

    j = wait_state(d, job, "TRANSIENT_ERROR", "ERROR", "TRANSFERRED")
    assert_error(j, "TRANSIENT_ERROR BG_E_HTTP_ERROR_500 0x801901F4 REMOTE_FILE", url, local)
    retry_at = when(j["retry_at"])
    assert retry_at == pytest.approx(when(j["times"]["modified"]) + 5, abs=0.01)
    assert only_temp(dest).stat().st_size == 0
    completes(d, job, dest, local, data)
    first, second = srv.server.request_times("/f/five")
    assert second >= retry_at - 0.05, "the retry waited for retry_at"

    j = wait_state(d, doomed, "ERROR")
    assert_error(j, "ERROR BG_E_HTTP_ERROR_503 0x801901F7 REMOTE_FILE", url503, local503)
    assert j["error_count"] == 2 and j["retry_at"] is None
    assert len(srv.server.request_times("/status/503")) == 2


# ---- /status: 503 + Retry-After (seconds and HTTP-date), never shorter than the delay -------


def test_503_retry_after_lengthens_the_delay_but_never_shortens_it(
    d: Daemon, srv: ServerThread, dest: Path
) -> None:
    cases = {
        "seconds": ("3600", 3600.0),
        "date": (http_date(time.time() + 7200), 7200.0),
        "short": ("1", 5.0),  # min_retry_delay wins
    }
    jobs = {}
    for name, (header, _) in cases.items():
        url = srv.server.url(f"/status/503?retry_after={header.replace(' ', '%20')}")
        (dest / name).mkdir()
        local = dest / name / "x.bin"
        jobs[name] = (create(d, name, min_retry_delay=5), url, local)
        add(d, jobs[name][0], url, local)
        act(d, jobs[name][0], "resume")
    for name, (job, url, local) in jobs.items():
        j = wait_state(d, job, "TRANSIENT_ERROR", "ERROR")
        assert_error(j, "TRANSIENT_ERROR BG_E_HTTP_ERROR_503 0x801901F7 REMOTE_FILE", url, local)
        assert only_temp(dest / name).stat().st_size == 0
        delay = when(j["retry_at"]) - when(j["times"]["modified"])
        tolerance = 2.0 if name == "date" else 0.01  # an HTTP-date has whole seconds
        assert delay == pytest.approx(cases[name][1], abs=tolerance), name

    # resume retries at once, whatever retry_at said; every error counts.
    job = jobs["seconds"][0]
    act(d, job, "resume")
    second = wait_state(d, job, "TRANSIENT_ERROR", "ERROR")
    assert second["error_count"] == 2 and second["state"] == "TRANSIENT_ERROR"


def test_no_progress_timeout_zero_makes_a_transient_error_final(
    d: Daemon, srv: ServerThread, dest: Path
) -> None:
    url, local = srv.server.url("/status/503?retry_after=5"), dest / "x"
    job = create(d, "zero", no_progress_timeout=0)
    add(d, job, url, local)
    act(d, job, "resume")
    j = wait_state(d, job, "ERROR", "TRANSIENT_ERROR")
    assert_error(j, "ERROR BG_E_HTTP_ERROR_503 0x801901F7 REMOTE_FILE", url, local)
    assert j["retry_at"] is None and j["error_count"] == 1
    assert only_temp(dest).stat().st_size == 0


# ---- /status: fatal HTTP errors -------------------------------------------------------------


@pytest.mark.parametrize(("status", "hresult"), [(404, "0x80190194"), (416, "0x801901A0")])
def test_fatal_http_status(
    d: Daemon, srv: ServerThread, dest: Path, status: int, hresult: str
) -> None:
    url, local = srv.server.url(f"/status/{status}"), dest / "missing.bin"
    job = create(d, str(status))
    add(d, job, url, local)
    act(d, job, "resume")
    j = wait_state(d, job, "ERROR", "TRANSIENT_ERROR")
    assert_error(j, f"ERROR BG_E_HTTP_ERROR_{status} {hresult} REMOTE_FILE", url, local)
    assert j["error_count"] == 1 and j["retry_at"] is None
    assert only_temp(dest).stat().st_size == 0 and not local.exists()
    assert act(d, job, "cancel")["job"]["state"] == "CANCELLED"
    assert list(dest.iterdir()) == []


# ---- /f: resume answered 200 instead of 206 ------------------------------------------------


def test_200_instead_of_206_restarts_from_zero(d: Daemon, srv: ServerThread, dest: Path) -> None:
    data = serve(srv, "norange", 1 * MiB, Drop(400_000), ranges=False)
    url, local = srv.server.url("/f/norange"), dest / "norange.bin"
    job = create(d, "norange")
    add(d, job, url, local)
    act(d, job, "resume")
    wait_state(d, job, "TRANSIENT_ERROR")
    kept = only_temp(dest).stat().st_size
    assert 0 < kept <= 400_000
    act(d, job, "resume")
    completes(d, job, dest, local, data)
    second = srv.server.seen("/f/norange")[1]
    assert second.headers["Range"] == f"bytes={kept}-", "it asked for the rest; got it all"


# ---- /f: the file changed between requests ---------------------------------------------------


def test_etag_change_is_remote_file_changed_and_resume_starts_over(
    d: Daemon, srv: ServerThread, dest: Path
) -> None:
    serve(srv, "moving", 1 * MiB, Drop(300_000))
    url, local = srv.server.url("/f/moving"), dest / "moving.bin"
    job = create(d, "moving")
    add(d, job, url, local)
    act(d, job, "resume")
    wait_state(d, job, "TRANSIENT_ERROR")
    old_etag = srv.server.files["moving"].etag
    new = serve(srv, "moving", 900_000)  # a new version, a new ETag
    act(d, job, "resume")
    j = wait_state(d, job, "ERROR", "TRANSFERRED")
    assert_error(j, "ERROR BG_E_REMOTE_FILE_CHANGED 0x80200073 REMOTE_FILE", url, local)
    assert srv.server.seen("/f/moving")[1].headers["If-Range"] == old_etag
    (f,) = files(d, job)
    assert f["bytes_transferred"] == 0 and not f["completed"]
    assert only_temp(dest).stat().st_size == 0, "the partial data of the old version is gone"
    act(d, job, "resume")
    completes(d, job, dest, local, new)
    assert "Range" not in srv.server.seen("/f/moving")[2].headers


def test_416_to_a_resume_is_remote_file_changed(d: Daemon, srv: ServerThread, dest: Path) -> None:
    """The server kept the ETag but the file shrank below what we have: 416 to the Range."""
    serve(srv, "shrunk", 1 * MiB, Drop(600_000), etag='"fixed"')
    url, local = srv.server.url("/f/shrunk"), dest / "shrunk.bin"
    job = create(d, "shrunk")
    add(d, job, url, local)
    act(d, job, "resume")
    wait_state(d, job, "TRANSIENT_ERROR")
    small = serve(srv, "shrunk", 300_000, etag='"fixed"')
    act(d, job, "resume")
    j = wait_state(d, job, "ERROR", "TRANSFERRED")
    assert_error(j, "ERROR BG_E_REMOTE_FILE_CHANGED 0x80200073 REMOTE_FILE", url, local)
    assert only_temp(dest).stat().st_size == 0
    act(d, job, "resume")
    completes(d, job, dest, local, small)


# ---- /drop and /longer: a body that is not the announced length is never a file ---------------


def test_truncated_body_is_never_a_completed_file(d: Daemon, srv: ServerThread, dest: Path) -> None:
    data = serve(srv, "cut", 500_000)
    url, local = srv.server.url("/drop/cut?after=123456"), dest / "cut.bin"
    job = create(d, "cut")
    add(d, job, url, local)
    for attempt in (1, 2):
        act(d, job, "resume")
        j = wait_state(d, job, "TRANSIENT_ERROR", "ERROR", "TRANSFERRED")
        assert_error(j, "TRANSIENT_ERROR BG_E_CONNECTION_CLOSED 0x8020002E GENERAL_TRANSPORT")
        assert j["error_count"] == attempt
        (f,) = files(d, job)
        # At most what was sent: what was still in the client's buffers is lost.
        assert f["bytes_transferred"] <= 123_456 and f["completed"] is False
        assert only_temp(dest).read_bytes() == data[: f["bytes_transferred"]]
    body = act(d, job, "complete")
    assert body["result"]["code"] == "BG_S_PARTIAL_COMPLETE"
    assert list(dest.iterdir()) == [], "no local file, no temporary file"


def test_body_longer_than_announced_is_invalid(d: Daemon, srv: ServerThread, dest: Path) -> None:
    data = serve(srv, "long", 10_000)
    url, local = srv.server.url("/longer/long?extra=64"), dest / "long.bin"
    job = create(d, "long")
    add(d, job, url, local)
    act(d, job, "resume")
    j = wait_state(d, job, "ERROR", "TRANSIENT_ERROR", "TRANSFERRED")
    assert_error(j, "ERROR BG_E_INVALID_SERVER_RESPONSE 0x8020001B REMOTE_FILE", url, local)
    (f,) = files(d, job)
    assert f["completed"] is False
    kept = only_temp(dest).read_bytes()
    assert len(kept) == f["bytes_transferred"] < len(data) and data.startswith(kept)


# ---- /nolength: BG_E_MISSING_FILE_SIZE, unless the job allows dynamic content ----------------


def test_missing_content_length_then_dynamic_content(
    d: Daemon, srv: ServerThread, dest: Path
) -> None:
    data = serve(srv, "dyn", 300_000)
    url, local = srv.server.url("/nolength/dyn"), dest / "dyn.bin"
    job = create(d, "dyn")
    add(d, job, url, local)
    act(d, job, "resume")
    j = wait_state(d, job, "ERROR", "TRANSFERRED")
    assert_error(j, "ERROR BG_E_MISSING_FILE_SIZE 0x80200011 REMOTE_FILE", url, local)
    assert j["dynamic_content"] is False

    status, j = d.call("PATCH", f"/v1/jobs/{job}", {"dynamic_content": True})
    assert status == 200 and j["dynamic_content"] is True
    act(d, job, "resume")
    completes(d, job, dest, local, data)
    assert get(d, job)["progress"]["bytes_total"] == len(data)


def test_dynamic_content_is_never_resumed(d: Daemon, srv: ServerThread, dest: Path) -> None:
    data = serve(srv, "dyndrop", 1 * MiB, Drop(500_000))
    url, local = srv.server.url("/f/dyndrop"), dest / "dyndrop.bin"
    job = create(d, "dyndrop", dynamic_content=True)
    add(d, job, url, local)
    act(d, job, "resume")
    wait_state(d, job, "TRANSIENT_ERROR")
    act(d, job, "resume")
    completes(d, job, dest, local, data)
    assert "Range" not in srv.server.seen("/f/dyndrop")[1].headers, "it started over"


def test_dynamic_content_must_be_a_boolean(d: Daemon) -> None:
    job = create(d, "flag")
    status, body = d.call("PATCH", f"/v1/jobs/{job}", {"dynamic_content": 1})
    assert (status, body["error"]["code"]) == (400, "E_INVALIDARG")


# ---- /stall: no byte for stall_timeout -------------------------------------------------------


def test_stall_is_a_transient_timeout(d: Daemon, srv: ServerThread, dest: Path) -> None:
    data = serve(srv, "stall", 200_000)
    url, local = srv.server.url("/stall/stall?after=5000"), dest / "stall.bin"
    job = create(d, "stall")
    add(d, job, url, local)
    act(d, job, "resume")
    j = wait_state(d, job, "TRANSIENT_ERROR", "ERROR", "TRANSFERRED", timeout=STALL_TIMEOUT + 20)
    assert_error(
        j, "TRANSIENT_ERROR ERROR_WINHTTP_TIMEOUT 0x80072EE2 GENERAL_TRANSPORT", url, local
    )
    assert files(d, job)[0]["bytes_transferred"] == 5000
    assert only_temp(dest).read_bytes() == data[:5000]


# ---- /redirect, /loop, /to -----------------------------------------------------------------


def test_redirects_up_to_ten_are_followed(d: Daemon, srv: ServerThread, dest: Path) -> None:
    data = serve(srv, "hop", 50_000)
    url, local = srv.server.url("/redirect/10/hop"), dest / "hop.bin"
    job = create(d, "hop")
    add(d, job, url, local)
    act(d, job, "resume")
    completes(d, job, dest, local, data)
    assert files(d, job)[0]["final_url"] == srv.server.url("/f/hop")


@pytest.mark.parametrize("path", ["/loop", "/redirect/11/hop11"])
def test_redirect_loop_and_too_many_redirects(
    d: Daemon, srv: ServerThread, dest: Path, path: str
) -> None:
    serve(srv, "hop11", 1000)
    url, local = srv.server.url(path), dest / "r.bin"
    job = create(d, "loop")
    add(d, job, url, local)
    act(d, job, "resume")
    j = wait_state(d, job, "ERROR", "TRANSIENT_ERROR", "TRANSFERRED")
    assert_error(j, "ERROR ERROR_WINHTTP_REDIRECT_FAILED 0x80072F7C REMOTE_FILE", url, local)
    assert not srv.server.seen("/f/hop11")
    assert only_temp(dest).stat().st_size == 0


def test_https_to_http_redirect_is_refused(
    d: Daemon, srv: ServerThread, tls_srv: ServerThread, dest: Path
) -> None:
    serve(srv, "plain", 1000)
    url = tls_srv.server.url(f"/to?url={srv.server.url('/f/plain')}")
    local = dest / "plain.bin"
    job = create(d, "downgrade")
    add(d, job, url, local)
    act(d, job, "resume")
    j = wait_state(d, job, "ERROR", "TRANSIENT_ERROR", "TRANSFERRED")
    assert_error(j, "ERROR ERROR_WINHTTP_REDIRECT_FAILED 0x80072F7C REMOTE_FILE", url, local)
    assert not srv.server.seen("/f/plain"), "the http URL was never fetched"
    assert only_temp(dest).stat().st_size == 0 and not local.exists()


# ---- TLS: ca_file adds trust anchors; an unknown CA is a secure failure ---------------------


def test_https_with_a_configured_ca(d: Daemon, tls_srv: ServerThread, dest: Path) -> None:
    data = serve(tls_srv, "tls", 400_000)
    url, local = tls_srv.server.url("/f/tls"), dest / "tls.bin"
    job = create(d, "tls")
    add(d, job, url, local)
    act(d, job, "resume")
    completes(d, job, dest, local, data)


def test_untrusted_certificate_is_a_secure_failure(d: Daemon, dest: Path) -> None:
    with _tls_server(trustme.CA()) as rogue:
        serve(rogue, "tls", 1000)
        url, local = rogue.server.url("/f/tls"), dest / "rogue.bin"
        job = create(d, "rogue")
        add(d, job, url, local)
        act(d, job, "resume")
        j = wait_state(d, job, "ERROR", "TRANSIENT_ERROR", "TRANSFERRED")
    assert_error(j, "ERROR ERROR_WINHTTP_SECURE_FAILURE 0x80072F8F GENERAL_TRANSPORT", url, local)
    assert not rogue.server.requests, "no request was sent over the unverified connection"
    assert only_temp(dest).stat().st_size == 0 and not local.exists()


# ---- expected SHA-256 --------------------------------------------------------------------


def test_sha256_match(d: Daemon, srv: ServerThread, dest: Path) -> None:
    data = serve(srv, "good", 700_000)
    url, local = srv.server.url("/f/good"), dest / "good.bin"
    job = create(d, "sha-ok")
    add(d, job, url, local, sha256=sha(data).upper())
    assert files(d, job)[0]["sha256"] == sha(data)
    act(d, job, "resume")
    completes(d, job, dest, local, data)


def test_sha256_mismatch_discards_the_file_and_resume_starts_over(
    d: Daemon, srv: ServerThread, dest: Path
) -> None:
    good = os.urandom(600_000)
    serve(srv, "bad", 600_000)  # the server has a corrupt copy
    url, local = srv.server.url("/f/bad"), dest / "bad.bin"
    job = create(d, "sha-bad")
    add(d, job, url, local, sha256=sha(good))
    act(d, job, "resume")
    j = wait_state(d, job, "ERROR", "TRANSIENT_ERROR", "TRANSFERRED")
    assert_error(j, "ERROR BG_E_VALIDATION_FAILED 0x80200053 REMOTE_FILE", url, local)
    assert sha(good) in j["error"]["description"]
    (f,) = files(d, job)
    assert (f["bytes_transferred"], f["completed"]) == (0, False)
    assert only_temp(dest).stat().st_size == 0, "the bad data is discarded"
    assert act(d, job, "complete")["result"]["code"] == "BG_S_PARTIAL_COMPLETE"
    assert list(dest.iterdir()) == []

    # Once the server is fixed, a new job gets the right file.
    srv.on_loop(lambda: srv.server.add("bad", good))
    job = create(d, "sha-fixed")
    add(d, job, url, local, sha256=sha(good))
    act(d, job, "resume")
    completes(d, job, dest, local, good)


def test_sha256_mismatch_after_resume_starts_that_file_over(
    d: Daemon, srv: ServerThread, dest: Path, tmp_path: Path
) -> None:
    """file:// too, and the resume after the error fetches the file from byte 0."""
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(300_000))
    url, local = src.as_uri(), dest / "local.bin"
    job = create(d, "sha-file")
    add(d, job, url, local, sha256=sha(b"something else"))
    act(d, job, "resume")
    j = wait_state(d, job, "ERROR", "TRANSIENT_ERROR", "TRANSFERRED")
    assert_error(j, "ERROR BG_E_VALIDATION_FAILED 0x80200053 REMOTE_FILE", url, local)
    assert only_temp(dest).stat().st_size == 0
    src.write_bytes(b"something else")
    act(d, job, "resume")
    completes(d, job, dest, local, b"something else")


@pytest.mark.parametrize("bad", ["00" * 31, "xy" * 32, 12, ["00" * 32]])
def test_bad_sha256_is_invalid_arg(d: Daemon, dest: Path, bad: object) -> None:
    job = create(d, "sha-arg")
    item = {"remote_name": "http://127.0.0.1:9/x", "local_name": str(dest / "x"), "sha256": bad}
    status, body = d.call("POST", f"/v1/jobs/{job}/files", {"files": [item]})
    assert (status, body["error"]["code"]) == (400, "E_INVALIDARG")
    assert get(d, job)["progress"]["files_total"] == 0
