"""The transport interface and the engine's callbacks: the seam between the scheduler, the
engine and the schemes (http, file, later the BITS upload protocol)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ..errors import FerryError, code_for_errno
from ..model.job import Job
from ..model.types import ErrorContext

# The most one pwrite hands the kernel. The page cache sizes its folios after the writes:
# 256 KiB or 1 MiB writes ask for high-order folios, which cost compaction whenever free
# memory was left in small pieces (say, by a program writing 16 KiB at a time, as curl does).
# Measured on the development VM, 1 GiB written right after a 16 KiB writer: in 1 MiB
# pwrites 0.57 s of system time, in 256 KiB 0.56-1.02 s, in 128 KiB 0.23-0.24 s, in 64 KiB
# 0.26-0.31 s (every size costs ~0.22 s when the memory is in the state it likes).
WRITE_MAX = 128 << 10


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

    @classmethod
    def from_ferry_error(
        cls,
        exc: FerryError,
        *,
        context: ErrorContext,
        transient: bool | None = None,
        file_index: int | None = None,
    ) -> TransferError:
        """Place a FerryError (from identity I/O or policy) in a transfer. Unless told,
        only a full disk is worth retrying: space may be freed, permissions will not change
        by themselves."""
        if isinstance(exc, TransferError):
            if exc.file_index is None:
                exc.file_index = file_index
            return exc
        if transient is None:
            transient = exc.code == "ERROR_DISK_FULL"
        return cls(
            exc.code,
            exc.message,
            context=context,
            transient=transient,
            file_index=file_index,
            hresult=exc.hresult,
        )


def local_error(exc: OSError, what: str) -> TransferError:
    """A failed write to the temporary file: LOCAL_FILE; a full disk is transient."""
    code = code_for_errno(exc.errno or 0)
    return TransferError(
        code,
        f"{what}: {exc.strerror or exc}",
        context=ErrorContext.LOCAL_FILE,
        transient=code == "ERROR_DISK_FULL",
    )


class JobCallbacks(Protocol):
    """Implemented by the queue manager, which persists each report before announcing it.

    The engine never changes a Job's state itself; it fills in the JobFile's transfer fields
    (temp_name, bytes_total, validator, final_url) and then reports."""

    async def transferring(self, job: Job) -> None:
        """The first response arrived: CONNECTING -> TRANSFERRING."""

    async def file_started(self, job: Job, index: int) -> None:
        """The file has a new temporary file, named in ``JobFile.temp_name`` but not created
        yet (the validator is cleared: the file starts over). Persist the name before
        returning: the engine creates the file only afterwards, so a crash never leaves a
        temporary file the store does not know. The same name may be reported again (its
        file was never created), or a new one (the name was taken)."""

    async def progress(self, job: Job, index: int, bytes_on_disk: int) -> None:
        """Bytes up to ``bytes_on_disk`` are written and fsynced."""

    async def file_completed(self, job: Job, index: int) -> None:
        """Every byte of the file is on disk and fsynced in its temporary file."""


@runtime_checkable
class BatchCallbacks(JobCallbacks, Protocol):
    """Optional batched reports, for jobs of many small files: one store commit for several
    files instead of one or two per file. The engine uses it when the callbacks implement
    it (the queue manager does), and the per-file calls otherwise."""

    async def report_files(
        self, job: Job, started: Sequence[int], completed: Sequence[tuple[int, int]]
    ) -> None:
        """In one commit: ``file_started`` for each index of ``started``; and for each
        ``(index, size)`` of ``completed``, in file order, ``progress(index, size)`` then
        ``file_completed(index)`` (the file is whole, fsynced). Completions are then
        announced file by file, in order."""


class Sink(Protocol):
    """Where a transport puts one file's bytes: the temporary file, opened by the engine as
    the local-file token. The sink owns durability: it fsyncs and reports progress, so every
    transport gets the same "only fsynced bytes are reported" rule for free."""

    @property
    def fd(self) -> int:
        """The temporary file, open for writing (write with pwrite at ``offset``)."""

    @property
    def offset(self) -> int:
        """How many bytes of the file are in the temporary file: where the transfer goes on."""

    async def response(self) -> None:
        """The remote side answered with data to write: the job is TRANSFERRING."""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` at ``offset`` (on the calling thread; page-cache writes are fast).
        Raises TransferError (LOCAL_FILE)."""

    def advanced(self, count: int) -> None:
        """``count`` bytes were written at ``offset`` by other means (copy_file_range)."""

    async def checkpoint(self) -> None:
        """Make progress durable when enough bytes or time have passed since the last time."""

    async def truncate(self, size: int = 0) -> None:
        """Throw away the file's bytes past ``size`` (a restart, or changed remote data)."""


class Transport(Protocol):
    """One family of URL schemes. ``download`` moves the file's bytes from ``sink.offset``
    to the end into the sink, fills in the JobFile's ``bytes_total``, ``validator`` and
    ``final_url``, and raises TransferError on failure. It neither finishes the file (the
    engine does the final fsync and reports completion) nor closes the sink."""

    schemes: frozenset[str]

    async def download(self, job: Job, index: int, sink: Sink) -> None: ...

    async def close(self) -> None: ...
