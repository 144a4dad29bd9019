"""Ownership and access (SPEC §4.1-4.2) with real uids against a system-mode ferryd."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.ferryd import Daemon

from tests.helpers.session_agent import SessionAgent

ALICE = 40101
BOB = 40102


def as_user(d: Daemon, uid: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One API call from a process running as ``uid`` (in a session of its own)."""
    with SessionAgent(uid) as agent:
        return agent.call(d.socket, method, path, body)


def test_users_see_and_touch_only_their_own_jobs(system_ferryd: Daemon) -> None:
    d = system_ferryd
    status, a = as_user(d, ALICE, "POST", "/v1/jobs", {"display_name": "alice-job"})
    assert status == 201 and a["owner"] == {"sid": f"S-1-22-1-{ALICE}", "uid": ALICE, "name": None}
    status, b = as_user(d, BOB, "POST", "/v1/jobs", {"display_name": "bob-job"})
    assert status == 201

    assert [j["id"] for j in as_user(d, ALICE, "GET", "/v1/jobs")[1]["jobs"]] == [a["id"]]
    assert [j["id"] for j in as_user(d, BOB, "GET", "/v1/jobs")[1]["jobs"]] == [b["id"]]
    # Bob cannot read, change, or act on Alice's job, nor find it by name.
    for method, path, body in (
        ("GET", f"/v1/jobs/{a['id']}", None),
        ("GET", f"/v1/jobs/{a['id']}/files", None),
        ("PATCH", f"/v1/jobs/{a['id']}", {"description": "pwned"}),
        (
            "POST",
            f"/v1/jobs/{a['id']}/files",
            {"files": [{"remote_name": "http://127.0.0.1/x", "local_name": "/tmp/x"}]},
        ),
        ("POST", f"/v1/jobs/{a['id']}/resume", {}),
        ("POST", f"/v1/jobs/{a['id']}/cancel", {}),
        ("POST", f"/v1/jobs/{a['id']}/complete", {}),
        ("POST", f"/v1/jobs/{a['id']}/take-ownership", {}),
    ):
        status, err = as_user(d, BOB, method, path, body)
        assert (status, err["error"]["code"], err["error"]["hresult"]) == (
            403,
            "E_ACCESSDENIED",
            "0x80070005",
        ), (method, path)
    status, err = as_user(d, BOB, "GET", "/v1/jobs/alice-job")
    assert (status, err["error"]["code"]) == (404, "BG_E_NOT_FOUND")
    status, err = as_user(d, BOB, "GET", "/v1/jobs?all_users=true")
    assert (status, err["error"]["code"]) == (403, "E_ACCESSDENIED")
    # Nothing changed.
    assert d.call("GET", f"/v1/jobs/{a['id']}")[1] == a

    # Root (an admin) sees both, and can take ownership.
    status, all_jobs = d.call("GET", "/v1/jobs?all_users=true")
    assert {j["id"] for j in all_jobs["jobs"]} == {a["id"], b["id"]}
    assert d.call("GET", "/v1/jobs")[1]["jobs"] == []  # root's own jobs: none
    status, body = d.call("POST", f"/v1/jobs/{a['id']}/take-ownership", {})
    assert status == 200 and body["job"]["owner"]["uid"] == 0
    status, err = as_user(d, ALICE, "GET", f"/v1/jobs/{a['id']}")
    assert (status, err["error"]["code"]) == (403, "E_ACCESSDENIED")


def test_caller_token_is_captured_from_the_connection(system_ferryd: Daemon) -> None:
    status, body = as_user(system_ferryd, ALICE, "GET", "/v1/status")
    assert status == 200
    caller = body["caller"]
    assert (caller["uid"], caller["gid"], caller["sid"], caller["admin"]) == (
        ALICE,
        ALICE,
        f"S-1-22-1-{ALICE}",
        False,
    )
    assert body["mode"] == "system"


def test_system_socket_is_world_connectable(system_ferryd: Daemon) -> None:
    assert Path(system_ferryd.socket).stat().st_mode & 0o777 == 0o666


def test_user_mode_daemon_refuses_other_uids(ferryd: Daemon) -> None:
    import os

    if os.geteuid() != 0:
        import pytest

        pytest.skip("needs root to connect as another uid")
    assert Path(ferryd.socket).stat().st_mode & 0o777 == 0o600
    os.chmod(ferryd.socket, 0o666)  # even past the file mode, the daemon checks the peer
    status, err = as_user(ferryd, ALICE, "GET", "/v1/jobs")
    assert (status, err["error"]["code"]) == (403, "E_ACCESSDENIED")
