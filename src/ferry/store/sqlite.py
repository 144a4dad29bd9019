"""The default persistent job store: every job, its files and helper tokens in one SQLite file.

Why it is shaped this way:

* Durability is the point (SPEC §3: a ``kill -9`` or power loss loses nothing that was
  acknowledged). The database runs in WAL mode with ``synchronous=FULL``, so every commit
  is one append to the WAL plus one fsync, and a write has committed before it is answered
  ("persist before you announce"): a :class:`SqliteStore` method when it returns, a
  :class:`SqliteJobStore` coroutine when it completes.
* Where the blocking work runs. :class:`SqliteStore` is synchronous and works on the calling
  thread, one transaction per call (tests, benchmarks, tools). ferryd uses
  :class:`SqliteJobStore`, the ``JobStore`` protocol (store/base.py): it encodes each write
  on the event loop at call time and does every SQLite call on one thread of its own
  (store/writer.py), committing the writes that queue up during a commit together in one
  transaction (group commit: one fsync for many callers, a savepoint each).
* The hot path is the progress checkpoint (``save_progress``) and job creation
  (``insert_job``): one long-lived connection, statements reused from the connection's
  statement cache, ``isolation_level=None`` with explicit ``BEGIN IMMEDIATE``/``COMMIT``
  so Python's sqlite3 module adds no implicit transactions of its own.
* The codec (store/codec.py) owns the shape of a record: a row holds ``job_record(job)`` /
  ``file_record(f)`` as JSON, and only the columns the store itself needs to query (owner,
  state, modified) are broken out. A new job field therefore needs no migration.
* The file itself — created private, a damaged or foreign one refused and left untouched,
  the schema migrated — is store/sqlite_file.py's business.

This module is :class:`SqliteJobStore`; :class:`SqliteStore` is store/sqlite_sync.py's and
the writes both run are store/sqlite_writes.py's. Import both stores (and the schema's
``APPLICATION_ID``, ``SCHEMA_VERSION``, ``MIGRATIONS``) from here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..model.job import Job
from ..model.notification import PendingNotification
from .sqlite_file import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION
from .sqlite_sync import SqliteStore
from .sqlite_writes import (
    Write,
    write_add_files,
    write_delete_job,
    write_finish_notification,
    write_insert_job,
    write_save_files,
    write_save_job,
    write_update_notification,
)
from .writer import MAX_GROUP, Outcome, StoreThread

if TYPE_CHECKING:
    from .base import JobStore


class SqliteJobStore:
    """The ``JobStore`` protocol (store/base.py) on SQLite, for the event loop.

    Where the work runs: every SQLite call — each transaction and its fsync, ``load_all``,
    ``pending_notifications``, the WAL checkpoint of ``close`` — runs on one dedicated thread
    that owns the connection (store/writer.py); the event loop only encodes and queues.
    Writes are encoded (the job's JSON records) on the calling thread when the method is
    *called*, before the returned coroutine is even awaited, and queued in call order; so
    ``c = store.save_job(job); job.description = "x"; await c`` stores the job as it was
    at the call, and two saves of one job apply in the order they were called, however
    their coroutines are scheduled.

    Group commit: writes that queue up while a commit is in flight are committed together
    in the next transaction (:meth:`SqliteStore.apply_group`: one fsync for all of them, a
    savepoint each so one failing write fails alone); each caller resumes when its own
    write is durable. A failing write raises what the synchronous store raises for it
    (``BG_E_NOT_FOUND`` for a job that was deleted, ``E_FAIL`` for a duplicate id or file
    row, ``IndexError`` for a file index the job does not have — that one when awaited,
    nothing having been queued); a failed COMMIT fails every write of its group.

    The methods are plain functions returning coroutines (what the protocol's ``async def``
    declares), which is what lets them act at call time. Own the :class:`SqliteStore`
    exclusively: a synchronous call on ``db`` meanwhile is safe (a lock) but unordered.
    """

    def __init__(
        self,
        db: SqliteStore,
        *,
        max_group: int = MAX_GROUP,
        on_commit: Callable[[float, int], None] | None = None,
    ) -> None:
        self.db = db
        self.path = db.path
        apply_group = db.apply_group
        if on_commit is not None:
            # Metrics: how long each group commit takes, measured on the store thread.
            def apply_group(writes: Sequence[Write[Any]]) -> list[Outcome]:
                t0 = time.perf_counter()
                try:
                    return db.apply_group(writes)
                finally:
                    on_commit(time.perf_counter() - t0, len(writes))

        self._thread: StoreThread[Write[Any]] = StoreThread(
            "ferry-store", apply_group, db.close, db.closed_error, max_group=max_group
        )

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        check: bool = True,
        on_commit: Callable[[float, int], None] | None = None,
    ) -> SqliteJobStore:
        """Open as :meth:`SqliteStore.open` does (on the calling thread: it runs before the
        daemon serves anything) and start the store's thread. ``on_commit(seconds, writes)`` is
        told the duration of every group commit and how many writes it carried, on the store's
        thread."""
        return cls(SqliteStore.open(path, check=check), on_commit=on_commit)

    async def __aenter__(self) -> SqliteJobStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _write(
        self, encode: Callable[[], Write[Any]], then: Callable[[Any], Any] | None = None
    ) -> Coroutine[Any, Any, Any]:
        if self._thread.closed:
            return _fail(self.db.closed_error())
        try:
            write = encode()  # now, on the calling thread: the snapshot
        except Exception as exc:
            return _fail(exc)
        return self._thread.write(write, then)

    def load_all(self) -> Coroutine[Any, Any, list[Job]]:
        return self._thread.read(self.db.load_all)

    def insert_job(self, job: Job) -> Coroutine[Any, Any, None]:
        return self._write(lambda: write_insert_job(job))

    def save_job(self, job: Job) -> Coroutine[Any, Any, None]:
        return self._write(lambda: write_save_job(job))

    def save_job_header(
        self, job: Job, notification: PendingNotification | None = None
    ) -> Coroutine[Any, Any, None]:
        return self._write(
            lambda: write_save_files(job, (), notification), _id_setter(notification)
        )

    def save_progress(
        self, job: Job, index: int, notification: PendingNotification | None = None
    ) -> Coroutine[Any, Any, None]:
        return self._write(
            lambda: write_save_files(job, (index,), notification), _id_setter(notification)
        )

    def save_files(
        self, job: Job, indices: Sequence[int], notification: PendingNotification | None = None
    ) -> Coroutine[Any, Any, None]:
        return self._write(
            lambda: write_save_files(job, indices, notification), _id_setter(notification)
        )

    def add_files(self, job: Job, first_index: int) -> Coroutine[Any, Any, None]:
        return self._write(lambda: write_add_files(job, first_index))

    def delete_job(self, job_id: str) -> Coroutine[Any, Any, bool]:
        return self._write(lambda: write_delete_job(job_id))

    def pending_notifications(self) -> Coroutine[Any, Any, list[PendingNotification]]:
        return self._thread.read(self.db.pending_notifications)

    def update_notification(
        self, n: PendingNotification, job: Job | None = None
    ) -> Coroutine[Any, Any, None]:
        return self._write(lambda: write_update_notification(n, job))

    def finish_notification(
        self, n: PendingNotification, job: Job | None = None
    ) -> Coroutine[Any, Any, None]:
        return self._write(lambda: write_finish_notification(n, job))

    async def close(self) -> None:
        """Commit every write queued so far, then close the database (the WAL checkpoint
        runs on the store's thread). Idempotent; calls made afterwards raise E_FAIL."""
        await self._thread.close()


def _id_setter(n: PendingNotification | None) -> Callable[[Any], None] | None:
    """Records the outbox id on the caller's loop, before the caller resumes."""
    if n is None:
        return None

    def then(rowid: Any) -> None:
        n.id = rowid

    return then


async def _fail(exc: BaseException) -> Any:
    raise exc


if TYPE_CHECKING:
    _conforms: type[JobStore] = SqliteJobStore


__all__ = [
    "APPLICATION_ID",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SqliteJobStore",
    "SqliteStore",
]
