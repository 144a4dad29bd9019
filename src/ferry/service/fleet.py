"""Fleet mode (SPEC §12): several ferryd ("workers") serving one queue in PostgreSQL.

What this service does for its worker:

* **Leases** (the ``Leases`` of service/leases.py the scheduler claims through). A claim takes
  the job's lease in PostgreSQL (``SKIP LOCKED``), fences the store's writes of the job with
  the new epoch, and refreshes the job from the store, so a transfer taken over from a dead
  worker resumes from the last byte that worker made durable. The heartbeat renews every
  lease each ``lease/3`` seconds. **Self-fencing:** if a renewal has not succeeded by
  ``lease - margin`` seconds after the last good one (PostgreSQL unreachable, or this process
  was stopped — SIGSTOP, a VM pause), a timer of the event loop abandons every run at once,
  before another worker can have taken the job over; a timer, not a task, so that after a
  SIGCONT it runs before the transfers' tasks get their next step. A renewal that finds a
  lease taken over abandons that run; its later writes are refused by the epoch fence.
* **Takeover.** The heartbeat also frees expired leases (``reap``) and queues their jobs
  again; every worker then sees them QUEUED and one claims each.
* **Visibility.** Every commit of a worker's store announces the jobs it touched
  (``NOTIFY ferry_jobs``). The listener reloads them and updates this worker's job table in
  place — new jobs appear, changes show, deleted jobs go — and publishes the events to this
  worker's event bus: ``ferry events`` on any worker sees every job. After a reconnection
  (PostgreSQL restarted) it resynchronises every job. The jobs this worker is transferring
  are its own to write and are not overwritten.
* **Commands on a job another worker transfers.** ``FleetTransfers.stop`` (what suspend,
  cancel, complete and the remote-name changes call before changing a job) asks the holder
  to stop and release the job (``NOTIFY ferry_release``), waits until it is free (at most one
  lease period: by then a holder that did not answer has lost it), and reloads the job, so
  the change is made on its latest durable state.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..errors import FerryError
from ..model.job import Job
from ..model.types import JobState
from . import events as ev
from .runqueue import Transfers
from .table import JobTable

log = logging.getLogger("ferry.fleet")

_JOB_FIELDS = [f.name for f in dataclasses.fields(Job)]
_BATCH = 500  # jobs per refresh read
# What a transfer writes: the holder of a job's lease owns these. Everything else (the
# properties, owner, helper token) may be changed on any worker meanwhile and is merged
# into the holder's copy, so its next write carries the change on.
_TRANSFER_FIELDS = {
    "id",
    "type",
    "created",
    "state",
    "files",
    "modified",
    "transfer_completed",
    "error",
    "error_count",
    "retry_at",
    "no_progress_since",
    "notification",
}
_MERGED_FIELDS = [name for name in _JOB_FIELDS if name not in _TRANSFER_FIELDS]


class FleetStore(Protocol):
    """What the fleet needs of the PostgreSQL job store (store/postgres.py)."""

    worker: str

    async def load_job(self, job_id: str) -> Job | None: ...

    async def load_jobs(self, job_ids: Sequence[str]) -> dict[str, Job]: ...

    async def load_all(self) -> list[Job]: ...

    async def save_job_header(self, job: Job) -> None: ...

    def fence(self, job_id: str, epoch: int) -> None: ...

    def unfence(self, job_id: str) -> None: ...

    def fenced(self, job_id: str) -> int | None: ...


class FleetDatabase(Protocol):
    """store/postgres_fleet.py's FleetDb."""

    worker: str
    lease: float

    async def register(self) -> None: ...
    async def unregister(self) -> None: ...
    async def workers(self) -> list[dict[str, Any]]: ...
    async def leases(self) -> list[dict[str, Any]]: ...
    async def claim(self, job_id: str) -> int | None: ...
    async def release(self, job_id: str, epoch: int) -> bool: ...
    async def renew(self, held: dict[str, int]) -> set[str]: ...
    async def reap(self) -> list[str]: ...
    async def holder(self, job_id: str) -> str | None: ...
    async def ask_release(self, worker: str, job_id: str) -> None: ...
    async def close(self) -> None: ...
    def listen(self) -> Any: ...


class Fleet:
    def __init__(
        self,
        db: FleetDatabase,
        store: FleetStore,
        table: JobTable,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.store = store
        self.table = table
        self.clock = clock
        self.worker = db.worker
        self.lease = db.lease
        self._abandon: Callable[[str], None] = lambda job_id: None
        self._stop_job: Callable[[Job], Any] | None = None
        self._kick: Callable[[], None] = lambda: None
        self._held: dict[str, int] = {}
        self._dirty: set[str] = set()
        self._merged: set[str] = set()  # held jobs that took another worker's change
        self._dirty_event = asyncio.Event()
        self._resync = False
        self._deadline_timer: asyncio.TimerHandle | None = None
        self.margin = max(1.0, self.lease * 0.2)
        self.connected = asyncio.Event()

    # ---- wiring -------------------------------------------------------------------------

    def attach(self, abandon: Callable[[str], None]) -> None:
        self._abandon = abandon

    def attach_stop(self, stop: Callable[[Job], Any], kick: Callable[[], None]) -> None:
        """How a release request is served (the scheduler's stop), and how the scheduler
        learns that jobs changed by other workers may be runnable now (its kick)."""
        self._stop_job = stop
        self._kick = kick

    # ---- Leases ---------------------------------------------------------------------------

    async def claim(self, job: Job) -> bool:
        epoch: int | None = None
        try:
            epoch = await self.db.claim(job.id)
            if epoch is None:
                return False
            self._held[job.id] = epoch
            self.store.fence(job.id, epoch)
            self._arm()
            fresh = await self.store.load_job(job.id)
            if fresh is None or fresh.state is not JobState.QUEUED:
                # Memory was behind the store: someone changed the job meanwhile. Give the
                # lease back first, so the store's version replaces ours.
                await self.release(job)
                epoch = None
                self._apply(job.id, fresh)
                return False
            self._update_in_place(job, fresh, events=False)
            return True
        except FerryError as exc:
            log.warning("cannot claim job %s: %s", job.id, exc)
            if epoch is not None:
                await asyncio.shield(self.release(job))
            return False
        except asyncio.CancelledError:
            if epoch is not None:
                await asyncio.shield(self.release(job))
            raise

    async def release(self, job: Job) -> None:
        if job.id in self._held and job.id in self._merged:
            # A change merged during the run may have been overwritten by a write of ours
            # already in flight: store the job once more while the lease is still ours.
            self._merged.discard(job.id)
            with contextlib.suppress(FerryError):
                await self.store.save_job_header(job)
        epoch = self._held.pop(job.id, None)
        if epoch is None:
            return
        try:
            ours = await self.db.release(job.id, epoch)
        except FerryError as exc:
            log.warning("cannot release job %s (it expires by itself): %s", job.id, exc)
            ours = True
        finally:
            self.store.unfence(job.id)
        if not ours:
            # Taken over while we ran: our picture of the job is stale; take the store's.
            with contextlib.suppress(FerryError):
                self._apply(job.id, await self.store.load_job(job.id))

    # ---- the heartbeat -----------------------------------------------------------------

    def _arm(self) -> None:
        """(Re)start the self-fencing timer from now: it fires ``lease - margin`` seconds
        after the last renewal that succeeded, unless a later one moves it."""
        loop = asyncio.get_running_loop()
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._deadline_timer = loop.call_at(
            loop.time() + self.lease - self.margin, self._deadline_passed
        )

    def _deadline_passed(self) -> None:
        self._deadline_timer = None
        if not self._held:
            return
        log.warning(
            "fleet: no lease renewal for %.0f s: stopping %d transfers before another worker "
            "takes them over",
            self.lease - self.margin,
            len(self._held),
        )
        for job_id in list(self._held):
            self._abandon(job_id)

    async def heartbeat(self) -> None:
        """Renew, reap, repeat every lease/3 seconds."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                held = dict(self._held)
                lost = await self.db.renew(held)
                if self._deadline_timer is not None or self._held:
                    # The renewal counts from when it was sent.
                    if self._deadline_timer is not None:
                        self._deadline_timer.cancel()
                    self._deadline_timer = loop.call_at(
                        started + self.lease - self.margin, self._deadline_passed
                    )
                for job_id in lost:
                    if self._held.get(job_id) == held[job_id]:
                        self._abandon(job_id)
                for job_id in await self.db.reap():
                    await self._take_over(job_id)
            except FerryError as exc:
                log.warning("fleet heartbeat failed: %s", exc)
            await asyncio.sleep(max(0.2, self.lease / 3 - (loop.time() - started)))

    async def _take_over(self, job_id: str) -> None:
        """A job whose holder died: queue it again as stored (its last durable byte)."""
        fresh = await self.store.load_job(job_id)
        if fresh is None:
            self._apply(job_id, None)
            return
        if fresh.state in (JobState.CONNECTING, JobState.TRANSFERRING):
            log.info("fleet: job %s was left by a dead worker; queued again", job_id)
            fresh.requeue(self.clock())
            job = self._apply(job_id, fresh)
            if job is not None:
                await self.table.commit(job, self.store.save_job_header(job))
        else:
            self._apply(job_id, fresh)

    # ---- visibility ------------------------------------------------------------------------

    async def refresher(self) -> None:
        """Applies what the listener collected, one job at a time, in the order of the
        store's thread (a load sees every write this worker issued before it)."""
        while True:
            await self._dirty_event.wait()
            self._dirty_event.clear()
            if self._resync:
                self._resync = False
                self._dirty.clear()
                try:
                    await self.resync()
                except FerryError as exc:
                    log.warning("fleet: resynchronisation failed: %s", exc)
                    self._resync = True
                    await asyncio.sleep(1.0)
                    self._dirty_event.set()
                continue
            while self._dirty:
                # Every job announced so far in one read: a busy fleet announces many.
                batch = list(self._dirty)[:_BATCH]
                self._dirty.difference_update(batch)
                try:
                    fresh = await self.store.load_jobs(batch)
                except FerryError as exc:
                    log.warning("fleet: cannot refresh %d jobs: %s", len(batch), exc)
                    self._dirty.update(batch)
                    await asyncio.sleep(0.5)
                    continue
                for job_id in batch:
                    self._apply(job_id, fresh.get(job_id))

    async def resync(self) -> None:
        # Only jobs known before the load began can have been deleted elsewhere: one created
        # here meanwhile is simply newer than the load (its insert was called after it).
        known = {job.id for job in self.table.all()}
        jobs = await self.store.load_all()
        seen = set()
        for fresh in jobs:
            seen.add(fresh.id)
            self._apply(fresh.id, fresh)
        for job_id in known - seen:
            if self.table.get(job_id) is not None:
                self._apply(job_id, None)

    def _apply(self, job_id: str, fresh: Job | None) -> Job | None:
        """Make this worker's copy of a job what the store holds; returns the job in memory."""
        self._kick()  # whatever changed may be runnable now (or no longer)
        job = self.table.get(job_id)
        if job_id in self._held:
            # Ours while we transfer it; take the other workers' property changes.
            if job is not None and fresh is not None:
                self._merge(job, fresh)
            return job
        if fresh is None:
            if job is not None:
                events = self.table.stage(job, (ev.JOB_REMOVED,))
                if not job.state.is_final:
                    job.state = JobState.CANCELLED
                    self.table.stage(job, ())
                self.table.remove(job)
                self.table.publish(events)
            return None
        if job is None:
            self.table.add(fresh)
            self.table.publish(self.table.stage(fresh, (ev.JOB_MODIFICATION,)))
            return fresh
        if fresh.modified < job.modified:
            # This worker changed the job after the load was queued: its own write, in
            # flight, is the newer one (and the store applies it after what was loaded).
            return job
        self._update_in_place(job, fresh, events=True)
        return job

    def _merge(self, job: Job, fresh: Job) -> None:
        changed = False
        old_uid = job.owner.uid
        for name in _MERGED_FIELDS:
            value = getattr(fresh, name)
            if getattr(job, name) != value:
                setattr(job, name, value)
                changed = True
        if not changed:
            return
        if job.owner.uid != old_uid:
            self.table.owner_changed(job, old_uid)
        self._merged.add(job.id)
        self.table.publish(self.table.stage(job, (ev.JOB_MODIFICATION,)))

    def _update_in_place(self, job: Job, fresh: Job, events: bool) -> None:
        if job == fresh:
            return
        old_uid, old_state = job.owner.uid, job.state
        done_before = sum(1 for f in job.files if f.completed)
        for name in _JOB_FIELDS:
            setattr(job, name, getattr(fresh, name))
        if job.owner.uid != old_uid:
            self.table.owner_changed(job, old_uid)
        types: list[str] = []
        if events:
            if sum(1 for f in job.files if f.completed) > done_before:
                types.append(ev.FILE_TRANSFERRED)
            if job.state is not old_state and job.state is JobState.TRANSFERRED:
                types.append(ev.JOB_TRANSFERRED)
            elif job.state is not old_state and job.state is JobState.ERROR:
                types.append(ev.JOB_ERROR)
            else:
                types.append(ev.JOB_MODIFICATION)
        self.table.publish(self.table.stage(job, types))

    # ---- commands on jobs another worker transfers -------------------------------------------

    async def on_release_request(self, job_id: str) -> None:
        job = self.table.get(job_id)
        if job is None or job_id not in self._held or self._stop_job is None:
            return
        log.info("fleet: releasing job %s for a command on another worker", job_id)
        await self._stop_job(job)

    async def take_back(self, job: Job) -> None:
        """Before a command changes ``job``: make sure no other worker transfers it, and
        work on its latest durable state."""
        holder = await self.db.holder(job.id)
        if holder is None or holder == self.worker:
            return
        await self.db.ask_release(holder, job.id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.lease + 2.0
        while loop.time() < deadline:
            await asyncio.sleep(0.05)
            if await self.db.holder(job.id) in (None, self.worker):
                break
        fresh = await self.store.load_job(job.id)
        if fresh is not None:
            self._update_in_place(job, fresh, events=False)

    # ---- administration ------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        return {
            "worker": self.worker,
            "lease_seconds": self.lease,
            "workers": await self.db.workers(),
            "leases": await self.db.leases(),
        }

    async def run(self) -> None:
        """Register, then listen, refresh and beat until cancelled; unregister on the way
        out (a worker that stops cleanly is gone at once; a dead one by its heartbeat)."""
        await self.db.register()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._listen_all(), name="fleet-listen")
                tg.create_task(self.refresher(), name="fleet-refresh")
                tg.create_task(self.heartbeat(), name="fleet-heartbeat")
        finally:
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
            with contextlib.suppress(Exception):
                await asyncio.shield(self.db.unregister())

    async def _listen_all(self) -> None:
        async with asyncio.TaskGroup() as tg:
            async for notice in self.db.listen():
                if notice is None:
                    self._resync = True
                    self.connected.set()
                    self._dirty_event.set()
                elif notice.channel == "ferry_release":
                    if notice.worker == self.worker:
                        tg.create_task(self.on_release_request(notice.job_id))
                elif notice.worker != self.worker:
                    self._dirty.add(notice.job_id)
                    self._dirty_event.set()


class FleetTransfers:
    """The scheduler as the command parts see it (``Transfers``), in fleet mode: stopping a
    job also takes it back from another worker that transfers it."""

    def __init__(self, local: Transfers, fleet: Fleet) -> None:
        self.local = local
        self.fleet = fleet

    def kick(self) -> None:
        self.local.kick()

    async def stop(self, job: Job) -> None:
        await self.local.stop(job)
        try:
            await self.fleet.take_back(job)
        except FerryError as exc:
            log.warning("fleet: cannot check job %s's lease: %s", job.id, exc)
