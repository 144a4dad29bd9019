"""The pure job domain (model/job.py) against SPEC §2: states, files, properties, errors."""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any

import pytest

from ferry.errors import FerryError
from ferry.model.httpopts import ClientCertificate
from ferry.model.job import (
    DEFAULT_MIN_RETRY_DELAY,
    DEFAULT_NO_PROGRESS_TIMEOUT,
    Job,
    JobError,
    JobFile,
    Limits,
)
from ferry.model.notification import NotificationError, NotificationStatus
from ferry.model.proxy import ProxySettings, ProxyUsage
from ferry.model.token import Token, TokenInterner
from ferry.model.types import (
    ErrorContext,
    JobState,
    JobType,
    NotifyFlags,
    Priority,
    TokenFlags,
)
from ferry.model.upload import UploadState
from ferry.protocol import FILE_SCHEMA, JOB_SCHEMA
from ferry.protocol.views import file_view, job_view
from ferry.store import codec
from tests.integration.api_schema import assert_valid

NOW = 1_700_000_000.0
LIM = Limits()
OWNER = Token(uid=1000, gid=1000, groups=(1000, 24), session=42, name="alice")
HELPER = Token(uid=1001, gid=1001, groups=(1001,), session=43, name="bob")

ALL_STATES = list(JobState)
FINAL = [JobState.ACKNOWLEDGED, JobState.CANCELLED]
NON_FINAL = [s for s in JobState if not s.is_final]
ACTIVE = [JobState.QUEUED, JobState.CONNECTING, JobState.TRANSFERRING]


def jf(i: int) -> JobFile:
    return JobFile(f"https://example.com/f{i}", f"/srv/dl/f{i}")


def new_job(nfiles: int = 1, type: JobType = JobType.DOWNLOAD) -> Job:
    job = Job.new(OWNER, "job", NOW, LIM, type=type)
    if nfiles:
        job.add_files([jf(i) for i in range(nfiles)], LIM, NOW)
    return job


def err(code: str = "BG_E_HTTP_ERROR_503") -> JobError:
    return JobError(code, ErrorContext.REMOTE_FILE, "server busy", 0)


def job_in(state: JobState, nfiles: int = 2) -> Job:
    """A job brought into ``state`` through the state machine itself, one second later."""
    job = new_job(nfiles)
    t = NOW + 1
    if state is JobState.SUSPENDED:
        return job
    if state is JobState.CANCELLED:
        job.plan_cancel()
        job.mark_cancelled(t)
        return job
    if state is JobState.ACKNOWLEDGED:
        job.mark_acknowledged(job.plan_complete(), t)
        return job
    job.resume(t)
    if state is JobState.QUEUED:
        return job
    job.start(t)
    if state is JobState.CONNECTING:
        return job
    if state is JobState.ERROR:
        job.fail(err("BG_E_HTTP_ERROR_404"), transient=False, now=t)
        return job
    if state is JobState.TRANSIENT_ERROR:
        job.fail(err(), transient=True, now=t)
        return job
    job.transferring(t)
    if state is JobState.TRANSFERRING:
        return job
    assert state is JobState.TRANSFERRED
    for i, f in enumerate(job.files):
        f.bytes_total = 10
        job.record_progress(i, 10, t)
        job.file_completed(i, t)
    return job


def snapshot(job: Job) -> dict[str, Any]:
    return {"job": codec.job_record(job), "files": [codec.file_record(f) for f in job.files]}


@pytest.mark.parametrize("state", ALL_STATES)
def test_job_in_reaches_every_state(state: JobState) -> None:
    assert job_in(state).state is state


# ---- creation ---------------------------------------------------------------------------


def test_new_job_is_suspended_with_defaults() -> None:
    job = Job.new(OWNER, "name", NOW, LIM, description="d")
    assert job.state is JobState.SUSPENDED
    assert uuid.UUID(job.id)
    assert job.id != Job.new(OWNER, "name", NOW, LIM).id
    assert (job.created, job.modified, job.transfer_completed) == (NOW, NOW, None)
    assert job.files == [] and job.error is None and job.error_count == 0
    assert job.type is JobType.DOWNLOAD and job.priority is Priority.NORMAL
    assert job.min_retry_delay == DEFAULT_MIN_RETRY_DELAY == 600
    assert job.no_progress_timeout == DEFAULT_NO_PROGRESS_TIMEOUT == 1_209_600
    assert job.notify_flags == NotifyFlags.JOB_TRANSFERRED | NotifyFlags.JOB_ERROR == 0x3
    assert job.helper_token is None and job.helper_flags == TokenFlags(0)
    assert job.owner == OWNER


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"display_name": "x" * 257}, "BG_E_STRING_TOO_LONG"),
        ({"description": "x" * 1025}, "BG_E_STRING_TOO_LONG"),
        ({"display_name": "a\x00b"}, "E_INVALIDARG"),
        ({"description": "a\x00b"}, "E_INVALIDARG"),
    ],
)
def test_new_job_validates_strings(kwargs: dict[str, str], code: str) -> None:
    args = {"display_name": "ok", "description": ""} | kwargs
    with pytest.raises(FerryError) as exc:
        Job.new(OWNER, args["display_name"], NOW, LIM, description=args["description"])
    assert exc.value.code == code


def test_new_job_accepts_strings_at_the_limit() -> None:
    job = Job.new(OWNER, "x" * 256, NOW, LIM, description="y" * 1024)
    assert len(job.display_name) == 256


# ---- resume -----------------------------------------------------------------------------


@pytest.mark.parametrize("state", [JobState.SUSPENDED, JobState.ERROR, JobState.TRANSIENT_ERROR])
def test_resume_queues(state: JobState) -> None:
    job = job_in(state)
    assert job.resume(NOW + 5) is True
    assert job.state is JobState.QUEUED
    assert job.modified == NOW + 5
    assert job.error is None and job.retry_at is None
    assert job.no_progress_since is None, "a resume stops the no-progress clock"


def test_resume_keeps_the_error_count() -> None:
    job = job_in(JobState.ERROR)
    job.resume(NOW + 5)
    assert job.error_count == 1


def test_resume_of_an_empty_job_is_bg_e_empty() -> None:
    job = new_job(0)
    before = snapshot(job)
    with pytest.raises(FerryError) as exc:
        job.resume(NOW + 5)
    assert exc.value.code == "BG_E_EMPTY"
    assert job.state is JobState.SUSPENDED
    assert snapshot(job) == before


@pytest.mark.parametrize("state", FINAL)
def test_resume_of_a_final_job_is_invalid_state(state: JobState) -> None:
    job = job_in(state)
    before = snapshot(job)
    with pytest.raises(FerryError) as exc:
        job.resume(NOW + 5)
    assert exc.value.code == "BG_E_INVALID_STATE"
    assert snapshot(job) == before


@pytest.mark.parametrize("state", [*ACTIVE, JobState.TRANSFERRED])
def test_resume_of_an_active_or_transferred_job_is_a_no_op(state: JobState) -> None:
    job = job_in(state)
    before = snapshot(job)
    assert job.resume(NOW + 5) is False
    assert snapshot(job) == before


# ---- suspend ----------------------------------------------------------------------------


@pytest.mark.parametrize("state", NON_FINAL)
def test_suspend_from_every_non_final_state(state: JobState) -> None:
    job = job_in(state)
    changed = job.suspend(NOW + 5)
    assert changed is (state is not JobState.SUSPENDED)
    assert job.state is JobState.SUSPENDED
    assert job.error is None and job.retry_at is None
    if changed:
        assert job.modified == NOW + 5


def test_suspend_of_an_empty_job_is_a_no_op() -> None:
    job = new_job(0)
    assert job.suspend(NOW + 5) is False
    assert job.modified == NOW


# ---- final states are read-only ------------------------------------------------------------


def _calls() -> list[tuple[str, Any]]:
    return [
        ("resume", lambda j: j.resume(NOW + 9)),
        ("suspend", lambda j: j.suspend(NOW + 9)),
        ("plan_cancel", lambda j: j.plan_cancel()),
        ("plan_complete", lambda j: j.plan_complete()),
        ("add_files", lambda j: j.add_files([jf(99)], LIM, NOW + 9)),
        ("set_properties", lambda j: j.set_properties({"description": "x"}, LIM, NOW + 9)),
        ("take_ownership", lambda j: j.take_ownership(HELPER, NOW + 9)),
    ]


@pytest.mark.parametrize("state", FINAL)
@pytest.mark.parametrize(("name", "call"), _calls(), ids=[n for n, _ in _calls()])
def test_final_jobs_are_read_only(state: JobState, name: str, call: Any) -> None:
    job = job_in(state)
    before = snapshot(job)
    with pytest.raises(FerryError) as exc:
        call(job)
    assert exc.value.code == "BG_E_INVALID_STATE", name
    assert snapshot(job) == before


# ---- cancel and complete ------------------------------------------------------------------


@pytest.mark.parametrize("state", NON_FINAL)
def test_cancel_from_every_non_final_state(state: JobState) -> None:
    job = job_in(state, nfiles=3)
    job.files[0].temp_name = "/srv/dl/.f0.ferry-1"
    job.files[2].temp_name = "/srv/dl/.f2.ferry-1"
    assert job.plan_cancel() == (0, 2)
    job.mark_cancelled(NOW + 5)
    assert job.state is JobState.CANCELLED
    assert job.modified == NOW + 5
    assert all(f.temp_name is None for f in job.files)
    # local names are never touched: the files are still listed with their names
    assert [f.local_name for f in job.files] == ["/srv/dl/f0", "/srv/dl/f1", "/srv/dl/f2"]


def test_complete_of_a_transferred_job_renames_everything() -> None:
    job = job_in(JobState.TRANSFERRED, nfiles=2)
    for i, f in enumerate(job.files):
        f.temp_name = f"/srv/dl/.f{i}.tmp"
    plan = job.plan_complete()
    assert plan.rename == (0, 1) and plan.discard == () and not plan.partial
    job.mark_acknowledged(plan, NOW + 5)
    assert job.state is JobState.ACKNOWLEDGED
    assert job.modified == NOW + 5
    assert all(f.temp_name is None for f in job.files)


@pytest.mark.parametrize("state", NON_FINAL)
def test_complete_with_unfinished_files_is_partial(state: JobState) -> None:
    job = job_in(state, nfiles=3)
    if state is JobState.TRANSFERRED:
        job.add_files([jf(7)], LIM, NOW + 2)  # back to SUSPENDED with one file left
    else:
        job.files[1].completed = True
    plan = job.plan_complete()
    assert plan.partial
    assert set(plan.rename) | set(plan.discard) == set(range(len(job.files)))
    assert all(job.files[i].completed for i in plan.rename)
    assert not any(job.files[i].completed for i in plan.discard)
    job.mark_acknowledged(plan, NOW + 5)
    assert job.state is JobState.ACKNOWLEDGED


def test_complete_of_an_untransferred_upload_job_is_invalid_state() -> None:
    job = new_job(1, type=JobType.UPLOAD)
    with pytest.raises(FerryError) as exc:
        job.plan_complete()
    assert exc.value.code == "BG_E_INVALID_STATE"


# ---- add_files ---------------------------------------------------------------------------


def test_add_files_appends_in_order_and_touches_modified() -> None:
    job = new_job(1)
    job.add_files([jf(1), jf(2)], LIM, NOW + 3)
    assert [f.remote_name for f in job.files] == [jf(i).remote_name for i in range(3)]
    assert job.modified == NOW + 3
    assert job.state is JobState.SUSPENDED


@pytest.mark.parametrize("state", [*ACTIVE, JobState.ERROR, JobState.TRANSIENT_ERROR])
def test_add_files_keeps_the_state_of_a_running_or_failed_job(state: JobState) -> None:
    job = job_in(state)
    job.add_files([jf(9)], LIM, NOW + 3)
    assert job.state is state


def test_add_files_to_a_transferred_job_suspends_it_until_resumed() -> None:
    job = job_in(JobState.TRANSFERRED)
    job.add_files([jf(9)], LIM, NOW + 3)
    assert job.state is JobState.SUSPENDED
    assert not job.all_transferred
    assert job.resume(NOW + 4) is True
    assert job.state is JobState.QUEUED


def test_a_second_file_on_an_upload_job_is_too_many_files() -> None:
    for type in (JobType.UPLOAD, JobType.UPLOAD_REPLY):
        job = new_job(1, type=type)
        before = snapshot(job)
        with pytest.raises(FerryError) as exc:
            job.add_files([jf(1)], LIM, NOW + 3)
        assert exc.value.code == "BG_E_TOO_MANY_FILES"
        assert snapshot(job) == before
        empty = new_job(0, type=type)
        with pytest.raises(FerryError) as exc:
            empty.add_files([jf(1), jf(2)], LIM, NOW + 3)
        assert exc.value.code == "BG_E_TOO_MANY_FILES"
        assert empty.files == []


def test_files_per_job_limit() -> None:
    lim = Limits(files_per_job=3)
    job = Job.new(OWNER, "j", NOW, lim)
    job.add_files([jf(0), jf(1)], lim, NOW)
    before = snapshot(job)
    with pytest.raises(FerryError) as exc:
        job.add_files([jf(2), jf(3)], lim, NOW + 1)
    assert exc.value.code == "BG_E_TOO_MANY_FILES_IN_JOB"
    assert snapshot(job) == before
    job.add_files([jf(2)], lim, NOW + 1)  # exactly at the limit is fine
    assert len(job.files) == 3


@pytest.mark.parametrize(
    "batch",
    [
        [JobFile("https://example.com/other", "/srv/dl/f0")],  # clashes with an existing file
        [jf(5), JobFile("https://example.com/again", "/srv/dl/f5")],  # clashes within the batch
    ],
)
def test_duplicate_local_name_is_invalid_arg(batch: list[JobFile]) -> None:
    job = new_job(1)
    before = snapshot(job)
    with pytest.raises(FerryError) as exc:
        job.add_files(batch, LIM, NOW + 1)
    assert exc.value.code == "E_INVALIDARG"
    assert snapshot(job) == before


def test_adding_no_files_is_invalid_arg() -> None:
    job = new_job(1)
    with pytest.raises(FerryError) as exc:
        job.add_files([], LIM, NOW + 1)
    assert exc.value.code == "E_INVALIDARG"


# ---- set_properties ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("props", "expect"),
    [
        ({"display_name": "renamed"}, {"display_name": "renamed"}),
        ({"display_name": "x" * 256}, {"display_name": "x" * 256}),
        ({"description": ""}, {"description": ""}),
        ({"description": "y" * 1024}, {"description": "y" * 1024}),
        ({"priority": "foreground"}, {"priority": Priority.FOREGROUND}),
        ({"priority": "high"}, {"priority": Priority.HIGH}),
        ({"priority": "low"}, {"priority": Priority.LOW}),
        ({"min_retry_delay": 5}, {"min_retry_delay": 5}),
        ({"no_progress_timeout": 0}, {"no_progress_timeout": 0}),
        ({"notify_flags": 0}, {"notify_flags": NotifyFlags(0)}),
        ({"notify_flags": 0x1F}, {"notify_flags": NotifyFlags.all()}),
        ({"notify_cmdline": ["/bin/echo", "done"]}, {"notify_cmdline": ["/bin/echo", "done"]}),
        ({"notify_cmdline": None}, {"notify_cmdline": None}),
        ({"notify_cmdline": []}, {"notify_cmdline": None}),
        (
            {"description": "both", "min_retry_delay": 60},
            {"description": "both", "min_retry_delay": 60},
        ),
    ],
)
def test_set_properties_applies_valid_values(props: dict[str, Any], expect: dict[str, Any]) -> None:
    job = job_in(JobState.TRANSFERRING)
    job.set_properties(props, LIM, NOW + 7)
    for key, value in expect.items():
        assert getattr(job, key) == value
        assert type(getattr(job, key)) is type(value)
    assert job.modified == NOW + 7
    assert job.state is JobState.TRANSFERRING


@pytest.mark.parametrize(
    ("props", "code"),
    [
        ({"display_name": ""}, "E_INVALIDARG"),
        ({"display_name": 5}, "E_INVALIDARG"),
        ({"display_name": None}, "E_INVALIDARG"),
        ({"display_name": "x" * 257}, "BG_E_STRING_TOO_LONG"),
        ({"display_name": "a\x00b"}, "E_INVALIDARG"),
        ({"description": None}, "E_INVALIDARG"),
        ({"description": "x" * 1025}, "BG_E_STRING_TOO_LONG"),
        ({"description": "\x00"}, "E_INVALIDARG"),
        ({"priority": "urgent"}, "E_INVALIDARG"),
        ({"priority": "NORMAL"}, "E_INVALIDARG"),
        ({"priority": 2}, "E_INVALIDARG"),
        ({"min_retry_delay": 4}, "E_INVALIDARG"),
        ({"min_retry_delay": -1}, "E_INVALIDARG"),
        ({"min_retry_delay": True}, "E_INVALIDARG"),
        ({"min_retry_delay": 600.0}, "E_INVALIDARG"),
        ({"min_retry_delay": "600"}, "E_INVALIDARG"),
        ({"no_progress_timeout": -1}, "E_INVALIDARG"),
        ({"no_progress_timeout": False}, "E_INVALIDARG"),
        ({"no_progress_timeout": None}, "E_INVALIDARG"),
        ({"notify_flags": 0x20}, "E_INVALIDARG"),
        ({"notify_flags": -1}, "E_INVALIDARG"),
        ({"notify_flags": True}, "E_INVALIDARG"),
        ({"notify_flags": "3"}, "E_INVALIDARG"),
        ({"notify_cmdline": ["notify-send", "done"]}, "E_INVALIDARG"),
        ({"notify_cmdline": ["bin/true"]}, "E_INVALIDARG"),
        ({"notify_cmdline": "/bin/true"}, "E_INVALIDARG"),
        ({"notify_cmdline": ("/bin/true",)}, "E_INVALIDARG"),
        ({"notify_cmdline": ["/bin/true", 1]}, "E_INVALIDARG"),
        ({"notify_cmdline": ["/bin/tr\x00ue"]}, "E_INVALIDARG"),
        ({"notify_cmdline": ["/bin/true", "x" * 8193]}, "BG_E_STRING_TOO_LONG"),
        ({"notify_cmdline": ["/bin/true"] + ["x" * 99] * 82}, "BG_E_STRING_TOO_LONG"),
        ({"state": "QUEUED"}, "E_INVALIDARG"),
        ({"owner": 0}, "E_INVALIDARG"),
        ({"helper_flags": 3}, "E_INVALIDARG"),
        ({"bogus": 1}, "E_INVALIDARG"),
        # a valid change next to an invalid one: all or nothing
        ({"description": "new", "min_retry_delay": 1}, "E_INVALIDARG"),
        ({"display_name": "new", "bogus": 1}, "E_INVALIDARG"),
        ({"priority": "high", "notify_flags": 0x40}, "E_INVALIDARG"),
    ],
)
def test_set_properties_rejects_and_changes_nothing(props: dict[str, Any], code: str) -> None:
    job = job_in(JobState.SUSPENDED)
    job.set_properties({"notify_cmdline": ["/bin/echo", "old"]}, LIM, NOW)
    before = snapshot(job)
    with pytest.raises(FerryError) as exc:
        job.set_properties(props, LIM, NOW + 7)
    assert exc.value.code == code
    assert snapshot(job) == before


def test_take_ownership() -> None:
    job = job_in(JobState.TRANSFERRING)
    job.take_ownership(HELPER, NOW + 3)
    assert job.owner == HELPER and job.modified == NOW + 3


def test_take_ownership_forgets_the_credential_cache_another_uid_named() -> None:
    job = job_in(JobState.SUSPENDED)
    job.owner_ccache = "/home/owner/krb5cc"
    same_uid = dataclasses.replace(job.owner, groups=(*job.owner.groups, 4242))
    job.take_ownership(same_uid, NOW + 1)
    assert job.owner_ccache == "/home/owner/krb5cc"  # the same uid named it
    assert HELPER.uid != job.owner.uid
    job.take_ownership(HELPER, NOW + 2)
    assert job.owner == HELPER and job.owner_ccache is None


# ---- the scheduler's and the engine's transitions ----------------------------------------------


@pytest.mark.parametrize("state", [s for s in ALL_STATES if s is not JobState.QUEUED])
def test_start_only_from_queued(state: JobState) -> None:
    job = job_in(state)
    before = snapshot(job)
    with pytest.raises(FerryError) as exc:
        job.start(NOW + 5)
    assert exc.value.code == "BG_E_INVALID_STATE"
    assert snapshot(job) == before


def test_start_and_transferring() -> None:
    job = job_in(JobState.QUEUED)
    job.start(NOW + 5)
    assert job.state is JobState.CONNECTING and job.modified == NOW + 5
    job.transferring(NOW + 6)
    assert job.state is JobState.TRANSFERRING and job.modified == NOW + 6


@pytest.mark.parametrize("state", [s for s in ALL_STATES if s is not JobState.CONNECTING])
def test_transferring_only_from_connecting(state: JobState) -> None:
    job = job_in(state)
    before = snapshot(job)
    job.transferring(NOW + 5)
    assert snapshot(job) == before


@pytest.mark.parametrize("state", ALL_STATES)
def test_requeue(state: JobState) -> None:
    job = job_in(state)
    job.requeue(NOW + 5)
    moves = state in (JobState.CONNECTING, JobState.TRANSFERRING, JobState.TRANSIENT_ERROR)
    assert job.state is (JobState.QUEUED if moves else state)
    if moves:
        assert job.error is None and job.retry_at is None


def test_fail_transient_waits_min_retry_delay() -> None:
    job = job_in(JobState.TRANSFERRING)
    job.fail(err(), transient=True, now=NOW + 10)
    assert job.state is JobState.TRANSIENT_ERROR
    assert job.retry_at == NOW + 10 + DEFAULT_MIN_RETRY_DELAY
    assert job.error == err() and job.error_count == 1
    assert job.modified == NOW + 10


def test_fail_fatal_goes_to_error() -> None:
    job = job_in(JobState.TRANSFERRING)
    job.fail(err("E_ACCESSDENIED"), transient=False, now=NOW + 10)
    assert job.state is JobState.ERROR
    assert job.retry_at is None and job.error is not None
    assert job.error.code == "E_ACCESSDENIED" and job.error.hresult == 0x80070005


def test_fail_transient_with_no_progress_timeout_zero_is_final_at_once() -> None:
    job = job_in(JobState.SUSPENDED)
    job.set_properties({"no_progress_timeout": 0}, LIM, NOW)
    job.resume(NOW + 1)
    job.start(NOW + 1)
    job.fail(err(), transient=True, now=NOW + 2)
    assert job.state is JobState.ERROR and job.retry_at is None


@pytest.mark.parametrize(("elapsed", "state"), [(99, "TRANSIENT_ERROR"), (100, "ERROR")])
def test_fail_after_no_progress_timeout_is_final(elapsed: int, state: str) -> None:
    job = job_in(JobState.SUSPENDED)
    job.set_properties({"no_progress_timeout": 100}, LIM, NOW)
    job.resume(NOW)
    job.start(NOW)
    job.fail(err(), transient=True, now=NOW + 7)  # the first transient error starts the clock
    assert job.state is JobState.TRANSIENT_ERROR and job.no_progress_since == NOW + 7
    job.requeue(NOW + 20)  # the retry keeps the clock running
    job.start(NOW + 20)
    job.fail(err(), transient=True, now=NOW + 7 + elapsed)
    assert job.state is JobState(state)


def test_waiting_in_line_does_not_count_as_no_progress() -> None:
    """BITS starts the no-progress clock at the first transient error: a job that waited
    longer than no_progress_timeout (queued behind others, owner logged off) still retries."""
    job = job_in(JobState.SUSPENDED)
    job.set_properties({"no_progress_timeout": 100}, LIM, NOW)
    job.resume(NOW)
    job.start(NOW + 5000)
    job.fail(err(), transient=True, now=NOW + 5000)
    assert job.state is JobState.TRANSIENT_ERROR


def test_progress_restarts_the_no_progress_clock() -> None:
    job = job_in(JobState.SUSPENDED)
    job.set_properties({"no_progress_timeout": 100}, LIM, NOW)
    job.resume(NOW)
    job.start(NOW)
    job.transferring(NOW)
    job.fail(err(), transient=True, now=NOW + 10)
    assert job.no_progress_since == NOW + 10
    job.requeue(NOW + 20)
    job.start(NOW + 20)
    job.record_progress(0, 500, NOW + 90)
    assert job.no_progress_since is None, "bytes arrived: the clock stops"
    job.fail(err(), transient=True, now=NOW + 95)
    assert job.no_progress_since == NOW + 95
    job.requeue(NOW + 100)
    job.start(NOW + 100)
    job.record_progress(0, 500, NOW + 105)  # no new bytes: the clock keeps running
    assert job.no_progress_since == NOW + 95
    job.fail(err(), transient=True, now=NOW + 150)
    assert job.state is JobState.TRANSIENT_ERROR
    job.requeue(NOW + 160)
    job.start(NOW + 160)
    job.fail(err(), transient=True, now=NOW + 195)
    assert job.state is JobState.ERROR
    assert job.error_count == 4


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [(None, 600), (30, 600), (600, 600), (1800, 1800), (10**9, 5000)],
)
def test_retry_after_lengthens_but_never_shortens(
    retry_after: float | None, expected: float
) -> None:
    """Retry-After may lengthen min_retry_delay, never shorten it, and never push the retry
    past the end of the no-progress window (a server cannot park a job for ever)."""
    job = job_in(JobState.SUSPENDED)
    job.set_properties({"no_progress_timeout": 5000}, LIM, NOW)
    job.resume(NOW)
    job.start(NOW)
    job.fail(err(), transient=True, now=NOW + 10, retry_after=retry_after)
    assert job.state is JobState.TRANSIENT_ERROR
    assert job.retry_at == NOW + 10 + expected


def test_dynamic_content_property() -> None:
    job = job_in(JobState.SUSPENDED)
    assert job.dynamic_content is False and job_view(job)["dynamic_content"] is False
    job.set_properties({"dynamic_content": True}, LIM, NOW + 1)
    assert job.dynamic_content is True and job_view(job)["dynamic_content"] is True
    with pytest.raises(FerryError) as exc:
        job.set_properties({"dynamic_content": 1}, LIM, NOW + 2)
    assert exc.value.code == "E_INVALIDARG" and job.dynamic_content is True
    record = json.loads(json.dumps(codec.job_record(job)))
    assert codec.job_from_record(record, job.files).dynamic_content is True


def test_error_count_counts_every_error_since_creation() -> None:
    job = job_in(JobState.QUEUED)
    for n in range(1, 4):
        job.start(NOW + n)
        job.fail(err(), transient=True, now=NOW + n)
        assert job.error_count == n
        job.resume(NOW + n)
    assert job.error is None and job.error_count == 3


def test_file_completed_moves_the_job_to_transferred() -> None:
    job = job_in(JobState.TRANSFERRING, nfiles=2)
    job.files[0].bytes_total = 10
    job.record_progress(0, 10, NOW + 2)
    job.file_completed(0, NOW + 2)
    assert job.state is JobState.TRANSFERRING and job.transfer_completed is None
    assert job.files_transferred == 1
    job.record_progress(1, 7, NOW + 3)  # size never announced
    job.file_completed(1, NOW + 3)
    assert job.state is JobState.TRANSFERRED
    assert job.transfer_completed == NOW + 3 and job.modified == NOW + 3
    assert job.files[1].bytes_total == 7
    assert (job.bytes_total, job.bytes_transferred, job.files_transferred) == (17, 17, 2)


def test_file_completed_of_a_suspended_job_keeps_it_suspended() -> None:
    job = job_in(JobState.TRANSFERRING, nfiles=1)
    job.suspend(NOW + 2)
    job.file_completed(0, NOW + 3)
    assert job.state is JobState.SUSPENDED and job.all_transferred


def test_progress_views() -> None:
    job = new_job(2)
    assert job.bytes_total is None and job.bytes_transferred == 0
    job.files[0].bytes_total = 100
    assert job.bytes_total is None
    job.files[1].bytes_total = 50
    job.files[1].bytes_transferred = 20
    assert (job.bytes_total, job.bytes_transferred) == (150, 20)
    assert not job.all_transferred and not new_job(0).all_transferred


# ---- records and views --------------------------------------------------------------------


def rich_job() -> Job:
    job = job_in(JobState.TRANSFERRING, nfiles=3)
    job.set_properties(
        {
            "description": "désc ✓",
            "priority": "high",
            "min_retry_delay": 30,
            "no_progress_timeout": 3600,
            "notify_flags": 0x1B,
            "notify_cmdline": ["/usr/bin/notify", "--id", "x y"],
        },
        LIM,
        NOW + 2,
    )
    f = job.files[0]
    f.bytes_total, f.temp_name, f.validator = 1000, "/srv/dl/.f0.tmp", '"etag-1"'
    f.final_url = "https://cdn.example.com/f0"
    job.record_progress(0, 1000, NOW + 3)
    job.file_completed(0, NOW + 3)
    job.record_progress(1, 10, NOW + 4)
    job.helper_token = HELPER
    job.helper_flags = TokenFlags.LOCAL_FILE | TokenFlags.NETWORK
    job.fail(JobError("BG_E_HTTP_ERROR_503", ErrorContext.REMOTE_FILE, "busy", 1), True, NOW + 5)
    return job


@pytest.mark.parametrize("make", [rich_job, lambda: new_job(0), lambda: job_in(JobState.CANCELLED)])
def test_record_round_trip(make: Any) -> None:
    job = make()
    record = json.loads(json.dumps(codec.job_record(job)))
    files = [
        codec.file_from_record(json.loads(json.dumps(codec.file_record(f)))) for f in job.files
    ]
    assert codec.job_from_record(record, files) == job


def test_job_error_record_round_trip() -> None:
    e = JobError("ERROR_DISK_FULL", ErrorContext.LOCAL_FILE, "No space left", 2)
    assert e.hresult == 0x80070070
    assert codec.error_from_record(json.loads(json.dumps(codec.error_record(e)))) == e


SPEC_6_JOB_FIELDS = {
    "id", "display_name", "description", "type", "state", "priority", "owner",
    "progress", "times", "error", "error_count", "min_retry_delay",
    "no_progress_timeout", "notify_flags", "notify_cmdline", "helper_token",
}  # fmt: skip
SPEC_6_FILE_FIELDS = {"remote_name", "local_name", "bytes_total", "bytes_transferred", "completed"}


def test_the_schemas_require_every_field_of_spec_6() -> None:
    assert set(JOB_SCHEMA["required"]) >= SPEC_6_JOB_FIELDS
    assert set(FILE_SCHEMA["required"]) >= SPEC_6_FILE_FIELDS


def test_to_public_has_every_field_of_spec_6() -> None:
    pub = job_view(rich_job())
    assert_valid("Job", pub)
    assert pub["owner"] == {"sid": "S-1-22-1-1000", "uid": 1000, "name": "alice"}
    assert pub["progress"] == {
        "bytes_total": None,
        "bytes_transferred": 1010,
        "files_total": 3,
        "files_transferred": 1,
    }
    assert set(pub["times"]) == {"created", "modified", "transfer_completed"}
    assert pub["times"]["created"] == "2023-11-14T22:13:20Z"
    assert pub["times"]["transfer_completed"] is None
    assert pub["error"] == {
        "code": "BG_E_HTTP_ERROR_503",
        "hresult": "0x801901F7",
        "context": "REMOTE_FILE",
        "description": "busy",
        "file": {"remote_name": "https://example.com/f1", "local_name": "/srv/dl/f1"},
    }
    assert pub["helper_token"] == {"sid": "S-1-22-1-1001", "flags": ["LOCAL_FILE", "NETWORK"]}
    assert (pub["type"], pub["state"], pub["priority"]) == ("download", "TRANSIENT_ERROR", "high")
    assert pub["error_count"] == 1 and pub["min_retry_delay"] == 30
    assert pub["no_progress_timeout"] == 3600 and pub["notify_flags"] == 0x1B
    assert pub["notify_cmdline"] == ["/usr/bin/notify", "--id", "x y"]
    json.dumps(pub)  # plain JSON all the way down
    for f in rich_job().files:
        assert_valid("File", file_view(f))


def test_to_public_of_a_fresh_job() -> None:
    pub = job_view(new_job(0))
    assert_valid("Job", pub)
    assert pub["error"] is None and pub["helper_token"] is None
    assert pub["progress"] == {
        "bytes_total": 0,
        "bytes_transferred": 0,
        "files_total": 0,
        "files_transferred": 0,
    }
    assert pub["state"] == "SUSPENDED" and pub["notify_cmdline"] is None


def test_to_public_error_without_a_file() -> None:
    job = job_in(JobState.QUEUED)
    job.start(NOW)
    job.fail(JobError("BG_E_TOKEN_REQUIRED", ErrorContext.GENERAL_QUEUE_MANAGER, "x"), False, NOW)
    pub = job_view(job)
    assert_valid("Job", pub)
    assert pub["error"]["file"] is None and pub["error"]["hresult"] == "0x80200056"


def test_helper_flags_without_a_token_are_shown() -> None:
    job = new_job(1)
    job.helper_flags = TokenFlags.NETWORK
    assert job_view(job)["helper_token"] == {"sid": None, "flags": ["NETWORK"]}


def test_resume_of_a_suspended_transferred_job_returns_to_transferred() -> None:
    # Queuing it would hand the engine a job with no file left, stuck before TRANSFERRED.
    job = job_in(JobState.TRANSFERRED)
    done = job.transfer_completed
    assert job.suspend(NOW + 5) is True and job.state is JobState.SUSPENDED
    assert job.resume(NOW + 6) is True
    assert job.state is JobState.TRANSFERRED
    assert job.transfer_completed == done and job.modified == NOW + 6


def test_resume_after_the_last_file_finished_while_suspended() -> None:
    job = job_in(JobState.TRANSFERRING, nfiles=1)
    job.suspend(NOW + 2)
    job.file_completed(0, NOW + 3)
    assert job.resume(NOW + 4) is True
    assert job.state is JobState.TRANSFERRED and job.transfer_completed == NOW + 4


# ---- records: every field, and the decoding shortcuts of the store's load -----------------------


from ferry.model.credentials import AuthScheme, AuthTarget, Credential  # noqa: E402


def full_job() -> Job:
    """A job whose every field (and every field of its files) differs from the default, with
    values distinct enough that a field decoded into the wrong place cannot go unnoticed."""
    files = [
        JobFile(
            "https://example.com/a",
            "/srv/dl/a",
            bytes_total=4096,
            bytes_transferred=4096,
            completed=True,
            temp_name="/srv/dl/.a.ferry-x1",
            validator='"etag-a"',
            final_url="https://cdn.example.com/a",
            sha256="ab" * 32,
            remote_renamed=True,
            response_headers="HTTP/1.1 200 OK\r\nETag: \"etag-a\"\r\n",
            ranges=[(0, 1024), (8192, None)],
            remote_size=1 << 20,
        ),
        JobFile("file:///mnt/share/b", "/srv/dl/b\udcff", 100, 7, False, "/srv/dl/.b", "W/1"),
        JobFile("https://example.com/c?q=1&r=ü", "/srv/dl/c", sha256="0f" * 32),
    ]
    return Job(
        id=str(uuid.uuid4()),
        display_name="every field ✓",
        owner=OWNER,
        type=JobType.UPLOAD_REPLY,
        priority=Priority.LOW,
        state=JobState.TRANSIENT_ERROR,
        description="désc",
        files=files,
        created=NOW + 0.25,
        modified=NOW + 9.5,
        transfer_completed=NOW + 3.125,
        error=JobError("BG_E_HTTP_ERROR_503", ErrorContext.REMOTE_FILE, "busy", 2, 0x80190193),
        error_count=3,
        min_retry_delay=45,
        no_progress_timeout=7200,
        notify_flags=NotifyFlags.JOB_MODIFICATION | NotifyFlags.FILE_TRANSFERRED,
        notify_cmdline=["/usr/bin/notify", "--job", "a b"],
        helper_token=HELPER,
        helper_flags=TokenFlags.NETWORK,
        dynamic_content=True,
        retry_at=NOW + 60.75,
        no_progress_since=NOW + 4.5,
        notification=NotificationStatus(
            "JOB_ERROR", "FAILED", 2, NotificationError("E_FAIL", 0x80004005, "exit 3")
        ),
        credentials=[
            Credential(AuthTarget.SERVER, AuthScheme.BASIC, "bob", "v1:c2VhbGVk"),
            Credential(AuthTarget.PROXY, AuthScheme.NEGOTIATE),
        ],
        owner_ccache="/tmp/krb5cc_1000",
        helper_ccache="/tmp/krb5cc_1001",
        proxy=ProxySettings(
            ProxyUsage.OVERRIDE, ("http://p.example:3128",), ("<local>", "10.0.0.0/8")
        ),
        max_rate=123_456,
        max_download_time=3600,
        download_time=12.5,
        cost_flags="TRANSFER_ALWAYS",
        waiting={"code": "BG_E_BLOCKED_BY_COST_TRANSFER_POLICY", "description": "metered"},
        custom_headers=("X-One: 1", "X-Two: two words"),
        custom_headers_sealed="v1:sealed",
        custom_headers_write_only=True,
        client_certificate=ClientCertificate("/etc/c.pem", "/etc/k.pem"),
        security_flags=("IGNORE_CERT_CN_INVALID", "REDIRECT_POLICY_DISALLOW"),
        http_method="POST",
        upload=UploadState(
            session_id="{5E55}", host_id="farm-2:8443", host_fallback=60.0,
            host_failing_since=NOW + 1.5, source_size=4096, source_mtime_ns=17,
            reply_url="https://example.com/reply/1", reply_file="/srv/dl/answer",
            reply_temp="/srv/dl/.answer.t.ferry-part", reply_total=12, reply_transferred=5,
            reply_done=True,
        ),  # fmt: skip
    )


def _record_round_trip(job: Job) -> Job:
    record = json.loads(json.dumps(codec.job_record(job)))
    files = [
        codec.file_from_record(json.loads(json.dumps(codec.file_record(f)))) for f in job.files
    ]
    return codec.job_from_record(record, files)


def _non_default_fields(obj: Any) -> None:
    for f in dataclasses.fields(obj):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            continue
        assert getattr(obj, f.name) != default, f"{type(obj).__name__}.{f.name} is the default"


def test_full_job_sets_every_field() -> None:
    # Keeps the round-trip tests exhaustive: a new field must be given a value here.
    job = full_job()
    _non_default_fields(job)
    _non_default_fields(job.files[0])
    assert job.error is not None
    _non_default_fields(job.error)


def test_record_round_trip_of_every_field() -> None:
    job = full_job()
    loaded = _record_round_trip(job)
    assert loaded == job
    for f in dataclasses.fields(Job):
        assert getattr(loaded, f.name) == getattr(job, f.name), f.name
    for got, want in zip(loaded.files, job.files, strict=True):
        for f in dataclasses.fields(JobFile):
            assert getattr(got, f.name) == getattr(want, f.name), f.name
    assert loaded.type is JobType.UPLOAD_REPLY and loaded.state is JobState.TRANSIENT_ERROR
    assert loaded.priority is Priority.LOW
    assert type(loaded.notify_flags) is NotifyFlags and type(loaded.helper_flags) is TokenFlags
    assert loaded.error is not None and loaded.error.context is ErrorContext.REMOTE_FILE


@pytest.mark.parametrize(
    ("field", "members"),
    [("type", list(JobType)), ("priority", list(Priority)), ("state", list(JobState))],
)
def test_every_enum_value_decodes_to_its_member(field: str, members: list[Any]) -> None:
    job = new_job()
    for member in members:
        record = codec.job_record(job)
        record[field] = member.value
        assert getattr(codec.job_from_record(record, []), field) is member


@pytest.mark.parametrize("context", list(ErrorContext))
def test_every_error_context_decodes_to_its_member(context: ErrorContext) -> None:
    e = JobError("E_FAIL", context, "x")
    assert codec.error_from_record(json.loads(json.dumps(codec.error_record(e)))).context is context


@pytest.mark.parametrize("field", ["type", "priority", "state"])
@pytest.mark.parametrize("value", ["bogus", ["QUEUED"], None])
def test_an_unknown_enum_value_is_a_value_error(field: str, value: Any) -> None:
    record = codec.job_record(new_job())
    record[field] = value
    with pytest.raises(ValueError, match="is not a valid"):
        codec.job_from_record(record, [])


def test_an_unknown_error_context_is_a_value_error() -> None:
    record = codec.error_record(JobError("E_FAIL", ErrorContext.NONE, "x"))
    record["context"] = "BOGUS"
    with pytest.raises(ValueError, match="is not a valid"):
        codec.error_from_record(record)


@pytest.mark.parametrize("value", [*range(0x40), 0x100, True, 3.0, "19"])
def test_notify_flags_decode_like_the_enumeration(value: Any) -> None:
    record = codec.job_record(new_job())
    record["notify_flags"] = value
    got = codec.job_from_record(record, []).notify_flags
    assert type(got) is NotifyFlags and got == NotifyFlags(int(value))


@pytest.mark.parametrize("value", [*range(8), 0x10, True, "3"])
def test_helper_flags_decode_like_the_enumeration(value: Any) -> None:
    record = codec.job_record(new_job())
    record["helper_flags"] = value
    got = codec.job_from_record(record, []).helper_flags
    assert type(got) is TokenFlags and got == TokenFlags(int(value))


def test_records_of_an_older_ferry_get_the_defaults() -> None:
    job = new_job()
    required = ("id", "display_name", "owner", "type", "priority", "state", "created", "modified")
    record = {key: codec.job_record(job)[key] for key in required}
    files = [codec.file_from_record({"remote_name": "https://e/x", "local_name": "/srv/x"})]
    loaded = codec.job_from_record(record, files)
    fresh = Job(job.id, job.display_name, OWNER, created=NOW, modified=NOW, files=files)
    assert loaded == fresh
    assert files[0] == JobFile("https://e/x", "/srv/x")


def test_default_retry_settings_are_shared_ints() -> None:
    a, b = (_record_round_trip(new_job()) for _ in range(2))
    assert a.min_retry_delay is b.min_retry_delay is DEFAULT_MIN_RETRY_DELAY
    assert a.no_progress_timeout is b.no_progress_timeout is DEFAULT_NO_PROGRESS_TIMEOUT


# ---- the token interner ---------------------------------------------------------------------


def test_token_is_immutable() -> None:
    token = Token(1000, 1000, (1000, 24), 42, "alice")
    assert not hasattr(token, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        token.uid = 0  # type: ignore[misc]
    assert isinstance(token.groups, tuple)


def test_interner_shares_equal_tokens() -> None:
    tokens = TokenInterner()
    a = tokens.from_json(json.loads(json.dumps(OWNER.to_json())))
    b = tokens.from_json(json.loads(json.dumps(OWNER.to_json())))
    assert a is b and a == OWNER and len(tokens) == 1
    # A token with a pid is equal to one without; what is stored never carries the pid.
    c = tokens.from_json(dataclasses.replace(OWNER, pid=4242).to_json())
    assert c is a and c.pid is None


@pytest.mark.parametrize(
    "change",
    [
        {"uid": 1001},
        {"gid": 1001},
        {"groups": [24, 1000]},
        {"groups": [1000]},
        {"session": None},
        {"session": 43},
        {"name": "bob"},
        {"name": None},
        {"admin": True},
    ],
)
def test_interner_keeps_tokens_apart_that_differ(change: dict[str, Any]) -> None:
    tokens = TokenInterner()
    owner = tokens.from_json(OWNER.to_json())
    d = {**OWNER.to_json(), **change}
    other = tokens.from_json(d)
    assert other is not owner and other != owner
    assert other == Token.from_json(d) and owner == OWNER
    assert tokens.from_json(dict(d)) is other and len(tokens) == 2


def test_interner_decodes_like_from_json_when_the_record_is_odd() -> None:
    tokens = TokenInterner()
    # Not hashable as a key: decoded on its own, exactly as Token.from_json does.
    odd = {"uid": 5, "gid": 5, "groups": [[1]], "name": "x"}
    with pytest.raises(TypeError):
        Token.from_json(odd)
    with pytest.raises(TypeError):
        tokens.from_json(odd)
    unhashable_name = {"uid": 5, "gid": 5, "name": ["x"]}
    assert tokens.from_json(unhashable_name) == Token.from_json(unhashable_name)
    with pytest.raises(KeyError):
        tokens.from_json({"gid": 5})
    # Values from_json converts give the token it gives.
    assert tokens.from_json({"uid": "7", "gid": 7.0, "groups": ["1"]}) == Token(7, 7, (1,))
    assert len(tokens) == 1


def test_job_from_record_shares_tokens_through_the_interner() -> None:
    tokens = TokenInterner()
    one, two = full_job(), full_job()
    two.helper_token = OWNER
    a = codec.job_from_record(json.loads(json.dumps(codec.job_record(one))), [], tokens)
    b = codec.job_from_record(json.loads(json.dumps(codec.job_record(two))), [], tokens)
    assert a.owner is b.owner is b.helper_token and a.owner == OWNER
    assert a.helper_token == HELPER and a.helper_token is not a.owner
    # Without an interner every job gets its own tokens.
    c, d = (codec.job_from_record(codec.job_record(one), []) for _ in range(2))
    assert c.owner == d.owner and c.owner is not d.owner


# ---- changing remote names (SPEC §11) --------------------------------------------------


def test_set_remote_name_keeps_the_data_and_forgets_the_redirect() -> None:
    job = job_in(JobState.ERROR)
    f = job.files[1]
    f.bytes_total, f.bytes_transferred, f.validator = 100, 40, '"v1"'
    f.final_url = "https://cdn.example.com/f1"
    job.set_remote_name(1, "https://mirror.example.com/f1", NOW + 5)
    assert f.remote_name == "https://mirror.example.com/f1"
    assert (f.bytes_total, f.bytes_transferred, f.validator) == (100, 40, '"v1"')
    assert f.final_url is None and f.remote_renamed
    assert job.state is JobState.ERROR and job.modified == NOW + 5
    assert job.files[0].remote_name == "https://example.com/f0"
    assert not job.files[0].remote_renamed


def test_set_remote_name_to_the_same_url_changes_nothing() -> None:
    job = new_job(1)
    job.files[0].final_url = "https://cdn.example.com/f0"
    job.set_remote_name(0, "https://example.com/f0", NOW + 1)
    assert job.files[0].final_url == "https://cdn.example.com/f0"
    assert not job.files[0].remote_renamed


@pytest.mark.parametrize("state", FINAL)
def test_set_remote_name_refused_on_final_jobs(state: JobState) -> None:
    job = job_in(state)
    before = snapshot(job)
    with pytest.raises(FerryError) as exc:
        job.set_remote_name(0, "https://example.com/x", NOW + 9)
    assert exc.value.code == "BG_E_INVALID_STATE"
    assert snapshot(job) == before


@pytest.mark.parametrize(
    ("index", "code"),
    [(-1, "E_INVALIDARG"), (2, "E_INVALIDARG"), (True, "E_INVALIDARG"), (0, "BG_E_INVALID_STATE")],
)
def test_set_remote_name_refusals(index: int, code: str) -> None:
    job = job_in(JobState.TRANSFERRED)
    before = snapshot(job)
    with pytest.raises(FerryError) as exc:
        job.set_remote_name(index, "https://example.com/x", NOW + 9)
    assert exc.value.code == code
    assert snapshot(job) == before


@pytest.mark.parametrize("type", [JobType.UPLOAD, JobType.UPLOAD_REPLY])
def test_set_remote_name_not_on_uploads(type: JobType) -> None:
    job = new_job(1, type)
    with pytest.raises(FerryError) as exc:
        job.set_remote_name(0, "https://example.com/x", NOW + 9)
    assert exc.value.code == "E_NOTIMPL"
    assert job.files[0].remote_name == "https://example.com/f0"


def test_replace_remote_prefix_plans_every_matching_file() -> None:
    job = job_in(JobState.TRANSFERRED, nfiles=3)
    job.files[2].remote_name = "HTTPS://example.com/f2"  # case-sensitive: no match
    plan = job.plan_replace_remote_prefix("https://example.com/", "https://mirror.example.org/")
    assert plan == {0: "https://mirror.example.org/f0", 1: "https://mirror.example.org/f1"}
    assert job.plan_replace_remote_prefix("https://nowhere/", "https://x/") == {}
    before = snapshot(job)
    job.replace_remote_names(plan, NOW + 5)
    # Transferred files change their name and keep their data; they are not moved again.
    assert [f.remote_name for f in job.files][:2] == list(plan.values())
    assert all(f.completed and not f.remote_renamed for f in job.files)
    assert snapshot(job)["files"][2] == before["files"][2]
    assert job.state is JobState.TRANSFERRED


@pytest.mark.parametrize(("old", "new"), [("", "https://x/"), ("https://", "")])
def test_replace_remote_prefix_refuses_empty_prefixes(old: str, new: str) -> None:
    with pytest.raises(FerryError) as exc:
        new_job(1).plan_replace_remote_prefix(old, new)
    assert exc.value.code == "E_INVALIDARG"


@pytest.mark.parametrize("state", FINAL)
def test_replace_remote_prefix_refused_on_final_jobs(state: JobState) -> None:
    with pytest.raises(FerryError) as exc:
        job_in(state).plan_replace_remote_prefix("https://", "http://")
    assert exc.value.code == "BG_E_INVALID_STATE"


def test_replace_remote_prefix_not_on_uploads() -> None:
    with pytest.raises(FerryError) as exc:
        new_job(1, JobType.UPLOAD).plan_replace_remote_prefix("https://", "http://")
    assert exc.value.code == "E_NOTIMPL"


def test_job_ids_are_random_version_4_uuids() -> None:
    """new_job_id draws from a pool of os.urandom bytes: each id must still be a valid
    random UUID (version 4, RFC 4122 variant), spelled as str(uuid.UUID) spells it."""
    from ferry.model.job import new_job_id

    ids = [new_job_id() for _ in range(3000)]  # several refills of the 4 KiB pool
    assert len(set(ids)) == len(ids)
    for i in ids:
        u = uuid.UUID(i)
        assert u.version == 4 and u.variant == uuid.RFC_4122
        assert str(u) == i


def test_job_ids_differ_in_a_forked_child() -> None:
    """A child forked with the pool half used draws fresh bytes, not the parent's next ids."""
    import os

    from ferry.model.job import new_job_id

    new_job_id()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: write its next id and leave at once
        os.write(w, new_job_id().encode())
        os._exit(0)
    os.close(w)
    child = os.read(r, 100).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert child != new_job_id()
