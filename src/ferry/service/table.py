"""The job table: the core the service parts share. Every job in memory (the store is the
durable copy), the index of jobs per owner, lookups with their access check, and the one way
a change goes out: persisted, then announced.

How a change is made (ARCHITECTURE principle 6, now that a store write really suspends the
caller and other requests run meanwhile):

1. The job is changed in memory first, in one synchronous step with no await between the
   decision and the change, so every part (and every read) sees it at once. The run queue
   is told in the same step (``stage``), so the scheduler never acts on a state that has
   moved on — the in-memory index may be ahead of the store.
2. The write is issued at once. A store takes what it writes from the job when the method is
   called and applies writes in the order they were called (store/base.py), so the durable
   history follows the in-memory one even when writes are in flight together.
3. Events are taken when the write is issued (the job as that write stores it) and
   published only when it has returned (``commit``). So no event shows a state whose write
   is not durable, events of a job go out in the order of their writes, and a write that
   fails or is cancelled announces nothing. Reads (GET, listings, snapshots) show the job
   in memory, which can be ahead of the store by the writes in flight.

Commands that stop a job and then change it await in between (the transfer's end, file
renames, writes). ``exclusive`` serialises them per job, so two never interleave on one job
(a cancel deleting the files a complete is renaming, then the job ACKNOWLEDGED after
CANCELLED).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import FerryError
from ..model.job import Job
from ..model.token import Token
from ..model.types import JobState
from ..protocol.views import job_view
from ..security import policy
from ..store.base import JobStore
from . import events as ev
from .events import Event, EventBus


class JobIndex(Protocol):
    """Told of every change of a job as it is made (the scheduler's run queue)."""

    def job_changed(self, job: Job) -> None: ...


@dataclass
class _Lock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class JobTable:
    def __init__(
        self,
        store: JobStore,
        bus: EventBus,
        index: JobIndex,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._bus = bus
        self._index = index
        self._clock = clock
        self._jobs: dict[str, Job] = {}
        self._by_owner: dict[int, dict[str, Job]] = {}
        self._locks: dict[str, _Lock] = {}

    async def load(self, requeue_interrupted: bool = True) -> int:
        """Load every job; transfers that were running when ferryd stopped queue again.

        In fleet mode (``requeue_interrupted=False``) a running job may be another worker's
        live transfer: the fleet's lease reaper queues the ones whose worker died instead."""
        now = self._clock()
        jobs = await self._store.load_all()
        # In bulk (100,000 jobs at start): the dicts built by comprehension, the index told
        # in one call when it can take them so (RunQueue.jobs_loaded), each job otherwise.
        running = (JobState.CONNECTING, JobState.TRANSFERRING)
        interrupted = [j for j in jobs if j.state in running] if requeue_interrupted else []
        for job in interrupted:
            job.requeue(now)
        if not self._jobs:
            self._jobs = {j.id: j for j in jobs}
            by_owner = self._by_owner
            for job in jobs:
                uid = job.owner.uid
                owned = by_owner.get(uid)
                if owned is None:
                    by_owner[uid] = {job.id: job}
                else:
                    owned[job.id] = job
        else:
            for job in jobs:
                self.add(job)
        bulk = getattr(self._index, "jobs_loaded", None)
        if bulk is not None:
            bulk(jobs)
        else:
            for job in jobs:
                self._index.job_changed(job)
        # Issued together: a store that commits in groups makes them one commit.
        await asyncio.gather(*(self._store.save_job_header(job) for job in interrupted))
        return len(self._jobs)

    # ---- lookup -------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def has_job(self, job_id: str) -> bool:
        return job_id in self._jobs

    def job_count(self) -> int:
        return len(self._jobs)

    def owned_count(self, uid: int) -> int:
        return len(self._by_owner.get(uid, ()))

    def all(self) -> list[Job]:
        """Every job (a copy: safe to walk across awaits)."""
        return list(self._jobs.values())

    def resolve(self, caller: Token, ref: str) -> Job:
        """A job by id, or by a display name unique among the caller's jobs."""
        job = self._jobs.get(ref)
        if job is not None:
            policy.check_access(caller, job)
            return job
        named = [j for j in self._by_owner.get(caller.uid, {}).values() if j.display_name == ref]
        if len(named) == 1:
            return named[0]
        if not named:
            raise FerryError("BG_E_NOT_FOUND", f"no job with id or name {ref!r}")
        raise FerryError(
            "BG_E_NOT_FOUND",
            f"{len(named)} of your jobs are named {ref!r}; use the job id "
            f"({', '.join(j.id for j in named[:5])})",
        )

    def list_jobs(self, caller: Token, all_users: bool) -> list[Job]:
        if all_users:
            if not policy.may_list_all(caller):
                raise FerryError("E_ACCESSDENIED", "only administrators may list all users' jobs")
            jobs: Iterable[Job] = self._jobs.values()
        else:
            jobs = self._by_owner.get(caller.uid, {}).values()
        return sorted(jobs, key=lambda j: j.created)

    def snapshot(self, job: Job) -> Event:
        return Event(ev.JOB_SNAPSHOT, job.id, job.owner.uid, job_view(job))

    # ---- membership -----------------------------------------------------------------

    def add(self, job: Job) -> None:
        self._jobs[job.id] = job
        self._by_owner.setdefault(job.owner.uid, {})[job.id] = job

    def remove(self, job: Job) -> None:
        self._jobs.pop(job.id, None)
        self._forget_owner(job, job.owner.uid)

    def owner_changed(self, job: Job, old_uid: int) -> None:
        """``job.owner`` was just changed from ``old_uid``: file the job under the new one."""
        self._forget_owner(job, old_uid)
        self._by_owner.setdefault(job.owner.uid, {})[job.id] = job

    def _forget_owner(self, job: Job, uid: int) -> None:
        owned = self._by_owner.get(uid)
        if owned is not None:
            owned.pop(job.id, None)
            if not owned:
                del self._by_owner[uid]

    # ---- persist, then announce -------------------------------------------------------

    @property
    def has_subscribers(self) -> bool:
        return self._bus.has_subscribers

    def stage(self, job: Job, types: Sequence[str]) -> list[Event]:
        """Call right after changing ``job`` in memory, before issuing its write: the run
        queue learns of the change now, and the events of ``types`` are taken now, showing
        the job as the write will store it. Publish them once the write has returned."""
        self._index.job_changed(job)
        if not types or not self._bus.has_subscribers:
            return []
        view = job_view(job)
        return [Event(t, job.id, job.owner.uid, view) for t in types]

    def publish(self, events: Iterable[Event]) -> None:
        for event in events:
            self._bus.publish(event)

    async def commit(self, job: Job, write: Awaitable[object], *types: str) -> None:
        """Stage the change of ``job`` (events ``types``, by default one job-modification),
        await its ``write`` (a store call made just now, for this change), then publish."""
        events = self.stage(job, types or (ev.JOB_MODIFICATION,))
        await write
        self.publish(events)

    @contextlib.asynccontextmanager
    async def exclusive(self, job: Job) -> AsyncIterator[None]:
        """Hold the job's lock: one stop-then-change operation on a job at a time."""
        entry = self._locks.get(job.id)
        if entry is None:
            entry = self._locks[job.id] = _Lock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if not entry.users:
                del self._locks[job.id]
