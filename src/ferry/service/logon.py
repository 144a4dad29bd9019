"""Logon sessions and the logoff rules (SPEC §4.5): which owners and helper tokens are still
logged on, and what happens to their jobs when they are not.

* The owner logs off: the helper tokens of their jobs are discarded, and an incomplete job
  that had one goes to ERROR with BG_E_TOKEN_REQUIRED; the owner's other jobs stop and wait,
  QUEUED, until they log on again (the scheduler runs only jobs of logged-on owners).
* The session a helper token came from ends: that token is discarded, and its incomplete job
  goes to ERROR with BG_E_TOKEN_REQUIRED.
* After a restart, persisted helper tokens whose session is gone follow the same rules.

Sessions are polled (``run``); an administrator or a PAM hook can declare a logoff at once
(``logoff``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from ..errors import FerryError
from ..model.job import Job, JobError
from ..model.token import Token
from ..model.types import ErrorContext, JobState
from ..security.sessions import SessionTracker
from ..store.base import JobStore
from . import events as ev
from .outbox import Outbox
from .runqueue import Transfers
from .table import JobTable

log = logging.getLogger("ferry.logon")


class Logon:
    def __init__(
        self,
        table: JobTable,
        store: JobStore,
        outbox: Outbox,
        sessions: SessionTracker,
        transfers: Transfers,
        requeue: Callable[[Job], Awaitable[None]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._table = table
        self._store = store
        self._outbox = outbox
        self._sessions = sessions
        self._transfers = transfers
        self._requeue = requeue
        self._clock = clock

    def logged_on(self, token: Token) -> bool:
        return self._sessions.token_logged_on(token)

    def note(self, token: Token) -> None:
        """A caller's token was captured: its session is alive now (see SessionTracker.note)."""
        if self._sessions.note(token).logged_on:
            self._transfers.kick()

    async def run(self, poll_interval: float) -> None:
        """Discard the helper tokens of sessions that ended while ferryd was down, then poll
        the sessions and apply what changed."""
        await self.discard_stale_helper_tokens()
        while True:
            try:
                await self.refresh()
            except Exception:
                log.exception("session tracking failed; trying again later")
            await asyncio.sleep(poll_interval)

    async def refresh(self) -> None:
        """Scan the logon sessions now and apply what changed."""
        started = time.monotonic()
        found = await asyncio.to_thread(self._sessions.scan)
        change = self._sessions.update(found, started)
        if change.ended_sessions or change.logged_off:
            await self.apply(change.ended_sessions, change.logged_off)
        if change.logged_on:
            self._transfers.kick()

    async def logoff(
        self, *, user: int | None = None, session: int | None = None
    ) -> frozenset[int]:
        """Declare a user or a session logged off now (``ferry logoff``, the PAM hook), after
        a fresh look at the sessions so the declaration covers every one of them; apply the
        rules and return the sessions that ended."""
        if (user is None) == (session is None):
            raise FerryError("E_INVALIDARG", "give exactly one of user and session")
        await self.refresh()
        if session is not None:
            change = self._sessions.declare_session_ended(session)
        else:
            assert user is not None
            change = self._sessions.declare_user_logged_off(user)
        await self.apply(change.ended_sessions, change.logged_off)
        return change.ended_sessions

    async def discard_stale_helper_tokens(self) -> None:
        """After a restart: persisted helper tokens whose session is gone are discarded."""
        ended = frozenset(
            helper.session
            for job in self._table.all()
            if (helper := job.helper_token) is not None
            and helper.session is not None
            and not self._sessions.session_alive(helper.session)
        )
        if ended:
            await self.apply(ended, frozenset())

    async def apply(self, ended: frozenset[int], logged_off: frozenset[int]) -> None:
        """Apply the logoff rules to every job, for the sessions that ended and the users
        (uids) that logged off."""
        log.info("sessions ended: %s; users logged off: %s", sorted(ended), sorted(logged_off))
        for job in self._table.all():
            if job.state.is_final:
                continue
            owner_off = job.owner.uid in logged_off and not self.logged_on(job.owner)
            helper = job.helper_token
            if helper is not None and (owner_off or helper.session in ended):
                async with self._table.exclusive(job):
                    if job.helper_token is helper and not job.state.is_final:
                        await self._discard_helper(job, owner_off)
            elif owner_off and job.state in (JobState.CONNECTING, JobState.TRANSFERRING):
                async with self._table.exclusive(job):
                    await self._transfers.stop(job)
                    await self._requeue(job)
        self._transfers.kick()

    async def _discard_helper(self, job: Job, owner_off: bool) -> None:
        await self._transfers.stop(job)
        now = self._clock()
        job.set_helper_token(None, now)
        if job.state is not JobState.TRANSFERRED:
            why = "the job's owner logged off" if owner_off else "the session it came from ended"
            job.fail(
                JobError(
                    "BG_E_TOKEN_REQUIRED",
                    ErrorContext.GENERAL_QUEUE_MANAGER,
                    f"the helper token was discarded because {why}; "
                    "set it again (or clear the flags) and resume",
                ),
                transient=False,
                now=now,
            )
        due = self._outbox.due(job) if job.state is JobState.ERROR else None
        kind = ev.JOB_ERROR if job.state is JobState.ERROR else ev.JOB_MODIFICATION
        await self._table.commit(job, self._store.save_job_header(job, due), kind)
        self._outbox.announce(due)
