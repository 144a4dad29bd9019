"""A download's temporary file is never one the store does not know: its name is persisted
before the file is created (O_EXCL), so a SIGKILL of ferryd at any moment leaves no orphan.
Crash points inside a real ferryd (tests/helpers/crashpoint.py) stop it exactly between
those steps; after the restart, the transfer goes on in that very file, or creates exactly
the persisted name, and cancel or complete leave nothing behind — whether the file exists
or not.
"""

from __future__ import annotations

import hashlib
import json
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.faultserver import FaultServer
from harness.ferryd import Daemon
from harness.wait import wait_state, wait_until

from tests.helpers import crashpoint
from tests.helpers.jobs import act, add, create, get, temps

KiB = 1 << 10
DATA = hashlib.sha256(b"ferry").digest() * (32 * KiB)  # 1 MiB
PAUSE = 256 * KiB  # the first response stops here until released: the job is mid-transfer


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as srv:
        yield srv


@pytest.fixture
def daemon(short_tmp: Path) -> Iterator[Daemon]:
    """A ferryd the test starts itself, once its crash point is armed."""
    d = Daemon(short_tmp)
    yield d
    code = d.stop()
    assert code == 0, f"ferryd exited with {code}:\n{d.log()}"


def crashed(d: Daemon) -> None:
    """Wait until ferryd has SIGKILLed itself at its crash point."""
    assert d.proc is not None
    try:
        d.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"ferryd did not reach its crash point:\n{d.log()}") from None
    assert d.proc.returncode == -signal.SIGKILL, d.log()
    d.proc = None


def start_job(d: Daemon, url: str, local: Path) -> str:
    job = create(d, "crash")
    add(d, job, url, local)
    act(d, job, "resume")
    return job


def crash_at(
    point: str,
    daemon: Daemon,
    server: FaultServer,
    dest: Path,
    short_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    pause: int | None = PAUSE,
) -> tuple[str, Path]:
    """Start ferryd with its crash point armed, start a job on ``a.bin`` (paused mid-body
    unless ``pause`` is None) and wait for the kill. Returns the job and the crash point's
    report file (the temporary name it saw)."""
    url = server.add("a.bin", DATA, pause_after=pause)
    report = crashpoint.enable(monkeypatch, short_tmp, point)
    daemon.start()
    job = start_job(daemon, url, dest / "a.bin")
    crashed(daemon)
    return job, report


def test_kill_after_create_then_cancel_leaves_nothing(
    daemon: Daemon,
    server: FaultServer,
    dest: Path,
    short_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job, report = crash_at("kill-after-create", daemon, server, dest, short_tmp, monkeypatch)
    temp = Path(report.read_text())
    assert temps(dest) == [temp], "killed right after the create, before any request"
    assert not server.requests

    crashpoint.disable(monkeypatch)
    daemon.start()
    # The new ferryd knows the file (its name was persisted first) and goes on in it.
    wait_until(lambda: server.paused("a.bin"), "the transfer to go on after the restart")
    assert get(daemon, job)["state"] in ("CONNECTING", "TRANSFERRING")
    assert temps(dest) == [temp]
    body = act(daemon, job, "cancel")
    assert body["job"]["state"] == "CANCELLED"
    assert body["result"]["code"] == "S_OK"
    assert list(dest.iterdir()) == [], "no temporary file, no local file"


def test_kill_after_create_then_complete_publishes_the_file(
    daemon: Daemon,
    server: FaultServer,
    dest: Path,
    short_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job, report = crash_at(
        "kill-after-create", daemon, server, dest, short_tmp, monkeypatch, pause=None
    )
    temp = Path(report.read_text())

    crashpoint.disable(monkeypatch)
    daemon.start()
    done = wait_state(daemon, job, "TRANSFERRED", "ERROR", "TRANSIENT_ERROR")
    assert done["state"] == "TRANSFERRED", done
    assert temps(dest) == [temp], "the transfer went into the file created before the kill"
    body = act(daemon, job, "complete")
    assert body["result"]["code"] == "S_OK"
    assert (dest / "a.bin").read_bytes() == DATA
    assert [p.name for p in dest.iterdir()] == ["a.bin"]


def test_kill_before_create_then_the_persisted_name_is_created(
    daemon: Daemon,
    server: FaultServer,
    dest: Path,
    short_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job, report = crash_at("kill-before-create", daemon, server, dest, short_tmp, monkeypatch)
    name = report.read_text()
    assert name != "None", "the engine names the temporary file before it is created"
    temp = Path(name)
    assert temp.parent == dest and temp.name.startswith(".a.bin.")
    assert list(dest.iterdir()) == [], "killed before the create"

    crashpoint.disable(monkeypatch)
    daemon.start()
    # Only a persisted name can come back after a SIGKILL: the new ferryd creates exactly it.
    wait_until(lambda: server.paused("a.bin"), "the transfer to start after the restart")
    assert temps(dest) == [temp]
    body = act(daemon, job, "cancel")
    assert body["job"]["state"] == "CANCELLED" and body["result"]["code"] == "S_OK"
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("action", ["cancel", "complete"])
def test_persisted_name_without_a_file_is_cleaned_up(
    daemon: Daemon,
    server: FaultServer,
    dest: Path,
    short_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    action: str,
) -> None:
    """The name is persisted but its file was never created (here the create fails): cancel
    and complete delete it all the same, and a missing file is no error."""
    url = server.add("a.bin", DATA)
    report = crashpoint.enable(monkeypatch, short_tmp, "fail-create")
    daemon.start()
    job = start_job(daemon, url, dest / "a.bin")
    failed = wait_state(daemon, job, "ERROR", "TRANSIENT_ERROR", "TRANSFERRED")
    assert failed["state"] == "ERROR" and failed["error"]["code"] == "E_ACCESSDENIED", failed
    assert report.read_text() != "None"
    assert list(dest.iterdir()) == []
    body = act(daemon, job, action)
    expected = ("CANCELLED", "S_OK") if action == "cancel" else (
        "ACKNOWLEDGED", "BG_S_PARTIAL_COMPLETE"
    )
    assert (body["job"]["state"], body["result"]["code"]) == expected, body
    assert list(dest.iterdir()) == []
    assert not server.requests


def _point_temp_name_at(d: Daemon, job: str, target: Path) -> None:
    """What a damaged (or tampered) store looks like: the file's temporary name is some
    other existing file."""
    conn = sqlite3.connect(d.state_dir / "ferry.db")
    try:
        (record,) = conn.execute(
            "SELECT record FROM files WHERE job_id = ? AND idx = 0", (job,)
        ).fetchone()
        rec = json.loads(record)
        rec["temp_name"] = str(target)
        conn.execute(
            "UPDATE files SET record = ? WHERE job_id = ? AND idx = 0", (json.dumps(rec), job)
        )
        conn.commit()
    finally:
        conn.close()


@pytest.mark.parametrize("action", ["cancel", "complete"])
def test_a_stored_name_that_is_not_ours_is_never_touched(
    daemon: Daemon, server: FaultServer, dest: Path, action: str
) -> None:
    """cancel must not delete, and complete must not rename, a file the store names as a
    temporary file when the name is not one ferry makes."""
    url = server.add("a.bin", DATA)
    daemon.start()
    job = start_job(daemon, url, dest / "a.bin")
    wait_state(daemon, job, "TRANSFERRED")
    (real,) = temps(dest)
    precious = dest / "precious.db"
    precious.write_bytes(b"keep me")
    daemon.stop()
    _point_temp_name_at(daemon, job, precious)
    daemon.start()
    if action == "cancel":
        assert act(daemon, job, "cancel")["result"]["code"] == "S_OK"
    else:
        status, err = daemon.call("POST", f"/v1/jobs/{job}/complete", {})
        assert (status, err["error"]["code"]) == (400, "E_INVALIDARG"), err
        assert "is not a temporary name of" in err["error"]["message"]
        assert get(daemon, job)["state"] == "TRANSFERRED", "nothing changed"
    assert precious.read_bytes() == b"keep me"
    assert not (dest / "a.bin").exists()
    real.unlink()  # the file ferry lost track of (only a damaged store does that)
