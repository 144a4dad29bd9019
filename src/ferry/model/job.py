"""The BITS job: files, progress, times, error and the state machine (SPEC §2). Pure: no I/O.

Methods that change a job take ``now`` (epoch seconds) from the caller and raise
``FerryError`` with the BITS code when the change is not allowed, leaving the job untouched.
Methods that need the outside world to act first (``cancel``, ``complete``) only say what
must be done; the queue manager does it and then calls the method that records it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..errors import FerryError, hresult_of
from .credentials import AuthScheme, AuthTarget, Credential
from .httpopts import (
    ClientCertificate,
    check_custom_headers,
    check_http_method,
    parse_security_flags,
)
from .network import DEFAULT_COST_FLAGS, cost_flags_name, parse_cost_flags, parse_rate
from .notification import NotificationStatus
from .proxy import DEFAULT_PROXY, ProxySettings
from .token import Token
from .types import (
    DEFAULT_NOTIFY_FLAGS,
    ErrorContext,
    JobState,
    JobType,
    NotifyFlags,
    Priority,
    TokenFlags,
)
from .upload import UploadState, default_reply_file

DEFAULT_MIN_RETRY_DELAY = 600
MIN_RETRY_DELAY_FLOOR = 5
DEFAULT_NO_PROGRESS_TIMEOUT = 1_209_600
# SPEC §10: BITS_JOB_PROPERTY_MAX_DOWNLOAD_TIME's default, 90 days.
DEFAULT_MAX_DOWNLOAD_TIME = 7_776_000
DEFAULT_COST_FLAGS_NAME = cost_flags_name(DEFAULT_COST_FLAGS)

@dataclass(frozen=True, slots=True)
class Limits:
    """Configurable limits (SPEC §2.5); the defaults are generous."""

    jobs_per_user: int = 100_000
    jobs_per_machine: int = 1_000_000
    files_per_job: int = 100_000
    display_name_len: int = 256
    description_len: int = 1024
    url_len: int = 8192
    path_len: int = 4096
    cmdline_len: int = 8192


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


# Job ids: random (version 4) UUIDs, as uuid.uuid4 makes them, from a pool of random bytes
# read 4 KiB at a time instead of one getrandom call and a UUID object per job: a creation
# is on the API's hot path. The bytes are os.urandom's, so the ids are as unguessable.
_ID_POOL_BYTES = 4096
_id_lock = threading.Lock()
_id_pool = b""
_id_pos = 0
_id_pid = 0


def new_job_id() -> str:
    """A new job id: a random UUID (version 4, RFC 4122 variant), lower-case, hyphenated."""
    global _id_pool, _id_pos, _id_pid
    with _id_lock:
        pid = os.getpid()
        if _id_pos + 16 > len(_id_pool) or pid != _id_pid:  # empty, or a forked child
            _id_pool, _id_pos, _id_pid = os.urandom(_ID_POOL_BYTES), 0, pid
        raw = _id_pool[_id_pos : _id_pos + 16]
        _id_pos += 16
    n = (int.from_bytes(raw) & _UUID_CLEAR) | _UUID_V4
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# Clear the version nibble and the variant's two top bits; set version 4, variant 10.
_UUID_CLEAR = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID_V4 = (0x4000 << 64) | (0x8000 << 48)


def check_string(what: str, value: str, limit: int) -> None:
    if "\x00" in value:
        raise FerryError("E_INVALIDARG", f"{what} contains a NUL byte")
    if len(value) > limit:
        raise FerryError(
            "BG_E_STRING_TOO_LONG", f"{what} is {len(value)} characters; the limit is {limit}"
        )


@dataclass(slots=True)
class JobFile:
    remote_name: str
    local_name: str
    bytes_total: int | None = None
    bytes_transferred: int = 0
    completed: bool = False
    temp_name: str | None = None
    # Transfer bookkeeping used by the engine: the validator the partial data belongs to
    # (ETag or Last-Modified) and the URL the last request ended at after redirects.
    validator: str | None = None
    final_url: str | None = None
    # The SHA-256 (64 lower-case hex digits) the whole file must have, when the client gave
    # one (beyond BITS): checked before the file counts as transferred.
    sha256: str | None = None
    # The remote name was changed (SetRemoteName, ReplaceRemotePrefix) since the partial data
    # arrived: the next run keeps the data when the new server has the same size and
    # validator, and starts over (rather than failing BG_E_REMOTE_FILE_CHANGED) otherwise.
    remote_renamed: bool = False
    # The last HTTP response's status line and headers (BITS_FILE_PROPERTY_ID_HTTP_RESPONSE_
    # HEADERS), CRLF-separated, as the transport received them.
    response_headers: str | None = None
    # AddFileWithRanges (model/ranges.py): only these (offset, length or None for "to the
    # end") of the remote file, sorted, each written at its own offset; None: the whole file.
    ranges: list[tuple[int, int | None]] | None = None
    # The remote file's size, learnt from the server (a ranged file's local file gets it).
    remote_size: int | None = None

@dataclass(slots=True)
class JobError:
    code: str
    context: ErrorContext
    description: str
    file_index: int | None = None
    hresult: int = 0

    def __post_init__(self) -> None:
        if not self.hresult:
            self.hresult = hresult_of(self.code)

    @classmethod
    def from_ferry_error(
        cls, exc: FerryError, context: ErrorContext, file_index: int | None = None
    ) -> JobError:
        return cls(exc.code, context, exc.message, file_index, exc.hresult)

@dataclass(frozen=True, slots=True)
class CompletePlan:
    """What ``complete`` must do on disk before the job may be ACKNOWLEDGED."""

    rename: tuple[int, ...]  # indices of fully transferred files: temp -> local name
    discard: tuple[int, ...]  # indices of unfinished files whose temporary file goes

    @property
    def partial(self) -> bool:
        return bool(self.discard)


@dataclass(slots=True)
class Job:
    id: str
    display_name: str
    owner: Token
    type: JobType = JobType.DOWNLOAD
    priority: Priority = Priority.NORMAL
    state: JobState = JobState.SUSPENDED
    description: str = ""
    files: list[JobFile] = field(default_factory=list)
    created: float = 0.0
    modified: float = 0.0
    transfer_completed: float | None = None
    error: JobError | None = None
    error_count: int = 0
    min_retry_delay: int = DEFAULT_MIN_RETRY_DELAY
    no_progress_timeout: int = DEFAULT_NO_PROGRESS_TIMEOUT
    notify_flags: NotifyFlags = DEFAULT_NOTIFY_FLAGS
    notify_cmdline: list[str] | None = None
    helper_token: Token | None = None
    helper_flags: TokenFlags = TokenFlags(0)
    # BITS_JOB_PROPERTY_DYNAMIC_CONTENT: the server may omit Content-Length; such files are
    # read to EOF and never resumed (every attempt starts at byte 0).
    dynamic_content: bool = False
    # Scheduler bookkeeping: when a TRANSIENT_ERROR job may retry, and when the current
    # stretch of transient errors without progress began (for no_progress_timeout). As in
    # BITS, that clock starts at the first transient error and stops when bytes arrive or
    # the client resumes the job; None while no such stretch is running.
    retry_at: float | None = None
    no_progress_since: float | None = None
    # How the last command-line notification went.
    notification: NotificationStatus | None = None
    # SetProxySettings (SPEC §8.1): how this job's HTTP requests reach the network.
    proxy: ProxySettings = DEFAULT_PROXY
    # SetCredentials (SPEC §8.2): one entry per (target, scheme), passwords encrypted.
    credentials: list[Credential] = field(default_factory=list)
    # The Kerberos credential caches (file paths) the owner's and the helper's client
    # libraries named (their KRB5CCNAME): read as that identity for implicit NEGOTIATE.
    owner_ccache: str | None = None
    helper_ccache: str | None = None
    # Upload and upload-reply jobs: the server's session, the source's size and time, the
    # reply (model/upload.py). None for downloads, and for uploads until they first run.
    upload: UploadState | None = None
    # ---- bandwidth and network conditions (SPEC §10) ----
    # The job's own cap in bytes/s (None: none); applies at every priority.
    max_rate: int | None = None
    # Seconds the job may spend CONNECTING/TRANSFERRING before ERROR with
    # BG_E_MAXDOWNLOAD_TIMEOUT (0: no limit); ``download_time`` is what it has used since it
    # was created or last resumed.
    max_download_time: int = DEFAULT_MAX_DOWNLOAD_TIME
    download_time: float = 0.0
    # BITS_JOB_PROPERTY_ID_COST_FLAGS, by its wire name (a preset, or names joined by |).
    cost_flags: str = DEFAULT_COST_FLAGS_NAME
    # Why a QUEUED job is not running (set by the scheduler; stored as it was
    # last written): a dict with
    # ``code`` and ``description`` (and ``until``), or None.
    waiting: dict[str, Any] | None = None
    # IBackgroundCopyJobHttpOptions (SPEC §8.3). Write-only custom headers live only sealed
    # (the service's secret box): ``custom_headers`` is None then.
    custom_headers: tuple[str, ...] | None = None
    custom_headers_sealed: str | None = None
    custom_headers_write_only: bool = False
    client_certificate: ClientCertificate | None = None
    security_flags: tuple[str, ...] = ()
    http_method: str = "GET"

    # ---- construction -------------------------------------------------------------

    @classmethod
    def new(
        cls,
        owner: Token,
        display_name: str,
        now: float,
        limits: Limits,
        type: JobType = JobType.DOWNLOAD,
        priority: Priority = Priority.NORMAL,
        description: str = "",
    ) -> Job:
        check_string("display_name", display_name, limits.display_name_len)
        check_string("description", description, limits.description_len)
        return cls(
            id=new_job_id(),
            display_name=display_name,
            owner=owner,
            type=type,
            priority=priority,
            description=description,
            created=now,
            modified=now,
        )

    # ---- derived views ------------------------------------------------------------

    @property
    def bytes_total(self) -> int | None:
        total = 0
        for f in self.files:
            if f.bytes_total is None:
                return None
            total += f.bytes_total
        return total

    @property
    def bytes_transferred(self) -> int:
        return sum(f.bytes_transferred for f in self.files)

    @property
    def files_transferred(self) -> int:
        return sum(1 for f in self.files if f.completed)

    @property
    def all_transferred(self) -> bool:
        # From the last file back: files complete roughly in order, so while a job runs the
        # last one is usually not done and this answers at once. It is asked after every
        # file (file_completed); from the front it made a job of n files cost O(n^2).
        return bool(self.files) and all(f.completed for f in reversed(self.files))

    # ---- state machine: client calls ---------------------------------------------

    def _require_not_final(self, action: str) -> None:
        if self.state.is_final:
            raise FerryError(
                "BG_E_INVALID_STATE", f"cannot {action}: the job is {self.state.value}"
            )

    def _set_state(self, state: JobState, now: float) -> None:
        self.state = state
        if state is not JobState.QUEUED:
            self.waiting = None
        if state not in (JobState.ERROR, JobState.TRANSIENT_ERROR):
            self.error = None
            self.retry_at = None
        self.modified = now

    def add_files(self, files: list[JobFile], limits: Limits, now: float) -> None:
        """AddFileSet: all files or none. Paths must already be validated (see paths.py)."""
        self._require_not_final("add files")
        if not files:
            raise FerryError("E_INVALIDARG", "no files given")
        if self.type is not JobType.DOWNLOAD and any(f.ranges is not None for f in files):
            raise FerryError("E_NOTIMPL", "ranges are for download jobs only")
        if self.type is not JobType.DOWNLOAD and len(self.files) + len(files) > 1:
            raise FerryError("BG_E_TOO_MANY_FILES", "an upload job has exactly one file")
        if len(self.files) + len(files) > limits.files_per_job:
            raise FerryError(
                "BG_E_TOO_MANY_FILES_IN_JOB",
                f"a job may hold at most {limits.files_per_job} files",
            )
        taken = {f.local_name for f in self.files}
        for f in files:
            if f.local_name in taken:
                raise FerryError(
                    "E_INVALIDARG", f"local name {f.local_name} is already used in this job"
                )
            taken.add(f.local_name)
        self.files.extend(files)
        if self.state is JobState.TRANSFERRED:
            # The new files still have to move: the job waits for resume like a new one.
            self._set_state(JobState.SUSPENDED, now)
        self.modified = now

    def resume(self, now: float) -> bool:
        """Returns True when the job's state changed, False for a no-op success."""
        self._require_not_final("resume")
        if not self.files:
            raise FerryError("BG_E_EMPTY", "the job has no files")
        if self.state.is_active:
            return False
        if self.all_transferred:
            # Nothing is left to move (suspended once TRANSFERRED, or the last file finished
            # while suspended): queued, it would give the engine no file to transfer, and
            # nothing would ever move it to TRANSFERRED. It goes back there at once.
            if self.state is JobState.TRANSFERRED:
                return False
            self._set_state(JobState.TRANSFERRED, now)
            if self.transfer_completed is None:
                self.transfer_completed = now
            return True
        self._set_state(JobState.QUEUED, now)
        # An explicit resume is a fresh start: a job that waited (suspended, in ERROR, or
        # in line behind others) must not time out at its first transient error.
        self.no_progress_since = None
        self.download_time = 0.0  # resume resets the maximum download time (SPEC §10)
        return True

    def suspend(self, now: float) -> bool:
        self._require_not_final("suspend")
        if self.state is JobState.SUSPENDED:
            return False
        self._set_state(JobState.SUSPENDED, now)
        return True

    def plan_complete(self) -> CompletePlan:
        self._require_not_final("complete")
        if self.type is not JobType.DOWNLOAD and not self.all_transferred:
            # An upload has one file; completing it before it is sent would lose it.
            raise FerryError(
                "BG_E_INVALID_STATE", "an upload job can be completed once it is transferred"
            )
        rename = tuple(i for i, f in enumerate(self.files) if f.completed)
        discard = tuple(i for i, f in enumerate(self.files) if not f.completed)
        return CompletePlan(rename, discard)

    def mark_acknowledged(self, plan: CompletePlan, now: float) -> None:
        for i in plan.discard:
            f = self.files[i]
            f.temp_name = None
        for i in plan.rename:
            self.files[i].temp_name = None
        self._set_state(JobState.ACKNOWLEDGED, now)

    def plan_cancel(self) -> tuple[int, ...]:
        """Indices of files whose temporary files must be deleted."""
        self._require_not_final("cancel")
        return tuple(i for i, f in enumerate(self.files) if f.temp_name)

    def mark_cancelled(self, now: float) -> None:
        for f in self.files:
            f.temp_name = None
        self._set_state(JobState.CANCELLED, now)

    def set_properties(self, props: dict[str, Any], limits: Limits, now: float) -> None:
        """SetDisplayName/SetDescription/SetPriority/...: validates everything, then applies."""
        self._require_not_final("change properties")
        new: dict[str, Any] = {}
        for key, value in props.items():
            if key == "display_name":
                _require_type(key, value, str)
                check_string(key, value, limits.display_name_len)
                if not value:
                    raise FerryError("E_INVALIDARG", "display_name must not be empty")
            elif key == "description":
                _require_type(key, value, str)
                check_string(key, value, limits.description_len)
            elif key == "priority":
                _require_type(key, value, str)
                try:
                    value = Priority(value)
                except ValueError:
                    raise FerryError("E_INVALIDARG", f"unknown priority {value!r}") from None
                if value is not Priority.FOREGROUND and self.http_method != "GET":
                    raise FerryError(
                        "E_INVALIDARG",
                        f"a job using HTTP method {self.http_method} stays FOREGROUND",
                    )
            elif key == "min_retry_delay":
                _require_type(key, value, int)
                if value < MIN_RETRY_DELAY_FLOOR:
                    raise FerryError(
                        "E_INVALIDARG", f"min_retry_delay must be at least {MIN_RETRY_DELAY_FLOOR}"
                    )
            elif key == "no_progress_timeout":
                _require_type(key, value, int)
                if value < 0:
                    raise FerryError("E_INVALIDARG", "no_progress_timeout must not be negative")
            elif key == "notify_flags":
                _require_type(key, value, int)
                if value < 0 or value > int(NotifyFlags.all()):
                    raise FerryError("E_INVALIDARG", f"notify_flags 0x{value:X} is not valid")
                value = NotifyFlags(value)
            elif key == "notify_cmdline":
                value = _check_cmdline(value, limits)
            elif key == "dynamic_content":
                _require_type(key, value, bool)
                if value and self.http_method != "GET":
                    raise FerryError(
                        "BG_E_UNSUPPORTED_JOB_CONFIGURATION",
                        f"a job using HTTP method {self.http_method} cannot have dynamic content",
                    )
            elif key == "proxy":
                value = ProxySettings.parse(value)
            elif key == "max_rate":
                if value is not None:
                    _require_type(key, value, int)
                    try:
                        value = parse_rate(value, key)
                    except ValueError as exc:
                        raise FerryError("E_INVALIDARG", str(exc)) from None
            elif key == "max_download_time":
                _require_type(key, value, int)
                if value < 0:
                    raise FerryError("E_INVALIDARG", "max_download_time must not be negative")
            elif key == "cost_flags":
                value = cost_flags_name(parse_cost_flags(value))
            else:
                raise FerryError("E_INVALIDARG", f"unknown property {key!r}")
            new[key] = value
        for key, value in new.items():
            setattr(self, key, value)
        self.modified = now

    def set_http_options(
        self,
        opts: dict[str, Any],
        now: float,
        seal: Callable[[tuple[str, ...] | None], str | None],
    ) -> None:
        """IBackgroundCopyJobHttpOptions(2/3): every value checked before any changes.
        ``seal`` turns header lines into what a write-only job keeps (the service's secret
        box); it is called only when the headers are (or become) write-only."""
        self._require_not_final("change HTTP options")
        known = {
            "custom_headers",
            "custom_headers_write_only",
            "client_certificate",
            "security_flags",
            "http_method",
        }
        unknown = set(opts) - known
        if unknown:
            raise FerryError("E_INVALIDARG", f"unknown HTTP options {sorted(unknown)}")
        headers = self.custom_headers
        headers_given = "custom_headers" in opts
        if headers_given:
            headers = check_custom_headers(opts["custom_headers"])
        write_only = self.custom_headers_write_only
        if "custom_headers_write_only" in opts:
            wo = opts["custom_headers_write_only"]
            _require_type("custom_headers_write_only", wo, bool)
            if write_only and not wo:
                raise FerryError(
                    "E_INVALIDARG", "custom headers made write-only cannot be made readable again"
                )
            write_only = wo
        cert = self.client_certificate
        if "client_certificate" in opts:
            cert = ClientCertificate.parse(opts["client_certificate"])
        flags = self.security_flags
        if "security_flags" in opts:
            flags = parse_security_flags(opts["security_flags"])
        method = self.http_method
        if "http_method" in opts:
            method = check_http_method(opts["http_method"])
            if method != "GET" and self.dynamic_content:
                raise FerryError(
                    "BG_E_UNSUPPORTED_JOB_CONFIGURATION",
                    "a job with dynamic content cannot use another HTTP method than GET",
                )
        sealed = self.custom_headers_sealed
        if write_only and (headers_given or not self.custom_headers_write_only):
            sealed = seal(headers)
            headers = None
        self.custom_headers = headers
        self.custom_headers_sealed = sealed
        self.custom_headers_write_only = write_only
        self.client_certificate = cert
        self.security_flags = flags
        if method != self.http_method and method != "GET":
            # BITS: another method forces FOREGROUND and keeps it there.
            self.priority = Priority.FOREGROUND
        self.http_method = method
        self.modified = now

    def _check_remote_change(self, action: str) -> None:
        self._require_not_final(action)
        if self.type is not JobType.DOWNLOAD:
            # BITS refuses ReplaceRemotePrefix on uploads (E_NOTIMPL); SetRemoteName is
            # allowed there only while nothing moves. ferry keeps it simple: never on uploads.
            raise FerryError("E_NOTIMPL", f"cannot {action} of an upload job")

    def check_set_remote_name(self, index: int) -> None:
        """Refuse what ``set_remote_name`` would refuse, before anything is stopped."""
        self._check_remote_change("change a remote name")
        if isinstance(index, bool) or not 0 <= index < len(self.files):
            raise FerryError("E_INVALIDARG", f"the job has no file {index}")
        if self.files[index].completed:
            raise FerryError(
                "BG_E_INVALID_STATE", f"file {index} is transferred: its remote name is final"
            )

    def set_remote_name(self, index: int, url: str, now: float) -> None:
        """IBackgroundCopyFile2::SetRemoteName, ``url`` already validated (paths.py). The
        engine must not be running the job (the manager stops it first)."""
        self.check_set_remote_name(index)
        self._rename_remote(index, url)
        self.modified = now

    def plan_replace_remote_prefix(self, old: str, new: str) -> dict[int, str]:
        """IBackgroundCopyJob3::ReplaceRemotePrefix, first half: the new remote name of every
        file whose remote name starts with ``old`` (case-sensitive; transferred files too,
        as in BITS: their name changes, their data stays), not yet validated. Empty: no
        match (S_FALSE). Raises what the call refuses, before anything is stopped."""
        self._check_remote_change("replace a remote prefix")
        if not isinstance(old, str) or not isinstance(new, str) or not old or not new:
            raise FerryError("E_INVALIDARG", "the old and new prefixes must not be empty")
        return {
            i: new + f.remote_name[len(old) :]
            for i, f in enumerate(self.files)
            if f.remote_name.startswith(old)
        }

    def replace_remote_names(self, names: dict[int, str], now: float) -> None:
        """The second half: ``names`` (from ``plan_replace_remote_prefix``, validated) take
        effect, all of them. The engine must not be running the job."""
        self._require_not_final("replace a remote prefix")
        for index, url in names.items():
            self._rename_remote(index, url)
        self.modified = now

    def _rename_remote(self, index: int, url: str) -> None:
        f = self.files[index]
        if f.remote_name == url:
            return
        f.remote_name = url
        f.final_url = None  # the redirect target belonged to the old URL
        if not f.completed:
            f.remote_renamed = True

    # ---- upload-reply (SPEC §9) -------------------------------------------------

    def upload_state(self) -> UploadState:
        """The job's upload bookkeeping, made on first use (upload jobs only)."""
        if self.upload is None:
            self.upload = UploadState()
        return self.upload

    @property
    def reply_file(self) -> str | None:
        """Where ``complete`` puts an upload-reply job's reply: the name set with
        ``set_reply_file``, else the upload's local name plus ``.reply``; None for other
        jobs, and before the file is added."""
        if self.type is not JobType.UPLOAD_REPLY:
            return None
        if self.upload is not None and self.upload.reply_file:
            return self.upload.reply_file
        return default_reply_file(self.files[0].local_name) if self.files else None

    def set_reply_file(self, path: str, now: float) -> None:
        """IBackgroundCopyJob2::SetReplyFileName, ``path`` already validated (paths.py).
        Only upload-reply jobs have one; it cannot change once the reply is being fetched."""
        self._require_not_final("set the reply file")
        if self.type is not JobType.UPLOAD_REPLY:
            raise FerryError("E_NOTIMPL", "only upload-reply jobs have a reply file")
        state = self.upload_state()
        if state.reply_temp is not None or state.reply_done:
            raise FerryError(
                "BG_E_INVALID_STATE", "the reply is already being downloaded to its file"
            )
        if self.files and path == self.files[0].local_name:
            raise FerryError("E_INVALIDARG", "the reply file cannot be the uploaded file")
        state.reply_file = path
        self.modified = now

    def restart_upload(self, now: float) -> None:
        """The server lost a TRANSFERRED upload's session before Close-Session (it expired,
        say): the upload starts over from byte 0 in a new session, back in the queue. The
        caller has deleted the reply's temporary file."""
        if self.type is JobType.DOWNLOAD or self.state is not JobState.TRANSFERRED:
            raise FerryError("BG_E_INVALID_STATE", "only a transferred upload can start over")
        f = self.files[0]
        f.completed = False
        f.bytes_transferred = 0
        reply_file = self.upload.reply_file if self.upload is not None else None
        self.upload = UploadState(reply_file=reply_file)
        self.transfer_completed = None
        self._set_state(JobState.QUEUED, now)
        self.no_progress_since = None

    def take_ownership(self, new_owner: Token, now: float) -> None:
        self._require_not_final("take ownership")
        if new_owner.uid != self.owner.uid:
            # The credential cache was named by the old owner's uid; read as the new owner,
            # the same path could be a cache of theirs the namer never had (SPEC §8.2). The
            # new owner names its own with set_credentials.
            self.owner_ccache = None
        self.owner = new_owner
        self.modified = now

    def set_helper_token(self, helper: Token | None, now: float) -> None:
        self._require_not_final("set the helper token")
        self.helper_token = helper
        self.helper_ccache = None  # a new helper names its own cache (set_helper_ccache)
        self.modified = now

    def set_helper_ccache(self, ccache: str | None) -> None:
        """The helper's credential cache, given with SetHelperToken (normalised by
        credentials.normalize_ccache)."""
        self.helper_ccache = ccache if self.helper_token is not None else None

    # ---- credentials (SPEC §8.2) -----------------------------------------------------

    def set_credential(self, cred: Credential, now: float) -> None:
        """Add or replace the entry for (target, scheme)."""
        self._require_not_final("set credentials")
        self.credentials = [
            c for c in self.credentials if (c.target, c.scheme) != (cred.target, cred.scheme)
        ] + [cred]
        self.modified = now

    def remove_credential(self, target: AuthTarget, scheme: AuthScheme, now: float) -> bool:
        """RemoveCredentials; False (S_FALSE) when there was no such entry."""
        self._require_not_final("remove credentials")
        kept = [c for c in self.credentials if (c.target, c.scheme) != (target, scheme)]
        if len(kept) == len(self.credentials):
            return False
        self.credentials = kept
        self.modified = now
        return True

    def set_helper_flags(self, flags: int, now: float) -> None:
        self._require_not_final("set the helper token flags")
        if isinstance(flags, bool) or not isinstance(flags, int):
            raise FerryError("E_INVALIDARG", "helper token flags must be an integer")
        if flags & ~int(TokenFlags.all()):
            raise FerryError("E_INVALIDARG", f"unknown helper token flags 0x{flags:X}")
        self.helper_flags = TokenFlags(flags)
        self.modified = now

    # ---- state machine: the scheduler and the transfer engine -------------------

    def start(self, now: float) -> None:
        """The scheduler picked the job: QUEUED -> CONNECTING."""
        if self.state is not JobState.QUEUED:
            raise FerryError("BG_E_INVALID_STATE", f"cannot start a {self.state.value} job")
        self._set_state(JobState.CONNECTING, now)

    def transferring(self, now: float) -> None:
        if self.state is JobState.CONNECTING:
            self._set_state(JobState.TRANSFERRING, now)

    def requeue(self, now: float) -> None:
        """Pre-empted, retry time reached, or the owner logged off mid-transfer."""
        if self.state in (JobState.CONNECTING, JobState.TRANSFERRING, JobState.TRANSIENT_ERROR):
            self._set_state(JobState.QUEUED, now)

    def record_progress(self, index: int, bytes_transferred: int, now: float) -> None:
        f = self.files[index]
        if bytes_transferred > f.bytes_transferred:
            self.no_progress_since = None
        f.bytes_transferred = bytes_transferred

    def file_completed(self, index: int, now: float) -> None:
        f = self.files[index]
        f.completed = True
        if f.bytes_total is None:
            f.bytes_total = f.bytes_transferred
        self.no_progress_since = None
        if self.all_transferred and self.state.is_active:
            self._set_state(JobState.TRANSFERRED, now)
            self.transfer_completed = now

    def fail(
        self, error: JobError, transient: bool, now: float, retry_after: float | None = None
    ) -> None:
        """Record an error. A transient one retries after min_retry_delay (or the server's
        Retry-After, when that is longer) unless transient errors have gone on without
        progress for no_progress_timeout (0: errors are final at once)."""
        self.error_count += 1
        self.retry_at = None
        if transient:
            if self.no_progress_since is None:
                self.no_progress_since = now  # the first transient error starts the clock
            deadline = self.no_progress_since + self.no_progress_timeout
            if self.no_progress_timeout == 0 or now >= deadline:
                transient = False
            else:
                delay = float(self.min_retry_delay)
                if retry_after is not None and retry_after > delay:
                    # Retry-After lengthens the wait, never shortens it, and never past the
                    # end of the no-progress window: a server cannot park a job forever.
                    delay = max(delay, min(retry_after, deadline - now))
                self.retry_at = now + delay
        self.state = JobState.TRANSIENT_ERROR if transient else JobState.ERROR
        self.error = error
        self.modified = now

def _require_type(key: str, value: Any, kind: type) -> None:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise FerryError("E_INVALIDARG", f"{key} must be of type {kind.__name__}")


def _check_cmdline(value: Any, limits: Limits) -> list[str] | None:
    """BITS SetNotifyCmdLine: a program (absolute path) and its arguments; None clears."""
    if value is None or value == []:
        return None
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        raise FerryError("E_INVALIDARG", "notify_cmdline must be a list of strings")
    total = sum(len(a) + 1 for a in value)
    for a in value:
        check_string("notify_cmdline", a, limits.cmdline_len)
    if total > limits.cmdline_len:
        raise FerryError("BG_E_STRING_TOO_LONG", "notify_cmdline is too long")
    if not value[0].startswith("/"):
        raise FerryError("E_INVALIDARG", "notify_cmdline's program must be an absolute path")
    return list(value)
