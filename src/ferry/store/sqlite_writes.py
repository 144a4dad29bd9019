"""The writes of the SQLite job store (store/sqlite.py), encoded at call time.

Each write_* function reads the job *now*, on the calling thread, serialises what it will
store (JSON records, row tuples) and returns a function that runs the statements inside an
open transaction. That function holds only the serialised snapshot, never a live object,
so it can run later, on the store's thread, and a change made to the job in the meantime
cannot leak into it. Its value is the caller's answer (delete: whether there was a job;
a write that stores a notification: the outbox row's id, for ``PendingNotification.id``).

``SqliteStore`` runs each write in a transaction of its own; ``SqliteJobStore`` hands them
to its thread, which commits the writes that queue up together (``SqliteStore.apply_group``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import TypeAlias, TypeVar

from ..errors import FerryError
from ..model.job import Job
from ..model.notification import PendingNotification
from .codec import file_record, job_record

T = TypeVar("T")

# The statements of the hot paths, spelled once so the connection's cache reuses them.
_INSERT_JOB = "INSERT INTO jobs (id, owner_uid, state, modified, record) VALUES (?, ?, ?, ?, ?)"
_UPDATE_JOB = "UPDATE jobs SET owner_uid = ?, state = ?, modified = ?, record = ? WHERE id = ?"
_INSERT_FILE = "INSERT INTO files (job_id, idx, record) VALUES (?, ?, ?)"
# Upsert that leaves an unchanged row alone: re-saving a 1,000-file job whose files did not
# change dirties no page of the files table, so the WAL append stays small.
_UPSERT_FILE = (
    "INSERT INTO files (job_id, idx, record) VALUES (?, ?, ?) "
    "ON CONFLICT (job_id, idx) DO UPDATE SET record = excluded.record "
    "WHERE files.record IS NOT excluded.record"
)
_TRIM_FILES = "DELETE FROM files WHERE job_id = ? AND idx >= ?"
_INSERT_NOTIFICATION = "INSERT INTO notifications (job_id, next_attempt, record) VALUES (?, ?, ?)"

# ensure_ascii (the default) matters: local names may carry undecodable bytes as lone
# surrogates (surrogateescape), which SQLite could not store as UTF-8 text; escaped as
# \udcXX they round-trip exactly. Compact separators keep rows and the WAL small.
_dumps = json.JSONEncoder(separators=(",", ":")).encode


Write: TypeAlias = Callable[[sqlite3.Connection], T]

_JobRow = tuple[int, str, float, str, str]  # _UPDATE_JOB's parameters
_NotificationRow = tuple[str, float, str]


def _job_row(job: Job) -> _JobRow:
    return (job.owner.uid, job.state._value_, job.modified, _dumps(job_record(job)), job.id)


def _update_job(conn: sqlite3.Connection, row: _JobRow) -> None:
    if conn.execute(_UPDATE_JOB, row).rowcount != 1:
        # Saving a job that was deleted must not resurrect it; say so and change nothing.
        raise FerryError("BG_E_NOT_FOUND", f"job {row[4]} is not in the job store")


def _notification_row(n: PendingNotification | None) -> _NotificationRow | None:
    return None if n is None else (n.job_id, n.next_attempt, _dumps(n.to_record()))


def _insert_notification(conn: sqlite3.Connection, row: _NotificationRow | None) -> int | None:
    if row is None:
        return None
    return conn.execute(_INSERT_NOTIFICATION, row).lastrowid


def write_insert_job(job: Job) -> Write[None]:
    row = (job.id, job.owner.uid, job.state._value_, job.modified, _dumps(job_record(job)))
    jid = job.id
    files = [(jid, i, _dumps(file_record(f))) for i, f in enumerate(job.files)]

    def write(conn: sqlite3.Connection) -> None:
        conn.execute(_INSERT_JOB, row)
        if files:
            conn.executemany(_INSERT_FILE, files)

    return write


def write_save_job(job: Job) -> Write[None]:
    row = _job_row(job)
    jid, count = job.id, len(job.files)
    files = [(jid, i, _dumps(file_record(f))) for i, f in enumerate(job.files)]

    def write(conn: sqlite3.Connection) -> None:
        _update_job(conn, row)
        conn.execute(_TRIM_FILES, (jid, count))
        if files:
            conn.executemany(_UPSERT_FILE, files)

    return write


def write_save_files(
    job: Job, indices: Sequence[int], notification: PendingNotification | None = None
) -> Write[int | None]:
    """The job row, the file rows at ``indices`` (none: save_job_header) and the
    notification the change made due; the value is the notification's outbox id."""
    files = job.files
    for index in indices:
        if not 0 <= index < len(files):
            raise IndexError(f"job {job.id} has no file {index}")
    row = _job_row(job)
    jid = job.id
    file_rows = [(jid, i, _dumps(file_record(files[i]))) for i in indices]
    note = _notification_row(notification)

    def write(conn: sqlite3.Connection) -> int | None:
        _update_job(conn, row)
        if len(file_rows) == 1:  # the progress checkpoint: the hot path
            conn.execute(_UPSERT_FILE, file_rows[0])
        elif file_rows:
            conn.executemany(_UPSERT_FILE, file_rows)
        return _insert_notification(conn, note)

    return write


def write_add_files(job: Job, first_index: int) -> Write[None]:
    """Plain inserts, not upserts: a row already there means the caller's bookkeeping is
    wrong, and failing loudly (E_FAIL) beats silently overwriting a file's progress."""
    files = job.files
    if not 0 <= first_index <= len(files):
        raise IndexError(f"job {job.id} has no file {first_index}")
    row = _job_row(job)
    jid = job.id
    file_rows = [(jid, i, _dumps(file_record(files[i]))) for i in range(first_index, len(files))]

    def write(conn: sqlite3.Connection) -> None:
        _update_job(conn, row)
        if file_rows:
            conn.executemany(_INSERT_FILE, file_rows)

    return write


def write_delete_job(job_id: str) -> Write[bool]:
    def write(conn: sqlite3.Connection) -> bool:
        return conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount > 0

    return write


def write_update_notification(n: PendingNotification, job: Job | None) -> Write[None]:
    params = (n.next_attempt, _dumps(n.to_record()), n.id)
    row = None if job is None else _job_row(job)

    def write(conn: sqlite3.Connection) -> None:
        conn.execute("UPDATE notifications SET next_attempt = ?, record = ? WHERE id = ?", params)
        if row is not None:
            _update_job(conn, row)

    return write


def write_finish_notification(n: PendingNotification, job: Job | None) -> Write[None]:
    nid = n.id
    row = None if job is None else _job_row(job)

    def write(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM notifications WHERE id = ?", (nid,))
        if row is not None:
            _update_job(conn, row)

    return write
