"""The storage codec: jobs, files and errors to the JSON records a store keeps, and back.

Every store keeps the same records (a row holds ``job_record(job)`` / ``file_record(f)``), so
the shape of what is stored is written once, here. Decoding is the inner loop of ferryd's
start-up (100,000 jobs): keep it free of calls that can be avoided.
"""

from __future__ import annotations

from typing import Any

from ..model.credentials import Credential
from ..model.httpopts import ClientCertificate
from ..model.job import (
    DEFAULT_COST_FLAGS_NAME,
    DEFAULT_MAX_DOWNLOAD_TIME,
    DEFAULT_MIN_RETRY_DELAY,
    DEFAULT_NO_PROGRESS_TIMEOUT,
    Job,
    JobError,
    JobFile,
)
from ..model.notification import NotificationStatus
from ..model.proxy import DEFAULT_PROXY, ProxySettings
from ..model.token import Token, TokenInterner
from ..model.types import (
    DEFAULT_NOTIFY_FLAGS,
    ErrorContext,
    JobState,
    JobType,
    NotifyFlags,
    Priority,
    TokenFlags,
)
from ..model.upload import UploadState

# Stored value -> member, for decoding records: a dict lookup is several times cheaper than
# calling the enumeration, which counts when ferryd loads 100,000 jobs at startup. A value
# missing here (damaged, or flags from a newer ferryd) takes the enumeration's own path.
_JOB_TYPES = {m.value: m for m in JobType}
_PRIORITIES = {m.value: m for m in Priority}
_JOB_STATES = {m.value: m for m in JobState}
_ERROR_CONTEXTS = {m.value: m for m in ErrorContext}
_NOTIFY_FLAGS = {v: NotifyFlags(v) for v in range(int(NotifyFlags.all()) + 1)}
_TOKEN_FLAGS = {v: TokenFlags(v) for v in range(int(TokenFlags.all()) + 1)}
_DEFAULT_NOTIFY_INT = int(DEFAULT_NOTIFY_FLAGS)


def file_record(f: JobFile) -> dict[str, Any]:
    return {
        "remote_name": f.remote_name,
        "local_name": f.local_name,
        "bytes_total": f.bytes_total,
        "bytes_transferred": f.bytes_transferred,
        "completed": f.completed,
        "temp_name": f.temp_name,
        "validator": f.validator,
        "final_url": f.final_url,
        "sha256": f.sha256,
        "remote_renamed": f.remote_renamed,
        "response_headers": f.response_headers,
        "ranges": None if f.ranges is None else [list(r) for r in f.ranges],
        "remote_size": f.remote_size,
    }


def file_from_record(d: dict[str, Any]) -> JobFile:
    get = d.get
    # Positional, in field order: measurably faster than keywords at 100,000 files.
    return JobFile(
        d["remote_name"],
        d["local_name"],
        get("bytes_total"),
        int(get("bytes_transferred", 0)),
        bool(get("completed", False)),
        get("temp_name"),
        get("validator"),
        get("final_url"),
        get("sha256"),
        bool(get("remote_renamed", False)),
        get("response_headers"),
        _ranges(get("ranges")),
        get("remote_size"),
    )


def _ranges(value: Any) -> list[tuple[int, int | None]] | None:
    return None if value is None else [(int(o), None if n is None else int(n)) for o, n in value]


def error_record(e: JobError) -> dict[str, Any]:
    return {
        "code": e.code,
        "hresult": e.hresult,
        "context": e.context.value,
        "description": e.description,
        "file_index": e.file_index,
    }


def error_from_record(d: dict[str, Any]) -> JobError:
    try:
        context = _ERROR_CONTEXTS[d["context"]]
    except (KeyError, TypeError):
        context = ErrorContext(d["context"])  # raises the usual error
    return JobError(
        code=d["code"],
        context=context,
        description=d.get("description", ""),
        file_index=d.get("file_index"),
        hresult=int(d.get("hresult", 0)),
    )


def job_record(job: Job) -> dict[str, Any]:
    """Everything but the files."""
    return {
        "id": job.id,
        "display_name": job.display_name,
        "description": job.description,
        "owner": job.owner.to_json(),
        "type": job.type._value_,
        "priority": job.priority._value_,
        "state": job.state._value_,
        "created": job.created,
        "modified": job.modified,
        "transfer_completed": job.transfer_completed,
        "error": error_record(job.error) if job.error else None,
        "error_count": job.error_count,
        "min_retry_delay": job.min_retry_delay,
        "no_progress_timeout": job.no_progress_timeout,
        "notify_flags": int(job.notify_flags),
        "notify_cmdline": job.notify_cmdline,
        "helper_token": job.helper_token.to_json() if job.helper_token else None,
        "helper_flags": int(job.helper_flags),
        "dynamic_content": job.dynamic_content,
        "retry_at": job.retry_at,
        "no_progress_since": job.no_progress_since,
        "notification": None if job.notification is None else job.notification.to_json(),
        # SPEC §8.2: passwords only as the secret box's ciphertext.
        "credentials": [c.to_json() for c in job.credentials],
        "owner_ccache": job.owner_ccache,
        "helper_ccache": job.helper_ccache,
        "proxy": None if job.proxy is DEFAULT_PROXY else job.proxy.to_json(),
        "upload": None if job.upload is None else job.upload.to_json(),
        # SPEC §10 (bandwidth and network conditions)
        "max_rate": job.max_rate,
        "max_download_time": job.max_download_time,
        "download_time": job.download_time,
        "cost_flags": job.cost_flags,
        "waiting": job.waiting,
        # SPEC §8.3: write-only headers only as the secret box's ciphertext.
        "http_options": http_options_record(job),
    }


def http_options_record(job: Job) -> dict[str, Any] | None:
    if (
        job.custom_headers is None
        and job.custom_headers_sealed is None
        and not job.custom_headers_write_only
        and job.client_certificate is None
        and not job.security_flags
        and job.http_method == "GET"
    ):
        return None
    return {
        "custom_headers": None if job.custom_headers is None else list(job.custom_headers),
        "custom_headers_sealed": job.custom_headers_sealed,
        "custom_headers_write_only": job.custom_headers_write_only,
        "client_certificate": (
            None if job.client_certificate is None else job.client_certificate.to_json()
        ),
        "security_flags": list(job.security_flags),
        "http_method": job.http_method,
    }


def _apply_http_options(job: Job, d: dict[str, Any] | None) -> None:
    if not d:
        return
    headers = d.get("custom_headers")
    job.custom_headers = None if headers is None else tuple(headers)
    job.custom_headers_sealed = d.get("custom_headers_sealed")
    job.custom_headers_write_only = bool(d.get("custom_headers_write_only", False))
    cert = d.get("client_certificate")
    job.client_certificate = None if not cert else ClientCertificate(cert["cert"], cert.get("key"))
    job.security_flags = tuple(d.get("security_flags") or ())
    job.http_method = d.get("http_method") or "GET"


def job_from_record(
    d: dict[str, Any], files: list[JobFile], tokens: TokenInterner | None = None
) -> Job:
    """The job of ``job_record``'s dict, holding ``files``.

    ``tokens`` (the store's load passes one) shares one Token among the jobs of an owner.
    """
    get = d.get
    token = Token.from_json if tokens is None else tokens.from_json
    try:
        type_ = _JOB_TYPES[d["type"]]
        priority = _PRIORITIES[d["priority"]]
        state = _JOB_STATES[d["state"]]
    except (KeyError, TypeError):
        # A missing key, or not a value of the enumeration: let the enumerations raise
        # their usual error, naming the value.
        JobType(d["type"])
        Priority(d["priority"])
        JobState(d["state"])
        raise
    error = get("error")
    notification = get("notification")
    notify_flags = get("notify_flags", _DEFAULT_NOTIFY_INT)
    notify = _NOTIFY_FLAGS.get(notify_flags)
    if notify is None:
        notify = NotifyFlags(int(notify_flags))
    # The defaults as the one shared int each, not an int object per job (6 MB at 100,000).
    min_retry_delay = int(get("min_retry_delay", DEFAULT_MIN_RETRY_DELAY))
    if min_retry_delay == DEFAULT_MIN_RETRY_DELAY:
        min_retry_delay = DEFAULT_MIN_RETRY_DELAY
    no_progress_timeout = int(get("no_progress_timeout", DEFAULT_NO_PROGRESS_TIMEOUT))
    if no_progress_timeout == DEFAULT_NO_PROGRESS_TIMEOUT:
        no_progress_timeout = DEFAULT_NO_PROGRESS_TIMEOUT
    upload = get("upload")
    helper = get("helper_token")
    helper_flags = get("helper_flags", 0)
    flags = _TOKEN_FLAGS.get(helper_flags)
    if flags is None:
        flags = TokenFlags(int(helper_flags))
    # Positional, in field order (the round-trip tests catch a field out of place).
    job = Job(
        d["id"],
        d["display_name"],
        token(d["owner"]),
        type_,
        priority,
        state,
        get("description", ""),
        files,
        float(d["created"]),
        float(d["modified"]),
        get("transfer_completed"),
        error_from_record(error) if error else None,
        int(get("error_count", 0)),
        min_retry_delay,
        no_progress_timeout,
        notify,
        get("notify_cmdline"),
        token(helper) if helper else None,
        flags,
        bool(get("dynamic_content", False)),
        get("retry_at"),
        get("no_progress_since"),
        NotificationStatus.from_json(notification) if notification else None,
        ProxySettings.from_record(get("proxy")),
    )
    if upload:
        job.upload = UploadState.from_json(upload)
    credentials = get("credentials")
    if credentials:
        job.credentials = [Credential.from_json(c) for c in credentials]
    job.owner_ccache = get("owner_ccache")
    job.helper_ccache = get("helper_ccache")
    _bandwidth_from_record(job, get)
    _apply_http_options(job, get("http_options"))
    return job


def _bandwidth_from_record(job: Job, get: Any) -> None:
    """SPEC §10's fields; a record written before them keeps the defaults (no object is
    made per job for a default value)."""
    max_rate = get("max_rate")
    if max_rate is not None:
        job.max_rate = int(max_rate)
    max_download_time = get("max_download_time")
    if max_download_time is not None and max_download_time != DEFAULT_MAX_DOWNLOAD_TIME:
        job.max_download_time = int(max_download_time)
    download_time = get("download_time")
    if download_time:
        job.download_time = float(download_time)
    cost_flags = get("cost_flags")
    if cost_flags is not None and cost_flags != DEFAULT_COST_FLAGS_NAME:
        job.cost_flags = str(cost_flags)
    waiting = get("waiting")
    if waiting:
        job.waiting = dict(waiting)
