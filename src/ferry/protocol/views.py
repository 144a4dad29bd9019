"""The JSON views of jobs and files that clients see (SPEC §6): what the API answers and
what the event stream carries. Kept out of the domain so the model stays a leaf. The shapes
are the contract's ``JOB_SCHEMA`` and ``FILE_SCHEMA``; the settable properties are rendered
from the contract's list, so a new one needs no line here."""

from __future__ import annotations

from typing import Any

from ..errors import format_hresult
from ..model.job import Job, JobFile, iso
from ..model.ranges import ranges_to_wire
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
        "type": job.type.value,
        "state": job.state.value,
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
    })
    return view
