"""Notifications with real uids against a system-mode ferryd (root only; CI runs as root):
who may subscribe to whose events, and the identity a notification command line runs as."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.faultserver import FaultServer
from harness.ferryd import Daemon
from harness.wait import wait_state, wait_until

from tests.helpers.jobs import owned_dir
from tests.helpers.session_agent import SessionAgent

A = 40221  # the job owner, with two supplementary groups
A_GROUPS = (40222, 40223)
C = 40229  # a stranger

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CI runs as root)")


@pytest.fixture
def agents() -> Iterator[dict[str, SessionAgent]]:
    made = {"A": SessionAgent(A, A, A_GROUPS), "C": SessionAgent(C)}
    yield made
    for agent in made.values():
        agent.end()


def create(d: Daemon, who: SessionAgent, name: str, **props: Any) -> str:
    status, job = who.call(d.socket, "POST", "/v1/jobs", {"display_name": name})
    assert status == 201, job
    if props:
        status, body = who.call(d.socket, "PATCH", f"/v1/jobs/{job['id']}", props)
        assert status == 200, body
    return str(job["id"])


def test_a_non_owner_cannot_subscribe_to_someone_elses_job(
    system_ferryd: Daemon, agents: dict[str, SessionAgent]
) -> None:
    d = system_ferryd
    job = create(d, agents["A"], "private", notify_flags=0x1B)
    for query in (f"job={job}", f"job={job}&all_events=true", "all_users=true"):
        status, err = agents["C"].call(d.socket, "GET", f"/v1/events?{query}")
        assert (status, err["error"]["code"], err["error"]["hresult"]) == (
            403,
            "E_ACCESSDENIED",
            "0x80070005",
        ), query
    # By name, the job is not even found among the stranger's jobs.
    status, err = agents["C"].call(d.socket, "GET", "/v1/events?job=private")
    assert (status, err["error"]["code"]) == (404, "BG_E_NOT_FOUND")


_READER = r"""
import os, socket, sys
os.setgroups([]); os.setgid(int(sys.argv[2])); os.setuid(int(sys.argv[2]))
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"GET /v1/events?all_events=true HTTP/1.1\r\nHost: x\r\n\r\n")
f = s.makefile("rb")
for line in f:
    if line.startswith(b"data:") or line.startswith(b": ready"):
        sys.stdout.write(line.decode()); sys.stdout.flush()
"""


def test_a_users_stream_carries_only_their_own_jobs(
    system_ferryd: Daemon, agents: dict[str, SessionAgent]
) -> None:
    d = system_ferryd
    theirs = create(d, agents["A"], "theirs", notify_flags=0x8)
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER, d.socket, str(C)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert reader.stdout is not None
        assert reader.stdout.readline().startswith(": ready")  # C has no job yet: no snapshot
        status, _ = agents["A"].call(d.socket, "PATCH", f"/v1/jobs/{theirs}", {"description": "x"})
        assert status == 200
        mine = create(d, agents["C"], "mine")  # the sentinel: C's own job
        lines = []
        while mine not in (line := reader.stdout.readline()):
            assert line, "the stream ended"
            lines.append(line)
        assert not any(theirs in line for line in lines + [line])
        assert json.loads(line.removeprefix("data:"))["job_id"] == mine
    finally:
        reader.kill()
        reader.wait()


def test_the_command_line_runs_as_the_owner_never_as_root(
    system_ferryd: Daemon, agents: dict[str, SessionAgent], short_tmp: Path, tmp_path: Path
) -> None:
    d = system_ferryd
    world = short_tmp / "w"
    world.mkdir()
    os.chmod(world, 0o755)
    box = owned_dir(world / "a-only", A, 0o700)
    www = tmp_path / "www"
    www.mkdir()
    server = FaultServer(root=www).start()
    try:
        url = server.add("n.bin", os.urandom(20_000))
        script = (
            f"id -u > {box}/uid; id -g > {box}/gid; id -G > {box}/groups; pwd > {box}/pwd; "
            f'echo "${{HOME-unset}}" > {box}/home; touch {world}/not-allowed-here'
        )
        job = create(d, agents["A"], "as-owner", notify_cmdline=["/bin/sh", "-c", script])
        files = {"files": [{"remote_name": url, "local_name": str(box / "n.bin")}]}
        assert agents["A"].call(d.socket, "POST", f"/v1/jobs/{job}/files", files)[0] == 200
        assert agents["A"].call(d.socket, "POST", f"/v1/jobs/{job}/resume", {})[0] == 200
        wait_state(d, job, {"TRANSFERRED", "ERROR"})

        def settled() -> bool:
            # The program's last command fails (see below): an attempt with an error.
            n = d.call("GET", f"/v1/jobs/{job}")[1].get("notification")
            return n is not None and n["error"] is not None

        wait_until(settled, timeout=30, what="the notification")
    finally:
        server.stop()
    read = {name: (box / name).read_text().strip() for name in ("uid", "gid", "groups", "pwd")}
    assert read["uid"] == str(A) and read["gid"] == str(A)
    assert sorted(int(g) for g in read["groups"].split()) == sorted({A, *A_GROUPS})
    for name in ("uid", "gid", "groups"):
        st = (box / name).stat()
        assert (st.st_uid, st.st_gid) == (A, A)  # created by the owner, not by root
    # No passwd entry for A: no HOME, and the working directory is /.
    assert (read["pwd"], (box / "home").read_text().strip()) == ("/", "unset")
    # The last command needs write access to a root-owned directory: refused for the owner,
    # so the program exits non-zero and the failure is recorded on the job.
    assert not (world / "not-allowed-here").exists()
    n = d.call("GET", f"/v1/jobs/{job}")[1]["notification"]
    assert (n["state"], n["attempts"]) == ("PENDING", 1)  # retried later
    assert n["error"]["context"] == "QUEUE_MANAGER_NOTIFICATION"
    assert "exited with status 1" in n["error"]["description"]
