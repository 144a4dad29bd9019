"""Helper tokens (IBitsTokenOptions, SPEC §4.3-4.5) with real uids, real directory modes and
real login sessions, against a system-mode ferryd. Root only (CI runs as root)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.ferryd import Daemon
from harness.wait import wait_state

from tests.helpers.jobs import owned_dir
from tests.helpers.session_agent import SessionAgent

A = 40201  # the job owner
B = 40202  # the helper identity
C = 40203  # a stranger

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")


@pytest.fixture
def agents() -> Iterator[dict[str, SessionAgent]]:
    made = {"A": SessionAgent(A), "B": SessionAgent(B), "C": SessionAgent(C)}
    yield made
    for agent in made.values():
        agent.end()


@pytest.fixture
def world(short_tmp: Path) -> Path:
    """A tree every test identity can traverse."""
    base = short_tmp / "w"
    base.mkdir()
    os.chmod(base, 0o755)
    return base


def make_job(d: Daemon, owner: SessionAgent, remote: str, local: Path) -> str:
    status, job = owner.call(d.socket, "POST", "/v1/jobs", {"display_name": "helper-test"})
    assert status == 201, job
    files = {"files": [{"remote_name": remote, "local_name": str(local)}]}
    status, body = owner.call(d.socket, "POST", f"/v1/jobs/{job['id']}/files", files)
    assert status == 200, body
    return str(job["id"])


def open_handle(d: Daemon, who: SessionAgent, job: str, **extra: Any) -> str:
    status, body = who.call(
        d.socket, "POST", f"/v1/jobs/{job}/handles", {"interface": "token-options", **extra}
    )
    assert status == 201, body
    return str(body["handle"])


def set_helper(d: Daemon, helper: SessionAgent, handle: str) -> tuple[int, Any]:
    return helper.call(d.socket, "PUT", f"/v1/handles/{handle}/helper-token", {})


def set_flags(d: Daemon, who: SessionAgent, job: str, flags: int) -> tuple[int, Any]:
    return who.call(d.socket, "PUT", f"/v1/jobs/{job}/helper-token/flags", {"flags": flags})


def seed_layout(world: Path) -> tuple[Path, Path]:
    """The seed document's example: A writes where only A may write, the source is
    readable only by B."""
    secret_dir = owned_dir(world / "b-only", B, 0o700)
    source = secret_dir / "source.bin"
    source.write_bytes(os.urandom(200_000))
    os.chown(source, B, B)
    os.chmod(source, 0o600)
    dest = owned_dir(world / "a-only", A, 0o700)
    return source, dest


def test_network_helper_reads_what_only_it_may_read(
    system_ferryd: Daemon, agents: dict[str, SessionAgent], world: Path
) -> None:
    d = system_ferryd
    source, dest = seed_layout(world)
    job = make_job(d, agents["A"], source.as_uri(), dest / "copy.bin")

    # Without the helper (flags 0) the owner cannot read the source.
    assert agents["A"].call(d.socket, "POST", f"/v1/jobs/{job}/resume", {})[0] == 200
    err = wait_state(d, job, {"ERROR", "TRANSFERRED"})
    assert err["state"] == "ERROR"
    assert (err["error"]["code"], err["error"]["context"]) == ("E_ACCESSDENIED", "REMOTE_FILE")

    handle = open_handle(d, agents["A"], job)
    status, body = set_helper(d, agents["B"], handle)
    assert status == 200 and body["sid"] == f"S-1-22-1-{B}", body
    status, body = set_flags(d, agents["A"], job, 0x2)
    assert status == 200 and body["flags"] == ["NETWORK"]
    info = d.call("GET", f"/v1/jobs/{job}")[1]
    assert info["helper_token"] == {"sid": f"S-1-22-1-{B}", "flags": ["NETWORK"]}

    agents["A"].call(d.socket, "POST", f"/v1/jobs/{job}/resume", {})
    assert wait_state(d, job, {"ERROR", "TRANSFERRED"})["state"] == "TRANSFERRED"
    status, body = agents["A"].call(d.socket, "POST", f"/v1/jobs/{job}/complete", {})
    assert status == 200, body
    out = dest / "copy.bin"
    assert out.read_bytes() == source.read_bytes()
    assert (out.stat().st_uid, out.stat().st_gid) == (A, A)  # written as the owner, not root

    # Flags back to 0: a new job with the same source fails again, as the owner.
    job2 = make_job(d, agents["A"], source.as_uri(), dest / "again.bin")
    handle2 = open_handle(d, agents["A"], job2)
    assert set_helper(d, agents["B"], handle2)[0] == 200
    assert set_flags(d, agents["A"], job2, 0)[0] == 200
    agents["A"].call(d.socket, "POST", f"/v1/jobs/{job2}/resume", {})
    err = wait_state(d, job2, {"ERROR", "TRANSFERRED"})
    assert (err["error"]["code"], err["error"]["context"]) == ("E_ACCESSDENIED", "REMOTE_FILE")


def test_local_file_helper_writes_where_only_it_may_write(
    system_ferryd: Daemon, agents: dict[str, SessionAgent], world: Path
) -> None:
    d = system_ferryd
    source = world / "public.bin"
    source.write_bytes(os.urandom(150_000))
    os.chmod(source, 0o644)
    dest = owned_dir(world / "b-writes", B, 0o755)
    job = make_job(d, agents["A"], source.as_uri(), dest / "out.bin")

    agents["A"].call(d.socket, "POST", f"/v1/jobs/{job}/resume", {})
    err = wait_state(d, job, {"ERROR", "TRANSFERRED"})
    assert (err["error"]["code"], err["error"]["context"]) == ("E_ACCESSDENIED", "LOCAL_FILE")
    assert list(dest.iterdir()) == []

    handle = open_handle(d, agents["A"], job)
    assert set_helper(d, agents["B"], handle)[0] == 200
    assert set_flags(d, agents["A"], job, 0x1)[0] == 200
    agents["A"].call(d.socket, "POST", f"/v1/jobs/{job}/resume", {})
    assert wait_state(d, job, {"ERROR", "TRANSFERRED"})["state"] == "TRANSFERRED"
    temps = list(dest.iterdir())
    assert len(temps) == 1 and temps[0].name.startswith(".")
    assert temps[0].stat().st_uid == B  # the temporary file is the helper's, never root's
    assert agents["A"].call(d.socket, "POST", f"/v1/jobs/{job}/complete", {})[0] == 200
    out = dest / "out.bin"
    assert out.read_bytes() == source.read_bytes()
    assert out.stat().st_uid == B
    assert [p.name for p in dest.iterdir()] == ["out.bin"]


def test_who_may_call_token_options(
    system_ferryd: Daemon, agents: dict[str, SessionAgent], world: Path
) -> None:
    d = system_ferryd
    job = make_job(d, agents["A"], "http://127.0.0.1:9/x", world / "x.bin")

    # A handle opened by the owner may be carried by another uid's connection.
    handle = open_handle(d, agents["A"], job)
    status, body = set_helper(d, agents["B"], handle)
    assert status == 200 and body["sid"] == f"S-1-22-1-{B}"
    status, body = agents["C"].call(d.socket, "GET", f"/v1/handles/{handle}/helper-token")
    assert status == 200 and body["sid"] == f"S-1-22-1-{B}"  # not re-checked against C

    # A non-owner, non-admin cannot open one (the check happens at open time) ...
    status, err = agents["C"].call(
        d.socket, "POST", f"/v1/jobs/{job}/handles", {"interface": "token-options"}
    )
    assert (status, err["error"]["code"]) == (403, "E_ACCESSDENIED")
    # ... nor call without a handle.
    for method, path, body in (
        ("GET", f"/v1/jobs/{job}/helper-token", None),
        ("PUT", f"/v1/jobs/{job}/helper-token", {}),
        ("PUT", f"/v1/jobs/{job}/helper-token/flags", {"flags": 3}),
        ("DELETE", f"/v1/jobs/{job}/helper-token", None),
    ):
        status, err = agents["C"].call(d.socket, method, path, body)
        assert (status, err["error"]["code"]) == (403, "E_ACCESSDENIED"), path

    # A non-admin opener cannot install an admin (root) helper token.
    before = d.call("GET", f"/v1/jobs/{job}")[1]
    status, err = d.call("PUT", f"/v1/handles/{handle}/helper-token", {})  # root's connection
    assert (status, err["error"]["code"]) == (403, "E_ACCESSDENIED")
    assert d.call("GET", f"/v1/jobs/{job}")[1] == before

    # Root may: with its own handle, root becomes the helper ...
    status, body = d.call("PUT", f"/v1/jobs/{job}/helper-token", {})
    assert status == 200 and body["sid"] == "S-1-22-1-0"
    # ... and then the owner may no longer change the flags, while root may.
    status, err = set_flags(d, agents["A"], job, 0x1)
    assert (status, err["error"]["code"]) == (403, "E_ACCESSDENIED")
    status, err = agents["A"].call(
        d.socket, "PUT", f"/v1/handles/{handle}/helper-token/flags", {"flags": 1}
    )
    assert (status, err["error"]["code"]) == (403, "E_ACCESSDENIED")
    assert d.call("PUT", f"/v1/jobs/{job}/helper-token/flags", {"flags": 1})[0] == 200
    # The owner may clear it, and then set flags again.
    assert agents["A"].call(d.socket, "DELETE", f"/v1/jobs/{job}/helper-token")[0] == 200
    status, body = set_flags(d, agents["A"], job, 0)
    assert status == 200 and body == {"flags": [], "flags_value": 0, "sid": None}

    # Bad flags change nothing.
    before = d.call("GET", f"/v1/jobs/{job}")[1]
    for bad in (4, -1, 255):
        status, err = set_flags(d, agents["A"], job, bad)
        assert (status, err["error"]["code"]) == (400, "E_INVALIDARG"), bad
    assert d.call("GET", f"/v1/jobs/{job}")[1] == before


def test_forged_expired_released_and_pre_restart_handles_are_refused(
    system_ferryd: Daemon, agents: dict[str, SessionAgent], world: Path
) -> None:
    d = system_ferryd
    job = make_job(d, agents["A"], "http://127.0.0.1:9/x", world / "x.bin")

    def refused(handle: str) -> None:
        status, err = agents["B"].call(d.socket, "PUT", f"/v1/handles/{handle}/helper-token", {})
        assert (status, err["error"]["code"]) == (403, "E_ACCESSDENIED"), handle

    refused("forged-" + "A" * 32)
    short = open_handle(d, agents["A"], job, ttl=1)
    time.sleep(1.2)
    refused(short)
    released = open_handle(d, agents["A"], job)
    assert agents["A"].call(d.socket, "DELETE", f"/v1/handles/{released}")[0] == 200
    refused(released)
    # A handle without a TTL dies with the connection that opened it.
    on_conn = agents["A"].call(
        d.socket, "POST", f"/v1/jobs/{job}/handles", {"interface": "token-options"}, conn="tmp"
    )[1]["handle"]
    agents["A"].close_connection("tmp")
    time.sleep(0.2)
    refused(on_conn)
    # A handle with a TTL survives its connection, but not a restart of ferryd.
    kept = open_handle(d, agents["A"], job, ttl=600)
    agents["A"].close_connection()
    assert set_helper(d, agents["B"], kept)[0] == 200
    d.restart()
    refused(kept)
    # An interface mismatch is refused too.
    status, body = agents["A"].call(
        d.socket, "POST", f"/v1/jobs/{job}/handles", {"interface": "job"}
    )
    assert status == 201
    status, err = set_helper(d, agents["B"], body["handle"])
    assert (status, err["error"]["code"]) == (400, "E_INVALIDARG")
    status, err = agents["A"].call(
        d.socket, "POST", f"/v1/jobs/{job}/handles", {"interface": "job", "ttl": 7200}
    )
    assert (status, err["error"]["code"]) == (400, "E_INVALIDARG")


def _job_with_helper(
    d: Daemon, owner: SessionAgent, helper: SessionAgent, world: Path, name: str
) -> str:
    src = world / f"{name}.src"
    src.write_bytes(os.urandom(10_000))
    os.chmod(src, 0o644)
    dest = owned_dir(world / f"{name}-dest", owner.uid, 0o755)
    job = make_job(d, owner, src.as_uri(), dest / f"{name}.bin")
    handle = open_handle(d, owner, job)
    assert set_helper(d, helper, handle)[0] == 200
    assert set_flags(d, owner, job, 0x2)[0] == 200
    return job


def test_owner_logoff_and_helper_session_end(system_ferryd: Daemon, world: Path) -> None:
    d = system_ferryd
    with SessionAgent(A) as owner, SessionAgent(B) as helper:
        # A TRANSFERRED job is left alone by the logoff rules (its helper token goes).
        done = _job_with_helper(d, owner, helper, world, "done")
        owner.call(d.socket, "POST", f"/v1/jobs/{done}/resume", {})
        assert wait_state(d, done, {"TRANSFERRED", "ERROR"})["state"] == "TRANSFERRED"
        pending = _job_with_helper(d, owner, helper, world, "pending")

        # The helper's session ends: the job that uses it goes to ERROR.
        helper.end()
        err = wait_state(d, pending, {"ERROR"})
        assert err["error"]["code"] == "BG_E_TOKEN_REQUIRED"
        assert err["error"]["hresult"] == "0x80200056"
        assert err["helper_token"] == {"sid": None, "flags": ["NETWORK"]}
        assert wait_state(d, done, {"TRANSFERRED"})["state"] == "TRANSFERRED"

        # Recovery 1: flags 0, resume: the job continues with the owner token only.
        assert set_flags(d, owner, pending, 0)[0] == 200
        owner.call(d.socket, "POST", f"/v1/jobs/{pending}/resume", {})
        assert wait_state(d, pending, {"TRANSFERRED", "ERROR"})["state"] == "TRANSFERRED"

    # The owner logs off (its only session ends): incomplete jobs with a helper -> ERROR.
    with SessionAgent(A) as owner, SessionAgent(B) as helper:
        job = _job_with_helper(d, owner, helper, world, "owner-off")
        owner.end()
        err = wait_state(d, job, {"ERROR"})
        assert err["error"]["code"] == "BG_E_TOKEN_REQUIRED"
        with SessionAgent(A) as owner2:
            # Recovery 2: set the helper token again, then resume.
            handle = open_handle(d, owner2, job)
            assert set_helper(d, helper, handle)[0] == 200
            owner2.call(d.socket, "POST", f"/v1/jobs/{job}/resume", {})
            assert wait_state(d, job, {"TRANSFERRED", "ERROR"})["state"] == "TRANSFERRED"


def test_declared_logoff_and_waiting_jobs(system_ferryd: Daemon, world: Path) -> None:
    d = system_ferryd
    with SessionAgent(A) as owner, SessionAgent(B) as helper:
        job = _job_with_helper(d, owner, helper, world, "declared")
        # Only an admin may declare a logoff.
        status, err = owner.call(d.socket, "POST", "/v1/logoff", {"user": A})
        assert (status, err["error"]["code"]) == (403, "E_ACCESSDENIED")
        status, body = d.call("POST", "/v1/logoff", {"session": helper.session})
        assert status == 200 and helper.session in body["ended_sessions"]
        assert wait_state(d, job, {"ERROR"})["error"]["code"] == "BG_E_TOKEN_REQUIRED"

        # A job without a helper token of a logged-off owner waits, and runs at next logon.
        src = world / "wait.src"
        src.write_bytes(b"w" * 5000)
        os.chmod(src, 0o644)
        plain = make_job(d, owner, src.as_uri(), owned_dir(world / "wd", A, 0o755) / "w.bin")
        status, _ = d.call("POST", "/v1/logoff", {"user": A})
        assert status == 200
        owner.call(d.socket, "POST", f"/v1/jobs/{plain}/resume", {})
        time.sleep(1.0)
        assert d.call("GET", f"/v1/jobs/{plain}")[1]["state"] == "QUEUED"
        with SessionAgent(A):
            assert wait_state(d, plain, {"TRANSFERRED", "ERROR"})["state"] == "TRANSFERRED"


def test_persisted_helper_token_of_a_dead_session_is_discarded_at_restart(
    system_ferryd: Daemon, world: Path
) -> None:
    d = system_ferryd
    with SessionAgent(A) as owner:
        helper = SessionAgent(B)
        job = _job_with_helper(d, owner, helper, world, "restart")
        d.stop()
        helper.end()
        d.start()
        err = wait_state(d, job, {"ERROR"})
        assert err["error"]["code"] == "BG_E_TOKEN_REQUIRED"


def test_flags_without_a_token_need_one(system_ferryd: Daemon, world: Path) -> None:
    d = system_ferryd
    with SessionAgent(A) as owner:
        src = world / "nt.src"
        src.write_bytes(b"n" * 100)
        os.chmod(src, 0o644)
        job = make_job(d, owner, src.as_uri(), owned_dir(world / "nt", A, 0o755) / "n.bin")
        assert set_flags(d, owner, job, 0x2)[0] == 200
        owner.call(d.socket, "POST", f"/v1/jobs/{job}/resume", {})
        err = wait_state(d, job, {"ERROR", "TRANSFERRED"})
        assert err["error"]["code"] == "BG_E_TOKEN_REQUIRED"
