"""End-to-end tests of ferryd's API through a real daemon and a real HTTP server."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from harness.faultserver import FaultServer
from harness.ferryd import Daemon, api_call
from harness.wait import wait_state

from tests.integration.api_schema import assert_response, assert_valid


def create(d: Daemon, name: str = "job", **extra: Any) -> dict[str, Any]:
    status, job = d.call("POST", "/v1/jobs", {"display_name": name, **extra})
    assert status == 201, job
    assert_valid("Job", job)
    return job  # type: ignore[no-any-return]


def add(d: Daemon, job: str, *pairs: tuple[str, str]) -> tuple[int, Any]:
    files = [{"remote_name": r, "local_name": loc} for r, loc in pairs]
    return d.call("POST", f"/v1/jobs/{job}/files", {"files": files})


def error_code(resp: tuple[int, Any]) -> tuple[int, str]:
    status, body = resp
    return status, body["error"]["code"]


def test_download_life_cycle(ferryd: Daemon, http_server: FaultServer, dest: Path) -> None:
    payloads = {f"f{i}.bin": os.urandom(100_000 + i) for i in range(3)}
    pairs = [(http_server.add(n, b), str(dest / n)) for n, b in payloads.items()]
    job = create(ferryd, "life")
    assert job["state"] == "SUSPENDED"
    status, body = add(ferryd, job["id"], *pairs)
    assert status == 200, body
    assert body["progress"]["files_total"] == 3
    status, body = ferryd.call("POST", f"/v1/jobs/{job['id']}/resume", {})
    assert status == 200 and body["result"]["code"] == "S_OK"
    done = wait_state(ferryd, job["id"], {"TRANSFERRED", "ERROR"})
    assert done["state"] == "TRANSFERRED", done
    assert done["progress"] == {
        "bytes_total": sum(len(b) for b in payloads.values()),
        "bytes_transferred": sum(len(b) for b in payloads.values()),
        "files_total": 3,
        "files_transferred": 3,
    }
    assert done["times"]["transfer_completed"]
    # Nothing is visible under the local names before complete.
    assert not any((dest / n).exists() for n in payloads)
    status, body = ferryd.call("GET", f"/v1/jobs/{job['id']}/files")
    assert_response("GET", "/v1/jobs/{job}/files", status, body)
    status, body = ferryd.call("POST", f"/v1/jobs/{job['id']}/complete", {})
    assert_response("POST", "/v1/jobs/{job}/complete", status, body)
    assert body["result"] == {"code": "S_OK", "hresult": "0x00000000"}
    assert body["job"]["state"] == "ACKNOWLEDGED"
    for n, b in payloads.items():
        assert (dest / n).read_bytes() == b
    assert sorted(p.name for p in dest.iterdir()) == sorted(payloads)  # no temporaries left


def test_file_url_download(ferryd: Daemon, tmp_path: Path, dest: Path) -> None:
    src = tmp_path / "source.bin"
    src.write_bytes(os.urandom(300_000))
    job = create(ferryd, "local")
    assert add(ferryd, job["id"], (src.as_uri(), str(dest / "copy.bin")))[0] == 200
    ferryd.call("POST", f"/v1/jobs/{job['id']}/resume", {})
    assert wait_state(ferryd, job["id"], {"TRANSFERRED", "ERROR"})["state"] == "TRANSFERRED"
    ferryd.call("POST", f"/v1/jobs/{job['id']}/complete", {})
    assert (
        hashlib.sha256((dest / "copy.bin").read_bytes()).digest()
        == hashlib.sha256(src.read_bytes()).digest()
    )


def test_cancel_deletes_temporaries_and_never_touches_local_names(
    ferryd: Daemon, http_server: FaultServer, dest: Path
) -> None:
    existing = dest / "keep.bin"
    existing.write_bytes(b"old content")
    url = http_server.add("new.bin", os.urandom(50_000))
    job = create(ferryd, "cancel-me")
    add(ferryd, job["id"], (url, str(existing)))
    ferryd.call("POST", f"/v1/jobs/{job['id']}/resume", {})
    wait_state(ferryd, job["id"], {"TRANSFERRED"})
    assert len(list(dest.iterdir())) == 2  # the local name and one hidden temporary
    status, body = ferryd.call("POST", f"/v1/jobs/{job['id']}/cancel", {})
    assert status == 200 and body["job"]["state"] == "CANCELLED"
    assert existing.read_bytes() == b"old content"
    assert [p.name for p in dest.iterdir()] == ["keep.bin"]
    # Final jobs are read-only.
    assert error_code(ferryd.call("POST", f"/v1/jobs/{job['id']}/resume", {})) == (
        409,
        "BG_E_INVALID_STATE",
    )


def test_partial_complete(ferryd: Daemon, http_server: FaultServer, dest: Path) -> None:
    job = create(ferryd, "partial")
    add(ferryd, job["id"], (http_server.add("a.bin", b"a" * 1000), str(dest / "a.bin")))
    add(ferryd, job["id"], (http_server.url("missing.bin"), str(dest / "b.bin")))
    ferryd.call("POST", f"/v1/jobs/{job['id']}/resume", {})
    err = wait_state(ferryd, job["id"], {"ERROR"})
    assert err["error"]["code"] == "BG_E_HTTP_ERROR_404"
    assert err["error"]["hresult"] == "0x80190194"
    assert err["error"]["context"] == "REMOTE_FILE"
    assert err["error"]["file"]["remote_name"].endswith("missing.bin")
    assert err["error_count"] == 1
    status, body = ferryd.call("POST", f"/v1/jobs/{job['id']}/complete", {})
    assert status == 200
    assert body["result"] == {"code": "BG_S_PARTIAL_COMPLETE", "hresult": "0x00200017"}
    assert sorted(p.name for p in dest.iterdir()) == ["a.bin"]


def test_jobs_survive_restart_and_kill(
    ferryd: Daemon, http_server: FaultServer, dest: Path
) -> None:
    job = create(ferryd, "persist", priority="high", description="kept")
    add(ferryd, job["id"], (http_server.add("p.bin", b"p" * 5000), str(dest / "p.bin")))
    ferryd.call("PATCH", f"/v1/jobs/{job['id']}", {"min_retry_delay": 30, "notify_flags": 1})
    before = ferryd.call("GET", f"/v1/jobs/{job['id']}")[1]
    ferryd.restart()
    assert ferryd.call("GET", f"/v1/jobs/{job['id']}")[1] == before
    ferryd.kill()
    ferryd.start()
    assert ferryd.call("GET", f"/v1/jobs/{job['id']}")[1] == before
    # And it still transfers after the crash.
    ferryd.call("POST", f"/v1/jobs/{job['id']}/resume", {})
    assert wait_state(ferryd, job["id"], {"TRANSFERRED", "ERROR"})["state"] == "TRANSFERRED"


def test_corrupt_store_is_reported_and_kept(short_tmp: Path) -> None:
    d = Daemon(short_tmp)
    d.state_dir.mkdir(mode=0o700)
    garbage = b"this is not a database" * 100
    (d.state_dir / "ferry.db").write_bytes(garbage)
    with pytest.raises(RuntimeError, match="BG_E_DATABASE_CORRUPT"):
        d.start()
    assert (d.state_dir / "ferry.db").read_bytes() == garbage


def test_store_is_wal_sqlite(ferryd: Daemon) -> None:
    create(ferryd, "wal")
    conn = sqlite3.connect(ferryd.state_dir / "ferry.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("method", "path", "body", "raw", "expected"),
    [
        ("POST", "/v1/jobs", None, b"{not json", (400, "E_INVALIDARG")),
        ("POST", "/v1/jobs", None, b"[1, 2]", (400, "E_INVALIDARG")),
        ("POST", "/v1/jobs", {"display_name": "x", "bogus": 1}, None, (400, "E_INVALIDARG")),
        ("POST", "/v1/jobs", {"display_name": 5}, None, (400, "E_INVALIDARG")),
        ("POST", "/v1/jobs", {}, None, (400, "E_INVALIDARG")),
        ("POST", "/v1/jobs", {"display_name": ""}, None, (400, "E_INVALIDARG")),
        ("POST", "/v1/jobs", {"display_name": "x" * 5000}, None, (400, "BG_E_STRING_TOO_LONG")),
        (
            "POST",
            "/v1/jobs",
            {"display_name": "x", "type": "sideways"},
            None,
            (400, "E_INVALIDARG"),
        ),
        (
            "POST",
            "/v1/jobs",
            {"display_name": "x", "priority": "urgent"},
            None,
            (400, "E_INVALIDARG"),
        ),
        (
            "GET",
            "/v1/jobs/0f8fad5b-d9cb-469f-a165-70867728950e",
            None,
            None,
            (404, "BG_E_NOT_FOUND"),
        ),
        ("GET", "/v1/jobs?all_users=maybe", None, None, (400, "E_INVALIDARG")),
        ("GET", "/v1/nowhere", None, None, (404, "BG_E_NOT_FOUND")),
        ("DELETE", "/v1/jobs", None, None, (405, "E_INVALIDARG")),
    ],
)
def test_bad_requests(
    ferryd: Daemon, method: str, path: str, body: Any, raw: bytes | None, expected: tuple[int, str]
) -> None:
    before = ferryd.call("GET", "/v1/jobs")[1]
    status, resp = api_call(ferryd.socket, method, path, body, raw)
    assert_valid("Error", resp)
    assert (status, resp["error"]["code"]) == expected, resp
    assert resp["error"]["hresult"].startswith("0x") and resp["error"]["message"]
    assert ferryd.call("GET", "/v1/jobs")[1] == before


@pytest.mark.parametrize(
    ("remote", "local", "code"),
    [
        ("http://127.0.0.1/x", "relative/path", "E_INVALIDARG"),
        ("http://127.0.0.1/x", "/tmp/../etc/passwd", "E_INVALIDARG"),
        ("http://127.0.0.1/x", "/tmp/a\x00b", "E_INVALIDARG"),
        ("ftp://127.0.0.1/x", "/tmp/x", "E_INVALIDARG"),
        ("gopher://x/y", "/tmp/x", "E_INVALIDARG"),
        ("http://127.0.0.1/x", "/nonexistent-dir-ferry/x", "ERROR_PATH_NOT_FOUND"),
        ("http://127.0.0.1/" + "x" * 10000, "/tmp/x", "BG_E_STRING_TOO_LONG"),
    ],
)
def test_bad_files_change_nothing(ferryd: Daemon, remote: str, local: str, code: str) -> None:
    job = create(ferryd, "bad-files")
    status, body = add(ferryd, job["id"], (remote, local))
    assert status >= 400 and body["error"]["code"] == code, body
    assert ferryd.call("GET", f"/v1/jobs/{job['id']}")[1] == job


@pytest.mark.parametrize(
    "files",
    [
        "notalist",
        [{"remote_name": "http://x/y"}],
        [{"remote_name": "http://x/y", "local_name": "/tmp/y", "extra": 1}],
        [{"remote_name": 1, "local_name": "/tmp/y"}],
        [],
    ],
)
def test_malformed_file_lists(ferryd: Daemon, files: Any) -> None:
    job = create(ferryd, "malformed")
    status, body = ferryd.call("POST", f"/v1/jobs/{job['id']}/files", {"files": files})
    assert (status, body["error"]["code"]) == (400, "E_INVALIDARG")
    assert ferryd.call("GET", f"/v1/jobs/{job['id']}")[1] == job


def test_state_rules_over_the_api(ferryd: Daemon, http_server: FaultServer, dest: Path) -> None:
    job = create(ferryd, "empty")
    assert error_code(ferryd.call("POST", f"/v1/jobs/{job['id']}/resume", {})) == (
        409,
        "BG_E_EMPTY",
    )
    assert ferryd.call("GET", f"/v1/jobs/{job['id']}")[1]["state"] == "SUSPENDED"
    up = create(ferryd, "up", type="upload")
    (dest / "u").write_bytes(b"u")  # an upload's local file must exist
    assert add(ferryd, up["id"], ("http://127.0.0.1/u", str(dest / "u")))[0] == 200
    assert error_code(add(ferryd, up["id"], ("http://127.0.0.1/v", str(dest / "v")))) == (
        400,
        "BG_E_TOO_MANY_FILES",
    )
    # Complete an empty job, then everything on it is an invalid state.
    status, body = ferryd.call("POST", f"/v1/jobs/{job['id']}/complete", {})
    assert status == 200 and body["job"]["state"] == "ACKNOWLEDGED"
    for action in ("resume", "suspend", "cancel", "complete", "take-ownership"):
        assert error_code(ferryd.call("POST", f"/v1/jobs/{job['id']}/{action}", {})) == (
            409,
            "BG_E_INVALID_STATE",
        )
    assert error_code(ferryd.call("PATCH", f"/v1/jobs/{job['id']}", {"description": "x"})) == (
        409,
        "BG_E_INVALID_STATE",
    )


def test_job_by_display_name(ferryd: Daemon) -> None:
    job = create(ferryd, "named")
    assert ferryd.call("GET", "/v1/jobs/named")[1]["id"] == job["id"]
    create(ferryd, "named")
    status, body = ferryd.call("GET", "/v1/jobs/named")
    assert (status, body["error"]["code"]) == (404, "BG_E_NOT_FOUND")
    assert job["id"] in body["error"]["message"]


def test_set_properties(ferryd: Daemon) -> None:
    job = create(ferryd, "props")
    status, body = ferryd.call(
        "PATCH",
        f"/v1/jobs/{job['id']}",
        {
            "display_name": "renamed",
            "description": "d",
            "priority": "low",
            "min_retry_delay": 5,
            "no_progress_timeout": 0,
            "notify_flags": 0x1F,
            "notify_cmdline": ["/bin/echo", "done"],
        },
    )
    assert status == 200, body
    assert (body["display_name"], body["priority"], body["notify_cmdline"]) == (
        "renamed",
        "low",
        ["/bin/echo", "done"],
    )
    for bad in (
        {"min_retry_delay": 4},
        {"no_progress_timeout": -1},
        {"notify_flags": 0x20},
        {"notify_cmdline": ["relative"]},
        {"priority": "urgent"},
        {"min_retry_delay": True},
        {"display_name": ""},
    ):
        status, resp = ferryd.call("PATCH", f"/v1/jobs/{job['id']}", bad)
        assert (status, resp["error"]["code"]) == (400, "E_INVALIDARG"), bad
    assert ferryd.call("GET", f"/v1/jobs/{job['id']}")[1] == body


def test_openapi_matches_routes(ferryd: Daemon, dest: Path) -> None:
    from ferry.protocol import ROUTES
    from ferry.protocol.openapi import openapi_document

    status, doc = ferryd.call("GET", "/v1/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    assert doc == json.loads(json.dumps(openapi_document()))
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    served = {(r.method, r.path) for r in ROUTES}
    assert documented == served
    # Every documented route is served and answers as documented on the real daemon (a
    # fresh job each): its status, and a body of its schema.
    for method, path in sorted(documented):
        if path in ("/v1/events", "/v1/shutdown"):
            continue
        if path.endswith(("/reply", "/reply-file")):
            continue  # upload-reply jobs only: tests/integration/test_upload_client.py
        if path == "/v1/fleet":  # fleet mode only: tests/integration/test_fleet.py checks it
            continue
        job = create(ferryd, "openapi")
        add(ferryd, job["id"], ("http://127.0.0.1:9/x", str(dest / "x")))
        handle = ferryd.call(
            "POST",
            f"/v1/jobs/{job['id']}/handles",
            {"interface": "token-options" if "helper" in path else "job", "ttl": 60},
        )[1]["handle"]
        concrete = (
            path.replace("{job}", job["id"]).replace("{handle}", handle).replace("{index}", "0")
        )
        concrete = concrete.replace("{target}", "SERVER").replace("{scheme}", "BASIC")
        body: Any = {} if method in ("POST", "PUT", "PATCH") else None
        if path.endswith("/flags"):
            body = {"flags": 0}
        elif path.endswith("/handles"):
            body = {"interface": "job"}
        elif path.endswith("/replace-remote-prefix"):
            body = {"old": "http://127.0.0.1:9/", "new": "http://127.0.0.1:8/"}
        elif path.endswith("/remote-name"):
            body = {"remote_name": "http://127.0.0.1:9/z"}
        elif path == "/v1/logoff":
            body = {"session": 999999}
        elif path == "/v1/network/cost":
            body = {"cost": "auto"}
        elif path.endswith("/files") and method == "POST":
            body = {
                "files": [{"remote_name": "http://127.0.0.1:9/y", "local_name": str(dest / "y")}]
            }
        elif path == "/v1/jobs" and method == "POST":
            body = {"display_name": "made-by-openapi-test"}
        elif path.endswith("/credentials") and method == "PUT":
            body = {"target": "SERVER", "scheme": "BASIC", "user": "u", "password": "p"}
        status, answer = api_call(ferryd.socket, method, concrete, body)
        assert status < 300, (method, path, status, answer)
        assert_response(method, path, status, answer)
    # Last, as it stops the daemon.
    status, answer = api_call(ferryd.socket, "POST", "/v1/shutdown", {})
    assert status == 200, answer
    assert_response("POST", "/v1/shutdown", status, answer)


def test_events_stream_snapshot_first(ferryd: Daemon) -> None:
    import socket as s

    job = create(ferryd, "events")
    conn = s.socket(s.AF_UNIX, s.SOCK_STREAM)
    conn.settimeout(10)
    conn.connect(ferryd.socket)
    target = f"/v1/events?job={job['id']}&all_events=true"
    conn.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    buf = b""
    while b": ready" not in buf:
        buf += conn.recv(65536)
    assert b"event: job-snapshot" in buf and job["id"].encode() in buf
    ferryd.call("PATCH", f"/v1/jobs/{job['id']}", {"description": "changed"})
    while b"changed" not in buf:
        buf += conn.recv(65536)
    assert b"event: job-modification" in buf
    conn.close()


def test_complete_recovers_from_a_crash_between_rename_and_commit(
    ferryd: Daemon, http_server: FaultServer, dest: Path
) -> None:
    data = os.urandom(40_000)
    job = create(ferryd, "crash-in-complete")
    add(ferryd, job["id"], (http_server.add("c.bin", data), str(dest / "c.bin")))
    ferryd.call("POST", f"/v1/jobs/{job['id']}/resume", {})
    wait_state(ferryd, job["id"], {"TRANSFERRED"})
    ferryd.kill()
    # What a SIGKILL after the rename but before its commit leaves behind.
    (temp,) = [p for p in dest.iterdir() if p.name.startswith(".")]
    temp.rename(dest / "c.bin")
    ferryd.start()
    status, body = ferryd.call("POST", f"/v1/jobs/{job['id']}/complete", {})
    assert status == 200, body
    assert body["job"]["state"] == "ACKNOWLEDGED"
    assert (dest / "c.bin").read_bytes() == data
