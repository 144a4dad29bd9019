"""A ``complete`` that fails part-way (a rename fails) leaves the job as it was, and at once:
the change is published, so the scheduler's hold on the job ends without waiting out
HOLD_SECONDS, and a transfer that complete stopped goes on; a later complete succeeds."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.faultserver import FaultServer
from harness.ferryd import Daemon
from harness.wait import wait_state, wait_until

from ferry.service.scheduler import HOLD_SECONDS
from tests.helpers.jobs import act, add, create, files, get, temps
from tests.integration.test_scheduling import EventStream

KiB = 1 << 10
SMALL = b"small file\n" * 100
BIG = hashlib.sha256(b"big").digest() * (32 * KiB)  # 1 MiB


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as srv:
        yield srv


def test_failed_complete_releases_the_job_at_once(
    ferryd: Daemon, server: FaultServer, dest: Path
) -> None:
    job = create(ferryd, "complete-fails")
    status, body = ferryd.call(
        "POST",
        f"/v1/jobs/{job}/files",
        {
            "files": [
                {"remote_name": server.add("a", SMALL), "local_name": str(dest / "a")},
                {
                    "remote_name": server.add("b", BIG, pause_after=256 * KiB),
                    "local_name": str(dest / "b"),
                },
            ]
        },
    )
    assert status == 200, body
    act(ferryd, job, "resume")
    wait_until(lambda: files(ferryd, job)[0]["completed"], "the first file")
    wait_until(lambda: server.paused("b"), "the second file mid-transfer")

    # The first file's local name is now a directory that is not empty: its rename fails.
    (dest / "a").mkdir()
    (dest / "a" / "keep").write_bytes(b"")
    status, err = ferryd.call("POST", f"/v1/jobs/{job}/complete", {})
    assert status != 200, err
    failed_at = time.monotonic()

    # The job is not left stopped and held: it transfers the rest again at once.
    wait_until(lambda: len(server.requests_for("b")) >= 2, "the transfer to go on", timeout=10)
    assert time.monotonic() - failed_at < HOLD_SECONDS / 2
    resumed = server.requests_for("b")[1]
    assert resumed.range is not None and resumed.range.startswith("bytes=")
    done = wait_state(ferryd, job, "TRANSFERRED", "ERROR", "TRANSIENT_ERROR")
    assert done["state"] == "TRANSFERRED", done

    (dest / "a" / "keep").unlink()
    (dest / "a").rmdir()
    body = act(ferryd, job, "complete")
    assert body["result"]["code"] == "S_OK" and body["job"]["state"] == "ACKNOWLEDGED"
    assert (dest / "a").read_bytes() == SMALL and (dest / "b").read_bytes() == BIG
    assert temps(dest) == []


def test_failed_complete_of_a_transferred_job_is_published(
    ferryd: Daemon, server: FaultServer, dest: Path
) -> None:
    """Nothing runs: the job stays TRANSFERRED (the error goes to the caller), watchers are
    told at once, and complete can be called again once the cause is gone."""
    job = create(ferryd, "complete-fails")
    add(ferryd, job, server.add("a", SMALL), dest / "a")
    act(ferryd, job, "resume")
    assert wait_state(ferryd, job, "TRANSFERRED", "ERROR")["state"] == "TRANSFERRED"
    (dest / "a").mkdir()
    (dest / "a" / "keep").write_bytes(b"")
    stream = EventStream(ferryd, f"job={job}&all_events=true")
    try:
        stream.sock.settimeout(10)
        status, err = ferryd.call("POST", f"/v1/jobs/{job}/complete", {})
        assert status != 200, err
        name, event = next((n, e) for n, e in stream.events() if n != "job-snapshot")
    finally:
        stream.close()
    assert name == "job-modification", (name, event)
    assert event["job"]["state"] == "TRANSFERRED", event
    assert get(ferryd, job)["state"] == "TRANSFERRED"
    assert len(temps(dest)) == 1, "the temporary file is kept for the next try"
    (dest / "a" / "keep").unlink()
    (dest / "a").rmdir()
    assert act(ferryd, job, "complete")["result"]["code"] == "S_OK"
    assert (dest / "a").read_bytes() == SMALL and temps(dest) == []
