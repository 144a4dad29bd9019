"""Handles and the token-options interface (SPEC §4.3, §4.4): opening a job for an
interface, with the access check made then, and BITS's IBitsTokenOptions — the helper token
and its flags — judged by the identity that opened the handle.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..errors import FerryError
from ..model.job import Job
from ..model.token import Token
from ..security import policy
from ..security.handles import Handle, HandleTable, Interface
from ..store.base import JobStore
from .table import JobTable


class Handles:
    def __init__(
        self,
        table: JobTable,
        store: JobStore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._table = table
        self._store = store
        self._clock = clock
        self._handles = HandleTable()  # in memory only: a restart kills every handle

    # ---- handles --------------------------------------------------------------------

    def open_handle(
        self,
        caller: Token,
        ref: str,
        interface: Interface,
        ttl: float | None,
        connection_alive: Callable[[], bool],
    ) -> Handle:
        """QueryInterface: the access check happens now, with the caller's token."""
        job = self._table.resolve(caller, ref)
        return self._handles.open(job.id, interface, caller, ttl, connection_alive)

    def handle_job(self, handle_id: str, interface: Interface | None = None) -> tuple[Handle, Job]:
        h = self._handles.get(handle_id, interface)
        job = self._table.get(h.job_id)
        if job is None:
            self._handles.drop_job(h.job_id)
            raise FerryError("BG_E_NOT_FOUND", "the handle's job no longer exists")
        return h, job

    def release_handle(self, handle_id: str) -> None:
        self._handles.release(handle_id)

    def as_opener(self, handle_id: str) -> tuple[Token, str]:
        """For job-interface calls: act with the opener's identity on the handle's job."""
        h, job = self.handle_job(handle_id, Interface.JOB)
        return h.opener, job.id

    # ---- IBitsTokenOptions ------------------------------------------------------------

    def token_options(
        self, caller: Token, ref: str | None, handle_id: str | None
    ) -> tuple[Token, Job]:
        """The opener and job of a token-options call; without a handle the caller opens one
        implicitly at this moment."""
        if handle_id is not None:
            h, job = self.handle_job(handle_id, Interface.TOKEN_OPTIONS)
            return h.opener, job
        assert ref is not None
        return caller, self._table.resolve(caller, ref)

    def get_helper_token(self, opener: Token, job: Job) -> dict[str, Any]:
        policy.check_read_token_options(opener, job)
        return {
            "flags": job.helper_flags.names(),
            "flags_value": int(job.helper_flags),
            "sid": job.helper_token.sid if job.helper_token else None,
        }

    async def set_helper_token(
        self, opener: Token, job: Job, helper: Token, ccache: str | None = None
    ) -> Job:
        """SetHelperToken: the helper becomes the identity of the carrying connection.
        ``ccache``: the helper's Kerberos credential cache, checked as the helper."""
        policy.check_set_helper_token(opener, job, helper)
        job.set_helper_token(helper, self._clock())
        job.set_helper_ccache(ccache)
        await self._table.commit(job, self._store.save_job_header(job))
        return job

    async def set_helper_flags(self, opener: Token, job: Job, flags: int) -> Job:
        policy.check_set_helper_flags(opener, job)
        job.set_helper_flags(flags, self._clock())
        await self._table.commit(job, self._store.save_job_header(job))
        return job

    async def clear_helper_token(self, opener: Token, job: Job) -> Job:
        policy.check_clear_helper_token(opener, job)
        job.set_helper_token(None, self._clock())
        await self._table.commit(job, self._store.save_job_header(job))
        return job
