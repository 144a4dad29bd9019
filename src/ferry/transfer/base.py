"""The seam between the scheduler, the engine and the transports (docs/architecture.md, "The
transfer engine seam"): the callbacks the engine reports through, and the two directions a
transport may serve — downloads (http.py, local.py) into a ``Sink``, and uploads (the BITS
upload protocol, later) from a ``Source``. A transport only moves bytes between a URL and a
descriptor: the engine opens every local file, decides which token acts, and verifies what
arrived, so those rules live in one place whatever the scheme."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..errors import FerryError, code_for_errno
from ..model.job import Job
from ..model.proxy import DEFAULT_PROXY, ProxySettings
from ..model.token import Token
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


# ---- downloads ----------------------------------------------------------------------------


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
        """The remote side answered with data to write: the job is TRANSFERRING. The
        request's ``bytes_total`` is read at this moment (a large file stops the overlap)."""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` at ``offset`` (on the calling thread; page-cache writes are fast).
        Raises TransferError (LOCAL_FILE)."""

    def advanced(self, count: int) -> None:
        """``count`` bytes were written at ``offset`` by other means (copy_file_range)."""

    async def checkpoint(self) -> None:
        """Make progress durable when enough bytes or time have passed since the last time."""

    async def truncate(self, size: int = 0) -> None:
        """Throw away the file's bytes past ``size`` (a restart, or changed remote data)."""


def _acting(network: Token | FerryError) -> Token:
    if isinstance(network, FerryError):
        raise TransferError.from_ferry_error(
            network, context=ErrorContext.REMOTE_FILE, transient=False
        )
    return network


def acting_token(network: Token | FerryError) -> Token:
    """The network token, or the TransferError of why there is none (BG_E_TOKEN_REQUIRED)."""
    return _acting(network)


@dataclass(frozen=True, slots=True)
class PlainCredential:
    """A job credential as a transport uses it: the password decrypted, for this request
    only (never stored, logged or repr'd)."""

    target: str  # "SERVER" | "PROXY"
    scheme: str  # "BASIC" | "DIGEST" | "NTLM" | "NEGOTIATE"
    user: str | None
    password: str | None = field(default=None, repr=False)

    @property
    def implicit(self) -> bool:
        return self.user is None


@dataclass(frozen=True, slots=True)
class KerberosSource:
    """The acting network identity's Kerberos credentials, as bytes read as that identity:
    a credential cache (``kind`` "ccache") or a keytab from ferryd's config ("keytab")."""

    kind: str
    data: bytes = field(repr=False)
    uid: int


@dataclass(frozen=True, slots=True)
class JobAuth:
    """What a transport may answer authentication challenges with (SPEC §8.2): the job's
    credentials, and for implicit NTLM/NEGOTIATE a loader of the acting network identity's
    Kerberos credentials (None: it has none ferryd may use). ``key`` names the job, for
    per-job state a transport keeps (which origins asked for which scheme)."""

    key: str
    credentials: tuple[PlainCredential, ...]
    kerberos: Callable[[], Awaitable[KerberosSource | None]] | None = None

    def for_target(self, target: str) -> tuple[PlainCredential, ...]:
        return tuple(c for c in self.credentials if c.target == target)


@dataclass(slots=True, eq=False)
class DownloadRequest:
    """One file's download as the engine hands it to a transport: what to fetch, as whom,
    and what earlier runs learnt about the remote file.

    The bookkeeping fields (``validator``, ``bytes_total``, ``final_url``) are the
    transport's to update as it learns them; the engine records them in the job before each
    report, so a checkpoint always carries the validator its bytes belong to. A transport
    that finds the remote data changed clears ``validator`` and ``bytes_total`` (after
    truncating the sink) before it raises BG_E_REMOTE_FILE_CHANGED."""

    url: str
    # The identity remote access acts as, chosen by the engine (security/policy.py: the
    # job's NETWORK helper, or its owner); the policy's error when the job's flags name a
    # helper token it does not have. Read it through ``network_token()``.
    network: Token | FerryError
    # BITS_JOB_PROPERTY_DYNAMIC_CONTENT: no Content-Length needed, never resumed.
    dynamic_content: bool = False
    validator: str | None = None  # what identifies the remote version the partial data is of
    bytes_total: int | None = None  # the file's size, once known
    final_url: str | None = None  # where the last request ended after redirects
    # The job's credentials (SPEC §8.2); None when it has none. ``auth_note`` says why the
    # transport could not answer a challenge (no ticket, ...), for the error's description.
    auth: JobAuth | None = None
    auth_note: str | None = None
    # The job's proxy settings (SPEC §8.1); the http transport routes with them.
    proxy: ProxySettings = DEFAULT_PROXY
    # SPEC §10: a background job's download (not foreground): it may be throttled, so the
    # transport keeps its read buffers small for TCP's window to follow the limits promptly.
    background: bool = False
    # The job's HTTP options (SPEC §8.3, transfer/httpopts.py): its id (what sealed headers
    # are bound to), custom headers (plain, or sealed when write-only), security flags, the
    # method, and the loader of the client certificate (reads it as the owner).
    job_id: str = ""
    custom_headers: tuple[str, ...] = ()
    sealed_headers: str | None = None
    security_flags: tuple[str, ...] = ()
    http_method: str = "GET"
    client_cert: Callable[[], Awaitable[Any]] | None = None
    # Set by the transport: the last response's status line and headers (CRLF-separated).
    response_headers: str | None = None
    # AddFileWithRanges (model/ranges.py): only these ranges, sorted; the sink's offset then
    # counts the ranges' bytes in order and writes each byte at its own offset. Such a file
    # is fetched with ``download`` too: a transport that cannot do ranges raises
    # BG_E_INSUFFICIENT_RANGE_SUPPORT. ``remote_size`` is the remote file's size, once known.
    ranges: Sequence[tuple[int, int | None]] | None = None
    remote_size: int | None = None

    def network_token(self) -> Token:
        """The token to act as for remote access (opening a file:// source; implicit HTTP
        credentials). Raises TransferError (BG_E_TOKEN_REQUIRED, REMOTE_FILE) when the job
        needs a helper token it lacks: a transport asks only when it acts as someone, so a
        download that needs no identity is not failed for a token it never uses."""
        return _acting(self.network)


class DownloadTransport(Protocol):
    """One family of URL schemes, for downloads. ``download`` moves the file's bytes from
    ``sink.offset`` to the end into the sink, keeps the request's bookkeeping up to date,
    and raises TransferError on failure. It neither verifies nor finishes the file (the
    engine checks the SHA-256, does the final fsync and reports completion), nor closes the
    sink. One instance serves every job (connections are kept alive across them)."""

    async def download(self, request: DownloadRequest, sink: Sink) -> None: ...

    async def close(self) -> None: ...


# ---- uploads (the BITS upload protocol client: bits_upload.py; the run: upload.py) ------


class Source(Protocol):
    """The local file an upload sends: opened read-only by the engine as the job's
    local-file token (a transport never opens local files), with the engine's reporting.
    Like the Sink it owns durability: a session is persisted before any fragment of it is
    sent, and the server's acknowledgements become progress only through it."""

    @property
    def fd(self) -> int:
        """The local file, open for reading: ``pread`` at any offset (a resumed session, or
        a fragment sent again, starts wherever the server says)."""

    @property
    def size(self) -> int:
        """The bytes to send: the file's size when its upload began. A file that changes
        meanwhile is the engine's to detect (BG_E_LOCAL_FILE_CHANGED)."""

    async def response(self) -> None:
        """The server accepted the session: the job is TRANSFERRING."""

    async def session(self, session_id: str | None) -> None:
        """Persist the upload session the server created (Create-Session), before the first
        fragment is sent, so a restart resumes it instead of sending everything again; None
        once the session is closed or cancelled."""

    async def acknowledged(self, offset: int) -> None:
        """The server holds bytes ``[0, offset)`` of the file (the ``BITS-Received-Content-
        Range`` of its answer to a fragment): report them as progress."""

    async def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes of the file from ``offset`` (fewer only at its end), read through
        the descriptor the engine opened. Raises TransferError (BG_E_LOCAL_FILE_CHANGED,
        LOCAL_FILE) when the file's size or modification time changed since the upload
        began."""


@dataclass(slots=True, eq=False)
class UploadRequest:
    """One file's upload as the engine hands it to an upload transport."""

    url: str
    network: Token | FerryError  # as DownloadRequest.network
    # The session of an earlier run, to resume (the server's answer to a Ping or to the next
    # fragment says how much it holds); the transport sets it when it creates one.
    session_id: str | None = None
    reply: bool = False  # an UPLOAD_REPLY job: the server application's reply is wanted
    # Set by the transport for a reply job: where the reply is fetched (BITS-Reply-URL), by
    # the engine through a download transport into the job's reply file.
    reply_url: str | None = None
    # How many bytes the server acknowledged in an earlier run (a hint: the server's answer
    # to the next fragment corrects it), and whether an answer of this run confirmed it.
    offset: int = 0
    offset_confirmed: bool = False
    # BITS-Host-Id of the session (a farm host that replaces the URL's host) and its
    # fallback timeout in seconds (None: never fall back); the transport keeps them.
    host_id: str | None = None
    host_fallback: float | None = None
    host_failing_since: float | None = None  # epoch seconds the farm host began failing
    # The job's network identity and HTTP options, as a DownloadRequest carries them (issue
    # #12: proxies, credentials, custom headers and TLS options apply to uploads as to
    # downloads): every packet goes through transfer/http.py's request path with them.
    auth: JobAuth | None = None
    auth_note: str | None = None
    proxy: ProxySettings = DEFAULT_PROXY
    job_id: str = ""
    custom_headers: tuple[str, ...] = ()
    sealed_headers: str | None = None
    security_flags: tuple[str, ...] = ()
    client_cert: Callable[[], Awaitable[Any]] | None = None
    http_method: str = "BITS_POST"  # every packet of the BITS Upload Protocol

    def network_token(self) -> Token:
        """As ``DownloadRequest.network_token``."""
        return _acting(self.network)


class HttpJobRequest(Protocol):
    """What transfer/http.py's request path (proxy routing, 401/407 answers, custom headers,
    TLS options) reads of a request: a DownloadRequest and an UploadRequest both are one."""

    url: str
    auth: JobAuth | None
    auth_note: str | None
    proxy: ProxySettings
    job_id: str
    custom_headers: tuple[str, ...]
    sealed_headers: str | None
    security_flags: tuple[str, ...]
    client_cert: Callable[[], Awaitable[Any]] | None
    http_method: str


class UploadTransport(Protocol):
    """One family of URL schemes, for uploads (BITS upload and upload-reply jobs).
    ``upload`` creates a session (or resumes ``request.session_id``; a session the server
    no longer knows, BG_E_SESSION_NOT_FOUND, starts over), sends the source from the offset
    the server acknowledges to its end in fragments, reporting through the source, learns
    the reply URL of a reply job, and raises TransferError on failure. It leaves the session
    open: ``close_session`` (the job's ``complete``) makes the upload visible on the server,
    ``cancel_session`` (its ``cancel``) discards it. Implemented by the BITS Upload Protocol
    client (transfer/bits_upload.py), mounted in daemon/main.py."""

    async def upload(self, request: UploadRequest, source: Source) -> None: ...

    async def close_session(self, request: UploadRequest) -> None: ...

    async def cancel_session(self, request: UploadRequest, timeout: float = 10.0) -> bool: ...

    async def close(self) -> None: ...
