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

Every pass looks only at the jobs that may run (the run queue, service/runqueue.py, which
the job table keeps current) and at the running ones, never at every job: a store of
100,000 mostly finished jobs costs nothing here. Every transfer is a task in one TaskGroup
owned by ``run``; cancelling a task is how a transfer is stopped.

A pass never awaits, so what it decides holds until it returns. What it starts persists in
tasks of its own, and awaits there really suspend (a store write), so:

* A run is registered, with its task, in the same synchronous step that decides to start
  it; the task's first act is to persist the start (QUEUED -> CONNECTING). No later pass
  can start the job again, and ``stop`` always finds the run: cancelled before its first
  step, the task never touches the job (still QUEUED); cancelled while the start is being
  written, the job is CONNECTING in memory and the stopper's own change is written after
  that write (a store applies writes in call order), so the stopper's state is the last
  word, in memory and in the store. A run is forgotten when its task is done, by a done
  callback, which also covers a task cancelled before it ever ran.
* A TRANSIENT_ERROR job whose retry time has come is requeued in a task too; until that
  task is done the job is in ``_retrying``, so a pass issues its requeue once, and it
  starts only once it is QUEUED in the store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, Protocol

from ..model.job import Job
from ..model.token import Token
from ..model.types import ErrorContext, JobState, Priority
from ..transfer.base import JobCallbacks, TransferError
from .leases import Leases, LocalLeases
from .runqueue import RunQueue

log = logging.getLogger("ferry.scheduler")

BACKGROUND = (Priority.HIGH, Priority.NORMAL, Priority.LOW)
# How long a job stays held after a service stopped it to change it, if no change comes
# (the operation failed half-way): then it may run again.
HOLD_SECONDS = 30.0


class RunRecords(JobCallbacks, Protocol):
    """The job side of a run: the engine's callbacks, and the records the scheduler makes
    (service/reports.py). Each persists before it returns."""

    async def started(self, job: Job) -> None: ...

    async def requeued(self, job: Job) -> None: ...

    async def failed(self, job: Job, exc: TransferError) -> None: ...

    async def internal_failure(self, job: Job, exc: BaseException) -> None: ...


class Engine(Protocol):
    async def run_job(self, job: Job, callbacks: JobCallbacks) -> None: ...


@dataclass(eq=False)
class _Run:
    job: Job
    started: float  # loop time: the start of its time slice
    task: asyncio.Task[None] | None = None  # set in the step that registers the run
    stopping: bool = False  # cancelled; still owns its slot until the task has ended
    requeue: bool = False  # stopped by the scheduler: back to QUEUED once stopped


class Scheduler:
    def __init__(
        self,
        queue: RunQueue,
        records: RunRecords,
        engine: Engine,
        max_background_jobs: int,
        is_logged_on: Callable[[Token], bool] = lambda token: True,
        time_slice: float = 30.0,
        clock: Callable[[], float] = time.time,
        leases: Leases | None = None,
        gate: Callable[[Job], dict[str, Any] | None] | None = None,
    ) -> None:
        # SPEC §10: why a job may not transfer now (network cost, offline), None if it may.
        self.gate = gate
        self.queue = queue
        # Fleet mode: a run claims its job first (service/leases.py; trivially granted alone).
        self.leases: Leases = leases or LocalLeases()
        self.leases.attach(self.abandon)
        self.records = records
        self.engine = engine
        self.max_background_jobs = max(1, max_background_jobs)
        self.is_logged_on = is_logged_on
        self.time_slice = max(0.0, time_slice)
        self.clock = clock
        self._running: dict[str, _Run] = {}
        self._retrying: set[str] = set()
        self._gated: set[str] = set()  # TRANSIENT_ERROR jobs the gate held back
        self._tg: asyncio.TaskGroup | None = None

    # ---- Transfers: what the services that change jobs use ------------------------------

    def kick(self) -> None:
        self.queue.kick()

    async def stop(self, job: Job) -> None:
        """Stop a job's transfer and wait until its task has let go of its files; the job
        does not start again until the caller has made the change it stopped it for."""
        self.queue.hold(job.id)
        try:
            run = self._running.get(job.id)
            if run is not None:
                assert run.task is not None  # registered with it, see _start
                run.requeue = False
                run.stopping = True
                run.task.cancel()
                await asyncio.wait([run.task])
        finally:
            self.queue.hold_until(job.id, asyncio.get_running_loop().time() + HOLD_SECONDS)

    @property
    def running(self) -> set[str]:
        return set(self._running)

    def is_running(self, job_id: str) -> bool:
        return job_id in self._running

    def abandon(self, job_id: str) -> None:
        """Stop a run at once because its lease is lost (fleet mode): cancelled without
        being requeued; whatever it writes from now on is refused by the store's fence."""
        run = self._running.get(job_id)
        if run is not None and run.task is not None:
            log.warning("job %s: lease lost, its transfer stops", job_id)
            run.requeue = False
            run.stopping = True
            run.task.cancel()

    # ---- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                while True:
                    try:
                        timeout = self._pass()
                    except Exception:  # the scheduler must outlive any one bad pass
                        log.exception("scheduling pass failed")
                        timeout = 1.0
                    await self.queue.wait(timeout)
            finally:
                for run in self._running.values():
                    if run.task is not None:
                        run.task.cancel()

    def _pass(self) -> float | None:
        """One scheduling pass; returns how long until something is due (a retry, the end
        of a time slice or of a hold), None when only a kick can change anything."""
        loop_now = asyncio.get_running_loop().time()
        now = self.clock()
        due = self.queue.expire_holds(loop_now)
        if self.gate is not None:
            self._stop_gated()
        waiting = self.queue.waiting()
        if self._gated:
            self._gated &= {job.id for job in waiting}
        for job in waiting:
            if job.retry_at is None or job.id in self._retrying or self.queue.is_held(job.id):
                continue
            if self.gate is not None:
                # Offline (or a forbidding cost): no retry can work, so none is made; once
                # the condition is gone the job retries at once, not at its retry time.
                reason = self.gate(job)
                if reason is not None:
                    job.waiting = reason
                    self._gated.add(job.id)
                    continue
                if job.id in self._gated:
                    self._gated.discard(job.id)
                    job.waiting = None
                    self._retry(job)
                    continue
            if job.retry_at <= now:
                self._retry(job)
            else:
                due.append(job.retry_at - now)
        for job in self.queue.queued(Priority.FOREGROUND):
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
            for job in self.queue.queued(priority):
                if self._eligible(job):
                    yield job
            yield from (r for r in mine if self._expired(r, loop_now))

    def _expired(self, run: _Run, loop_now: float) -> bool:
        return self.time_slice > 0 and loop_now - run.started >= self.time_slice

    def _eligible(self, job: Job) -> bool:
        if job.id in self._running or job.id in self._retrying or self.queue.is_held(job.id):
            return False
        if not self.is_logged_on(job.owner):
            job.waiting = {
                "code": "ERROR_NOT_LOGGED_ON",
                "description": "the job's owner is logged off; it transfers once they log on",
            }
            return False
        if self.gate is not None:
            reason = self.gate(job)
            if reason is not None:
                job.waiting = reason
                return False
        job.waiting = None
        return True

    def _stop_gated(self) -> None:
        """Running jobs the network conditions now forbid (the cost changed, the route went)
        stop and wait QUEUED; the next passes show why."""
        assert self.gate is not None
        for run in list(self._running.values()):
            if not run.stopping and self.gate(run.job) is not None:
                log.info("job %s stopped: %s", run.job.id, self.gate(run.job))
                self._stop_and_requeue(run)

    # ---- starting, retrying and stopping --------------------------------------------------

    def _start(self, job: Job) -> None:
        """Register the run and create its task in one step (see the module's docstring)."""
        assert self._tg is not None
        run = _Run(job, asyncio.get_running_loop().time())
        self._running[job.id] = run
        run.task = self._tg.create_task(self._transfer(run), name=f"job-{job.id}")
        run.task.add_done_callback(lambda _: self._ended(run))

    def _ended(self, run: _Run) -> None:
        if self._running.get(run.job.id) is run:
            del self._running[run.job.id]
        self.queue.kick()

    def _retry(self, job: Job) -> None:
        assert self._tg is not None
        self._retrying.add(job.id)
        task = self._tg.create_task(
            self._record(job, self.records.requeued, job), name=f"retry-{job.id}"
        )

        def done(_: object) -> None:
            self._retrying.discard(job.id)
            self.queue.kick()

        task.add_done_callback(done)

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
        if job.state is not JobState.QUEUED:  # changed before the task's first step
            return
        if not await self.leases.claim(job):
            # Another worker transfers it (fleet mode): look again a little later.
            self.queue.hold_until(job.id, asyncio.get_running_loop().time() + 1.0)
            return
        try:
            await self._run_claimed(run)
        finally:
            await self.leases.release(job)

    async def _run_claimed(self, run: _Run) -> None:
        job = run.job
        loop = asyncio.get_running_loop()
        began = loop.time()

        def spent() -> None:
            """Count the time connecting/transferring against max_download_time."""
            nonlocal began
            now = loop.time()
            job.download_time += now - began
            began = now

        try:
            if job.state is not JobState.QUEUED:  # changed while it was being claimed
                return
            budget = None
            if job.max_download_time:
                budget = job.max_download_time - job.download_time
                if budget <= 0:
                    raise _max_download_timeout(job)
            deadline = asyncio.timeout(budget)
            try:
                async with deadline:
                    await self.records.started(job)
                    await self.engine.run_job(job, self.records)
            except TimeoutError:
                if not deadline.expired():
                    raise
                raise _max_download_timeout(job) from None
            spent()
            if not job.all_transferred and job.state.is_active:
                # Files were added while the engine ran: queue the job again for them.
                await self._record(job, self.records.requeued, job)
        except TransferError as exc:
            spent()
            await self._record(job, self.records.failed, job, exc)
        except asyncio.CancelledError:
            spent()
            if run.requeue and job.state in (JobState.CONNECTING, JobState.TRANSFERRING):
                await self._record(job, self.records.requeued, job)
            raise
        except Exception as exc:
            spent()
            log.exception("transfer of job %s failed unexpectedly", job.id)
            await self._record(job, self.records.internal_failure, job, exc)

    @staticmethod
    async def _record(job: Job, record: Callable[..., Awaitable[None]], *args: Any) -> None:
        try:
            await record(*args)
        except Exception:
            log.exception("cannot record the outcome of job %s's transfer", job.id)


def _max_download_timeout(job: Job) -> TransferError:
    return TransferError(
        "BG_E_MAXDOWNLOAD_TIMEOUT",
        f"the job spent its maximum download time ({job.max_download_time} s) connecting and "
        "transferring; resume it to start the count again",
        context=ErrorContext.GENERAL_QUEUE_MANAGER,
        transient=False,
    )
