"""The scheduler: which queued jobs transfer now (SPEC §2.4), and retries of transient errors.

Foreground jobs start at once; background jobs run in priority order, at most
``max_background_jobs`` at a time, and a higher-priority job pre-empts a lower one. Every
transfer is a task in one TaskGroup owned by ``run``; cancelling a task is how suspend,
cancel, complete and pre-emption stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from ..model.job import Job
from ..model.types import JobState, Priority
from ..security.token import Token
from ..transfer.base import TransferError
from ..transfer.engine import TransferEngine
from .manager import QueueManager

log = logging.getLogger("ferry.scheduler")


class Scheduler:
    def __init__(
        self,
        manager: QueueManager,
        engine: TransferEngine,
        max_background_jobs: int,
        is_logged_on: Callable[[Token], bool] = lambda token: True,
    ) -> None:
        self.manager = manager
        self.engine = engine
        self.max_background_jobs = max(1, max_background_jobs)
        self.is_logged_on = is_logged_on
        self._running: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        manager.kick = self.kick
        manager.stop_transfer = self.stop

    def kick(self) -> None:
        self._wake.set()

    @property
    def running(self) -> set[str]:
        return set(self._running)

    async def stop(self, job: Job) -> None:
        """Stop a job's transfer and wait until its task has let go of its files."""
        task = self._running.get(job.id)
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([task])

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                while True:
                    timeout = self._pass()
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout)
            finally:
                for task in self._running.values():
                    task.cancel()

    def _pass(self) -> float | None:
        """One scheduling pass; returns how long until the next retry is due."""
        now = self.manager.clock()
        next_retry: float | None = None
        queued: list[Job] = []
        for job in self.manager.jobs.values():
            if job.state is JobState.TRANSIENT_ERROR and job.retry_at is not None:
                if job.retry_at <= now:
                    self.manager.requeued(job)
                else:
                    wait = job.retry_at - now
                    next_retry = wait if next_retry is None else min(next_retry, wait)
                    continue
            if (
                job.state is JobState.QUEUED
                and job.id not in self._running
                and self.is_logged_on(job.owner)
            ):
                queued.append(job)
        queued.sort(key=lambda j: (j.priority.rank, j.modified))
        for job in queued:
            if job.priority is Priority.FOREGROUND:
                self._start(job)
                continue
            background = [
                self.manager.jobs[i]
                for i in self._running
                if i in self.manager.jobs
                and self.manager.jobs[i].priority is not Priority.FOREGROUND
            ]
            if len(background) < self.max_background_jobs:
                self._start(job)
                continue
            lowest = max(background, key=lambda j: (j.priority.rank, -j.modified))
            if lowest.priority.rank > job.priority.rank:
                log.info("job %s pre-empts job %s", job.id, lowest.id)
                self._running[lowest.id].cancel()
                self._running.pop(lowest.id)
                self.manager.requeued(lowest)
                self._start(job)
        return next_retry

    def _start(self, job: Job) -> None:
        assert self._tg is not None
        self.manager.started(job)
        self._running[job.id] = self._tg.create_task(self._transfer(job), name=f"job-{job.id}")

    async def _transfer(self, job: Job) -> None:
        try:
            await self.engine.run_job(job, self.manager)
            if not job.all_transferred and job.state.is_active:
                raise RuntimeError("the engine returned before every file was transferred")
        except TransferError as exc:
            self.manager.failed(job, exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # never let one job take the daemon down
            log.exception("transfer of job %s failed unexpectedly", job.id)
            self.manager.internal_failure(job, exc)
        finally:
            if self._running.get(job.id) is asyncio.current_task():
                del self._running[job.id]
            self.kick()
