"""What a new user tripped on in everyday use ("Everyday use"): each test drives ``ferry``
as a user would, against a real ferryd."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
from pathlib import Path

import pytest
from harness.ferryd import Daemon
from harness.wait import wait_state

from ferry import AsyncClient
from ferry.protocol import SYSTEM_SOCKET
from tests.helpers.as_user import run_cli_as
from tests.integration.cli_helpers import Cli, run_ferry


@pytest.fixture
def cli(ferryd: Daemon) -> Cli:
    return Cli(ferryd.socket)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- error texts are ours, not aiohttp's ---------------------------------------------------


def test_cannot_connect_names_host_and_port_not_library_internals(
    cli: Cli, ferryd: Daemon, dest: Path
) -> None:
    port = closed_port()
    job = cli.ok("create", "refused")["id"]
    cli.ok("add", job, f"http://127.0.0.1:{port}/x", str(dest / "x"))
    cli.ok("resume", job)
    j = wait_state(ferryd, job, "TRANSIENT_ERROR")
    text = cli.ok("info", job)["error"]["description"]
    assert j["error"]["code"] == "ERROR_WINHTTP_CANNOT_CONNECT"
    assert f"127.0.0.1:{port}" in text, text
    assert "ssl:" not in text and "Connect call failed" not in text, text
    assert "refused" in text.lower(), text


# ---- ferry events shows what happens -----------------------------------------------------


def _events_of(cli: Cli, *flags: str) -> list[tuple[str, str]]:
    """Run ``ferry events`` (with ``flags``), then create and cancel a job with the default
    notify flags (JOB_TRANSFERRED | JOB_ERROR); the (type, state) of every event of that job
    the stream shows. A second job that asks for JOB_MODIFICATION marks the end: both
    views show its change, and events come in the order they were made."""
    # A job whose snapshot, the stream's first line, proves it is subscribed before we act.
    marker = cli.ok("create", "marker")["id"]
    proc = cli.popen("events", *flags)
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["job_id"] == marker, first
        job = cli.ok("create", "watched")["id"]
        cli.ok("cancel", job)
        cli.ok("set", marker, "--notify-flags", "JOB_MODIFICATION")
        seen: list[tuple[str, str]] = []
        for line in proc.stdout:
            ev = json.loads(line)
            if ev["job_id"] == marker:
                break
            if ev["job_id"] == job:
                seen.append((ev["type"], ev["job"]["state"] if ev["job"] else ""))
        return seen
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_events_follow_everything_by_default(cli: Cli) -> None:
    seen = _events_of(cli)
    assert seen == [("job-modification", "SUSPENDED"), ("job-modification", "CANCELLED")], seen


def test_events_callback_honours_the_notify_flags(cli: Cli) -> None:
    """Default flags (JOB_TRANSFERRED | JOB_ERROR): the callback sees neither the creation
    nor the cancel."""
    assert _events_of(cli, "--callback") == []


# ---- no daemon: which sockets, and how to start one ----------------------------------------


def test_no_daemon_names_every_socket_and_how_to_start_one(tmp_path: Path) -> None:
    if os.path.exists(SYSTEM_SOCKET):
        pytest.skip(f"a system ferryd may be running at {SYSTEM_SOCKET}")
    runtime = tmp_path / "run"
    runtime.mkdir()
    r = run_ferry("list", json_mode=False, env={"XDG_RUNTIME_DIR": str(runtime)})
    assert r.returncode == 1, r
    user = str(runtime / "ferry" / "ferryd.sock")
    assert user in r.stderr and SYSTEM_SOCKET in r.stderr, r
    assert r.stderr.index(user) < r.stderr.index(SYSTEM_SOCKET), r
    for hint in ("ferryd --user &", "systemctl --user start ferryd.socket",
                 "systemctl start ferryd.socket"):  # fmt: skip
        assert hint in r.stderr, r
    assert not (runtime / "ferry").exists(), "ferry list must not start a daemon"


def test_no_daemon_at_a_named_socket(tmp_path: Path) -> None:
    gone = str(tmp_path / "nothing.sock")
    r = run_ferry("list", socket=gone, json_mode=True)
    assert r.returncode == 1, r
    message = r.json["error"]["message"]
    assert gone in message and "--socket" in message and "ferryd --user &" in message, r


# ---- ferry shutdown ------------------------------------------------------------------------


def test_shutdown_by_the_owner_stops_a_user_ferryd(cli: Cli, ferryd: Daemon) -> None:
    assert cli.ok("shutdown") == {"stopping": True}
    proc = ferryd.proc
    assert proc is not None
    assert proc.wait(timeout=30) == 0, ferryd.log()
    assert not os.path.exists(ferryd.socket)
    assert "stopping" in ferryd.log()


async def test_async_client_shutdown(ferryd: Daemon) -> None:
    async with AsyncClient(ferryd.socket) as c:
        assert await c.shutdown() == {"stopping": True}
    proc = ferryd.proc
    assert proc is not None
    assert await asyncio.to_thread(proc.wait, 30) == 0, ferryd.log()


def test_shutdown_of_the_system_ferryd_is_for_administrators(system_ferryd: Daemon) -> None:
    uid = 40102  # an unprivileged uid, as in tests/security
    r = run_cli_as(uid, uid, ["--socket", system_ferryd.socket, "--json", "shutdown"])
    assert r.code == 1, r
    assert json.loads(r.stdout)["error"]["code"] == "E_ACCESSDENIED", r
    assert system_ferryd.alive()
    status, _ = system_ferryd.call("GET", "/v1/status")
    assert status == 200


# ---- a retry says so, and when -------------------------------------------------------------


def test_transfer_not_on_a_terminal_reports_each_retry(
    cli: Cli, ferryd: Daemon, dest: Path
) -> None:
    """stderr is a pipe: one status line per state change, the transient error saying which
    try comes next and when; --retry-delay and --timeout set the job's properties, and
    ``ferry info`` shows the next retry."""
    port = closed_port()
    url = f"http://127.0.0.1:{port}/x"
    proc = cli.popen(
        "transfer", "--name", "unreachable", "--retry-delay", "5", "--timeout", "120",
        url, str(dest / "x"), json=False,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        lines: list[str] = []
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("transient error"):
                break
        line = lines[-1]
        assert "ERROR_WINHTTP_CANNOT_CONNECT (try 2): next try at " in line, lines
        assert re.search(r"\(in [0-5] s\)", line), line
        assert f"127.0.0.1:{port}" in line, line
        job = cli.ok("info", "unreachable")
        assert (job["min_retry_delay"], job["no_progress_timeout"]) == (5, 120)
        assert job["retry_at"], job
        human = cli("info", "unreachable", json=False)
        assert re.search(r"next retry at \d\d:\d\d:\d\d \(in \d+ s\)", human.stdout), human
        # The next failure is reported too, with the count that goes with it.
        for line in proc.stderr:
            if line.startswith("transient error"):
                break
        assert "(try 3)" in line, line
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)


def test_transfer_retry_delay_has_a_minimum(cli: Cli, dest: Path) -> None:
    r = cli("transfer", "--retry-delay", "1", "http://127.0.0.1:1/x", str(dest / "x"))
    assert r.returncode == 2, r
