"""The transport seam (transfer/base.py): a transport plugged in by scheme goes through the
real engine into a real temporary file, with nothing but its own class and one mount; the
engine, not the transport, decides the identities, records the file's bookkeeping, and
verifies the SHA-256; uploads are dispatched by direction and fail plainly until an upload
transport exists."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ferry.errors import FerryError
from ferry.model.job import Job, JobFile, Limits
from ferry.model.types import ErrorContext, JobType, TokenFlags
from ferry.security.identity import IdentityIO
from ferry.transfer.base import DownloadRequest, Sink, TransferError
from ferry.transfer.engine import TransferEngine
from ferry.transfer.sink import TempSink
from tests.integration.test_engine import Recorder, data_of, make_job, me, temp_bytes

CHUNK = 64 << 10


class MemoryTransport:
    """``mem://NAME`` serves ``files[NAME]`` from memory: the whole of a transport, written
    against base.DownloadTransport only. ``cut_at`` makes the next response stop after that
    many bytes of the file, as a dropped connection would."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[DownloadRequest, int]] = []  # (request, offset at start)
        self.cut_at: int | None = None
        self.closed = 0

    async def download(self, request: DownloadRequest, sink: Sink) -> None:
        self.requests.append((request, sink.offset))
        name = request.url.partition("://")[2]
        data = self.files.get(name)
        if data is None:
            raise TransferError(
                "BG_E_FILE_NOT_FOUND",
                f"no {name} in memory",
                context=ErrorContext.REMOTE_FILE,
                transient=False,
            )
        version = hashlib.sha256(data).hexdigest()[:16]
        if sink.offset > 0 and request.validator != version:
            await sink.truncate(0)
        request.validator = version
        request.bytes_total = len(data)
        request.final_url = request.url
        await sink.response()
        end = len(data) if self.cut_at is None else self.cut_at
        self.cut_at = None
        view = memoryview(data)
        while sink.offset < end:
            sink.write(view[sink.offset : min(end, sink.offset + CHUNK)])
            await sink.checkpoint()
        if sink.offset < len(data):
            raise TransferError(
                "BG_E_CONNECTION_CLOSED",
                f"{request.url} stopped at {sink.offset}",
                context=ErrorContext.GENERAL_TRANSPORT,
                transient=True,
            )

    async def close(self) -> None:
        self.closed += 1


@pytest.fixture
def memory() -> MemoryTransport:
    return MemoryTransport()


@pytest.fixture
async def engine(identity: IdentityIO, memory: MemoryTransport) -> AsyncIterator[TransferEngine]:
    # The one line of wiring a new scheme needs (daemon/main.py mounts http, https, file).
    eng = TransferEngine(identity, downloads={"mem": memory}, checkpoint_bytes=CHUNK)
    yield eng
    await eng.close()


async def test_a_transport_plugged_in_by_scheme_runs_end_to_end(
    engine: TransferEngine, memory: MemoryTransport, tmp_path: Path
) -> None:
    memory.files["a"] = data_of(300_000)
    memory.files["b"] = b"small"
    job = make_job([("mem://a", tmp_path / "a"), ("MEM://b", tmp_path / "b")])
    rec = Recorder()
    await engine.run_job(job, rec)
    assert temp_bytes(job, 0) == memory.files["a"] and temp_bytes(job, 1) == b"small"
    assert [e for e in rec.events if e[0] == "completed"] == [("completed", 0), ("completed", 1)]
    assert "transferring" in rec.kinds()
    a = job.files[0]
    assert a.completed and a.bytes_total == 300_000 and a.final_url == "mem://a"
    assert a.validator == hashlib.sha256(memory.files["a"]).hexdigest()[:16]
    assert len(rec.progress_of(0)) > 1, "checkpoints on the way, reported by the engine's sink"
    request, _ = memory.requests[0]
    assert request.network_token() == job.owner, "the engine chose the network token"


async def test_an_interrupted_file_resumes_with_its_recorded_validator(
    engine: TransferEngine, memory: MemoryTransport, tmp_path: Path
) -> None:
    """What the transport learnt is in the job before the checkpoint is reported, so the
    next run resumes from the checkpoint with the same validator."""
    data = data_of(500_000, seed=3)
    memory.files["r"] = data
    memory.cut_at = 200_000
    job = make_job([("mem://r", tmp_path / "r")])
    with pytest.raises(TransferError) as info:
        await engine.run_job(job, Recorder())
    assert info.value.code == "BG_E_CONNECTION_CLOSED" and info.value.file_index == 0
    jf = job.files[0]
    assert jf.bytes_transferred == 200_000 and jf.validator is not None
    await engine.run_job(job, Recorder())
    (_, first), (again, offset) = memory.requests
    assert first == 0 and offset == 200_000 and again.validator == jf.validator
    assert jf.completed and temp_bytes(job) == data


async def test_the_engine_verifies_what_any_transport_delivered(
    engine: TransferEngine, memory: MemoryTransport, tmp_path: Path
) -> None:
    memory.files["good"] = b"good bytes"
    memory.files["bad"] = b"tampered bytes"
    job = make_job([("mem://good", tmp_path / "good"), ("mem://bad", tmp_path / "bad")])
    job.files[0].sha256 = hashlib.sha256(b"good bytes").hexdigest()
    job.files[1].sha256 = hashlib.sha256(b"original bytes").hexdigest()
    with pytest.raises(TransferError) as info:
        await engine.run_job(job, Recorder())
    err = info.value
    assert err.code == "BG_E_VALIDATION_FAILED" and err.file_index == 1 and not err.transient
    assert job.files[0].completed and temp_bytes(job, 0) == b"good bytes"
    bad = job.files[1]
    assert not bad.completed and temp_bytes(job, 1) == b"", "the data was discarded"
    assert bad.bytes_transferred == 0 and bad.validator is None


async def test_an_unmounted_scheme_is_not_available(engine: TransferEngine, tmp_path: Path) -> None:
    job = make_job([("http://127.0.0.1:9/x", tmp_path / "x")])
    with pytest.raises(TransferError) as info:
        await engine.run_job(job, Recorder())
    assert info.value.code == "BG_E_PROTOCOL_NOT_AVAILABLE" and info.value.file_index == 0
    assert not list(tmp_path.iterdir()), "nothing was named or created"


async def test_the_network_token_is_raised_only_when_a_transport_acts(
    engine: TransferEngine, memory: MemoryTransport, tmp_path: Path
) -> None:
    """A NETWORK flag without a helper token: a transport that acts as nobody runs (as
    http did before the seam); asking the request for the token fails as REMOTE_FILE."""
    memory.files["n"] = b"n"
    job = make_job([("mem://n", tmp_path / "n")])
    job.helper_flags = TokenFlags.NETWORK
    await engine.run_job(job, Recorder())
    request, _ = memory.requests[0]
    with pytest.raises(TransferError) as info:
        request.network_token()
    assert info.value.code == "BG_E_TOKEN_REQUIRED"
    assert info.value.context is ErrorContext.REMOTE_FILE


async def test_transports_mounted_twice_are_closed_once(identity: IdentityIO) -> None:
    memory = MemoryTransport()
    eng = TransferEngine(identity, downloads={"mem": memory, "memory": memory})
    await eng.close()
    assert memory.closed == 1


@pytest.mark.parametrize("kind", [JobType.UPLOAD, JobType.UPLOAD_REPLY])
async def test_uploads_go_by_direction(
    engine: TransferEngine, tmp_path: Path, kind: JobType
) -> None:
    """An upload goes to the upload mounts: a scheme mounted only for downloads has none."""
    now = time.time()
    job = Job.new(me(), "up", now, Limits(), type=kind)
    job.add_files([JobFile("mem://up", str(tmp_path / "src"))], Limits(), now)
    rec = Recorder()
    with pytest.raises(TransferError) as info:
        await engine.run_job(job, rec)
    err = info.value
    assert err.code == "BG_E_PROTOCOL_NOT_AVAILABLE" and not err.transient
    assert "no upload transport for the 'mem' scheme" in err.message
    assert rec.events == []


# ---- what the sink and the engine no longer keep quiet --------------------------------------


class FailingFsync(IdentityIO):
    """Every fsync fails, after a moment (so one is in flight when the sink drains it)."""

    async def fsync(self, fd: int) -> None:
        await asyncio.sleep(0.05)
        raise FerryError("E_FAIL", "the disk is gone")


async def test_a_drained_fsync_failure_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    io = FailingFsync()
    reports: list[int] = []

    async def report(size: int) -> None:
        reports.append(size)

    async def nothing() -> None:
        return None

    fd = os.open(tmp_path / "t", os.O_WRONLY | os.O_CREAT, 0o600)
    sink = TempSink(
        io,
        fd,
        0,
        report=report,
        on_response=nothing,
        checkpoint_bytes=1,
        checkpoint_seconds=60.0,
        where="job J file 7 (t)",
    )
    try:
        sink.write(b"x" * 100)
        await sink.checkpoint()  # an fsync is now in flight
        with caplog.at_level(logging.WARNING, logger="ferry.transfer"):
            await sink.aclose()
    finally:
        await io.shutdown()
    assert reports == [], "bytes whose fsync failed are never reported"
    (record,) = [r for r in caplog.records if "checkpoint fsync" in r.getMessage()]
    assert "job J file 7 (t)" in record.getMessage() and "the disk is gone" in record.getMessage()


async def test_a_malformed_stored_temp_name_is_logged(
    engine: TransferEngine,
    memory: MemoryTransport,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    memory.files["m"] = b"m"
    job = make_job([("mem://m", tmp_path / "m")])
    job.files[0].temp_name = str(tmp_path / "not-a-temp-name")
    with caplog.at_level(logging.WARNING, logger="ferry.transfer"):
        await engine.run_job(job, Recorder())
    (record,) = [r for r in caplog.records if "stored temporary name" in r.getMessage()]
    message = record.getMessage()
    assert job.id in message and "file 0" in message and "not-a-temp-name" in message
    assert job.files[0].completed and temp_bytes(job) == b"m", "replaced, as before"
