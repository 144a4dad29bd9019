"""The notification outbox: the command-line notifications ferryd owes (SPEC §2.6), durable
in the store and in memory here, and how each attempt and outcome is recorded.

A part that moves a job into TRANSFERRED or ERROR asks ``due`` for the notification the
job now owes, writes it in the same store call as the state change, and hands it over with
``announce`` once that write has returned (persist before you announce). The notifier
(service/notify.py) runs what is owed: it counts each attempt durably before the program
starts (``attempt``) and records how it went (``outcome``); a settled notification leaves
the outbox in one transaction with the job's ``notification`` status.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from ..model import notification as notif
from ..model.job import Job
from ..model.notification import NotificationStatus, PendingNotification
from ..store.base import JobStore
from .table import JobTable


class Outbox:
    def __init__(
        self, store: JobStore, table: JobTable, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._table = table
        self._clock = clock
        self._owed: dict[int, PendingNotification] = {}
        self._wake = asyncio.Event()

    # ---- the parts that change jobs -------------------------------------------------

    def due(self, job: Job) -> PendingNotification | None:
        """The notification a job that has just entered TRANSFERRED or ERROR owes, if any;
        the job's status says PENDING from now on. Store it with the state change."""
        n = notif.due(
            job.id,
            job.state,
            job.notify_flags,
            job.notify_cmdline,
            job.owner,
            float(job.min_retry_delay),
            self._clock(),
        )
        if n is not None:
            job.notification = notif.status(n, notif.PENDING)
        return n

    def announce(self, n: PendingNotification | None) -> None:
        """``n`` is in the store's outbox (its write has returned): it is owed."""
        if n is not None and n.id is not None:
            self._owed.setdefault(n.id, n)
            self._wake.set()

    # ---- the notifier ---------------------------------------------------------------

    async def restore(self) -> list[PendingNotification]:
        """What the store's outbox holds (at start-up: owed from before)."""
        return await self._store.pending_notifications()

    def owed(self) -> list[PendingNotification]:
        return list(self._owed.values())

    def wake(self) -> None:
        """Something about the owed notifications changed: the notifier looks again."""
        self._wake.set()

    async def wait(self, timeout: float | None) -> None:
        """Until the next ``announce`` or ``wake`` (one since the last wait counts), or
        ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        self._wake.clear()

    async def attempt(self, n: PendingNotification) -> None:
        """An attempt is about to run: count it durably first, so a crash during the run
        neither loses the notification nor lets it retry forever."""
        await self._store.update_notification(n)

    async def outcome(self, n: PendingNotification, status: NotificationStatus) -> None:
        """Record how an attempt went on the job (if it still exists); a settled
        notification (delivered, or failed for the last time) leaves the outbox in the same
        transaction, and then stops being owed."""
        job = self._table.get(n.job_id)
        if job is not None:
            job.notification = status
        if status.settled:
            write = self._store.finish_notification(n, job)
        else:
            write = self._store.update_notification(n, job)
        if job is None:
            await write
        else:
            await self._table.commit(job, write)
        if status.settled and n.id is not None:
            self._owed.pop(n.id, None)
