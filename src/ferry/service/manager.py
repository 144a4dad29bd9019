"""The queue manager: every client operation on jobs, with its access check, persisted to
the store before it is answered or announced (the counterpart of BITS's IBackgroundCopyManager
and IBackgroundCopyJob)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..errors import FerryError
from ..model import notification as notif
from ..model.job import Job, JobError, JobFile, Limits, iso
from ..model.notification import NotificationStatus, PendingNotification
from ..model.paths import validate_local_name, validate_remote_name, validate_sha256
from ..model.token import Token
from ..model.types import ErrorContext, JobState, JobType, Priority
from ..protocol.views import job_view
from ..security import policy
from ..security.handles import Handle, HandleTable, Interface
from ..security.identity import IdentityIO, check_temp_name
from ..security.sessions import SessionTracker
from ..store.sqlite import SqliteStore
from ..transfer.base import TransferError
from . import events as ev
from .events import Event, EventBus

log = logging.getLogger("ferry.manager")


class QueueManager:
    """Holds every job in memory (the store is the durable copy) and implements the
    engine's JobCallbacks, so progress reports are persisted here too."""

    def __init__(
        self,
        store: SqliteStore,
        identity: IdentityIO,
        bus: EventBus,
        limits: Limits,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.identity = identity
        self.bus = bus
        self.limits = limits
        self.clock = clock
        self.jobs: dict[str, Job] = {}
        self.handles = HandleTable()
        self.sessions = SessionTracker()
        self._by_owner: dict[int, dict[str, Job]] = {}
        # Set by the scheduler when it starts; until then nothing runs.
        self.kick: Callable[[], None] = lambda: None
        self.stop_transfer: Callable[[Job], Any] | None = None
        # Set by the scheduler: told of every change of a job (its index of runnable jobs).
        self.job_changed: Callable[[Job], None] = lambda job: None
        # Set by the notifier: told of each command-line notification once it is stored.
        self.notification_due: Callable[[PendingNotification], None] = lambda n: None

    # ---- loading and indexing ---------------------------------------------------

    def load(self) -> int:
        """Load every job; transfers that were running when ferryd stopped queue again."""
        now = self.clock()
        for job in self.store.load_all():
            self._index(job)
            if job.state in (JobState.CONNECTING, JobState.TRANSFERRING):
                job.requeue(now)
                self.store.save_job_header(job)
        return len(self.jobs)

    def _index(self, job: Job) -> None:
        self.jobs[job.id] = job
        self._by_owner.setdefault(job.owner.uid, {})[job.id] = job

    def _unindex(self, job: Job) -> None:
        self.jobs.pop(job.id, None)
        owned = self._by_owner.get(job.owner.uid)
        if owned is not None:
            owned.pop(job.id, None)
            if not owned:
                del self._by_owner[job.owner.uid]

    # ---- events -----------------------------------------------------------------

    def publish(self, job: Job, type: str = ev.JOB_MODIFICATION) -> None:
        self.job_changed(job)
        if self.bus.has_subscribers:
            self.bus.publish(Event(type, job.id, job.owner.uid, job_view(job)))

    def snapshot(self, job: Job) -> Event:
        return Event(ev.JOB_SNAPSHOT, job.id, job.owner.uid, job_view(job))

    # ---- command-line notifications (service/notify.py runs them) ----------------------

    def _due(self, job: Job) -> PendingNotification | None:
        """The notification a job that just entered TRANSFERRED or ERROR owes, if any. The
        caller stores it in the same transaction as the state change (the outbox), then
        hands it to ``_announce_due``."""
        n = notif.due(
            job.id,
            job.state,
            job.notify_flags,
            job.notify_cmdline,
            job.owner,
            float(job.min_retry_delay),
            self.clock(),
        )
        if n is not None:
            job.notification = notif.status(n, notif.PENDING)
        return n

    def _announce_due(self, n: PendingNotification | None) -> None:
        if n is not None:
            self.notification_due(n)

    def notification_attempt(self, n: PendingNotification) -> None:
        """An attempt is about to run: count it durably first, so a crash during the run
        neither loses the notification nor lets it retry forever."""
        self.store.update_notification(n)

    def notification_outcome(self, n: PendingNotification, status: NotificationStatus) -> None:
        """Record how an attempt went on the job (if it still exists); a settled
        notification (delivered, or failed for the last time) leaves the outbox in the same
        transaction."""
        job = self.jobs.get(n.job_id)
        if job is not None:
            job.notification = status
        if not status.settled:
            self.store.update_notification(n, job)
        else:
            self.store.finish_notification(n, job)
        if job is not None:
            self.publish(job)

    # ---- lookup -----------------------------------------------------------------

    def resolve(self, caller: Token, ref: str) -> Job:
        """A job by id, or by a display name unique among the caller's jobs."""
        job = self.jobs.get(ref)
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
            jobs: Iterable[Job] = self.jobs.values()
        else:
            jobs = self._by_owner.get(caller.uid, {}).values()
        return sorted(jobs, key=lambda j: j.created)

    # ---- client operations --------------------------------------------------------

    def create_job(
        self,
        caller: Token,
        display_name: str,
        type: JobType = JobType.DOWNLOAD,
        priority: Priority = Priority.NORMAL,
        description: str = "",
    ) -> Job:
        if len(self._by_owner.get(caller.uid, {})) >= self.limits.jobs_per_user:
            raise FerryError(
                "BG_E_TOO_MANY_JOBS_PER_USER",
                f"{caller.sid} already has {self.limits.jobs_per_user} jobs",
            )
        if len(self.jobs) >= self.limits.jobs_per_machine:
            raise FerryError(
                "BG_E_TOO_MANY_JOBS_PER_MACHINE",
                f"the machine already has {self.limits.jobs_per_machine} jobs",
            )
        if not display_name:
            raise FerryError("E_INVALIDARG", "display_name must not be empty")
        job = Job.new(caller, display_name, self.clock(), self.limits, type, priority, description)
        self.store.insert_job(job)
        self._index(job)
        self.publish(job)
        return job

    async def add_files(
        self,
        caller: Token,
        ref: str,
        pairs: list[tuple[str, str]],
        sha256: list[str | None] | None = None,
    ) -> Job:
        """AddFileSet; ``sha256``, when given, holds each file's expected digest or None."""
        job = self.resolve(caller, ref)
        if job.state.is_final:
            raise FerryError(
                "BG_E_INVALID_STATE", f"cannot add files: the job is {job.state.value}"
            )
        digests = sha256 if sha256 is not None else [None] * len(pairs)
        if len(digests) != len(pairs):
            raise FerryError("E_INVALIDARG", "one sha256 (or None) per file")
        files = [
            JobFile(
                remote_name=validate_remote_name(remote, self.limits),
                local_name=validate_local_name(local, self.limits),
                sha256=validate_sha256(digest),
            )
            for (remote, local), digest in zip(pairs, digests, strict=True)
        ]
        if job.type is JobType.DOWNLOAD:
            # The destination directory must exist, seen by the identity that will write there.
            token = policy.local_file_token(job)
            checked: set[str] = set()
            for f in files:
                directory = f.local_name.rpartition("/")[0]
                if directory not in checked:  # once per directory: 1,000 files, one check
                    await self.identity.check_directory(token, f.local_name)
                    checked.add(directory)
        first = len(job.files)
        job.add_files(files, self.limits, self.clock())
        self.store.add_files(job, first)
        self.publish(job)
        if job.state.is_active:
            self.kick()
        return job

    def resume(self, caller: Token, ref: str) -> Job:
        job = self.resolve(caller, ref)
        if job.resume(self.clock()):
            due = self._due(job) if job.state is JobState.TRANSFERRED else None
            self.store.save_job_header(job, due)
            self._announce_due(due)
            if job.state is JobState.TRANSFERRED:  # its last file finished while suspended
                self.publish(job, ev.JOB_TRANSFERRED)
            else:
                self.publish(job)
                self.kick()
        return job

    async def _stop(self, job: Job) -> None:
        if self.stop_transfer is not None:
            await self.stop_transfer(job)

    async def suspend(self, caller: Token, ref: str) -> Job:
        job = self.resolve(caller, ref)
        if job.state.is_final:
            job.suspend(self.clock())  # raises BG_E_INVALID_STATE
        await self._stop(job)
        if job.suspend(self.clock()):
            self.store.save_job_header(job)
            self.publish(job)
        return job

    async def cancel(self, caller: Token, ref: str) -> tuple[Job, str]:
        job = self.resolve(caller, ref)
        job.plan_cancel()  # refuses final jobs before anything stops
        await self._stop(job)
        result = await self._discard_temporaries(job, job.plan_cancel())
        job.mark_cancelled(self.clock())
        self.store.save_job(job)
        self.publish(job)
        return job, result

    async def complete(self, caller: Token, ref: str) -> tuple[Job, str]:
        job = self.resolve(caller, ref)
        job.plan_complete()
        token = policy.local_file_token(job) if job.type is JobType.DOWNLOAD else job.owner
        await self._stop(job)
        plan = job.plan_complete()
        try:
            await self._publish(job, token, [i for i in plan.rename if job.files[i].temp_name])
        except BaseException:
            self._complete_failed(job)
            raise
        result = await self._discard_temporaries(job, plan.discard)
        if plan.partial:
            result = "BG_S_PARTIAL_COMPLETE"
        job.mark_acknowledged(plan, self.clock())
        self.store.save_job(job)
        self.publish(job)
        return job, result

    async def _publish(self, job: Job, token: Token, indices: list[int]) -> None:
        """Rename the temporary files of ``indices`` to their local names: in order, in one
        trip to a worker, each directory synced once. The caller records the job (one
        commit for the whole complete, or ``_complete_failed``'s). A crash before that
        leaves the job as it was with its renamed temporary files gone: the next complete
        finds each local name holding a regular file of the recorded size and counts it as
        published (it does the same for a rename it is told is missing)."""
        files = job.files
        for i in indices:  # a damaged store must not make us rename a file that is not ours
            check_temp_name(files[i].local_name, files[i].temp_name or "")
        published: list[int] = []
        try:
            while indices:
                pairs = [(files[i].temp_name or "", files[i].local_name) for i in indices]
                done, error = await self.identity.publish_many(token, pairs)
                published += indices[:done]
                if error is None:
                    break
                if done == len(indices):  # all renamed; a directory could not be synced
                    raise error
                failed = indices[done]
                # The temporary file is gone and the local name holds the whole file: an
                # earlier complete renamed it and was stopped before recording that.
                if error.code != "ERROR_FILE_NOT_FOUND" or await self.identity.regular_file_size(
                    token, files[failed].local_name
                ) != files[failed].bytes_transferred:
                    raise error
                published.append(failed)
                indices = indices[done + 1 :]
        finally:
            for i in published:
                files[i].temp_name = None

    def _complete_failed(self, job: Job) -> None:
        """``complete`` failed part-way (a rename failed): the job stays as it is, with the
        files renamed so far recorded. A transfer it stopped goes back to the queue, and the
        change is published at once, which also ends the scheduler's hold on the job (else
        it would wait HOLD_SECONDS) and shows clients the job as it is now."""
        try:
            if job.state in (JobState.CONNECTING, JobState.TRANSFERRING):
                job.requeue(self.clock())  # stopped for complete: it runs again for the rest
            self.store.save_job(job)
        except Exception:  # the caller reports why complete failed; this must not hide it
            log.exception("job %s: cannot record the state after a failed complete", job.id)
        self.publish(job)
        self.kick()

    async def _discard_temporaries(self, job: Job, indices: Iterable[int]) -> str:
        """Delete temporary files as the identity that created them; never fail the call."""
        try:
            token = policy.local_file_token(job)
        except FerryError:  # flags set but the helper token is gone: the owner cleans up
            token = job.owner
        result = "S_OK"
        for i in indices:
            f = job.files[i]
            if f.temp_name is None:
                continue
            try:
                check_temp_name(f.local_name, f.temp_name)
            except FerryError as exc:  # a damaged store: whatever that names is not ours
                log.warning("job %s: not deleting %s: %s", job.id, f.temp_name, exc)
                continue
            try:
                await self.identity.unlink(token, f.temp_name)
            except FerryError as exc:
                log.warning("could not delete %s: %s", f.temp_name, exc)
                result = "BG_S_UNABLE_TO_DELETE_FILES"
        return result

    def set_properties(self, caller: Token, ref: str, props: dict[str, Any]) -> Job:
        job = self.resolve(caller, ref)
        old_priority = job.priority
        job.set_properties(props, self.limits, self.clock())
        self.store.save_job_header(job)
        self.publish(job)
        if job.priority is not old_priority:
            self.kick()
        return job

    def take_ownership(self, caller: Token, ref: str) -> Job:
        job = self.resolve(caller, ref)
        self._unindex(job)
        try:
            job.take_ownership(caller, self.clock())
            self.store.save_job_header(job)
        finally:
            self._index(job)
        self.publish(job)
        return job

    # ---- handles and IBitsTokenOptions (SPEC §4.3, §4.4) ---------------------------

    def open_handle(
        self,
        caller: Token,
        ref: str,
        interface: Interface,
        ttl: float | None,
        connection_alive: Callable[[], bool],
    ) -> Handle:
        """QueryInterface: the access check happens now, with the caller's token."""
        job = self.resolve(caller, ref)
        return self.handles.open(job.id, interface, caller, ttl, connection_alive)

    def handle_job(self, handle_id: str, interface: Interface | None = None) -> tuple[Handle, Job]:
        h = self.handles.get(handle_id, interface)
        job = self.jobs.get(h.job_id)
        if job is None:
            self.handles.drop_job(h.job_id)
            raise FerryError("BG_E_NOT_FOUND", "the handle's job no longer exists")
        return h, job

    def as_opener(self, handle_id: str) -> tuple[Token, str]:
        """For job-interface calls: act with the opener's identity on the handle's job."""
        h, job = self.handle_job(handle_id, Interface.JOB)
        return h.opener, job.id

    def token_options(
        self, caller: Token, ref: str | None, handle_id: str | None
    ) -> tuple[Token, Job]:
        """The opener and job of a token-options call; without a handle the caller opens one
        implicitly at this moment."""
        if handle_id is not None:
            h, job = self.handle_job(handle_id, Interface.TOKEN_OPTIONS)
            return h.opener, job
        assert ref is not None
        return caller, self.resolve(caller, ref)

    def get_helper_token(self, opener: Token, job: Job) -> dict[str, Any]:
        policy.check_read_token_options(opener, job)
        return {
            "flags": job.helper_flags.names(),
            "flags_value": int(job.helper_flags),
            "sid": job.helper_token.sid if job.helper_token else None,
        }

    async def set_helper_token(self, opener: Token, job: Job, helper: Token) -> Job:
        """SetHelperToken: the helper becomes the identity of the carrying connection."""
        policy.check_set_helper_token(opener, job, helper)
        job.set_helper_token(helper, self.clock())
        self.store.save_job_header(job)
        self.publish(job)
        return job

    async def set_helper_flags(self, opener: Token, job: Job, flags: int) -> Job:
        policy.check_set_helper_flags(opener, job)
        job.set_helper_flags(flags, self.clock())
        self.store.save_job_header(job)
        self.publish(job)
        return job

    async def clear_helper_token(self, opener: Token, job: Job) -> Job:
        policy.check_clear_helper_token(opener, job)
        job.set_helper_token(None, self.clock())
        self.store.save_job_header(job)
        self.publish(job)
        return job

    # ---- logon sessions (SPEC §4.5) ------------------------------------------------

    def logged_on(self, token: Token) -> bool:
        return self.sessions.token_logged_on(token)

    async def refresh_sessions(self) -> None:
        """Scan the logon sessions now and apply what changed."""
        change = self.sessions.update(await asyncio.to_thread(self.sessions.scan))
        if change.ended_sessions or change.logged_off:
            await self.sessions_changed(change.ended_sessions, change.logged_off)
        if change.logged_on:
            self.kick()

    async def sessions_changed(self, ended: frozenset[int], logged_off: frozenset[int]) -> None:
        """Apply the logoff rules: an owner's logoff or the end of a helper token's session
        discards the helper token, and an incomplete job that had one goes to ERROR with
        BG_E_TOKEN_REQUIRED. Other jobs of a logged-off owner stop and wait, QUEUED."""
        log.info("sessions ended: %s; users logged off: %s", sorted(ended), sorted(logged_off))
        now = self.clock()
        for job in list(self.jobs.values()):
            if job.state.is_final:
                continue
            owner_off = job.owner.uid in logged_off and not self.logged_on(job.owner)
            helper = job.helper_token
            helper_gone = helper is not None and (
                (helper.session is not None and helper.session in ended) or (owner_off)
            )
            if helper_gone:
                await self._stop(job)
                job.set_helper_token(None, now)
                if job.state is not JobState.TRANSFERRED:
                    job.fail(
                        JobError(
                            "BG_E_TOKEN_REQUIRED",
                            ErrorContext.GENERAL_QUEUE_MANAGER,
                            "the helper token was discarded because "
                            + (
                                "the job's owner logged off"
                                if owner_off
                                else "the session it came from ended"
                            )
                            + "; set it again (or clear the flags) and resume",
                        ),
                        transient=False,
                        now=now,
                    )
                due = self._due(job) if job.state is JobState.ERROR else None
                self.store.save_job_header(job, due)
                self._announce_due(due)
                self.publish(
                    job, ev.JOB_ERROR if job.state is JobState.ERROR else ev.JOB_MODIFICATION
                )
            elif owner_off and job.state in (JobState.CONNECTING, JobState.TRANSFERRING):
                await self._stop(job)
                self.requeued(job)
        self.kick()

    async def discard_stale_helper_tokens(self) -> None:
        """After a restart: persisted helper tokens whose session is gone are discarded."""
        ended = frozenset(
            j.helper_token.session
            for j in self.jobs.values()
            if j.helper_token is not None
            and j.helper_token.session is not None
            and not self.sessions.session_alive(j.helper_token.session)
        )
        if ended:
            await self.sessions_changed(ended, frozenset())

    # ---- housekeeping -----------------------------------------------------------

    async def housekeeping(self, retention: float, inactivity: float) -> None:
        """Purge final jobs after their retention; cancel jobs untouched for too long."""
        now = self.clock()
        for job in list(self.jobs.values()):
            if job.state.is_final:
                if now - job.modified >= retention:
                    self.store.delete_job(job.id)
                    self._unindex(job)
                    self.publish(job, ev.JOB_REMOVED)
            elif now - job.modified >= inactivity:
                log.info("cancelling job %s: inactive for %d s", job.id, now - job.modified)
                await self._stop(job)
                await self._discard_temporaries(job, job.plan_cancel())
                job.mark_cancelled(now)
                self.store.save_job(job)
                self.publish(job)

    # ---- the engine's callbacks (JobCallbacks) -------------------------------------

    def started(self, job: Job) -> None:
        job.start(self.clock())
        self.store.save_job_header(job)
        self.publish(job)

    def requeued(self, job: Job) -> None:
        job.requeue(self.clock())
        self.store.save_job_header(job)
        self.publish(job)

    async def transferring(self, job: Job) -> None:
        if job.state is JobState.CONNECTING:
            job.transferring(self.clock())
            self.store.save_job_header(job)
            self.publish(job)

    async def file_started(self, job: Job, index: int) -> None:
        self.store.save_file(job, index)
        self.publish(job)

    async def progress(self, job: Job, index: int, bytes_on_disk: int) -> None:
        job.record_progress(index, bytes_on_disk, self.clock())
        self.store.save_progress(job, index)
        self.publish(job)

    async def file_completed(self, job: Job, index: int) -> None:
        was = job.state
        job.file_completed(index, self.clock())
        entered = job.state is JobState.TRANSFERRED and was is not JobState.TRANSFERRED
        due = self._due(job) if entered else None
        self.store.save_progress(job, index, due)
        self._announce_due(due)
        self.publish(job, ev.FILE_TRANSFERRED)
        if job.state is JobState.TRANSFERRED:
            self.publish(job, ev.JOB_TRANSFERRED)
            log.info("job %s transferred", job.id)

    async def report_files(
        self, job: Job, started: Sequence[int], completed: Sequence[tuple[int, int]]
    ) -> None:
        """BatchCallbacks: files whose temporary files were created, and files completed
        together (in file order), persisted in one commit; then one file-transferred event
        per completed file, each showing the job as it was right after that file."""
        now = self.clock()
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
        entered = job.state is JobState.TRANSFERRED and was is not JobState.TRANSFERRED
        due = self._due(job) if entered else None
        self.store.save_files(job, sorted({*started, *(i for i, _ in completed)}), due)
        self._announce_due(due)
        self.job_changed(job)
        if completed and self.bus.has_subscribers:
            # One full view, and the views after the earlier files derived from it: the
            # job's counters are sums over all its files, too dear to recompute per file.
            final = job_view(job)
            views = []
            later_growth, later_unsized = 0, False
            for k in range(len(completed) - 1, -1, -1):
                if k == len(completed) - 1:
                    views.append(final)
                else:
                    progress = dict(final["progress"])
                    progress["files_transferred"] -= len(completed) - 1 - k
                    progress["bytes_transferred"] -= later_growth
                    if later_unsized:
                        progress["bytes_total"] = None
                    view = dict(final, progress=progress)
                    if entered:
                        view["state"] = was.value
                        before = iso(was_completed_at)
                        view["times"] = dict(final["times"], transfer_completed=before)
                    views.append(view)
                later_growth += growth[k]
                later_unsized = later_unsized or not sized[k]
            for view in reversed(views):
                self.bus.publish(Event(ev.FILE_TRANSFERRED, job.id, job.owner.uid, view))
        if entered:
            self.publish(job, ev.JOB_TRANSFERRED)
            log.info("job %s transferred", job.id)

    def failed(self, job: Job, exc: TransferError) -> None:
        now = self.clock()
        job.fail(
            JobError.from_ferry_error(exc, exc.context, exc.file_index),
            exc.transient,
            now,
            exc.retry_after,
        )
        due = self._due(job) if job.state is JobState.ERROR else None
        self.store.save_job_header(job, due)
        self._announce_due(due)
        # BITS calls JobError for the ERROR state only; a transient error is a modification.
        self.publish(job, ev.JOB_ERROR if job.state is JobState.ERROR else ev.JOB_MODIFICATION)
        log.info("job %s %s: %s", job.id, job.state.value, exc)

    def internal_failure(self, job: Job, exc: BaseException) -> None:
        self.failed(
            job,
            TransferError(
                "E_FAIL",
                f"internal error: {exc!r}",
                context=ErrorContext.GENERAL_QUEUE_MANAGER,
                transient=True,
            ),
        )
