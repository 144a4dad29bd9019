"""The JSON views of jobs and files that clients see (SPEC §6): what the API answers and
what the event stream carries. Kept out of the domain so the model stays a leaf. The shapes
are the contract's ``JOB_SCHEMA`` and ``FILE_SCHEMA``; the settable properties are rendered
from the contract's list, so a new one needs no line here."""

from __future__ import annotations

from typing import Any

from ..errors import format_hresult, hresult_of
from ..model.httpopts import WRITE_ONLY_SHOWN
from ..model.job import Job, JobFile, iso
from ..model.ranges import ranges_to_wire
from ..model.types import JobType
from .contract import PROPERTIES, wire_value

_PROPERTY_NAMES = tuple(p.name for p in PROPERTIES)


def file_view(f: JobFile) -> dict[str, Any]:
    """The JSON file object."""
    return {
        "remote_name": f.remote_name,
        "local_name": f.local_name,
        "bytes_total": f.bytes_total,
        "bytes_transferred": f.bytes_transferred,
        "completed": f.completed,
        "final_url": f.final_url,
        "sha256": f.sha256,
        "response_headers": f.response_headers,
        "ranges": None if f.ranges is None else ranges_to_wire(f.ranges),
    }


def job_view(job: Job) -> dict[str, Any]:
    """The JSON job object of SPEC §6."""
    err: dict[str, Any] | None = None
    if job.error is not None:
        e = job.error
        file_info = None
        if e.file_index is not None and 0 <= e.file_index < len(job.files):
            jf = job.files[e.file_index]
            file_info = {"remote_name": jf.remote_name, "local_name": jf.local_name}
        err = {
            "code": e.code,
            "hresult": format_hresult(e.hresult),
            "context": e.context.value,
            "description": e.description,
            "file": file_info,
        }
    helper: dict[str, Any] | None = None
    if job.helper_token is not None or job.helper_flags:
        helper = {
            "sid": job.helper_token.sid if job.helper_token else None,
            "flags": job.helper_flags.names(),
        }
    view: dict[str, Any] = {"id": job.id}
    for name in _PROPERTY_NAMES:
        view[name] = wire_value(getattr(job, name))
    view.update({
        "type": job.type._value_,
        "state": job.state._value_,
        "owner": job.owner.summary(),
        "progress": {
            "bytes_total": job.bytes_total,
            "bytes_transferred": job.bytes_transferred,
            "files_total": len(job.files),
            "files_transferred": job.files_transferred,
        },
        "times": {
            "created": iso(job.created),
            "modified": iso(job.modified),
            "transfer_completed": iso(job.transfer_completed),
        },
        "error": err,
        "error_count": job.error_count,
        "helper_token": helper,
        "notification": None if job.notification is None else job.notification.to_json(),
        "retry_at": iso(job.retry_at),
        "reply": reply_view(job),
        "download_time": round(job.download_time, 3),
        "waiting": _waiting_view(job),
    })
    view["credentials"] = [c.view() for c in job.credentials]
    view["credential_warnings"] = credential_warnings(job)
    view.update(http_options_view(job))
    return view


def credential_warnings(job: Job) -> list[str]:
    """What ``ferry info`` warns about: a Basic password a plain-http server may receive
    (BITS allows it; the password then crosses the network in clear)."""
    out: list[str] = []
    for c in job.credentials:
        if c.scheme.value == "BASIC" and c.target.value == "SERVER" and any(
            f.remote_name.lower().startswith("http:") for f in job.files
        ):
            out.append("Basic credentials for SERVER are sent in clear to plain http URLs")
        if c.scheme.value == "BASIC" and c.target.value == "PROXY":
            out.append("Basic credentials for PROXY are sent in clear to the proxy")
    return out


def reply_view(job: Job) -> dict[str, Any] | None:
    """An upload-reply job's ``reply``: its file and progress; None for other jobs."""
    if job.type is not JobType.UPLOAD_REPLY:
        return None
    state = job.upload
    return {
        "file": job.reply_file,
        "bytes_total": None if state is None else state.reply_total,
        "bytes_transferred": 0 if state is None else state.reply_transferred,
    }


def _waiting_view(job: Job) -> dict[str, Any] | None:
    """Why a queued job waits (SPEC §10), as the scheduler last found it."""
    w = job.waiting
    if w is None or job.state._value_ not in ("QUEUED", "TRANSIENT_ERROR"):
        return None
    code = str(w.get("code", "S_OK"))
    return {
        "code": code,
        "hresult": format_hresult(hresult_of(code)),
        "description": str(w.get("description", "")),
        "until": iso(w.get("until")),
    }


def http_options_view(job: Job) -> dict[str, Any]:
    """SPEC §8.3, as clients see it: write-only headers are never shown, only that they
    exist."""
    headers: Any = None if job.custom_headers is None else list(job.custom_headers)
    if job.custom_headers_write_only:
        headers = WRITE_ONLY_SHOWN if job.custom_headers_sealed is not None else None
    cert = job.client_certificate
    return {
        "custom_headers": headers,
        "custom_headers_write_only": job.custom_headers_write_only,
        "client_certificate": None if cert is None else cert.to_json(),
        "security_flags": list(job.security_flags),
        "http_method": job.http_method,
    }
