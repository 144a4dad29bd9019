"""The engine's overlap of small files (SPEC §2.4): several files of a job in flight at once,
while what is observable stays sequential — completions in file order, progress only for
fsynced bytes, the first failing file's error after the files before it, a large file
never beside the files after it, and a stopped run reporting what it has."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest
from harness.faultserver import FaultServer

from ferry.model.job import Job
from ferry.security.identity import IdentityIO
from ferry.transfer.base import BatchCallbacks, TransferError
from ferry.transfer.engine import TransferEngine
from tests.integration.test_engine import Recorder, make_engine, make_job, temp_bytes


class BatchRecorder(Recorder):
    """The Recorder with the queue manager's batched report."""

    async def report_files(
        self, job: Job, started: Sequence[int], completed: Sequence[tuple[int, int]]
    ) -> None:
        self.events.append(("batch", len(started), len(completed)))
        for index in started:
            await self.file_started(job, index)
        for index, size in completed:
            await self.progress(job, index, size)
            await self.file_completed(job, index)


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as srv:
        yield srv


@pytest.fixture
async def engine() -> AsyncIterator[TransferEngine]:
    io = IdentityIO()
    eng = make_engine(io, read_timeout=10.0, overlap_max_bytes=256 * 1024)
    yield eng
    await eng.close()
    await io.shutdown()


@pytest.fixture(params=[Recorder, BatchRecorder], ids=["per-file", "batched"])
def recorder(request: pytest.FixtureRequest) -> Recorder:
    rec: Recorder = request.param()
    return rec


def completed(rec: Recorder) -> list[int]:
    return [int(e[1]) for e in rec.events if e[0] == "completed"]  # type: ignore[call-overload]


def check_reports(rec: Recorder, job: Job) -> None:
    """Each completion comes right after its file's final progress, and every file was
    announced before any byte of it was reported."""
    announced: set[int] = set()
    for n, e in enumerate(rec.events):
        if e[0] == "started":
            announced.add(int(e[1]))  # type: ignore[call-overload]
        elif e[0] == "progress" and int(e[2]) > 0:  # type: ignore[call-overload]
            assert int(e[1]) in announced, e  # type: ignore[call-overload]
        elif e[0] == "completed":
            index = int(e[1])  # type: ignore[call-overload]
            prev = rec.events[n - 1]
            assert prev[:2] == ("progress", index), (prev, e)
            assert prev[2] == job.files[index].bytes_total


async def test_small_files_overlap_and_complete_in_order(
    engine: TransferEngine, server: FaultServer, recorder: Recorder, tmp_path: Path
) -> None:
    data = [os.urandom(5000 + 311 * i) for i in range(40)]
    # File 3 answers late: the files after it finish first and must wait.
    urls = [server.add(f"f{i}", b, delay=0.3 if i == 3 else 0.01) for i, b in enumerate(data)]
    job = make_job([(u, tmp_path / f"f{i}") for i, u in enumerate(urls)])
    await engine.run_job(job, recorder)
    assert completed(recorder) == list(range(40))
    check_reports(recorder, job)
    for i, b in enumerate(data):
        assert temp_bytes(job, i) == b
    assert 1 < server.max_active <= engine.parallel_files
    if isinstance(recorder, BatchCallbacks):
        batches = [e for e in recorder.events if e[0] == "batch"]
        assert len(batches) < 40, "reports share commits"


async def test_no_file_starts_beside_a_large_one(
    engine: TransferEngine, server: FaultServer, recorder: Recorder, tmp_path: Path
) -> None:
    small = [os.urandom(3000) for _ in range(12)]
    big = [os.urandom(1 << 20) for _ in range(2)]  # above overlap_max_bytes
    urls = [server.add(f"s{i}", b, delay=0.02) for i, b in enumerate(small)]
    # A large file whose size is known from an earlier run, and one found out on the way.
    urls.insert(3, server.add("known", big[0], rate=8 << 20))
    urls.insert(9, server.add("found", big[1], rate=8 << 20))
    job = make_job([(u, tmp_path / f"f{i}") for i, u in enumerate(urls)])
    job.files[3].bytes_total = len(big[0])
    await engine.run_job(job, recorder)
    assert completed(recorder) == list(range(14))
    check_reports(recorder, job)
    assert temp_bytes(job, 3) == big[0] and temp_bytes(job, 9) == big[1]
    # Every file was fetched once: a started response is never given up.
    assert sorted(r.name for r in server.requests) == sorted(server.files)
    assert all(r.range is None for r in server.requests)
    (known,) = [r for r in server.responses if r.name == "known"]
    (found,) = [r for r in server.responses if r.name == "found"]
    # The known large file started once the files before it were done, and nothing after
    # it ran beside it. Of the files after the other one, only those started before its
    # size was known ran beside it: at most the window then.
    assert not known.overlapped, known
    later = {f"s{i}" for i in range(8, 12)}
    assert len(found.overlapped & later) < engine.parallel_files


async def test_a_failure_is_reported_after_the_files_before_it(
    engine: TransferEngine, server: FaultServer, recorder: Recorder, tmp_path: Path
) -> None:
    first = os.urandom(4000)
    urls = [
        server.add("slow", first, delay=0.3),
        server.add("ok", os.urandom(4000)),
        f"http://127.0.0.1:{server.port}/f/missing",  # 404
        server.add("after", os.urandom(4000)),
    ]
    job = make_job([(u, tmp_path / f"f{i}") for i, u in enumerate(urls)])
    with pytest.raises(TransferError) as info:
        await engine.run_job(job, recorder)
    assert info.value.code == "BG_E_HTTP_ERROR_404" and info.value.file_index == 2
    assert completed(recorder) == [0, 1]
    assert temp_bytes(job, 0) == first
    assert not job.files[3].completed


async def test_a_stopped_run_reports_what_it_has_and_resumes(
    engine: TransferEngine, server: FaultServer, recorder: Recorder, tmp_path: Path
) -> None:
    data = [os.urandom(200_000) for _ in range(4)]
    urls = [
        server.add("a", data[0]),
        server.add("b", data[1]),
        server.add("held", data[2], pause_after=150_000),
        server.add("d", data[3]),
    ]
    job = make_job([(u, tmp_path / f"f{i}") for i, u in enumerate(urls)])
    task = asyncio.create_task(engine.run_job(job, recorder))
    deadline = time.monotonic() + 30

    def held_on_disk() -> int:
        temp = job.files[2].temp_name
        return os.path.getsize(temp) if temp and os.path.exists(temp) else 0

    # The held file's first 150,000 bytes are written (not yet checkpointed).
    while not (held_on_disk() >= 150_000 and completed(recorder) == [0, 1]):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The files before the held one are complete; the held one's bytes are saved.
    assert completed(recorder) == [0, 1]
    assert job.files[2].bytes_transferred == 150_000
    assert os.path.getsize(job.files[2].temp_name or "") >= 150_000
    assert not job.files[3].completed
    check_reports(recorder, job)
    # The next run goes on from there with ranges.
    server.release("held")
    rerun = type(recorder)()
    await engine.run_job(job, rerun)
    assert completed(rerun) == [2, 3]
    for i, b in enumerate(data):
        assert temp_bytes(job, i) == b
    assert [r.range for r in server.requests_for("held")] == [None, "bytes=150000-"]
