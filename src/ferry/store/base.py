"""The job store interface: what the queue manager needs of durable storage.

ferryd holds every job in memory and the store is its durable copy; each write is atomic
(a change and the notification it made due are stored together, or neither is).
Every method is a coroutine, so a store may do its blocking work (SQLite's fsync'd commits,
PostgreSQL's round trips) away from the event loop. What a write stores is taken from the
job **when the method is called**, so later changes to the in-memory job never leak into an
earlier write; writes of one store are applied in the order they were called.

The contract in detail, as ``tests/store/`` checks it:

* Call time. A method may be a plain function that returns a coroutine (``SqliteJobStore``'s
  are): it serialises the job and queues the write before returning, so
  ``c = store.save_job(job); job.x = 1; await c`` stores the job without ``x``, and
  ``store.save_job(a)`` called before ``store.save_job(b)`` is applied first, whichever
  coroutine runs first; a read (``load_all``, ``pending_notifications``) sees every write
  called before it. An ``async def`` would only read the job when first awaited.
* Durable on return. A write's coroutine completes once the write is committed; a
  ``PendingNotification`` passed to a save has its outbox ``id`` set by then.
* Each write on its own. A store may commit several callers' writes in one transaction
  (group commit), but one failing write fails alone, with the error the write deserves
  (``BG_E_NOT_FOUND`` for a job that was deleted, ``E_FAIL`` for a duplicate), leaving the
  others to commit; only a failure of the shared commit fails them all.
* Never on the event loop. Blocking work (disk, network) runs elsewhere: a thread of the
  store's own (SQLite, store/writer.py) or an asynchronous driver (PostgreSQL).
* ``close()`` applies every write called before it; afterwards calls raise ``E_FAIL``.

Implementations: ``store/sqlite.py`` (the embedded default). A new store is one new file
that passes the conformance suite in ``tests/store/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..model.job import Job
from ..model.notification import PendingNotification


class JobStore(Protocol):
    async def load_all(self) -> list[Job]:
        """Every job with its files in index order, jobs in the order they were inserted."""
        ...

    async def insert_job(self, job: Job) -> None:
        """A new job and all its files. A job id already stored: E_FAIL."""
        ...

    async def save_job(self, job: Job) -> None:
        """The job and every file (rows beyond the file list are dropped)."""
        ...

    async def save_job_header(
        self, job: Job, notification: PendingNotification | None = None
    ) -> None:
        """Only the job (not its files), and the notification it made due."""
        ...

    async def save_progress(
        self, job: Job, index: int, notification: PendingNotification | None = None
    ) -> None:
        """The job and one of its files (a checkpoint, a file started or completed)."""
        ...

    async def save_files(
        self, job: Job, indices: Sequence[int], notification: PendingNotification | None = None
    ) -> None:
        """The job and several of its files."""
        ...

    async def add_files(self, job: Job, first_index: int) -> None:
        """The job and its new files ``job.files[first_index:]`` (inserted, never replaced)."""
        ...

    async def delete_job(self, job_id: str) -> bool:
        """Remove a job and its files; False when there was no such job."""
        ...

    async def pending_notifications(self) -> list[PendingNotification]:
        """Every owed command-line notification, oldest first."""
        ...

    async def update_notification(
        self, n: PendingNotification, job: Job | None = None
    ) -> None:
        """An attempt is counted (and the job's notification status saved, when given)."""
        ...

    async def finish_notification(
        self, n: PendingNotification, job: Job | None = None
    ) -> None:
        """The notification leaves the outbox (and the job's status is saved, when given)."""
        ...

    async def close(self) -> None:
        """Finish pending writes and release the store. Idempotent."""
        ...
