"""Upload jobs' bookkeeping (model/upload.py) in the job record, the reply file rules, and
how the BITS upload client reads a server's error answers (pure parts)."""

from __future__ import annotations

import json

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from ferry.errors import FerryError
from ferry.model.job import Job, JobFile, Limits
from ferry.model.token import Token
from ferry.model.types import ErrorContext, JobState, JobType
from ferry.model.upload import UploadState
from ferry.store import codec
from ferry.transfer.bits_upload import answer_error, content_range

OWNER = Token(uid=1000, gid=1000, groups=(1000,), session=None, name="u", admin=False)


def _job(kind: JobType = JobType.UPLOAD_REPLY) -> Job:
    job = Job.new(OWNER, "j", 1.0, Limits(), type=kind)
    job.add_files([JobFile("https://h/x", "/home/u/x")], Limits(), 1.0)
    return job


def test_upload_state_round_trips_in_the_job_record() -> None:
    job = _job()
    job.upload = UploadState(
        session_id="{ABC}", host_id="h2:8080", host_fallback=30.0, source_size=5,
        source_mtime_ns=123, reply_url="http://h/r", reply_file="/home/u/r",
        reply_temp="/home/u/.r.x.ferry-part", reply_total=9, reply_transferred=9,
        reply_done=True,
    )  # fmt: skip
    record = json.loads(json.dumps(codec.job_record(job)))
    loaded = codec.job_from_record(record, job.files)
    assert loaded.upload == job.upload
    # A record without the field (a download, or an older ferryd) has none.
    del record["upload"]
    assert codec.job_from_record(record, job.files).upload is None


def test_reply_file_rules() -> None:
    job = _job()
    assert job.reply_file == "/home/u/x.reply"
    job.set_reply_file("/home/u/answer", 2.0)
    assert job.reply_file == "/home/u/answer"
    with pytest.raises(FerryError) as exc:
        job.set_reply_file("/home/u/x", 3.0)
    assert exc.value.code == "E_INVALIDARG"
    job.upload_state().reply_temp = "/home/u/.answer.abc.ferry-part"
    with pytest.raises(FerryError) as exc:
        job.set_reply_file("/home/u/other", 3.0)
    assert exc.value.code == "BG_E_INVALID_STATE"
    plain = _job(JobType.UPLOAD)
    assert plain.reply_file is None
    with pytest.raises(FerryError) as exc:
        plain.set_reply_file("/home/u/r", 2.0)
    assert exc.value.code == "E_NOTIMPL"


def test_restart_upload_forgets_the_session_but_keeps_the_reply_file() -> None:
    job = _job()
    job.state = JobState.TRANSFERRED
    job.files[0].completed = True
    job.files[0].bytes_transferred = 10
    job.upload = UploadState(session_id="{S}", reply_file="/home/u/r", reply_done=True)
    job.restart_upload(5.0)
    assert job.state is JobState.QUEUED and not job.files[0].completed
    assert job.files[0].bytes_transferred == 0
    assert job.upload == UploadState(reply_file="/home/u/r")


def _headers(**h: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in h.items()}))


@pytest.mark.parametrize("name", ["BITS-Error-Code", "BITS-Error"])
def test_both_error_header_spellings(name: str) -> None:
    err = answer_error(500, _headers(**{name: "0x8020001F", "BITS-Error-Context": "0x5"}), "u", "x")
    assert err.code == "BG_E_SESSION_NOT_FOUND" and err.context is ErrorContext.REMOTE_FILE


@pytest.mark.parametrize(
    ("status", "transient"),
    [(302, False), (308, True), (307, False), (400, False), (408, True), (409, True),
     (500, True), (501, False), (505, False)],
)  # fmt: skip
def test_application_errors_follow_the_bits_rules(status: int, transient: bool) -> None:
    err = answer_error(
        status, _headers(BITS_Error_Code="0x80004005", BITS_Error_Context="0x7"), "u", "x"
    )
    assert err.context is ErrorContext.REMOTE_APPLICATION
    assert err.transient is transient
    assert err.hresult == 0x80004005


def test_server_errors() -> None:
    too_large = answer_error(500, _headers(BITS_Error_Code="0x80200020"), "u", "x")
    assert too_large.code == "BG_E_TOO_LARGE" and not too_large.transient
    plain = answer_error(503, _headers(), "u", "x")
    assert plain.code == "BG_E_HTTP_ERROR_503" and plain.transient
    exists = answer_error(409, _headers(), "u", "x")
    assert not exists.transient


def test_content_range() -> None:
    assert content_range(0, 0, 1) == "bytes 0-0/1"
    assert content_range(5, 9, 10) == "bytes 5-9/10"
    assert content_range(0, -1, 0) == "bytes */0"
