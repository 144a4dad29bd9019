"""The engine names a new temporary file, has the name persisted (``file_started``, or a
batched ``report_files``), and only then creates it with O_EXCL. A name that turns out to be
taken by a file that is not ours gives way to a fresh name, persisted in turn; a persisted
name whose file does not exist is simply created."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from harness.faultserver import FaultServer

from ferry.model.job import Job
from ferry.security.identity import IdentityIO
from ferry.transfer import window
from ferry.transfer.engine import TransferEngine
from tests.integration.test_engine import (
    Recorder,
    data_of,
    fails,
    make_engine,
    make_job,
    temp_bytes,
)
from tests.integration.test_engine_overlap import BatchRecorder


@pytest.fixture
async def engine() -> AsyncIterator[TransferEngine]:
    io = IdentityIO()
    eng = make_engine(io, read_timeout=5.0)
    yield eng
    await eng.close()
    await io.shutdown()


@pytest.fixture
async def server() -> AsyncIterator[FaultServer]:
    async with FaultServer() as srv:
        yield srv


class SquatRecorder(Recorder):
    """Right after a new name is persisted, puts a file of someone else's there (the first
    ``times`` names): the create that follows finds the name taken."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.times = times
        self.planted: list[str] = []

    async def file_started(self, job: Job, index: int) -> None:
        await super().file_started(job, index)
        temp = job.files[index].temp_name
        assert temp is not None
        if len(self.planted) < self.times:
            Path(temp).write_bytes(b"not ferry's")
            self.planted.append(temp)


class SquatBatchRecorder(SquatRecorder, BatchRecorder):
    """The same, with the queue manager's batched reports."""


def started_names(rec: Recorder) -> list[str]:
    return [str(e[2]) for e in rec.events if e[0] == "started"]


@pytest.mark.parametrize("kind", [SquatRecorder, SquatBatchRecorder], ids=["per-file", "batched"])
async def test_a_taken_name_gives_way_to_a_new_persisted_one(
    engine: TransferEngine, server: FaultServer, tmp_path: Path, kind: type[SquatRecorder]
) -> None:
    data = data_of(100_000)
    job = make_job([(server.add("t", data), tmp_path / "t")])
    rec = kind(1)
    await engine.run_job(job, rec)
    first, second = started_names(rec)
    assert first != second, "a fresh name, persisted before it was created"
    assert job.files[0].temp_name == second and temp_bytes(job) == data
    assert Path(first).read_bytes() == b"not ferry's", "what was there is left alone"
    assert job.files[0].completed


async def test_a_name_taken_every_time_fails_the_file(
    engine: TransferEngine, server: FaultServer, tmp_path: Path
) -> None:
    job = make_job([(server.add("t", data_of(1000)), tmp_path / "t")])
    rec = SquatRecorder(window.TEMP_NAME_ATTEMPTS)
    err = await fails(engine, job, rec)
    assert err.code == "ERROR_FILE_EXISTS" and not err.transient and err.file_index == 0
    names = started_names(rec)
    assert len(set(names)) == window.TEMP_NAME_ATTEMPTS
    for name in names:
        assert Path(name).read_bytes() == b"not ferry's"
    assert not server.seen("/f/t"), "nothing was fetched"


async def test_a_persisted_name_that_is_not_a_temporary_name_is_replaced(
    engine: TransferEngine, server: FaultServer, tmp_path: Path
) -> None:
    """A stored name that is not one the engine makes (and has no file) is never created:
    the file gets a fresh name in its own directory."""
    data = data_of(5000)
    job = make_job([(server.add("w", data), tmp_path / "w")])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    job.files[0].temp_name = str(elsewhere / ".w.abc.ferry-part")
    rec = Recorder()
    await engine.run_job(job, rec)
    (name,) = started_names(rec)
    assert Path(name).parent == tmp_path and Path(name).name.startswith(".w.")
    assert list(elsewhere.iterdir()) == []
    assert temp_bytes(job) == data


async def test_a_persisted_name_that_is_not_a_temporary_name_is_never_opened(
    engine: TransferEngine, server: FaultServer, tmp_path: Path
) -> None:
    """A damaged store pointing a file's temporary name at an existing file of the same
    owner (here the local name's neighbour) must not make the engine reopen, trim or write
    it: the name is not one ferry makes, so the file starts over under a fresh name."""
    data = data_of(5000)
    job = make_job([(server.add("w", data), tmp_path / "w")])
    precious = tmp_path / "precious.db"
    precious.write_bytes(b"x" * 10_000)
    job.files[0].temp_name = str(precious)
    job.files[0].bytes_transferred = 100
    rec = Recorder()
    await engine.run_job(job, rec)
    assert precious.read_bytes() == b"x" * 10_000
    (name,) = started_names(rec)
    assert name != str(precious) and Path(name).name.startswith(".w.")
    assert temp_bytes(job) == data


async def test_each_new_name_is_persisted_before_its_file_exists(
    engine: TransferEngine, server: FaultServer, tmp_path: Path
) -> None:
    """Many small files, batched: every name reaches ``report_files`` while no file of that
    name exists yet (the Recorder checks), and every file created has been reported."""
    urls = [server.add(f"s{i}", data_of(2000 + i, seed=i + 1)) for i in range(20)]
    job = make_job([(u, tmp_path / f"s{i}") for i, u in enumerate(urls)])
    rec = BatchRecorder()
    await engine.run_job(job, rec)
    names = started_names(rec)
    assert len(names) == 20
    assert sorted(names) == sorted(str(p) for p in tmp_path.iterdir() if p.name.startswith("."))
    for i in range(20):
        assert temp_bytes(job, i) == server.files[f"s{i}"].data
    assert all(os.path.exists(n) for n in names)
