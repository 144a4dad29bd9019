"""The transport interface and the engine's callbacks: the seam between the scheduler, the
engine and the schemes (http, file, later the BITS upload protocol)."""

from __future__ import annotations

from typing import Protocol

from ..errors import FerryError
from ..model.job import Job
from ..model.types import ErrorContext


class TransferError(FerryError):
    """A failed transfer: the code, where it happened, and whether a retry may help."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        context: ErrorContext,
        transient: bool,
        file_index: int | None = None,
        retry_after: float | None = None,
        hresult: int | None = None,
    ) -> None:
        super().__init__(code, message, hresult=hresult)
        self.context = context
        self.transient = transient
        self.file_index = file_index
        self.retry_after = retry_after


class JobCallbacks(Protocol):
    """Implemented by the queue manager, which persists each report before announcing it.

    The engine never changes a Job's state itself; it fills in the JobFile's transfer fields
    (temp_name, bytes_total, validator, final_url) and then reports."""

    async def transferring(self, job: Job) -> None:
        """The first response arrived: CONNECTING -> TRANSFERRING."""

    async def file_started(self, job: Job, index: int) -> None:
        """The file's temporary file exists and its size/validator are known."""

    async def progress(self, job: Job, index: int, bytes_on_disk: int) -> None:
        """Bytes up to ``bytes_on_disk`` are written and fsynced."""

    async def file_completed(self, job: Job, index: int) -> None:
        """Every byte of the file is on disk and fsynced in its temporary file."""
