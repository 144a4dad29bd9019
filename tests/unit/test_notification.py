"""When a command-line notification is due, and the store's outbox that carries it: written
in the same transaction as the state change, settled with the job's status."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from ferry.errors import FerryError, format_hresult, hresult_of
from ferry.model import notification as notif
from ferry.model.job import Job, JobFile, Limits
from ferry.model.token import Token
from ferry.model.types import JobState, NotifyFlags
from ferry.protocol.views import job_view
from ferry.store.codec import job_from_record, job_record
from ferry.store.sqlite import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION, SqliteStore

OWNER = Token(1000, 1000, (1000, 27), session=5, name="alice")
CMD = ["/usr/bin/true", "x"]


def pending(
    state: JobState, flags: int, cmd: list[str] | None = CMD
) -> notif.PendingNotification | None:
    return notif.due("j", state, NotifyFlags(flags), cmd, OWNER, 600.0, 100.0)


@pytest.mark.parametrize(
    ("state", "flags", "event"),
    [
        (JobState.TRANSFERRED, 0x1, notif.JOB_TRANSFERRED),
        (JobState.TRANSFERRED, 0x3, notif.JOB_TRANSFERRED),
        (JobState.TRANSFERRED, 0x2, None),
        (JobState.ERROR, 0x2, notif.JOB_ERROR),
        (JobState.ERROR, 0x1, None),
        (JobState.TRANSIENT_ERROR, 0x1B, None),  # BITS: the ERROR state only
        (JobState.TRANSFERRED, 0x1B, notif.JOB_TRANSFERRED),
        (JobState.TRANSFERRED, 0x1F, None),  # 0x1F includes DISABLE, which silences
        (JobState.ERROR, 0x4 | 0x2, None),
        (JobState.TRANSFERRING, 0x1B, None),
    ],
)
def test_due(state: JobState, flags: int, event: str | None) -> None:
    n = pending(state, flags)
    assert (n.event if n else None) == event
    if n is not None:
        assert (n.owner, n.cmdline, n.job_state, n.next_attempt) == (OWNER, CMD, state.value, 100.0)


def test_nothing_is_due_without_a_command_line() -> None:
    assert pending(JobState.TRANSFERRED, 0x3, None) is None


def test_status_view() -> None:
    n = pending(JobState.ERROR, 0x2)
    assert n is not None
    n.attempts = 2
    assert notif.status(n, notif.PENDING, "E_FAIL", "exited with status 3").to_json() == {
        "last_event": "JOB_ERROR",
        "state": "PENDING",
        "attempts": 2,
        "error": {
            "code": "E_FAIL",
            "hresult": "0x80004005",
            "context": "QUEUE_MANAGER_NOTIFICATION",
            "description": "exited with status 3",
        },
    }
    assert notif.status(n, notif.DELIVERED).error is None


def test_status_json_is_the_stored_and_the_public_shape() -> None:
    """The status is a value object inside; the store and clients see the same JSON as when
    it was a dict, key order included (a stored record is byte-for-byte what it was)."""
    n = pending(JobState.ERROR, 0x2)
    assert n is not None
    n.attempts = 3
    job = make_job()
    job.notification = notif.status(n, notif.FAILED, "BG_E_WATCHDOG_TIMEOUT", "did not finish")
    shape = {
        "last_event": "JOB_ERROR",
        "state": "FAILED",
        "attempts": 3,
        "error": {
            "code": "BG_E_WATCHDOG_TIMEOUT",
            "hresult": format_hresult(hresult_of("BG_E_WATCHDOG_TIMEOUT")),
            "context": "QUEUE_MANAGER_NOTIFICATION",
            "description": "did not finish",
        },
    }
    record = job_record(job)
    assert json.dumps(record["notification"]) == json.dumps(shape)
    assert job_view(job)["notification"] == shape
    again = job_from_record(json.loads(json.dumps(record)), job.files)
    assert again.notification == job.notification
    assert job_record(again) == record
    job.notification = notif.status(n, notif.DELIVERED)
    assert job_view(job)["notification"] == dict(shape, state="DELIVERED", error=None)
    assert job_from_record(job_record(job), job.files).notification == job.notification


def make_job() -> Job:
    job = Job.new(OWNER, "n", 1.0, Limits())
    job.add_files([JobFile("http://h/a", "/tmp/a")], Limits(), 1.0)
    return job


def test_outbox_round_trip_with_the_state_change(tmp_path: Path) -> None:
    with SqliteStore.open(tmp_path / "ferry.db") as store:
        job = make_job()
        store.insert_job(job)
        job.state = JobState.TRANSFERRED
        job.files[0].completed = True
        n = pending(JobState.TRANSFERRED, 0x1)
        assert n is not None
        job.notification = notif.status(n, notif.PENDING)
        store.save_progress(job, 0, n)
        assert n.id is not None
        (loaded,) = store.pending_notifications()
        assert (loaded.id, loaded.owner, loaded.cmdline, loaded.attempts) == (n.id, OWNER, CMD, 0)
        assert store.load_all()[0].notification == job.notification

        n.attempts, n.next_attempt = 1, 160.0
        store.update_notification(n)
        (loaded,) = store.pending_notifications()
        assert (loaded.attempts, loaded.next_attempt) == (1, 160.0)

        job.notification = notif.status(n, notif.DELIVERED)
        store.finish_notification(n, job)
        assert store.pending_notifications() == []
        loaded = store.load_all()[0].notification
        assert loaded is not None and loaded.state == "DELIVERED"


def test_a_failed_transaction_leaves_no_outbox_entry(tmp_path: Path) -> None:
    with SqliteStore.open(tmp_path / "ferry.db") as store:
        job = make_job()  # never inserted: the update fails, the insert must roll back
        n = pending(JobState.ERROR, 0x2)
        assert n is not None
        with pytest.raises(FerryError):
            store.save_job_header(job, n)
        assert store.pending_notifications() == []


def test_settling_a_notification_of_a_purged_job(tmp_path: Path) -> None:
    with SqliteStore.open(tmp_path / "ferry.db") as store:
        job = make_job()
        store.insert_job(job)
        job.state = JobState.ERROR
        n = pending(JobState.ERROR, 0x2)
        assert n is not None
        store.save_job_header(job, n)
        store.delete_job(job.id)
        assert len(store.pending_notifications()) == 1  # outlives the job
        store.finish_notification(n, None)
        assert store.pending_notifications() == []


def test_a_version_1_store_gains_the_outbox(tmp_path: Path) -> None:
    path = tmp_path / "ferry.db"
    conn = sqlite3.connect(path)
    for sql in MIGRATIONS[0]:
        conn.execute(sql)
    conn.execute("PRAGMA user_version = 1")
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.commit()
    conn.close()
    assert SCHEMA_VERSION >= 2
    with SqliteStore.open(path) as store:
        assert store.pending_notifications() == []
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    conn.close()


def test_config_keys(tmp_path: Path) -> None:
    from ferry.daemon.config import load_config

    path = tmp_path / "ferryd.toml"
    path.write_text(
        "[daemon]\nmin_notification_interval_ms = 250\nnotify_timeout = 5\n"
        "notify_retry_delay = 1.5\nnotify_max_attempts = 2\nnotify_start_delay = 0\n"
    )
    cfg = load_config(False, path)
    assert (cfg.min_notification_interval_ms, cfg.notify_timeout, cfg.notify_retry_delay) == (
        250,
        5,
        1.5,
    )
    assert (cfg.notify_max_attempts, cfg.notify_start_delay) == (2, 0)
    for bad in (
        "notify_timeout = 0",
        "notify_max_attempts = 0",
        "min_notification_interval_ms = -1",
    ):
        path.write_text(f"[daemon]\n{bad}\n")
        with pytest.raises(FerryError):
            load_config(False, path)
