"""The queue manager: the client's commands on jobs (BITS's IBackgroundCopyManager and
IBackgroundCopyJob) — create, add files, resume, suspend, cancel, complete, set properties,
take ownership — and the lookups with their access check. Each change is persisted before
it is answered or announced (service/table.py says how).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from ..errors import FerryError
from ..model.job import Job, JobFile, Limits
from ..model.paths import (
    check_upload_files,
    validate_local_name,
    validate_remote_name,
    validate_sha256,
)
from ..model.ranges import set_ranges
from ..model.token import Token
from ..model.types import JobState, JobType, Priority
from ..security import policy
from ..security.localfiles import LocalFiles
from ..store.base import JobStore
from . import events as ev
from .events import Event
from .outbox import Outbox
from .runqueue import Transfers
from .table import JobTable

log = logging.getLogger("ferry.manager")


class UploadSessions(Protocol):
    """The ends of an upload's server session (transfer/engine.py): Close-Session at
    ``complete``, Cancel-Session at ``cancel``."""

    async def close_upload(self, job: Job) -> None: ...

    async def cancel_upload(self, job: Job) -> None: ...


class QueueManager:
    def __init__(
        self,
        table: JobTable,
        store: JobStore,
        outbox: Outbox,
        files: LocalFiles,
        transfers: Transfers,
        limits: Limits,
        clock: Callable[[], float] = time.time,
        uploads: UploadSessions | None = None,
    ) -> None:
        self._uploads = uploads
        self._table = table
        self._store = store
        self._outbox = outbox
        self._files = files
        self._transfers = transfers
        self._limits = limits
        self._clock = clock

    # ---- lookup -----------------------------------------------------------------

    def resolve(self, caller: Token, ref: str) -> Job:
        """A job by id, or by a display name unique among the caller's jobs."""
        return self._table.resolve(caller, ref)

    def list_jobs(self, caller: Token, all_users: bool) -> list[Job]:
        return self._table.list_jobs(caller, all_users)

    def job_count(self) -> int:
        return self._table.job_count()

    def has_job(self, job_id: str) -> bool:
        return self._table.has_job(job_id)

    def snapshot(self, job: Job) -> Event:
        return self._table.snapshot(job)

    # ---- commands -----------------------------------------------------------------

    async def create_job(
        self,
        caller: Token,
        display_name: str,
        type: JobType = JobType.DOWNLOAD,
        priority: Priority = Priority.NORMAL,
        description: str = "",
        ccache: str | None = None,
    ) -> Job:
        """``ccache``: the caller's Kerberos credential cache, already checked as the caller
        (service/credentials.py), for implicit NEGOTIATE credentials."""
        limits = self._limits
        if self._table.owned_count(caller.uid) >= limits.jobs_per_user:
            raise FerryError(
                "BG_E_TOO_MANY_JOBS_PER_USER",
                f"{caller.sid} already has {limits.jobs_per_user} jobs",
            )
        if self._table.job_count() >= limits.jobs_per_machine:
            raise FerryError(
                "BG_E_TOO_MANY_JOBS_PER_MACHINE",
                f"the machine already has {limits.jobs_per_machine} jobs",
            )
        if not display_name:
            raise FerryError("E_INVALIDARG", "display_name must not be empty")
        job = Job.new(caller, display_name, self._clock(), limits, type, priority, description)
        job.owner_ccache = ccache
        # In the table before the write, so concurrent creations count it against the limits.
        self._table.add(job)
        try:
            await self._table.commit(job, self._store.insert_job(job))
        except Exception:  # the insert was refused: the job never existed
            self._table.remove(job)
            raise
        return job

    async def add_files(
        self,
        caller: Token,
        ref: str,
        pairs: list[tuple[str, str]],
        sha256: list[str | None] | None = None,
        ranges: list[list[tuple[int, int | None]] | None] | None = None,
    ) -> Job:
        """AddFileSet; ``sha256``, when given, holds each file's expected digest or None;
        ``ranges`` each file's byte ranges (AddFileWithRanges) or None."""
        job = self.resolve(caller, ref)
        if job.state.is_final:
            raise FerryError(
                "BG_E_INVALID_STATE", f"cannot add files: the job is {job.state.value}"
            )
        if job.type is not JobType.DOWNLOAD and len(job.files) + len(pairs) > 1:
            # Before any name is looked at: a second file is refused as such (SPEC §9).
            raise FerryError("BG_E_TOO_MANY_FILES", "an upload job has exactly one file")
        digests = sha256 if sha256 is not None else [None] * len(pairs)
        if len(digests) != len(pairs):
            raise FerryError("E_INVALIDARG", "one sha256 (or None) per file")
        spans = ranges if ranges is not None else [None] * len(pairs)
        if len(spans) != len(pairs):
            raise FerryError("E_INVALIDARG", "one list of ranges (or None) per file")
        files = [
            JobFile(
                remote_name=validate_remote_name(remote, self._limits),
                local_name=validate_local_name(local, self._limits),
                sha256=validate_sha256(digest),
            )
            for (remote, local), digest in zip(pairs, digests, strict=True)
        ]
        if job.type is not JobType.DOWNLOAD:
            check_upload_files(files)
        for jf, span in zip(files, spans, strict=True):
            if span is not None:
                set_ranges(jf, span)
        # The destination directories must exist, seen by the identity that will write there.
        await self._files.check_destinations(job, files)
        first = len(job.files)
        job.add_files(files, self._limits, self._clock())
        await self._table.commit(job, self._store.add_files(job, first))
        if job.state.is_active:
            self._transfers.kick()
        return job

    async def resume(self, caller: Token, ref: str) -> Job:
        job = self.resolve(caller, ref)
        if job.resume(self._clock()):
            if job.state is JobState.TRANSFERRED:  # its last file finished while suspended
                due = self._outbox.due(job)
                await self._table.commit(
                    job, self._store.save_job_header(job, due), ev.JOB_TRANSFERRED
                )
                self._outbox.announce(due)
            else:
                await self._table.commit(job, self._store.save_job_header(job))
                self._transfers.kick()
        return job

    async def suspend(self, caller: Token, ref: str) -> Job:
        job = self.resolve(caller, ref)
        async with self._table.exclusive(job):
            if job.state.is_final:
                job.suspend(self._clock())  # raises BG_E_INVALID_STATE
            await self._transfers.stop(job)
            if job.suspend(self._clock()):
                await self._table.commit(job, self._store.save_job_header(job))
        return job

    async def cancel(self, caller: Token, ref: str) -> tuple[Job, str]:
        job = self.resolve(caller, ref)
        job.plan_cancel()  # refuses a final job before anything stops
        result = await self.cancel_job(job)
        assert result is not None
        return job, result

    async def cancel_job(self, job: Job, modified: float | None = None) -> str | None:
        """Cancel without an access check (the caller made it, or is housekeeping): stop the
        transfer, delete the temporary files, CANCELLED. With ``modified``, only if the job
        was not modified since (else None: something changed it meanwhile)."""
        async with self._table.exclusive(job):
            if modified is not None and job.modified != modified:
                return None
            job.plan_cancel()  # raises if it became final meanwhile
            await self._transfers.stop(job)
            if job.type is not JobType.DOWNLOAD:
                await self._cancel_upload(job)
            result = await self._files.discard(job, job.plan_cancel())
            job.mark_cancelled(self._clock())
            await self._table.commit(job, self._store.save_job(job))
        return result

    async def complete(self, caller: Token, ref: str) -> tuple[Job, str]:
        job = self.resolve(caller, ref)
        async with self._table.exclusive(job):
            job.plan_complete()  # refuses before anything stops
            token = policy.local_file_token(job) if job.type is JobType.DOWNLOAD else job.owner
            await self._transfers.stop(job)
            plan = job.plan_complete()
            if job.type is not JobType.DOWNLOAD:
                return job, await self._complete_upload(job)
            try:
                renames = [i for i in plan.rename if job.files[i].temp_name]
                await self._files.publish(job, token, renames)
            except BaseException:
                await self._complete_failed(job)
                raise
            result = await self._files.discard(job, plan.discard)
            if plan.partial:
                result = "BG_S_PARTIAL_COMPLETE"
            job.mark_acknowledged(plan, self._clock())
            await self._table.commit(job, self._store.save_job(job))
        return job, result

    # ---- uploads (SPEC §9) ---------------------------------------------------------------

    async def _complete_upload(self, job: Job) -> str:
        """``complete`` of a transferred upload job (its lock held, its transfer stopped):
        Close-Session, so the server publishes the upload; then an upload-reply job's reply
        is renamed from its hidden temporary file to its reply file, as the local-file
        token. A failure leaves the job TRANSFERRED (its session open, if the server still
        has it) and is the caller's answer."""
        if self._uploads is None:
            raise FerryError("E_NOTIMPL", "this ferryd cannot run uploads")
        state = job.upload_state()
        if state.session_id is not None:
            try:
                await self._uploads.close_upload(job)
            except FerryError as exc:
                if exc.code == "BG_E_SESSION_NOT_FOUND":
                    await self._restart_upload(job)
                    raise FerryError(
                        exc.code,
                        f"{exc.message}; the server no longer has the upload, which starts "
                        "over (complete the job once it is TRANSFERRED again)",
                        hresult=exc.hresult,
                    ) from None
                raise
        if job.type is JobType.UPLOAD_REPLY and state.reply_temp is not None:
            # Forgotten in the store first: a Close-Session that went through is never sent
            # again (a crash before the rename finds the reply still in its temporary file).
            await self._table.commit(job, self._store.save_job_header(job))
            await self._files.publish_reply(job)
        job.mark_acknowledged(job.plan_complete(), self._clock())
        await self._table.commit(job, self._store.save_job(job))
        return "S_OK"

    async def _restart_upload(self, job: Job) -> None:
        await self._files.discard_reply(job)
        job.restart_upload(self._clock())
        await self._table.commit(job, self._store.save_job(job))
        self._transfers.kick()

    async def _cancel_upload(self, job: Job) -> None:
        """``cancel`` of an upload job: Cancel-Session (best effort) and the reply's
        temporary file deleted."""
        if self._uploads is not None:
            try:
                await self._uploads.cancel_upload(job)
            except Exception:  # cancel never fails for the server's sake
                log.exception("job %s: Cancel-Session failed", job.id)
        await self._files.discard_reply(job)

    async def set_reply_file(self, caller: Token, ref: str, path: str) -> Job:
        """IBackgroundCopyJob2::SetReplyFileName: where ``complete`` puts the reply."""
        job = self.resolve(caller, ref)
        local = validate_local_name(path, self._limits)
        job.set_reply_file(local, self._clock())  # refuses before anything is looked at
        await self._files.check_reply_file(job, local)
        await self._table.commit(job, self._store.save_job_header(job))
        return job

    async def reply_data(self, caller: Token, ref: str) -> bytes:
        """IBackgroundCopyJob2::GetReplyData: the reply of a TRANSFERRED upload-reply job,
        read as the local-file token; at most 1 MiB (BG_E_TOO_LARGE)."""
        job = self.resolve(caller, ref)
        if job.type is not JobType.UPLOAD_REPLY:
            raise FerryError("E_NOTIMPL", "only upload-reply jobs have a reply")
        if job.state is not JobState.TRANSFERRED:
            raise FerryError(
                "BG_E_INVALID_STATE",
                f"the reply can be read once the job is TRANSFERRED; it is {job.state.value}",
            )
        return await self._files.read_reply(job)

    async def _complete_failed(self, job: Job) -> None:
        """``complete`` failed part-way (a rename failed): the job stays as it is, with the
        files renamed so far recorded. A transfer it stopped goes back to the queue. Staging
        the change ends the scheduler's hold on the job at once (else it would wait
        HOLD_SECONDS), and clients are shown the job as it is now."""
        if job.state in (JobState.CONNECTING, JobState.TRANSFERRING):
            job.requeue(self._clock())  # stopped for complete: it runs again for the rest
        try:
            await self._table.commit(job, self._store.save_job(job))
        except Exception:  # the caller reports why complete failed; this must not hide it
            log.exception("job %s: cannot record the state after a failed complete", job.id)
        self._transfers.kick()

    async def set_properties(self, caller: Token, ref: str, props: dict[str, Any]) -> Job:
        job = self.resolve(caller, ref)
        old_priority = job.priority
        job.set_properties(props, self._limits, self._clock())
        await self._table.commit(job, self._store.save_job_header(job))
        if job.priority is not old_priority:
            self._transfers.kick()
        return job

    async def set_remote_name(self, caller: Token, ref: str, index: int, url: str) -> Job:
        """IBackgroundCopyFile2::SetRemoteName: a transfer in progress stops first and goes
        back to the queue; the file keeps its partial data if the new server has the same
        size and validator, and starts over otherwise (transfer/engine.py)."""
        job = self.resolve(caller, ref)
        remote = validate_remote_name(url, self._limits)
        async with self._table.exclusive(job):
            job.check_set_remote_name(index)  # refuses before anything stops
            await self._transfers.stop(job)
            job.set_remote_name(index, remote, self._clock())
            self._requeue_stopped(job)
            await self._table.commit(job, self._store.save_progress(job, index))
        self._transfers.kick()
        return job

    async def replace_remote_prefix(
        self, caller: Token, ref: str, old: str, new: str
    ) -> tuple[Job, str]:
        """IBackgroundCopyJob3::ReplaceRemotePrefix: every remote name starting with ``old``
        (case-sensitive) gets ``new`` instead; each resulting name is validated before any
        changes (all or nothing). ``S_FALSE`` when no name matched (nothing stops)."""
        job = self.resolve(caller, ref)
        async with self._table.exclusive(job):
            plan = job.plan_replace_remote_prefix(old, new)
            names = {i: validate_remote_name(u, self._limits) for i, u in plan.items()}
            if not names:
                return job, "S_FALSE"
            await self._transfers.stop(job)
            job.replace_remote_names(names, self._clock())
            self._requeue_stopped(job)
            await self._table.commit(job, self._store.save_files(job, sorted(names)))
        self._transfers.kick()
        return job, "S_OK"

    def _requeue_stopped(self, job: Job) -> None:
        """A transfer stopped for a change goes back to the queue."""
        if job.state in (JobState.CONNECTING, JobState.TRANSFERRING):
            job.requeue(self._clock())

    async def take_ownership(self, caller: Token, ref: str) -> Job:
        job = self.resolve(caller, ref)
        old_uid = job.owner.uid
        job.take_ownership(caller, self._clock())
        self._table.owner_changed(job, old_uid)
        await self._table.commit(job, self._store.save_job_header(job))
        return job
