"""One upload or upload-reply job's run (SPEC §9), and the ends of its session.

The engine's half of the upload seam: the job's one local file is opened read-only **as the
local-file token** (the LOCAL_FILE helper, or the owner) and read only through that
descriptor (``FileSource``); its size and modification time when the upload began are
recorded, and a change is fatal (BG_E_LOCAL_FILE_CHANGED, naming the file). The session the
transport creates is persisted before the first fragment goes, and every acknowledgement
becomes progress, so a restart or a ``kill -9`` of ferryd resumes the same session.

For an upload-reply job the reply is then downloaded from the server's ``BITS-Reply-URL``
(through the download transport of its scheme) into a hidden temporary file beside the reply
file, created and written as the local-file token, before the job is TRANSFERRED; the
session is closed only at ``complete`` (which renames the reply into place), since closing
deletes the reply on the server.
"""

from __future__ import annotations

import os
import stat
import time
from typing import Protocol

from ..errors import FerryError
from ..model.job import Job, JobFile
from ..model.token import Token
from ..model.types import ErrorContext, JobState, JobType
from ..model.upload import UploadState
from ..security import policy
from ..security.identity import IdentityIO
from ..security.tempnames import check_temp_name, new_temp_name
from .base import (
    DownloadRequest,
    DownloadTransport,
    JobCallbacks,
    TransferError,
    UploadRequest,
    UploadTransport,
)
from .sink import TempSink


class TransferEngine(Protocol):
    """What a run needs of the engine (engine.py), which imports this module."""

    identity: IdentityIO
    checkpoint_bytes: int
    checkpoint_seconds: float

    def local_file_token(self, job: Job) -> Token: ...

    def download_transport(self, url: str) -> DownloadTransport: ...

    def upload_request(self, job: Job) -> UploadRequest: ...


def _changed(path: str, what: str) -> TransferError:
    return TransferError(
        "BG_E_LOCAL_FILE_CHANGED",
        f"the local file {path} changed during its upload ({what})",
        context=ErrorContext.LOCAL_FILE,
        transient=False,
        file_index=0,
    )


def _check_same(path: str, st: os.stat_result, state: UploadState) -> None:
    if st.st_size != state.source_size:
        raise _changed(path, f"its size went from {state.source_size} to {st.st_size} bytes")
    if st.st_mtime_ns != state.source_mtime_ns:
        raise _changed(path, "it was modified")


def upload_request(job: Job) -> UploadRequest:
    """What a transport is told about the job's upload: its URL, the network token (or why
    there is none), and the session an earlier run left."""
    jf = job.files[0]
    state = job.upload_state()
    network: Token | FerryError
    try:
        network = policy.network_token(job)
    except FerryError as exc:
        network = exc
    return UploadRequest(
        url=jf.remote_name,
        network=network,
        session_id=state.session_id,
        reply=job.type is JobType.UPLOAD_REPLY,
        reply_url=state.reply_url,
        offset=jf.bytes_transferred if state.session_id else 0,
        host_id=state.host_id,
        host_fallback=state.host_fallback,
        host_failing_since=state.host_failing_since,
    )


class FileSource:
    """The Source of one upload: the local file opened by the engine, the job's reports."""

    def __init__(
        self,
        engine: TransferEngine,
        job: Job,
        callbacks: JobCallbacks,
        request: UploadRequest,
        fd: int,
    ) -> None:
        self._engine = engine
        self._job = job
        self._callbacks = callbacks
        self._request = request
        self._fd = fd
        state = job.upload_state()
        assert state.source_size is not None
        self._size = state.source_size
        self._state = state
        self._path = job.files[0].local_name

    @property
    def fd(self) -> int:
        return self._fd

    @property
    def size(self) -> int:
        return self._size

    async def response(self) -> None:
        await self._callbacks.transferring(self._job)

    def _record(self) -> None:
        r, state = self._request, self._state
        state.session_id = r.session_id
        state.host_id = r.host_id
        state.host_fallback = r.host_fallback
        state.host_failing_since = r.host_failing_since
        state.reply_url = r.reply_url

    async def session(self, session_id: str | None) -> None:
        self._record()
        jf = self._job.files[0]
        if self._job.state is JobState.CONNECTING:
            # The job record carries the session: CONNECTING -> TRANSFERRING persists it in
            # the same commit, before the first fragment is sent.
            await self._callbacks.transferring(self._job)
        else:
            await self._callbacks.progress(self._job, 0, jf.bytes_transferred)

    async def acknowledged(self, offset: int) -> None:
        self._record()
        if offset >= self._size and self._request.reply is False:
            # The last Ack of a plain upload: the completion that follows at once persists
            # it (a crash in between resends the last fragment, which the server trims).
            self._job.record_progress(0, offset, time.time())
            return
        await self._callbacks.progress(self._job, 0, offset)

    async def read(self, offset: int, size: int) -> bytes:
        fd, path, state = self._fd, self._path, self._state

        def op() -> bytes:
            try:
                _check_same(path, os.fstat(fd), state)
                data = os.pread(fd, size, offset)
            except OSError as exc:
                raise TransferError(
                    "E_FAIL" if exc.errno != 5 else "ERROR_READ_FAULT",
                    f"cannot read {path}: {exc.strerror or exc}",
                    context=ErrorContext.LOCAL_FILE,
                    transient=False,
                    file_index=0,
                ) from None
            if len(data) < size and offset + len(data) < state.source_size:  # type: ignore[operator]
                raise _changed(path, "it became shorter")
            return data

        return await self._engine.identity.run_io(op)


class UploadRun:
    """One run of an upload or upload-reply job."""

    def __init__(
        self, engine: TransferEngine, job: Job, callbacks: JobCallbacks, transport: UploadTransport
    ) -> None:
        self.engine = engine
        self.job = job
        self.callbacks = callbacks
        self.transport = transport

    async def run(self) -> None:
        job = self.job
        jf = job.files[0]
        token = self.engine.local_file_token(job)
        state = job.upload_state()
        try:
            fd = await self.engine.identity.open_read(token, jf.local_name)
        except FerryError as exc:
            raise TransferError.from_ferry_error(
                exc, context=ErrorContext.LOCAL_FILE, transient=False, file_index=0
            ) from None
        try:
            await self._upload(jf, state, fd)
        finally:
            await self.engine.identity.close(fd)
        if job.type is JobType.UPLOAD_REPLY:
            await self._reply(token, state)
        await self.callbacks.file_completed(job, 0)

    async def _upload(self, jf: JobFile, state: UploadState, fd: int) -> None:
        job = self.job
        st = await self.engine.identity.run_io(os.fstat, fd)
        if not stat.S_ISREG(st.st_mode):
            raise TransferError(
                "E_INVALIDARG",
                f"{jf.local_name} is not a regular file",
                context=ErrorContext.LOCAL_FILE,
                transient=False,
                file_index=0,
            )
        if state.source_size is None or (state.session_id is None and not state.reply_done):
            # A new upload: the file as it is now is what is sent.
            state.source_size = st.st_size
            state.source_mtime_ns = st.st_mtime_ns
            jf.bytes_total = st.st_size
            jf.bytes_transferred = 0
        else:
            _check_same(jf.local_name, st, state)
            jf.bytes_total = state.source_size
        if state.reply_done:
            return  # every byte is on the server and the reply is here: nothing to send
        request = self.engine.upload_request(job)
        source = FileSource(self.engine, job, self.callbacks, request, fd)
        try:
            await self.transport.upload(request, source)
        finally:
            # Where the farm host stands goes into the record a failure writes.
            if request.session_id == state.session_id:
                state.host_id = request.host_id
                state.host_fallback = request.host_fallback
                state.host_failing_since = request.host_failing_since
        _check_same(jf.local_name, await self.engine.identity.run_io(os.fstat, fd), state)
        state.reply_url = request.reply_url

    async def _reply(self, token: Token, state: UploadState) -> None:
        """Download the reply into its hidden temporary file, as ``token``."""
        job = self.job
        if state.reply_done and state.reply_temp:
            return
        reply_file = job.reply_file
        assert reply_file is not None and state.reply_url is not None
        if state.reply_url.partition(":")[0].lower() not in ("http", "https"):
            # The server names the reply; it never gets ferryd to read a local file.
            raise TransferError(
                "BG_E_INVALID_SERVER_RESPONSE",
                f"the server's reply URL {state.reply_url!r} is not http or https",
                context=ErrorContext.REMOTE_FILE,
                transient=False,
                file_index=0,
            )
        identity = self.engine.identity
        if state.reply_temp is not None:
            try:
                check_temp_name(reply_file, state.reply_temp)
            except FerryError:
                state.reply_temp = None  # the reply file was renamed meanwhile
        if state.reply_temp is None:
            state.reply_temp = new_temp_name(reply_file)
            await self.callbacks.progress(job, 0, job.files[0].bytes_transferred)
        try:
            try:
                fd = await identity.open_temp(token, state.reply_temp)
            except FerryError as exc:
                if exc.code != "ERROR_FILE_NOT_FOUND":
                    raise
                fd, _ = await identity.create_temp(token, reply_file, state.reply_temp)
        except FerryError as exc:
            raise TransferError.from_ferry_error(
                exc, context=ErrorContext.LOCAL_FILE, file_index=0
            ) from None

        async def report(size: int) -> None:
            state.reply_transferred = size
            await self.callbacks.progress(job, 0, job.files[0].bytes_transferred)

        async def response() -> None:
            state.reply_total = request.bytes_total

        # A reply is fetched whole (dynamic content: no size needed, never resumed).
        # Fetched with the job's network identity too (proxy, credentials, headers, TLS).
        up = self.engine.upload_request(job)
        request = DownloadRequest(
            url=state.reply_url,
            network=up.network,
            dynamic_content=True,
            auth=up.auth,
            proxy=up.proxy,
            job_id=up.job_id,
            custom_headers=up.custom_headers,
            sealed_headers=up.sealed_headers,
            security_flags=up.security_flags,
            client_cert=up.client_cert,
        )
        sink = TempSink(
            identity,
            fd,
            0,
            report=report,
            on_response=response,
            checkpoint_bytes=self.engine.checkpoint_bytes,
            checkpoint_seconds=self.engine.checkpoint_seconds,
            where=f"job {job.id} reply ({state.reply_temp})",
        )
        try:
            await sink.truncate(0)
            transport = self.engine.download_transport(state.reply_url)
            await transport.download(request, sink)
            size = await sink.finish()
        finally:
            await sink.aclose()
        state.reply_total = size
        state.reply_transferred = size
        state.reply_done = True
