"""Jobs for store tests: small ones, and ones that set every field a record carries."""

from __future__ import annotations

from ferry.model.job import Job, JobError, JobFile, Limits
from ferry.model.token import Token
from ferry.model.types import ErrorContext, JobType, TokenFlags
from tests.unit.test_job import full_job

NOW = 1_700_000_000.0
LIM = Limits()
OWNER = Token(uid=1000, gid=1000, groups=(1000, 24), session=42, name="alice")
HELPER = Token(uid=1001, gid=1001, groups=(1001,), session=43, name="bob")

__all__ = ["HELPER", "LIM", "NOW", "OWNER", "full_job", "make_job", "rich_job", "upload_job"]


def make_job(n_files: int = 1, name: str = "job", owner: Token = OWNER) -> Job:
    job = Job.new(owner, name, NOW, LIM)
    if n_files:
        job.add_files(
            [
                JobFile(f"https://example.com/{name}/{i}", f"/srv/dl/{name}-{i}")
                for i in range(n_files)
            ],
            LIM,
            NOW,
        )
    return job


def rich_job() -> Job:
    """A job brought through real state changes to use every field a record carries."""
    job = Job.new(OWNER, "riche ✓", NOW, LIM, description="all fields", type=JobType.DOWNLOAD)
    job.add_files(
        [
            JobFile("https://example.com/a", "/srv/dl/a"),
            JobFile("file:///mnt/share/b", "/srv/dl/b\udcff"),  # undecodable byte in a name
            JobFile("https://example.com/c?q=1&r=ü", "/srv/dl/c"),
        ],
        LIM,
        NOW,
    )
    job.set_properties(
        {"priority": "high", "min_retry_delay": 30, "notify_flags": 0x1B,
         "notify_cmdline": ["/usr/bin/notify", "--job", "a b"]},
        LIM,
        NOW + 1,
    )  # fmt: skip
    job.resume(NOW + 2)
    job.start(NOW + 2)
    job.transferring(NOW + 3)
    a = job.files[0]
    a.bytes_total, a.temp_name, a.validator = 4096, "/srv/dl/.a.ferry-x1", '"etag"'
    a.final_url = "https://cdn.example.com/a"
    job.record_progress(0, 4096, NOW + 4)
    job.file_completed(0, NOW + 4)
    job.files[1].temp_name = "/srv/dl/.b.ferry-x2"
    job.files[1].remote_renamed = True
    job.files[1].ranges, job.files[1].remote_size = [(10, 90), (4096, None)], 65536
    job.record_progress(1, 100, NOW + 5)
    job.helper_token = HELPER
    job.helper_flags = TokenFlags.LOCAL_FILE | TokenFlags.NETWORK
    job.fail(JobError("BG_E_HTTP_ERROR_503", ErrorContext.REMOTE_FILE, "busy", 1), True, NOW + 6)
    return job


def upload_job() -> Job:
    job = Job.new(HELPER, "up", NOW, LIM, type=JobType.UPLOAD)
    job.add_files([JobFile("https://example.com/up", "/home/bob/report.pdf")], LIM, NOW)
    return job
