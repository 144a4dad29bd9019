"""The transfer engine: runs one job's files through the transports it was given into their
temporary files, and reports through JobCallbacks (docs/architecture.md, "The transfer engine
seam").

The engine never changes a job's state; the scheduler owns the task that runs ``run_job``
and cancels it to suspend, cancel or pre-empt the job. A cancelled transfer fsyncs and
reports what reached its temporary files before it returns, so the next run resumes there.

What is the same for every scheme is decided here, once: which token acts (the local-file
token for the temporary files, the network token a transport may act as, security/policy.py),
the file's bookkeeping (a transport updates a ``DownloadRequest``, the engine records it in
the job before each report), and the SHA-256 check of a finished file (verify.py). The
transports are built by daemon/main.py and handed in by scheme and direction, so a new scheme
is a new file and one line there. The overlap of small files is window.py's (one file of it,
slot.py's); the temporary files and their checkpoints are sink.py's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from ..errors import FerryError
from ..model.job import Job, JobFile
from ..model.token import Token
from ..model.types import ErrorContext, JobType, Priority
from ..security import policy
from ..security.identity import IdentityIO
from ..security.secretbox import SecretBox
from .bandwidth import Limiter
from .base import (
    DownloadRequest,
    DownloadTransport,
    JobAuth,
    JobCallbacks,
    KerberosSource,
    PlainCredential,
    TransferError,
    UploadRequest,
    UploadTransport,
    acting_token,
)
from .httpopts import record_http_options, request_options
from .ranged import RangedSink
from .sink import TempSink
from .upload import UploadRun, upload_request
from .verify import verify_sha256
from .window import JobRun

log = logging.getLogger("ferry.engine")

CHECKPOINT_BYTES = 8 << 20
KERBEROS_REREAD = 5.0  # seconds a credential cache read as its identity is reused
CHECKPOINT_SECONDS = 1.0
PARALLEL_FILES = 8
OVERLAP_MAX_BYTES = 2 << 20


def _scheme(url: str) -> str:
    return url.partition(":")[0].lower()


def _record(request: DownloadRequest, jf: JobFile) -> None:
    """What the transport learnt, into the job (before any report persists the file)."""
    jf.validator = request.validator
    jf.bytes_total = request.bytes_total
    jf.final_url = request.final_url
    record_http_options(request, jf)
    jf.remote_size = request.remote_size


class TransferEngine:
    """Runs jobs' transfers. One instance per daemon, with one transport instance per scheme
    and direction for every job (connection reuse across files and jobs); ``close`` closes
    the transports it was given."""

    def __init__(
        self,
        identity: IdentityIO,
        *,
        downloads: Mapping[str, DownloadTransport],
        uploads: Mapping[str, UploadTransport] | None = None,
        checkpoint_bytes: int = CHECKPOINT_BYTES,
        checkpoint_seconds: float = CHECKPOINT_SECONDS,
        parallel_files: int = PARALLEL_FILES,
        overlap_max_bytes: int = OVERLAP_MAX_BYTES,
        secrets: SecretBox | None = None,
        keytabs: Mapping[int, str] | None = None,
        limiter: Limiter | None = None,
    ) -> None:
        self.identity = identity
        # Bandwidth limits (SPEC §10): every chunk is paid for in the sink's checkpoint.
        self.limiter = limiter
        self._secrets = secrets
        self._keytabs = dict(keytabs or {})
        # (uid, service identity?, path) -> (when read, what was read): a job of many small
        # files reads its identity's cache once per KERBEROS_REREAD seconds, not per request.
        self._kerberos_read: dict[
            tuple[int, bool, str], tuple[float, KerberosSource | None]
        ] = {}
        self.checkpoint_bytes = checkpoint_bytes
        self.checkpoint_seconds = checkpoint_seconds
        self.parallel_files = max(1, parallel_files)
        self.overlap_max_bytes = overlap_max_bytes
        self._downloads = {scheme.lower(): t for scheme, t in downloads.items()}
        self._uploads = {scheme.lower(): t for scheme, t in (uploads or {}).items()}

    async def close(self) -> None:
        """Close every transport once (one may serve several schemes)."""
        seen: set[int] = set()
        transports: list[DownloadTransport | UploadTransport] = [
            *self._downloads.values(),
            *self._uploads.values(),
        ]
        for transport in transports:
            if id(transport) not in seen:
                seen.add(id(transport))
                await transport.close()

    async def run_job(self, job: Job, callbacks: JobCallbacks) -> None:
        """Transfer every file of ``job`` that is not complete yet, completions reported in
        file order. Raises TransferError (with ``file_index``) for the first file that
        fails; the scheduler decides what the job's state becomes."""
        if job.type is JobType.DOWNLOAD:
            await JobRun(self, job, callbacks).run()
        else:
            await self._run_upload(job, callbacks)

    async def _run_upload(self, job: Job, callbacks: JobCallbacks) -> None:
        """Upload and upload-reply jobs go through the ``uploads`` transports
        (base.UploadTransport); the run is upload.py's."""
        await UploadRun(self, job, callbacks, self.upload_transport(job.files[0].remote_name)).run()

    def upload_transport(self, url: str) -> UploadTransport:
        scheme = _scheme(url)
        transport = self._uploads.get(scheme)
        if transport is None:
            raise TransferError(
                "BG_E_PROTOCOL_NOT_AVAILABLE",
                f"no upload transport for the {scheme!r} scheme",
                context=ErrorContext.REMOTE_FILE,
                transient=False,
            )
        return transport

    async def close_upload(self, job: Job) -> None:
        """``complete`` of an upload job: Close-Session, so the server publishes the upload.
        Raises TransferError; the session is forgotten (in memory) once closed."""
        state = job.upload
        if state is None or state.session_id is None:
            raise TransferError(
                "BG_E_SESSION_NOT_FOUND",
                "the upload has no session on the server to close",
                context=ErrorContext.REMOTE_FILE,
                transient=False,
            )
        request = self.upload_request(job)
        await self.upload_transport(request.url).close_session(request)
        state.forget_session()

    async def cancel_upload(self, job: Job) -> None:
        """``cancel`` of an upload job: Cancel-Session, best effort."""
        state = job.upload
        if state is None or state.session_id is None or not job.files:
            return
        request = self.upload_request(job)
        try:
            transport = self.upload_transport(request.url)
        except TransferError:
            return
        await transport.cancel_session(request)
        state.forget_session()

    # ---- what the window asks of the engine ----------------------------------------------

    def download_transport(self, url: str) -> DownloadTransport:
        scheme = _scheme(url)
        transport = self._downloads.get(scheme)
        if transport is None:
            raise TransferError(
                "BG_E_PROTOCOL_NOT_AVAILABLE",
                f"no transport for the {scheme!r} scheme",
                context=ErrorContext.REMOTE_FILE,
                transient=False,
            )
        return transport

    def local_file_token(self, job: Job) -> Token:
        """Who creates, writes and reads back the job's temporary files."""
        try:
            return policy.local_file_token(job)
        except FerryError as exc:
            raise TransferError.from_ferry_error(
                exc, context=ErrorContext.LOCAL_FILE, transient=False
            ) from None

    def download_request(self, job: Job, index: int) -> DownloadRequest:
        """What a transport is told about file ``index``: its URL, the network token (or why
        there is none: raised only if the transport acts as someone), and its bookkeeping."""
        jf = job.files[index]
        network: Token | FerryError
        try:
            network = policy.network_token(job)
        except FerryError as exc:
            network = exc
        return DownloadRequest(
            background=job.priority is not Priority.FOREGROUND,
            url=jf.remote_name,
            network=network,
            dynamic_content=job.dynamic_content,
            validator=jf.validator,
            bytes_total=jf.bytes_total,
            final_url=jf.final_url,
            auth=self.job_auth(job, network),
            proxy=job.proxy,
            **request_options(job, self.identity),
            ranges=jf.ranges,
            remote_size=jf.remote_size,
        )

    def upload_request(self, job: Job) -> UploadRequest:
        """What an upload transport is told (transfer/upload.py's ``upload_request``), with
        the job's network identity as a download has it: credentials, proxy settings,
        custom headers and TLS options (every packet is BITS_POST whatever the job's
        http_method)."""
        request = upload_request(job)
        options = request_options(job, self.identity)
        options.pop("http_method")
        return dataclasses.replace(
            request, auth=self.job_auth(job, request.network), proxy=job.proxy, **options
        )

    def job_auth(self, job: Job, network: Token | FerryError) -> JobAuth | None:
        """The job's credentials for a transport (SPEC §8.2): passwords opened from the
        secret box for this request only; for implicit ones, a loader that reads the acting
        network identity's credential cache (or configured keytab) *as that identity*."""
        if not job.credentials:
            return None
        plain: list[PlainCredential] = []
        for c in job.credentials:
            password: str | None = None
            if c.secret is not None:
                if self._secrets is None:
                    continue
                try:
                    password = self._secrets.open(c.secret, job.id, c.target.value, c.scheme.value)
                except FerryError as exc:
                    log.warning("job %s: %s credential for %s unusable: %s", job.id,
                                c.scheme.value, c.target.value, exc.message)
                    continue
            plain.append(PlainCredential(c.target.value, c.scheme.value, c.user, password))
        kerberos = None
        if any(c.implicit for c in plain):
            helper = isinstance(network, Token) and network == job.helper_token
            ccache = job.helper_ccache if helper else job.owner_ccache

            async def kerberos_source() -> KerberosSource | None:
                token = acting_token(network)
                return await self._kerberos_source(token, ccache)

            kerberos = kerberos_source
        return JobAuth(key=job.id, credentials=tuple(plain), kerberos=kerberos)

    async def _kerberos_source(self, token: Token, ccache: str | None) -> KerberosSource | None:
        """Read as ``token``: its credential cache, else (a service identity, with no login
        session) the keytab ferryd's config names for its uid. A cache ferryd may not use
        is E_ACCESSDENIED (REMOTE_FILE, fatal)."""
        key = (token.uid, token.session is None, ccache or "")
        if ccache is not None:
            hit = self._kerberos_read.get(key)
            if hit is not None and time.monotonic() - hit[0] < KERBEROS_REREAD:
                return hit[1]
        source = await self._read_kerberos_source(token, ccache)
        if ccache is not None:
            if len(self._kerberos_read) > 1024:
                self._kerberos_read.clear()
            self._kerberos_read[key] = (time.monotonic(), source)
        return source

    async def _read_kerberos_source(
        self, token: Token, ccache: str | None
    ) -> KerberosSource | None:
        try:
            if ccache is not None:
                data = await self.identity.read_credential_file(token, ccache)
                if data is not None:
                    return KerberosSource("ccache", data, token.uid)
            # SPEC §8.2: a keytab is for service identities (no login session) only; a
            # user's session brings its own tickets.
            keytab = self._keytabs.get(token.uid) if token.session is None else None
            if keytab is not None:
                data = await self.identity.read_credential_file(token, keytab)
                if data is not None:
                    return KerberosSource("keytab", data, token.uid)
        except FerryError as exc:
            raise TransferError.from_ferry_error(
                exc, context=ErrorContext.REMOTE_FILE, transient=False
            ) from None
        return None

    async def download_file(
        self,
        job: Job,
        index: int,
        transport: DownloadTransport,
        token: Token,
        fd: int,
        offset: int,
        callbacks: JobCallbacks,
        on_response: Callable[[int], Awaitable[None]],
    ) -> int:
        """Download file ``index`` of ``job`` into its temporary file (``fd``, opened as
        ``token``, holding the file's first ``offset`` bytes), verify it and fsync it;
        returns its size. ``fd`` is closed whatever happens. Before a failure (but changed
        remote data, or a local one) or a cancellation propagates, what arrived is fsynced
        and reported, so the next run resumes there. ``on_response`` is told how many bytes
        are in the file when the remote side answers (the request's size is in the job by
        then)."""
        jf = job.files[index]
        request = self.download_request(job, index)

        async def report(size: int) -> None:
            _record(request, jf)
            await callbacks.progress(job, index, size)

        async def response() -> None:
            jf.remote_renamed = False  # the (new) server answered for the data kept
            _record(request, jf)
            await on_response(sink.offset)

        sink = (TempSink if jf.ranges is None else RangedSink)(
            self.identity,
            fd,
            offset,
            report=report,
            on_response=response,
            checkpoint_bytes=self.checkpoint_bytes,
            checkpoint_seconds=self.checkpoint_seconds,
            where=f"job {job.id} file {index} ({jf.temp_name})",
            pace=None if self.limiter is None else functools.partial(self.limiter.pace, job),
            watch=None if self.limiter is None else functools.partial(self.limiter.watch, job),
        )
        if isinstance(sink, RangedSink):
            sink.request = request
        try:
            try:
                try:
                    await transport.download(request, sink)
                except TransferError as exc:
                    if exc.code != "BG_E_REMOTE_FILE_CHANGED" or not jf.remote_renamed:
                        raise
                    # A new remote name (SetRemoteName) whose server has another size or
                    # validator than the partial data: the transport truncated the file and
                    # cleared the validator; the file starts over instead of failing.
                    jf.remote_renamed = False
                    await transport.download(request, sink)
                await verify_sha256(self.identity, token, jf.sha256, request, sink)
                return await sink.finish()
            except TransferError as exc:
                if exc.code != "BG_E_REMOTE_FILE_CHANGED" and exc.context is not (
                    ErrorContext.LOCAL_FILE
                ):
                    await sink.save()
                raise
            except asyncio.CancelledError:
                await sink.save()
                raise
        finally:
            _record(request, jf)
            await sink.aclose()
