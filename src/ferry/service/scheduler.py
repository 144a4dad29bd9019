"""The scheduler: which queued jobs transfer now (SPEC §2.4), and retries of transient errors.

* Foreground jobs start at once and run side by side, outside the background policy.
* Background jobs run in priority order (high, normal, low), at most ``max_background_jobs``
  at a time. A higher-priority job pre-empts a lower one. Jobs of equal priority share the
  slots round robin: when more of them wait than there are slots, a running one whose time
  slice (``time_slice`` seconds; 0 turns rotation off) is over goes back to the end of the
  queue and the next one runs; it resumes later from its checkpoint.
* A job is eligible only while its owner is logged on (``is_logged_on``).

A stopped job (pre-empted, rotated, suspended, ...) gives its slot up only once its task has
ended, that is once the engine has saved its checkpoints and closed its files; so a job
never runs twice at once and two jobs never write past the slot limit.

Every pass looks only at the jobs that may run (an index of QUEUED and TRANSIENT_ERROR jobs
that the queue manager keeps current through ``job_changed``) and at the running ones, never
at every job: a store of 100,000 mostly finished jobs costs nothing here. Every transfer is
a task in one TaskGroup owned by ``run``; cancelling a task is how a transfer is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

from ..errors import FerryError
from ..model.job import Job
from ..model.token import Token
from ..model.types import JobState, Priority
from ..transfer.base import TransferError
from ..transfer.engine import TransferEngine
from .manager import QueueManager

log = logging.getLogger("ferry.scheduler")

BACKGROUND = (Priority.HIGH, Priority.NORMAL, Priority.LOW)
# How long a job stays held after the manager stopped it to change it, if no change comes
# (the manager's operation failed half-way): then it may run again.
HOLD_SECONDS = 30.0


@dataclass(eq=False)
class _Run:
    job: Job
    started: float  # loop time: the start of its time slice
    task: asyncio.Task[None] | None = None
    stopping: bool = False  # cancelled; still owns its slot until the task has ended
    requeue: bool = False  # stopped by the scheduler: back to QUEUED once stopped


class Scheduler:
    def __init__(
        self,
        manager: QueueManager,
        engine: TransferEngine,
        max_background_jobs: int,
        is_logged_on: Callable[[Token], bool] = lambda token: True,
        time_slice: float = 30.0,
    ) -> None:
        self.manager = manager
        self.engine = engine
        self.max_background_jobs = max(1, max_background_jobs)
        self.is_logged_on = is_logged_on
        self.time_slice = max(0.0, time_slice)
        self._running: dict[str, _Run] = {}
        # The index: QUEUED jobs per priority in the order they were queued (round robin
        # puts a rotated job at the end), and TRANSIENT_ERROR jobs waiting for their retry.
        self._queued: dict[Priority, dict[str, Job]] = {p: {} for p in Priority}
        self._queued_as: dict[str, Priority] = {}
        self._waiting: dict[str, Job] = {}
        # Jobs the manager stopped to change them: none starts until that change is made.
        # None while the stop is in progress, then the loop time the hold ends.
        self._held: dict[str, float | None] = {}
        self._wake = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None
        manager.kick = self.kick
        manager.stop_transfer = self.stop
        manager.job_changed = self.job_changed
        self._index_all()

    # ---- the manager's hooks ------------------------------------------------------------

    def kick(self) -> None:
        self._wake.set()

    @property
    def running(self) -> set[str]:
        return set(self._running)

    def job_changed(self, job: Job) -> None:
        """Keep the index current; the manager calls this for every change of a job."""
        jid = job.id
        if job.state is JobState.QUEUED:
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
            if job.state is JobState.TRANSIENT_ERROR:
                self._waiting[jid] = job
            else:
                self._waiting.pop(jid, None)
        if self._held.get(jid) is not None:
            del self._held[jid]  # the change the manager stopped the job for is made

    def _index_all(self) -> None:
        """Once, at start-up: the jobs loaded from the store."""
        for job in self.manager.jobs.values():
            self.job_changed(job)

    async def stop(self, job: Job) -> None:
        """Stop a job's transfer and wait until its task has let go of its files; the job
        does not start again until the manager has made the change it stopped it for."""
        self._held[job.id] = None
        try:
            run = self._running.get(job.id)
            if run is not None:
                run.requeue = False
                run.stopping = True
                assert run.task is not None
                run.task.cancel()
                await asyncio.wait([run.task])
        finally:
            self._held[job.id] = asyncio.get_running_loop().time() + HOLD_SECONDS

    # ---- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        self._index_all()
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                while True:
                    self._wake.clear()
                    try:
                        timeout = self._pass()
                    except Exception:  # the scheduler must outlive any one bad pass
                        log.exception("scheduling pass failed")
                        timeout = 1.0
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout)
            finally:
                for run in self._running.values():
                    if run.task is not None:
                        run.task.cancel()

    def _pass(self) -> float | None:
        """One scheduling pass; returns how long until something is due (a retry, the end
        of a time slice or of a hold), None when only a kick can change anything."""
        loop_now = asyncio.get_running_loop().time()
        now = self.manager.clock()
        due: list[float] = []
        for jid, until in list(self._held.items()):
            if until is not None:
                if until <= loop_now:
                    del self._held[jid]
                else:
                    due.append(until - loop_now)
        for job in list(self._waiting.values()):
            if job.retry_at is None or job.id in self._held:
                continue
            if job.retry_at <= now:
                self.manager.requeued(job)  # -> job_changed: now in the queue
            else:
                due.append(job.retry_at - now)
        for job in list(self._queued[Priority.FOREGROUND].values()):
            if self._eligible(job):
                self._start(job)
        due.extend(self._background(loop_now))
        return min(due) if due else None

    def _background(self, loop_now: float) -> list[float]:
        """Choose the background jobs that should run: the first ``max_background_jobs`` in
        the order of ``_ranked``. Running jobs not chosen are stopped (pre-empted, or rotated
        at the end of their slice); chosen queued jobs start as slots become free. Returns
        when running slices end."""
        limit = self.max_background_jobs
        runs = [r for r in self._running.values() if r.job.priority is not Priority.FOREGROUND]
        active = [r for r in runs if not r.stopping]
        chosen = list(islice(self._ranked(active, loop_now), limit))
        kept = {id(item) for item in chosen if isinstance(item, _Run)}
        for r in active:
            if id(r) not in kept:
                reason = "rotated out" if self._expired(r, loop_now) else "pre-empted"
                log.info("job %s %s", r.job.id, reason)
                self._stop_and_requeue(r)
        free = limit - len(runs)
        for item in chosen:
            if free <= 0:
                break
            if isinstance(item, Job):
                self._start(item)
                free -= 1
        if self.time_slice <= 0:
            return []
        return [
            r.started + self.time_slice - loop_now
            for r in self._running.values()
            if not r.stopping
            and r.job.priority is not Priority.FOREGROUND
            and not self._expired(r, loop_now)
        ]

    def _ranked(self, active: list[_Run], loop_now: float) -> Iterator[_Run | Job]:
        """Background candidates, best first: by priority; within one priority, running jobs
        still in their slice, then eligible queued jobs in queue order, then running jobs
        whose slice is over (longest-running first)."""
        for priority in BACKGROUND:
            mine = sorted(
                (r for r in active if r.job.priority is priority), key=lambda r: r.started
            )
            yield from (r for r in mine if not self._expired(r, loop_now))
            for job in self._queued[priority].values():
                if self._eligible(job):
                    yield job
            yield from (r for r in mine if self._expired(r, loop_now))

    def _expired(self, run: _Run, loop_now: float) -> bool:
        return self.time_slice > 0 and loop_now - run.started >= self.time_slice

    def _eligible(self, job: Job) -> bool:
        return (
            job.id not in self._running
            and job.id not in self._held
            and self.is_logged_on(job.owner)
        )

    # ---- starting and stopping ------------------------------------------------------------

    def _start(self, job: Job) -> None:
        assert self._tg is not None
        try:
            self.manager.started(job)  # QUEUED -> CONNECTING, persisted; leaves the queue
        except FerryError as exc:
            log.error("cannot start job %s: %s", job.id, exc)
            return
        run = _Run(job, asyncio.get_running_loop().time())
        self._running[job.id] = run
        run.task = self._tg.create_task(self._transfer(run), name=f"job-{job.id}")

    def _stop_and_requeue(self, run: _Run) -> None:
        """Pre-emption and rotation: the job goes back to QUEUED once its task has ended;
        until then it keeps its slot."""
        run.stopping = True
        run.requeue = True
        assert run.task is not None
        run.task.cancel()

    async def _transfer(self, run: _Run) -> None:
        """The task of one job's transfer. Never raises but for cancellation: one job must
        not take the daemon down."""
        job = run.job
        try:
            await self.engine.run_job(job, self.manager)
            if not job.all_transferred and job.state.is_active:
                # Files were added while the engine ran: queue the job again for them.
                self._settle(job, self.manager.requeued, job)
        except TransferError as exc:
            self._settle(job, self.manager.failed, job, exc)
        except asyncio.CancelledError:
            if run.requeue and job.state in (JobState.CONNECTING, JobState.TRANSFERRING):
                self._settle(job, self.manager.requeued, job)
            raise
        except Exception as exc:
            log.exception("transfer of job %s failed unexpectedly", job.id)
            self._settle(job, self.manager.internal_failure, job, exc)
        finally:
            if self._running.get(job.id) is run:
                del self._running[job.id]
            self.kick()

    @staticmethod
    def _settle(job: Job, record: Callable[..., None], *args: Any) -> None:
        try:
            record(*args)
        except Exception:
            log.exception("cannot record the outcome of job %s's transfer", job.id)
