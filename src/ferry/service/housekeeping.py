"""Housekeeping (SPEC §2.1): final jobs are purged after their retention period, and a job
nobody has modified for ``job_inactivity_timeout`` is cancelled."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from ..errors import FerryError
from ..model.job import Job
from ..store.base import JobStore
from . import events as ev
from .table import JobTable

log = logging.getLogger("ferry.housekeeping")

# A pass over every job gives the event loop back after this many (a few milliseconds).
YIELD_EVERY = 2000

# Cancels a job unless it was modified after the given time (the manager's cancel_job).
Cancel = Callable[[Job, float], Awaitable[object]]


class Housekeeper:
    def __init__(
        self,
        table: JobTable,
        store: JobStore,
        cancel: Cancel,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._table = table
        self._store = store
        self._cancel = cancel
        self._clock = clock

    async def run(self, retention: float, inactivity: float, interval: float) -> None:
        while True:
            try:
                await self.sweep(retention, inactivity)
            except Exception:
                log.exception("housekeeping failed; trying again later")
            await asyncio.sleep(interval)

    async def sweep(self, retention: float, inactivity: float) -> None:
        """One round over every job."""
        now = self._clock()
        for n, job in enumerate(self._table.all(), 1):
            if not n % YIELD_EVERY:
                # A pass over 100,000 jobs right after a start must not hold the event loop
                # (the socket is already serving): let waiting requests in now and then.
                await asyncio.sleep(0)
            idle = now - job.modified
            if job.state.is_final:
                # (Still in the table: this pass lets others run, and one may have removed it.)
                if idle >= retention and self._table.get(job.id) is job:
                    await self._purge(job)
            elif idle >= inactivity and self._table.get(job.id) is job:
                log.info("cancelling job %s: inactive for %d s", job.id, idle)
                try:
                    await self._cancel(job, job.modified)
                except FerryError as exc:  # it became final meanwhile, or the store failed
                    log.warning("cannot cancel inactive job %s: %s", job.id, exc)

    async def _purge(self, job: Job) -> None:
        """A final job is read-only, so nothing changes it while its deletion is written."""
        events = self._table.stage(job, (ev.JOB_REMOVED,))
        await self._store.delete_job(job.id)
        self._table.remove(job)
        self._table.publish(events)
