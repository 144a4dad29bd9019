"""The transfer engine: runs one job's files, in order, through the transports into their
temporary files, and reports through JobCallbacks (docs/architecture.md, "The transfer
engine seam").

The engine never changes a job's state; the scheduler owns the task that runs ``run_job``
and cancels it to suspend, cancel or pre-empt the job. A cancelled transfer leaves its
temporary file in place, trimmed on the next run to the last checkpoint, so it resumes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Awaitable, Callable, Iterable

from ..errors import FerryError
from ..model.job import Job, JobFile
from ..model.types import ErrorContext, JobType
from ..security import policy
from ..security.identity import IdentityIO, settle
from ..security.token import Token
from .base import JobCallbacks, Sink, TransferError, Transport, local_error
from .http import HttpTransport
from .local import LocalTransport

log = logging.getLogger("ferry.transfer")

CHECKPOINT_BYTES = 8 << 20
CHECKPOINT_SECONDS = 1.0


class _TempSink(Sink):
    """The temporary file of one file of a job, with overlapped checkpoints: an fsync runs
    on a worker while the loop keeps receiving; its offset is reported only once it is done,
    so the reported progress never runs ahead of the disk."""

    def __init__(
        self,
        identity: IdentityIO,
        job: Job,
        index: int,
        callbacks: JobCallbacks,
        fd: int,
        offset: int,
        on_response: Callable[[], Awaitable[None]],
        checkpoint_bytes: int,
        checkpoint_seconds: float,
    ) -> None:
        self._identity = identity
        self._job = job
        self._index = index
        self._callbacks = callbacks
        self._fd = fd
        self._offset = offset
        self._reported = offset
        self._on_response = on_response
        self._every_bytes = checkpoint_bytes
        self._every_seconds = checkpoint_seconds
        self._loop = asyncio.get_running_loop()
        self._last_sync = self._loop.time()
        self._sync: asyncio.Task[None] | None = None
        self._sync_offset = 0

    @property
    def fd(self) -> int:
        return self._fd

    @property
    def offset(self) -> int:
        return self._offset

    @property
    def reported(self) -> int:
        return self._reported

    async def response(self) -> None:
        await self._on_response()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        done, size = 0, len(view)
        try:
            while done < size:
                done += os.pwrite(self._fd, view[done:], self._offset + done)
        except OSError as exc:
            # Only whole writes count: a resume trims whatever a failed write left behind.
            raise local_error(exc, "cannot write the temporary file") from None
        self._offset += size

    def advanced(self, count: int) -> None:
        self._offset += count

    async def checkpoint(self) -> None:
        if self._sync is not None and self._sync.done():
            await self._collect()
        if self._sync is None and self._offset > self._reported:
            due = self._offset - self._reported >= self._every_bytes or (
                self._loop.time() - self._last_sync >= self._every_seconds
            )
            if due:
                self._sync_offset = self._offset
                self._last_sync = self._loop.time()
                self._sync = asyncio.ensure_future(self._identity.fsync(self._fd))

    async def _collect(self) -> None:
        task, self._sync = self._sync, None
        if task is None:
            return
        try:
            await task
        except FerryError as exc:
            raise TransferError.from_ferry_error(exc, context=ErrorContext.LOCAL_FILE) from None
        if self._sync_offset > self._reported:
            self._reported = self._sync_offset
            await self._callbacks.progress(self._job, self._index, self._reported)

    async def _drain(self) -> None:
        """Let an in-flight fsync end without reporting it (the data is being replaced)."""
        task, self._sync = self._sync, None
        if task is not None:
            await settle(task)
            if not task.cancelled():
                task.exception()  # retrieved: a failure here is moot

    async def truncate(self, size: int = 0) -> None:
        await self._drain()
        try:
            await self._identity.run_io(os.ftruncate, self._fd, size)
        except OSError as exc:
            raise local_error(exc, "cannot truncate the temporary file") from None
        await self.flush(force=True, size=size)

    async def flush(self, *, force: bool = False, size: int | None = None) -> None:
        """fsync everything written so far and report it (end of file, or before giving up
        on an error, so a retry resumes from the last byte received)."""
        await self._collect()
        if size is not None:
            self._offset = size
        if not force and self._offset == self._reported:
            return
        try:
            await self._identity.fsync(self._fd)
        except FerryError as exc:
            raise TransferError.from_ferry_error(exc, context=ErrorContext.LOCAL_FILE) from None
        self._reported = self._offset
        self._last_sync = self._loop.time()
        await self._callbacks.progress(self._job, self._index, self._reported)

    async def aclose(self) -> None:
        """Wait for an in-flight fsync: its descriptor is about to be closed."""
        await self._drain()


class TransferEngine:
    """Runs jobs' downloads. One instance per daemon: it owns the HTTP session (connection
    reuse across files and jobs) and the transports."""

    def __init__(
        self,
        identity: IdentityIO,
        *,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 60.0,
        read_timeout: float = 120.0,
        max_redirects: int = 10,
        checkpoint_bytes: int = CHECKPOINT_BYTES,
        checkpoint_seconds: float = CHECKPOINT_SECONDS,
        transports: Iterable[Transport] | None = None,
    ) -> None:
        self._identity = identity
        self._checkpoint_bytes = checkpoint_bytes
        self._checkpoint_seconds = checkpoint_seconds
        if transports is None:
            transports = (
                HttpTransport(
                    ssl_context=ssl_context,
                    connect_timeout=connect_timeout,
                    read_timeout=read_timeout,
                    max_redirects=max_redirects,
                ),
                LocalTransport(identity),
            )
        self._transports: dict[str, Transport] = {}
        for transport in transports:
            for scheme in transport.schemes:
                self._transports[scheme] = transport

    async def close(self) -> None:
        for transport in set(self._transports.values()):
            await transport.close()

    async def run_job(self, job: Job, callbacks: JobCallbacks) -> None:
        """Transfer every file of ``job`` that is not complete yet, in order. Raises
        TransferError (with ``file_index``) at the first failure; the scheduler decides
        what the job's state becomes."""
        if job.type is not JobType.DOWNLOAD:
            raise TransferError(
                "BG_E_UNSUPPORTED_JOB_CONFIGURATION",
                f"{job.type.value} jobs are not supported yet",
                context=ErrorContext.GENERAL_QUEUE_MANAGER,
                transient=False,
            )
        announced = False

        async def on_response() -> None:
            nonlocal announced
            if not announced:
                announced = True
                await callbacks.transferring(job)

        for index, jf in enumerate(job.files):
            if jf.completed:
                continue
            try:
                await self._run_file(job, index, jf, callbacks, on_response)
            except TransferError as exc:
                if exc.file_index is None:
                    exc.file_index = index
                raise
            except FerryError as exc:
                raise TransferError.from_ferry_error(
                    exc, context=ErrorContext.LOCAL_FILE, file_index=index
                ) from None

    def _transport_for(self, jf: JobFile) -> Transport:
        scheme = jf.remote_name.partition(":")[0].lower()
        transport = self._transports.get(scheme)
        if transport is None:
            raise TransferError(
                "BG_E_PROTOCOL_NOT_AVAILABLE",
                f"no transport for the {scheme!r} scheme",
                context=ErrorContext.REMOTE_FILE,
                transient=False,
            )
        return transport

    async def _run_file(
        self,
        job: Job,
        index: int,
        jf: JobFile,
        callbacks: JobCallbacks,
        on_response: Callable[[], Awaitable[None]],
    ) -> None:
        try:
            token = policy.local_file_token(job)
        except FerryError as exc:
            raise TransferError.from_ferry_error(
                exc, context=ErrorContext.LOCAL_FILE, transient=False
            ) from None
        transport = self._transport_for(jf)
        fd, offset = await self._open_temp(token, jf)
        sink: _TempSink | None = None
        try:
            await callbacks.file_started(job, index)
            sink = _TempSink(
                self._identity,
                job,
                index,
                callbacks,
                fd,
                offset,
                on_response,
                self._checkpoint_bytes,
                self._checkpoint_seconds,
            )
            if offset != jf.bytes_transferred:
                # The checkpoint promised bytes the disk does not have (or the temporary
                # file is new): record the truth before going on.
                await callbacks.progress(job, index, offset)
            try:
                await transport.download(job, index, sink)
            except TransferError as exc:
                if exc.code != "BG_E_REMOTE_FILE_CHANGED" and exc.context is not (
                    ErrorContext.LOCAL_FILE
                ):
                    await self._save_partial(sink)
                raise
            await sink.flush(force=True)
            await callbacks.file_completed(job, index)
        finally:
            if sink is not None:
                await sink.aclose()
            await self._identity.close(fd)

    async def _save_partial(self, sink: _TempSink) -> None:
        """Before reporting a network failure, make what did arrive durable so the retry
        resumes from it. A failure here must not hide the original error."""
        try:
            await sink.flush()
        except FerryError as exc:
            log.warning("could not checkpoint after a transfer error: %s", exc)

    async def _open_temp(self, token: Token, jf: JobFile) -> tuple[int, int]:
        """Reopen the file's temporary file at its last checkpoint, or create a new one.
        Returns (fd, bytes of the file already in it)."""
        if jf.temp_name:
            try:
                fd = await self._identity.open_temp(token, jf.temp_name)
            except FerryError as exc:
                if exc.code != "ERROR_FILE_NOT_FOUND":
                    raise TransferError.from_ferry_error(
                        exc, context=ErrorContext.LOCAL_FILE
                    ) from None
            else:
                try:
                    size = os.fstat(fd).st_size
                    keep = min(size, jf.bytes_transferred)
                    if size != keep:
                        # Bytes past the checkpoint were never reported as durable.
                        await self._identity.run_io(os.ftruncate, fd, keep)
                except OSError as exc:
                    await self._identity.close(fd)
                    raise local_error(exc, f"cannot trim {jf.temp_name}") from None
                except BaseException:
                    await self._identity.close(fd)
                    raise
                return fd, keep
        # No usable partial data: a new temporary file, and the old validator is moot.
        await self._identity.check_directory(token, jf.local_name)
        fd, temp_name = await self._identity.create_temp(token, jf.local_name)
        jf.temp_name = temp_name
        jf.validator = None
        return fd, 0
