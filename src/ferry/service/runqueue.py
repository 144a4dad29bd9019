"""The seam between the job side of the services and the scheduler.

``RunQueue`` is the scheduler's index of the jobs that may run — QUEUED jobs per priority in
the order they were queued, TRANSIENT_ERROR jobs waiting for their retry — with the jobs held
while a service changes them, and the scheduler's wake-up. The job table tells it of every
change of a job (``job_changed``, in the same step as the change, see service/table.py); the
scheduler reads it. ``Transfers`` is what the command parts need of the scheduler.

Why a separate object: it breaks the construction cycle between the scheduler and the job
side openly. The scheduler needs the job side (to record a run's start and outcome) and the
job side must tell the scheduler of every change. ``daemon/main.py`` creates the RunQueue
first, hands it to the job table, then builds the scheduler on both, then the command parts
on the scheduler (as ``Transfers``). Nothing is patched in after construction.

Holds: a job a service stops in order to change it (suspend, cancel, complete, a logoff)
must not start again before the change is made. ``hold`` marks it while the stop is in
progress, ``hold_until`` once it has stopped, with a deadline for a change that never comes
(the operation failed half-way); the change itself (``job_changed``) ends a hold of the
second kind.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Protocol

from ..model.job import Job
from ..model.types import JobState, Priority


class Transfers(Protocol):
    """The scheduler, as the services that change jobs see it."""

    def kick(self) -> None:
        """Something may be runnable now: make a scheduling pass soon."""

    async def stop(self, job: Job) -> None:
        """Stop the job's transfer, if it runs, and return once its task has let go of
        its files; the job does not start again until the caller's change is made."""


class RunQueue:
    def __init__(self) -> None:
        self._queued: dict[Priority, dict[str, Job]] = {p: {} for p in Priority}
        self._queued_as: dict[str, Priority] = {}
        self._waiting: dict[str, Job] = {}
        # None while the stop is in progress, then the loop time the hold ends.
        self._held: dict[str, float | None] = {}
        self._wake = asyncio.Event()

    # ---- the job side ----------------------------------------------------------------

    def job_changed(self, job: Job) -> None:
        """Keep the index current; called for every change of a job, as it is made."""
        jid = job.id
        if job.state is _QUEUED:
            self._waiting.pop(jid, None)
            where = self._queued_as.get(jid)
            if where is not job.priority:  # newly queued, or its priority changed
                if where is not None:
                    del self._queued[where][jid]
                self._queued[job.priority][jid] = job
                self._queued_as[jid] = job.priority
        else:
            where = self._queued_as.pop(jid, None)
            if where is not None:
                del self._queued[where][jid]
            if job.state is _TRANSIENT_ERROR:
                self._waiting[jid] = job
            else:
                self._waiting.pop(jid, None)
        if self._held.get(jid) is not None:
            del self._held[jid]  # the change the job was stopped for is made

    def jobs_loaded(self, jobs: Iterable[Job]) -> None:
        """The jobs just loaded at start, into an empty index, in their stored order: what
        ``job_changed`` of each would do, without asking about the jobs no queue holds
        (nearly all of 100,000 stored jobs are suspended, final or in error)."""
        for job in jobs:
            state = job.state
            if state is _QUEUED or state is _TRANSIENT_ERROR:
                self.job_changed(job)

    def kick(self) -> None:
        self._wake.set()

    # ---- the scheduler ---------------------------------------------------------------

    def queued(self, priority: Priority) -> list[Job]:
        """The QUEUED jobs of one priority, first queued first (a copy)."""
        return list(self._queued[priority].values())

    def waiting(self) -> list[Job]:
        """The TRANSIENT_ERROR jobs (a copy)."""
        return list(self._waiting.values())

    async def wait(self, timeout: float | None) -> None:
        """Until the next kick (one since the last wait counts) or ``timeout`` seconds."""
        # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that arrives as
        # the event is set (a kick racing SIGTERM), and the scheduler then never stopped.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        self._wake.clear()

    def hold(self, job_id: str) -> None:
        self._held[job_id] = None

    def hold_until(self, job_id: str, until: float) -> None:
        self._held[job_id] = until

    def is_held(self, job_id: str) -> bool:
        return job_id in self._held

    def expire_holds(self, loop_now: float) -> list[float]:
        """End the holds whose time is up; how long until each remaining one ends."""
        due: list[float] = []
        for jid, until in list(self._held.items()):
            if until is not None:
                if until <= loop_now:
                    del self._held[jid]
                else:
                    due.append(until - loop_now)
        return due


# Module constants: ``JobState.X`` in a method is a descriptor lookup on every call.
_QUEUED, _TRANSIENT_ERROR = JobState.QUEUED, JobState.TRANSIENT_ERROR
