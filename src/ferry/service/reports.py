"""What a transfer reports: the engine's callbacks (``JobCallbacks`` and ``BatchCallbacks``
of transfer/base.py) and the scheduler's records of a run (started, requeued, failed). Each
changes the job in memory, persists it, then announces it (service/table.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..model.job import Job, JobError, iso
from ..model.types import ErrorContext, JobState
from ..protocol.views import job_view
from ..store.base import JobStore
from ..transfer.base import TransferError
from . import events as ev
from .events import Event
from .metrics import Metrics
from .outbox import Outbox
from .table import JobTable

log = logging.getLogger("ferry.reports")


class EngineReports:
    """The callbacks the scheduler hands the engine for every run, and the records it makes
    of a run itself."""

    def __init__(
        self,
        table: JobTable,
        store: JobStore,
        outbox: Outbox,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self._table = table
        self._store = store
        self._outbox = outbox
        self._clock = clock
        self._metrics = metrics

    # ---- the scheduler's records ------------------------------------------------------

    async def started(self, job: Job) -> None:
        """The scheduler picked the job: QUEUED -> CONNECTING."""
        job.start(self._clock())
        await self._table.commit(job, self._store.save_job_header(job))

    async def requeued(self, job: Job) -> None:
        """Back to QUEUED: pre-empted, rotated, its retry time came, its owner logged off
        mid-transfer, or files were added while it ran. A job that is none of CONNECTING,
        TRANSFERRING, TRANSIENT_ERROR any more (it changed meanwhile) stays as it is."""
        if job.state not in (JobState.CONNECTING, JobState.TRANSFERRING, JobState.TRANSIENT_ERROR):
            self._table.stage(job, ())  # still ends a hold the stop that came first left
            return
        if self._metrics is not None and job.state is JobState.TRANSIENT_ERROR:
            self._metrics.retried()
        job.requeue(self._clock())
        await self._table.commit(job, self._store.save_job_header(job))

    async def failed(self, job: Job, exc: TransferError) -> None:
        job.fail(
            JobError.from_ferry_error(exc, exc.context, exc.file_index),
            exc.transient,
            self._clock(),
            exc.retry_after,
        )
        if self._metrics is not None:
            self._metrics.failed(exc.code, job.state is JobState.TRANSIENT_ERROR)
        due = self._outbox.due(job) if job.state is JobState.ERROR else None
        # BITS calls JobError for the ERROR state only; a transient error is a modification.
        kind = ev.JOB_ERROR if job.state is JobState.ERROR else ev.JOB_MODIFICATION
        await self._table.commit(job, self._store.save_job_header(job, due), kind)
        self._outbox.announce(due)
        log.info("job %s %s: %s", job.id, job.state.value, exc)

    async def internal_failure(self, job: Job, exc: BaseException) -> None:
        await self.failed(
            job,
            TransferError(
                "E_FAIL",
                f"internal error: {exc!r}",
                context=ErrorContext.GENERAL_QUEUE_MANAGER,
                transient=True,
            ),
        )

    # ---- JobCallbacks -------------------------------------------------------------------

    async def transferring(self, job: Job) -> None:
        if job.state is JobState.CONNECTING:
            job.transferring(self._clock())
            await self._table.commit(job, self._store.save_job_header(job))

    async def file_started(self, job: Job, index: int) -> None:
        await self._table.commit(job, self._store.save_progress(job, index))

    async def progress(self, job: Job, index: int, bytes_on_disk: int) -> None:
        if self._metrics is not None:
            self._metrics.transferred(job, bytes_on_disk - job.files[index].bytes_transferred)
        job.record_progress(index, bytes_on_disk, self._clock())
        await self._table.commit(job, self._store.save_progress(job, index))

    async def file_completed(self, job: Job, index: int) -> None:
        was = job.state
        job.file_completed(index, self._clock())
        entered = job.state is JobState.TRANSFERRED and was is not JobState.TRANSFERRED
        due = self._outbox.due(job) if entered else None
        kinds = (ev.FILE_TRANSFERRED, ev.JOB_TRANSFERRED) if entered else (ev.FILE_TRANSFERRED,)
        await self._table.commit(job, self._store.save_progress(job, index, due), *kinds)
        self._outbox.announce(due)
        if entered:
            log.info("job %s transferred", job.id)

    # ---- BatchCallbacks -----------------------------------------------------------------

    async def report_files(
        self, job: Job, started: Sequence[int], completed: Sequence[tuple[int, int]]
    ) -> None:
        """Files whose temporary files were named, and files completed together (in file
        order), persisted in one commit; then one file-transferred event per completed
        file, each showing the job as it was right after that file."""
        now = self._clock()
        was = job.state
        was_completed_at = job.transfer_completed
        growth: list[int] = []  # bytes each completed file adds to the job's progress
        sized: list[bool] = []  # whether its size was known before
        for index, size in completed:
            jf = job.files[index]
            growth.append(size - jf.bytes_transferred)
            sized.append(jf.bytes_total is not None)
            job.record_progress(index, size, now)
            job.file_completed(index, now)
        if self._metrics is not None:
            self._metrics.transferred(job, sum(g for g in growth if g > 0))
        entered = job.state is JobState.TRANSFERRED and was is not JobState.TRANSFERRED
        due = self._outbox.due(job) if entered else None
        self._table.stage(job, ())
        events: list[Event] = []
        if completed and self._table.has_subscribers:
            final = job_view(job)
            views = _views_after_each(
                final, growth, sized, was if entered else None, was_completed_at
            )
            uid = job.owner.uid
            events = [Event(ev.FILE_TRANSFERRED, job.id, uid, view) for view in views]
            if entered:
                events.append(Event(ev.JOB_TRANSFERRED, job.id, uid, final))
        await self._store.save_files(job, sorted({*started, *(i for i, _ in completed)}), due)
        self._outbox.announce(due)
        self._table.publish(events)
        if entered:
            log.info("job %s transferred", job.id)


def _views_after_each(
    final: dict[str, Any],
    growth: list[int],
    sized: list[bool],
    was: JobState | None,
    was_completed_at: float | None,
) -> list[dict[str, Any]]:
    """The job's view right after each of several files completed together, in file order,
    derived from the view after the last (``final``): the job's counters are sums over all
    its files, too dear to recompute per file. ``was``: the state before, when the batch
    moved the job to TRANSFERRED (the earlier views still show it)."""
    views = [final]
    later_growth, later_unsized = growth[-1], not sized[-1]
    for k in range(len(growth) - 2, -1, -1):
        progress = dict(final["progress"])
        progress["files_transferred"] -= len(growth) - 1 - k
        progress["bytes_transferred"] -= later_growth
        if later_unsized:
            progress["bytes_total"] = None
        view = dict(final, progress=progress)
        if was is not None:
            view["state"] = was.value
            view["times"] = dict(final["times"], transfer_completed=iso(was_completed_at))
        views.append(view)
        later_growth += growth[k]
        later_unsized = later_unsized or not sized[k]
    views.reverse()
    return views
