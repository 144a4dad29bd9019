"""The transfer engine against real servers: TransferEngine.run_job with a fault-injecting
aiohttp server on loopback and real files, checking the bytes on disk, the BITS codes,
contexts and transient flags, resume with If-Range, and file:// copies."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from harness.faultserver import FaultServer, http_date

from ferry.model.job import Job, JobFile, Limits
from ferry.model.token import Token
from ferry.model.types import ErrorContext, JobState, TokenFlags
from ferry.security.identity import IdentityIO
from ferry.transfer.base import TransferError
from ferry.transfer.engine import TransferEngine
from ferry.transfer.http import HttpTransport
from ferry.transfer.local import LocalTransport

MiB = 1 << 20


class Recorder:
    """A stand-in for the queue manager: applies each report to the job as the manager
    would, and checks the engine's promise that reported bytes are really on disk."""

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    async def transferring(self, job: Job) -> None:
        self.events.append(("transferring",))
        job.transferring(time.time())

    async def file_started(self, job: Job, index: int) -> None:
        # The name is persisted before the file is created: a crash never leaves a file the
        # store does not know.
        temp = job.files[index].temp_name
        assert temp is not None and not os.path.lexists(temp)
        self.events.append(("started", index, temp))

    async def progress(self, job: Job, index: int, bytes_on_disk: int) -> None:
        temp = job.files[index].temp_name
        assert temp is not None
        assert os.stat(temp).st_size >= bytes_on_disk
        self.events.append(("progress", index, bytes_on_disk))
        job.record_progress(index, bytes_on_disk, time.time())

    async def file_completed(self, job: Job, index: int) -> None:
        self.events.append(("completed", index))
        job.file_completed(index, time.time())

    def progress_of(self, index: int) -> list[int]:
        return [int(e[2]) for e in self.events if e[0] == "progress" and e[1] == index]  # type: ignore[call-overload]

    def kinds(self) -> list[object]:
        return [e[0] for e in self.events]


def me() -> Token:
    return Token(uid=os.geteuid(), gid=os.getegid(), groups=tuple(os.getgroups()))


def make_job(pairs: list[tuple[str, Path]]) -> Job:
    now = time.time()
    job = Job.new(me(), "test", now, Limits())
    job.add_files([JobFile(remote, str(local)) for remote, local in pairs], Limits(), now)
    job.resume(now)
    job.start(now)
    return job


def data_of(size: int, seed: int = 1) -> bytes:
    block = bytes((i * seed + i // 251) % 256 for i in range(65536))
    return (block * (size // len(block) + 1))[:size]


def temp_bytes(job: Job, index: int = 0) -> bytes:
    temp = job.files[index].temp_name
    assert temp is not None
    return Path(temp).read_bytes()


def make_engine(
    identity: IdentityIO,
    *,
    ssl_context: ssl.SSLContext | None = None,
    read_timeout: float = 120.0,
    **settings: Any,
) -> TransferEngine:
    """An engine with the transports ferryd mounts (daemon/main.py), set up as a test needs."""
    http = HttpTransport(ssl_context=ssl_context, read_timeout=read_timeout)
    return TransferEngine(
        identity,
        downloads={"http": http, "https": http, "file": LocalTransport(identity)},
        **settings,
    )


@pytest.fixture
async def engine(identity: IdentityIO) -> AsyncIterator[TransferEngine]:
    eng = make_engine(identity, read_timeout=5.0, checkpoint_bytes=256 * 1024)
    yield eng
    await eng.close()


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    async with FaultServer() as srv:
        yield srv


async def fails(engine: TransferEngine, job: Job, rec: Recorder | None = None) -> TransferError:
    with pytest.raises(TransferError) as info:
        await engine.run_job(job, rec or Recorder())
    return info.value


# ---- plain downloads --------------------------------------------------------------------


async def test_download_writes_temp_file_only(
    engine: TransferEngine, server: FaultServer, tmp_path: Path
) -> None:
    data = data_of(3 * MiB + 17)
    url = server.add("a.bin", data)
    local = tmp_path / "a.bin"
    job = make_job([(url, local)])
    rec = Recorder()
    await engine.run_job(job, rec)

    jf = job.files[0]
    assert jf.completed and jf.bytes_transferred == len(data) == jf.bytes_total
    assert jf.validator == server.files["a.bin"].etag
    assert jf.final_url == url
    assert temp_bytes(job) == data
    assert not local.exists(), "the local name is written only by complete"
    temp = Path(jf.temp_name or "")
    assert temp.parent == tmp_path
    assert temp.name.startswith(".a.bin.") and temp.name.endswith(".ferry-part")
    assert temp.stat().st_mode & 0o777 == 0o600
    assert rec.kinds()[0] == "started" and rec.kinds()[-1] == "completed"
    assert "transferring" in rec.kinds()
    progress = rec.progress_of(0)
    assert progress == sorted(progress) and progress[-1] == len(data)
    assert len(progress) >= 2, "large files are checkpointed along the way"
    assert job.state is JobState.TRANSFERRED


async def test_files_in_order_and_completed_ones_skipped(
    engine: TransferEngine, server: FaultServer, tmp_path: Path
) -> None:
    urls = [server.add(f"f{i}", data_of(1000 + i, seed=i + 2)) for i in range(3)]
    job = make_job([(u, tmp_path / f"f{i}") for i, u in enumerate(urls)])
    job.files[0].completed = True  # done in an earlier run
    rec = Recorder()
    await engine.run_job(job, rec)
    assert [e[1] for e in rec.events if e[0] == "completed"] == [1, 2]
    assert job.files[0].temp_name is None
    for i in (1, 2):
        assert temp_bytes(job, i) == server.files[f"f{i}"].data
    assert rec.kinds().count("transferring") == 1
    assert not server.seen("/f/f0")


async def test_empty_file(engine: TransferEngine, server: FaultServer, tmp_path: Path) -> None:
    job = make_job([(server.add("empty", b""), tmp_path / "empty")])
    await engine.run_job(job, Recorder())
    assert job.files[0].completed and job.files[0].bytes_total == 0
    assert temp_bytes(job) == b""


# ---- HTTP errors --------------------------------------------------------------------------


async def test_404_is_fatal_remote_file(
    engine: TransferEngine, server: FaultServer, tmp_path: Path
) -> None:
    ok = server.add("ok", b"fine")
    job = make_job([(ok, tmp_path / "ok"), (server.url("/status/404"), tmp_path / "missing")])
    err = await fails(engine, job)
    assert err.code == "BG_E_HTTP_ERROR_404" and err.hresult == 0x80190194
    assert err.context is ErrorContext.REMOTE_FILE
    assert not err.transient
    assert err.file_index == 1
    assert job.files[0].completed and not job.files[1].completed


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
async def test_retryable_statuses_are_transient(
    engine: TransferEngine, server: FaultServer, tmp_path: Path, status: int
) -> None:
    job = make_job([(server.url(f"/status/{status}?retry_after=120"), tmp_path / "x")])
    err = await fails(engine, job)
    assert err.code == f"BG_E_HTTP_ERROR_{status}"
    assert err.context is ErrorContext.REMOTE_FILE
    assert err.transient
    assert err.retry_after == 120


async def test_retry_after_http_date(
    engine: TransferEngine, server: FaultServer, tmp_path: Path
) -> None:
    when = http_date(time.time() + 300)
    job = make_job([(server.url(f"/status/503?retry_after={when}"), tmp_path / "x")])
    err = await fails(engine, job)
    assert err.retry_after is not None and 200 < err.retry_after <= 301


@pytest.mark.parametrize("status", [400, 401, 403, 410])
async def test_other_4xx_are_fatal(
    engine: TransferEngine, server: FaultServer, tmp_path: Path, status: int
) -> None:
    job = make_job([(server.url(f"/status/{status}"), tmp_path / "x")])
    err = await fails(engine, job)
    assert err.code == f"BG_E_HTTP_ERROR_{status}" and not err.transient
    assert err.context is ErrorContext.REMOTE_FILE


async def test_missing_content_length_is_fatal(
    engine: TransferEngine, server: FaultServer, tmp_path: Path
) -> None:
    server.add("n", b"no length here")
    job = make_job([(server.url("/nolength/n"), tmp_path / "n")])
    err = await fails(engine, job)
    assert err.code == "BG_E_MISSING_FILE_SIZE" and not err.transient
    assert not job.files[0].completed


async def test_body_longer_than_announced_is_invalid(
    engine: TransferEngine, server: FaultServer, tmp_path: Path
) -> None:
    server.add("l", b"0123456789")
    job = make_job([(server.url("/longer/l?extra=32"), tmp_path / "l")])
    err = await fails(engine, job)
    assert err.code == "BG_E_INVALID_SERVER_RESPONSE" and not err.transient
    assert not job.files[0].completed


async def test_dropped_connection_is_transient_and_keeps_what_arrived(
    engine: TransferEngine, server: FaultServer, tmp_path: Path
) -> None:
    data = data_of(2 * MiB)
    server.add("d", data)
    job = make_job([(server.url("/drop/d?after=1000000"), tmp_path / "d")])
    rec = Recorder()
    err = await fails(engine, job, rec)
    assert err.code == "BG_E_CONNECTION_CLOSED" and err.transient
    assert err.context is ErrorContext.GENERAL_TRANSPORT
    jf = job.files[0]
    assert not jf.completed
    assert jf.bytes_transferred == 1_000_000, "what arrived is checkpointed for the retry"
    assert temp_bytes(job)[: jf.bytes_transferred] == data[:1_000_000]
    assert "completed" not in rec.kinds()


async def test_read_timeout_is_transient(
    identity: IdentityIO, server: FaultServer, tmp_path: Path
) -> None:
    server.add("s", data_of(100_000))
    eng = make_engine(identity, read_timeout=0.5)
    try:
        job = make_job([(server.url("/stall/s?after=5000"), tmp_path / "s")])
        err = await fails(eng, job)
    finally:
        await eng.close()
    assert err.code == "ERROR_WINHTTP_TIMEOUT" and err.transient
    assert job.files[0].bytes_transferred == 5000


async def test_connection_refused_is_transient(engine: TransferEngine, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    job = make_job([(f"http://127.0.0.1:{port}/x", tmp_path / "x")])
    err = await fails(engine, job)
    assert err.code == "ERROR_WINHTTP_CANNOT_CONNECT" and err.transient
    assert err.context is ErrorContext.GENERAL_TRANSPORT


async def test_unresolvable_host_is_transient(engine: TransferEngine, tmp_path: Path) -> None:
    job = make_job([("http://no-such-host.invalid/x", tmp_path / "x")])
    err = await fails(engine, job)
    assert err.code == "ERROR_WINHTTP_NAME_NOT_RESOLVED" and err.transient
    assert err.context is ErrorContext.GENERAL_TRANSPORT


# ---- redirects ----------------------------------------------------------------------------


async def test_redirect_chain_is_followed(
    engine: TransferEngine, server: FaultServer, tmp_path: Path
) -> None:
    server.add("r", b"redirected")
    job = make_job([(server.url("/redirect/10/r"), tmp_path / "r")])
    await engine.run_job(job, Recorder())
    assert temp_bytes(job) == b"redirected"
    assert job.files[0].final_url == server.url("/f/r")


async def test_more_than_ten_redirects_fail(
    engine: TransferEngine, server: FaultServer, tmp_path: Path
) -> None:
    server.add("r", b"redirected")
    job = make_job([(server.url("/redirect/11/r"), tmp_path / "r")])
    err = await fails(engine, job)
    assert err.code == "ERROR_WINHTTP_REDIRECT_FAILED" and not err.transient


async def test_redirect_loop_fails(
    engine: TransferEngine, server: FaultServer, tmp_path: Path
) -> None:
    job = make_job([(server.url("/loop"), tmp_path / "r")])
    err = await fails(engine, job)
    assert err.code == "ERROR_WINHTTP_REDIRECT_FAILED" and not err.transient
    assert len(server.seen("/loop")) == 11


# ---- resume -------------------------------------------------------------------------------


def plant_partial(job: Job, index: int, content: bytes, checkpoint: int, validator: str) -> Path:
    """A temporary file as an earlier run (or a crash) left it."""
    jf = job.files[index]
    temp = Path(jf.local_name).parent / f".{Path(jf.local_name).name}.feedface.ferry-part"
    temp.write_bytes(content)
    temp.chmod(0o600)
    jf.temp_name = str(temp)
    jf.bytes_transferred = checkpoint
    jf.validator = validator
    return temp


async def test_resume_sends_range_and_if_range(
    engine: TransferEngine, server: FaultServer, tmp_path: Path
) -> None:
    data = data_of(1_500_000)
    url = server.add("p", data)
    etag = server.files["p"].etag or ""
    job = make_job([(url, tmp_path / "p")])
    # 700 000 bytes on disk, of which 600 000 were checkpointed; the rest is trimmed.
    temp = plant_partial(job, 0, data[:600_000] + b"\xff" * 100_000, 600_000, etag)
    rec = Recorder()
    await engine.run_job(job, rec)
    req = server.seen("/f/p")[-1]
    assert req.headers["Range"] == "bytes=600000-"
    assert req.headers["If-Range"] == etag
    assert job.files[0].temp_name == str(temp), "the same temporary file is reused"
    assert temp.read_bytes() == data
    assert job.files[0].completed
    assert min(rec.progress_of(0)) >= 600_000


async def test_resume_after_a_drop(
    engine: TransferEngine, server: FaultServer, tmp_path: Path
) -> None:
    data = data_of(3 * MiB)
    server.add("d", data)
    job = make_job([(server.url("/drop/d?after=2000000"), tmp_path / "d")])
    await fails(engine, job)
    assert job.files[0].bytes_transferred == 2_000_000
    # The server is healthy again (same file, now at its plain route).
    job.files[0].remote_name = server.url("/f/d")
    await engine.run_job(job, Recorder())
    assert server.seen("/f/d")[-1].headers["Range"] == "bytes=2000000-"
    assert temp_bytes(job) == data


async def test_resume_with_last_modified(
    engine: TransferEngine, server: FaultServer, tmp_path: Path
) -> None:
    data = data_of(100_000)
    lm = http_date(time.time() - 3600)
    url = server.add("lm", data, send_etag=False, last_modified=lm)
    job = make_job([(url, tmp_path / "lm")])
    plant_partial(job, 0, data[:40_000], 40_000, lm)
    await engine.run_job(job, Recorder())
    assert server.seen("/f/lm")[-1].headers["If-Range"] == lm
    assert temp_bytes(job) == data
    assert job.files[0].validator == lm


async def test_200_instead_of_206_restarts_from_zero(
    engine: TransferEngine, server: FaultServer, tmp_path: Path
) -> None:
    data = data_of(500_000)
    url = server.add("nr", data, ranges=False)
    job = make_job([(url, tmp_path / "nr")])
    plant_partial(job, 0, data[:200_000], 200_000, server.files["nr"].etag or "")
    rec = Recorder()
    await engine.run_job(job, rec)
    assert temp_bytes(job) == data
    assert 0 in rec.progress_of(0), "the restart was recorded"
    assert job.files[0].completed


async def test_changed_remote_file_discards_partial_data(
    engine: TransferEngine, server: FaultServer, tmp_path: Path
) -> None:
    new = data_of(300_000, seed=7)
    url = server.add("c", new)
    job = make_job([(url, tmp_path / "c")])
    plant_partial(job, 0, data_of(100_000, seed=3), 100_000, '"old-version"')
    rec = Recorder()
    err = await fails(engine, job, rec)
    assert err.code == "BG_E_REMOTE_FILE_CHANGED" and not err.transient
    assert err.context is ErrorContext.REMOTE_FILE
    jf = job.files[0]
    assert jf.bytes_transferred == 0 and jf.validator is None
    assert temp_bytes(job) == b""
    # resume starts the file over.
    await engine.run_job(job, Recorder())
    assert temp_bytes(job) == new


async def test_partial_without_validator_starts_over(
    engine: TransferEngine, server: FaultServer, tmp_path: Path
) -> None:
    data = data_of(50_000)
    url = server.add("nv", data)
    job = make_job([(url, tmp_path / "nv")])
    plant_partial(job, 0, b"junk" * 100, 400, "")
    job.files[0].validator = None
    await engine.run_job(job, Recorder())
    assert "Range" not in server.seen("/f/nv")[-1].headers
    assert temp_bytes(job) == data


async def test_fully_downloaded_but_not_completed(
    engine: TransferEngine, server: FaultServer, tmp_path: Path
) -> None:
    """A crash between the last checkpoint and file_completed: the 416 to the resume
    request proves nothing is missing."""
    data = data_of(10_000)
    url = server.add("full", data)
    job = make_job([(url, tmp_path / "full")])
    plant_partial(job, 0, data, len(data), server.files["full"].etag or "")
    job.files[0].bytes_total = len(data)
    await engine.run_job(job, Recorder())
    assert job.files[0].completed
    assert temp_bytes(job) == data


async def test_vanished_temp_file_starts_over(
    engine: TransferEngine, server: FaultServer, tmp_path: Path
) -> None:
    data = data_of(20_000)
    url = server.add("v", data)
    job = make_job([(url, tmp_path / "v")])
    temp = plant_partial(job, 0, data[:5000], 5000, server.files["v"].etag or "")
    temp.unlink()
    rec = Recorder()
    await engine.run_job(job, rec)
    assert job.files[0].temp_name == str(temp), "the persisted name is created again"
    assert ("started", 0, str(temp)) in rec.events, "and persisted again before that"
    assert temp_bytes(job) == data
    assert rec.progress_of(0)[0] == 0


async def test_cancel_closes_descriptors_and_keeps_temp(
    engine: TransferEngine, server: FaultServer, tmp_path: Path
) -> None:
    data = data_of(1 * MiB)
    server.add("k", data)
    job = make_job([(server.url("/stall/k?after=300000"), tmp_path / "k")])
    rec = Recorder()
    before = len(os.listdir("/proc/self/fd"))
    task = asyncio.create_task(engine.run_job(job, rec))
    for _ in range(500):
        await asyncio.sleep(0.01)
        temp = job.files[0].temp_name
        if temp and os.path.exists(temp) and os.stat(temp).st_size >= 300_000:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    temp = job.files[0].temp_name
    assert temp is not None and os.path.exists(temp)
    assert "completed" not in rec.kinds()
    # Only the connection to the server may remain (kept alive or being closed).
    assert len(os.listdir("/proc/self/fd")) <= before + 1
    # The next run picks up from the last checkpoint and finishes.
    job.files[0].remote_name = server.url("/f/k")
    await engine.run_job(job, Recorder())
    assert temp_bytes(job) == data


# ---- local side ---------------------------------------------------------------------------


async def test_missing_directory(
    engine: TransferEngine, server: FaultServer, tmp_path: Path
) -> None:
    job = make_job([(server.add("x", b"x"), tmp_path / "nope" / "x")])
    err = await fails(engine, job)
    assert err.code == "ERROR_PATH_NOT_FOUND" and not err.transient
    assert err.context is ErrorContext.LOCAL_FILE
    assert str(tmp_path / "nope") in err.message


async def test_helper_flag_without_helper_token(
    engine: TransferEngine, server: FaultServer, tmp_path: Path
) -> None:
    job = make_job([(server.add("x", b"x"), tmp_path / "x")])
    job.helper_flags = TokenFlags.LOCAL_FILE
    err = await fails(engine, job)
    assert err.code == "BG_E_TOKEN_REQUIRED" and err.hresult == 0x80200056
    assert err.context is ErrorContext.LOCAL_FILE and not err.transient
    assert err.file_index == 0
    assert not server.requests


# ---- TLS ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    return ctx


def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


async def test_https_download(identity: IdentityIO, ca: trustme.CA, tmp_path: Path) -> None:
    eng = make_engine(identity, ssl_context=client_tls(ca))
    try:
        async with FaultServer(ssl=server_tls(ca)) as srv:
            job = make_job([(srv.add("s", b"secret"), tmp_path / "s")])
            await eng.run_job(job, Recorder())
    finally:
        await eng.close()
    assert temp_bytes(job) == b"secret"


async def test_untrusted_certificate_is_fatal(
    engine: TransferEngine, ca: trustme.CA, tmp_path: Path
) -> None:
    async with FaultServer(ssl=server_tls(ca)) as srv:
        job = make_job([(srv.add("s", b"secret"), tmp_path / "s")])
        err = await fails(engine, job)
    assert err.code == "ERROR_WINHTTP_SECURE_FAILURE" and not err.transient


async def test_https_to_http_redirect_is_refused(
    identity: IdentityIO, server: FaultServer, ca: trustme.CA, tmp_path: Path
) -> None:
    plain = server.add("p", b"plain")
    eng = make_engine(identity, ssl_context=client_tls(ca))
    try:
        async with FaultServer(ssl=server_tls(ca)) as srv:
            job = make_job([(srv.url(f"/to?url={plain}"), tmp_path / "p")])
            err = await fails(eng, job)
    finally:
        await eng.close()
    assert err.code == "ERROR_WINHTTP_REDIRECT_FAILED" and not err.transient
    assert not server.seen("/f/p")


# ---- file:// ------------------------------------------------------------------------------


async def test_file_copy(engine: TransferEngine, tmp_path: Path) -> None:
    src = tmp_path / "src dir" / "big file.bin"
    src.parent.mkdir()
    data = data_of(5 * MiB + 3)
    src.write_bytes(data)
    url = "file://" + str(src).replace(" ", "%20")
    job = make_job([(url, tmp_path / "copy.bin")])
    rec = Recorder()
    await engine.run_job(job, rec)
    jf = job.files[0]
    assert jf.completed and jf.bytes_total == len(data)
    assert temp_bytes(job) == data
    assert rec.progress_of(0)[-1] == len(data)
    assert "transferring" in rec.kinds()


async def test_file_resume_and_change(engine: TransferEngine, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    data = data_of(2 * MiB)
    src.write_bytes(data)
    local = tmp_path / "dst.bin"
    job = make_job([(f"file://{src}", local)])
    await engine.run_job(job, Recorder())
    validator = job.files[0].validator
    assert validator

    # A partial copy of the same version resumes from its checkpoint.
    job2 = make_job([(f"file://{src}", tmp_path / "dst2.bin")])
    plant_partial(job2, 0, data[:MiB], MiB, validator)
    await engine.run_job(job2, Recorder())
    assert temp_bytes(job2) == data

    # A changed source loses the partial data.
    job3 = make_job([(f"file://{src}", tmp_path / "dst3.bin")])
    plant_partial(job3, 0, data[:MiB], MiB, "size=1;mtime_ns=1")
    err = await fails(engine, job3)
    assert err.code == "BG_E_REMOTE_FILE_CHANGED" and not err.transient
    assert temp_bytes(job3) == b""


async def test_file_source_errors(engine: TransferEngine, tmp_path: Path) -> None:
    job = make_job([(f"file://{tmp_path}/missing", tmp_path / "a")])
    err = await fails(engine, job)
    assert err.code == "ERROR_FILE_NOT_FOUND" and err.context is ErrorContext.REMOTE_FILE
    assert not err.transient

    job = make_job([(f"file://{tmp_path}", tmp_path / "b")])
    err = await fails(engine, job)
    assert err.code == "E_INVALIDARG" and err.context is ErrorContext.REMOTE_FILE

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    job = make_job([(f"file://{fifo}", tmp_path / "c")])
    err = await fails(engine, job)
    assert err.code == "E_INVALIDARG", "a FIFO must not block a worker"


# ---- identities (root) --------------------------------------------------------------------

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="acting as other uids needs root (CI runs as root)"
)


@pytest.fixture
def shared_base(short_tmp: Path) -> Path:
    """A directory other uids can traverse (pytest's tmp_path is root-only)."""
    return short_tmp


def job_of(owner: Token, remote: str, local: Path) -> Job:
    job = make_job([(remote, local)])
    job.owner = owner
    return job


@needs_root
async def test_temp_file_belongs_to_the_owner(
    engine: TransferEngine, server: FaultServer, shared_base: Path
) -> None:
    alice = Token(uid=40001, gid=40001)
    home = shared_base / "alice"
    home.mkdir(mode=0o700)
    os.chown(home, 40001, 40001)
    url = server.add("a", data_of(600_000))
    job = job_of(alice, url, home / "a")
    await engine.run_job(job, Recorder())
    st = os.stat(job.files[0].temp_name or "")
    assert (st.st_uid, st.st_gid) == (40001, 40001)
    assert temp_bytes(job) == server.files["a"].data

    # Another user cannot make ferryd write into alice's directory.
    job = job_of(Token(uid=40002, gid=40002), url, home / "b")
    err = await fails(engine, job)
    assert err.code == "E_ACCESSDENIED" and err.context is ErrorContext.LOCAL_FILE
    assert not err.transient
    assert not list(home.glob(".b.*"))


@needs_root
async def test_helper_token_writes_for_the_owner(
    engine: TransferEngine, server: FaultServer, shared_base: Path
) -> None:
    """LOCAL_FILE helper: the helper's identity creates the file the owner could not."""
    drop = shared_base / "drop"
    drop.mkdir(mode=0o700)
    os.chown(drop, 40003, 40003)
    job = job_of(Token(uid=40001, gid=40001), server.add("h", b"helped"), drop / "h")
    job.helper_token = Token(uid=40003, gid=40003)
    job.helper_flags = TokenFlags.LOCAL_FILE
    await engine.run_job(job, Recorder())
    assert os.stat(job.files[0].temp_name or "").st_uid == 40003
    assert temp_bytes(job) == b"helped"


@needs_root
async def test_file_source_is_read_as_the_network_token(
    engine: TransferEngine, shared_base: Path
) -> None:
    secret = shared_base / "secret"
    secret.write_bytes(b"root only")
    secret.chmod(0o600)
    out = shared_base / "out"
    out.mkdir()
    out.chmod(0o777)
    job = job_of(Token(uid=40001, gid=40001), f"file://{secret}", out / "copy")
    err = await fails(engine, job)
    assert err.code == "E_ACCESSDENIED" and err.context is ErrorContext.REMOTE_FILE

    # With a NETWORK helper that may read it, the copy works; the temp file stays the owner's.
    secret.chmod(0o640)
    os.chown(secret, 0, 40020)
    job.helper_token = Token(uid=40002, gid=40002, groups=(40020,))
    job.helper_flags = TokenFlags.NETWORK
    await engine.run_job(job, Recorder())
    assert temp_bytes(job) == b"root only"
    assert os.stat(job.files[0].temp_name or "").st_uid == 40001


async def test_a_stopped_single_file_reports_the_bytes_it_has(
    engine: TransferEngine, server: FaultServer, tmp_path: Path
) -> None:
    """A job of one file whose response has paused is stopped (suspend, pre-emption): what
    reached its temporary file is fsynced and reported before the run ends, so the next run
    resumes there instead of fetching it again."""
    data = data_of(1 * MiB)
    url = server.add("p", data, pause_after=300_000)
    job = make_job([(url, tmp_path / "p")])
    rec = Recorder()
    task = asyncio.create_task(engine.run_job(job, rec))
    deadline = time.monotonic() + 30
    while not server.paused("p"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    temp = job.files[0].temp_name
    while not (temp and os.path.exists(temp) and os.stat(temp).st_size >= 300_000):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert job.files[0].bytes_transferred == 300_000
    assert rec.progress_of(0)[-1] == 300_000
    server.release("p")
    await engine.run_job(job, Recorder())
    assert temp_bytes(job) == data
    assert [r.range for r in server.requests_for("p")] == [None, "bytes=300000-"]
