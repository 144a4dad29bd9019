"""Who may transfer a job: the scheduler claims a job before it starts its transfer and
releases it when the run ends (SPEC §12).

One ferryd on its own SQLite store is the only worker there is: ``LocalLeases`` grants every
claim at once, without a suspension point, so the single-machine scheduler behaves exactly
as before. Fleet mode (service/fleet.py) claims in PostgreSQL with ``FOR UPDATE SKIP LOCKED``,
renews while the run lasts and stops the run when the lease is lost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..model.job import Job


class Leases(Protocol):
    async def claim(self, job: Job) -> bool:
        """Take the job for a transfer by this worker; False when another worker has it (or
        it is no longer QUEUED as the store has it). May refresh ``job`` from the store."""
        ...

    async def release(self, job: Job) -> None:
        """The run is over (its last write is done): give the job up."""
        ...

    def attach(self, abandon: Callable[[str], None]) -> None:
        """``abandon(job_id)`` stops a run at once, without writing: its lease is lost."""
        ...


class LocalLeases:
    """The single-machine case: one worker, every claim granted."""

    async def claim(self, job: Job) -> bool:
        return True

    async def release(self, job: Job) -> None:
        return None

    def attach(self, abandon: Callable[[str], None]) -> None:
        return None
