"""IBackgroundCopyJobHttpOptions (SPEC §8.3): the checks are the job's (Job.set_http_options);
this seals write-only custom headers with the secret box before they reach the job, so the
job, the store, views and events never hold them in clear."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ..model.job import Job
from ..model.token import Token
from ..security.secretbox import SecretBox
from ..store.base import JobStore
from ..transfer.httpopts import seal_headers
from .table import JobTable


class HttpOptions:
    def __init__(
        self,
        table: JobTable,
        store: JobStore,
        box: SecretBox,
        clock: Callable[[], float] = time.time,
        kick: Callable[[], None] | None = None,
    ) -> None:
        self._table = table
        self._store = store
        self._box = box
        self._clock = clock
        self._kick = kick

    async def set(self, caller: Token, ref: str, opts: dict[str, Any]) -> Job:
        job = self._table.resolve(caller, ref)
        old_priority = job.priority
        job.set_http_options(
            opts, self._clock(), lambda headers: seal_headers(self._box, job.id, headers)
        )
        await self._table.commit(job, self._store.save_job_header(job))
        if job.priority is not old_priority and self._kick is not None:
            self._kick()
        return job
