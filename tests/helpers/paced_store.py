"""A JobStore around a real one whose writes a test can hold in flight.

The services await every store call, and a store that commits on a writer thread (as
ferryd's does) lets other requests run while a write is in flight. Which request runs in
that window is up to timing; ``PacedStore`` makes it a test's choice: a write that ``hold``
picks waits, with every write after it, until ``release``. Around that it keeps the
promises of the JobStore protocol (store/base.py), so the services see a store that is only
slower, never different:

* what a write stores is taken from the job when the method is called (a copy);
* writes are applied to the real store in the order they were called;
* a caller cancelled while its write is in flight does not take the write back.

Reads and ``close`` queue behind the writes issued before them. ``writes`` records every
write as it is called: (method, job id, the job's state then).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from ferry.model.job import Job
from ferry.model.notification import PendingNotification
from ferry.store.base import JobStore

T = TypeVar("T")

Hold = Callable[[str, Job | None], bool]


class PacedStore:
    def __init__(self, inner: JobStore) -> None:
        self.inner = inner
        self.hold: Hold | None = None
        self.holding = asyncio.Event()  # set once a held write waits
        self.writes: list[tuple[str, str, str]] = []
        self._gate = asyncio.Event()
        self._tail: asyncio.Task[Any] | None = None

    def release(self) -> None:
        """Let the held writes (and those behind them) through; hold nothing more."""
        self.hold = None
        self._gate.set()

    def writes_of(self, job: Job, method: str | None = None) -> list[str]:
        """The states ``job`` was written in, in call order."""
        return [s for m, j, s in self.writes if j == job.id and method in (None, m)]

    async def _queued(
        self, name: str, job: Job | None, apply: Callable[[Job | None], Awaitable[T]]
    ) -> T:
        snapshot = copy.deepcopy(job)
        if job is not None:
            self.writes.append((name, job.id, job.state.value))
        held = self.hold is not None and self.hold(name, snapshot)
        prev = self._tail

        async def run() -> T:
            if prev is not None:
                await asyncio.wait([prev])
            if held:
                self.holding.set()
                await self._gate.wait()
            return await apply(snapshot)

        task: asyncio.Task[T] = asyncio.get_running_loop().create_task(run())
        task.add_done_callback(_retrieve)
        self._tail = task
        return await asyncio.shield(task)

    # ---- JobStore ------------------------------------------------------------------

    async def load_all(self) -> list[Job]:
        return await self._queued("load_all", None, lambda _: self.inner.load_all())

    async def insert_job(self, job: Job) -> None:
        await self._queued("insert_job", job, lambda j: self.inner.insert_job(_job(j)))

    async def save_job(self, job: Job) -> None:
        await self._queued("save_job", job, lambda j: self.inner.save_job(_job(j)))

    async def save_job_header(
        self, job: Job, notification: PendingNotification | None = None
    ) -> None:
        await self._queued(
            "save_job_header", job, lambda j: self.inner.save_job_header(_job(j), notification)
        )

    async def save_progress(
        self, job: Job, index: int, notification: PendingNotification | None = None
    ) -> None:
        await self._queued(
            "save_progress", job, lambda j: self.inner.save_progress(_job(j), index, notification)
        )

    async def save_files(
        self, job: Job, indices: Sequence[int], notification: PendingNotification | None = None
    ) -> None:
        indices = list(indices)
        await self._queued(
            "save_files", job, lambda j: self.inner.save_files(_job(j), indices, notification)
        )

    async def add_files(self, job: Job, first_index: int) -> None:
        await self._queued("add_files", job, lambda j: self.inner.add_files(_job(j), first_index))

    async def delete_job(self, job_id: str) -> bool:
        return await self._queued("delete_job", None, lambda _: self.inner.delete_job(job_id))

    async def pending_notifications(self) -> list[PendingNotification]:
        return await self._queued(
            "pending_notifications", None, lambda _: self.inner.pending_notifications()
        )

    async def update_notification(self, n: PendingNotification, job: Job | None = None) -> None:
        n = copy.copy(n)  # its attempt count as of now
        await self._queued(
            "update_notification", job, lambda j: self.inner.update_notification(n, j)
        )

    async def finish_notification(self, n: PendingNotification, job: Job | None = None) -> None:
        n = copy.copy(n)
        await self._queued(
            "finish_notification", job, lambda j: self.inner.finish_notification(n, j)
        )

    async def close(self) -> None:
        self.release()
        if self._tail is not None:
            await asyncio.wait([self._tail])
        await self.inner.close()


def _job(job: Job | None) -> Job:
    assert job is not None
    return job


def _retrieve(task: asyncio.Task[Any]) -> None:
    """A write whose caller was cancelled has nobody to see its outcome: consume it."""
    if not task.cancelled():
        task.exception()
