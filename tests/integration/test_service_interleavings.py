"""The services when a store write really suspends its caller (SPEC §2.4, ARCHITECTURE
principle 6): a command that arrives while a job's start is being written, pre-emption and
kicks in that window, a retry's requeue in flight, and two commands racing on one job.

The real services are wired as ferryd wires them (daemon/main.py), over a real SqliteJobStore
in a temporary directory, downloading from a real HTTP server on loopback. The store is
wrapped in tests/helpers/paced_store.py, which holds chosen writes in flight while keeping
the store protocol's promises (ordered writes, taken at call time): the windows an
asynchronous store opens by timing are opened on purpose. Task names tell how many runs a job
has (the scheduler names each run's task ``job-<id>``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from harness.faultserver import FaultServer

from ferry.model.job import Job, Limits
from ferry.model.token import Token
from ferry.model.types import JobState
from ferry.security.identity import IdentityIO
from ferry.security.localfiles import LocalFiles
from ferry.service.events import Event, EventBus, Subscription
from ferry.service.manager import QueueManager
from ferry.service.outbox import Outbox
from ferry.service.reports import EngineReports
from ferry.service.runqueue import RunQueue
from ferry.service.scheduler import Scheduler
from ferry.service.table import JobTable
from ferry.store.sqlite import SqliteJobStore
from tests.helpers.jobs import temps
from tests.helpers.paced_store import PacedStore
from tests.integration.test_engine import make_engine

OWNER = Token(os.geteuid(), os.getegid(), tuple(os.getgroups()))
DEADLINE = 30.0
DATA_A = os.urandom(256 * 1024)
DATA_B = os.urandom(64 * 1024)


class Clock:
    """Wall-clock time that a test can move forward (retry times)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@dataclass
class Services:
    store: PacedStore
    bus: EventBus
    scheduler: Scheduler
    manager: QueueManager
    clock: Clock

    async def new_job(self, name: str, url: str, local: Path, priority: str = "normal") -> Job:
        job = await self.manager.create_job(OWNER, name)
        await self.manager.add_files(OWNER, job.id, [(url, str(local))])
        if priority != "normal":
            await self.manager.set_properties(OWNER, job.id, {"priority": priority})
        return job


@contextlib.asynccontextmanager
async def services(db: Path, max_background_jobs: int = 1) -> AsyncIterator[Services]:
    """The services of daemon/main.py's serve() that transfers involve, wired the same way."""
    clock = Clock()
    store = PacedStore(SqliteJobStore.open(db))
    identity = IdentityIO()
    engine = make_engine(identity, read_timeout=10.0)
    bus = EventBus()
    runqueue = RunQueue()
    table = JobTable(store, bus, runqueue, clock)
    await table.load()
    outbox = Outbox(store, table, clock)
    reports = EngineReports(table, store, outbox, clock)
    scheduler = Scheduler(runqueue, reports, engine, max_background_jobs, time_slice=0, clock=clock)
    manager = QueueManager(table, store, outbox, LocalFiles(identity), scheduler, Limits(), clock)
    running = asyncio.create_task(scheduler.run())
    try:
        yield Services(store, bus, scheduler, manager, clock)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await engine.close()
        await identity.shutdown()
        await store.close()


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as srv:
        yield srv


async def until(check: Callable[[], bool], what: str) -> None:
    async with asyncio.timeout(DEADLINE):
        while not check():
            await asyncio.sleep(0.01)
    assert check(), what


def runs(job: Job) -> int:
    """How many transfer tasks of ``job`` exist right now."""
    return sum(1 for t in asyncio.all_tasks() if t.get_name() == f"job-{job.id}" and not t.done())


async def settle(s: Services, job: Job, passes: int = 5) -> None:
    """Let the scheduler make several passes, checking each time that ``job`` has at most
    one run."""
    for _ in range(passes):
        s.scheduler.kick()
        await asyncio.sleep(0.02)
        assert runs(job) <= 1


async def drain(sub: Subscription) -> list[Event]:
    """The events delivered so far."""
    out = []
    while True:
        try:
            event = await sub.get(0)
        except TimeoutError:
            return out
        if event is None:
            return out
        out.append(event)


def holding(job: Job, state: JobState) -> Callable[[str, Job | None], bool]:
    return lambda method, j: j is not None and j.id == job.id and j.state is state


async def stored(db: Path, job: Job) -> Job:
    store = SqliteJobStore.open(db)
    try:
        return next(j for j in await store.load_all() if j.id == job.id)
    finally:
        await store.close()


async def test_a_suspend_while_the_start_is_written_has_the_last_word(
    tmp_path: Path, dest: Path, server: FaultServer
) -> None:
    db = tmp_path / "state" / "ferry.db"
    url = server.add("a", DATA_A)
    async with services(db) as s:
        job = await s.new_job("a", url, dest / "a")
        watch = s.bus.subscribe(job.id, None, all_events=True)
        s.store.hold = holding(job, JobState.CONNECTING)
        await s.manager.resume(OWNER, job.id)
        await asyncio.wait_for(s.store.holding.wait(), DEADLINE)
        assert job.state is JobState.CONNECTING and s.scheduler.running == {job.id}

        suspending = asyncio.create_task(s.manager.suspend(OWNER, job.id))
        await until(lambda: job.state is JobState.SUSPENDED, "suspend to change the job")
        # The run ended before suspend changed the job; suspend's write waits behind the
        # start's, and so does its answer.
        assert s.scheduler.running == set() and runs(job) == 0
        assert not suspending.done()
        s.store.release()
        assert await suspending is job
        assert job.state is JobState.SUSPENDED

        await settle(s, job)
        assert job.state is JobState.SUSPENDED and s.scheduler.running == set()
        # The start was written, then the suspension after it; only the latter announced.
        assert s.store.writes_of(job, "save_job_header") == ["QUEUED", "CONNECTING", "SUSPENDED"]
        assert [e.state for e in await drain(watch)] == ["QUEUED", "SUSPENDED"]
        assert server.requests_for("a") == [] and temps(dest) == []

        # Nothing is wedged: resumed, it transfers once.
        await s.manager.resume(OWNER, job.id)
        await until(lambda: job.state is JobState.TRANSFERRED, "the transfer")
        assert len(server.requests_for("a")) == 1
    assert (await stored(db, job)).state is JobState.TRANSFERRED


async def test_a_job_never_runs_twice(tmp_path: Path, dest: Path, server: FaultServer) -> None:
    """While A's start is being written: kicks, a priority change of A, and a higher-priority
    job that pre-empts A. A has one run at a time, keeps its slot until its run is over (B
    waits), and both transfer exactly once, never side by side."""
    db = tmp_path / "state" / "ferry.db"
    a_url = server.add("a", DATA_A, rate=2 << 20)
    b_url = server.add("b", DATA_B)
    async with services(db, max_background_jobs=1) as s:
        a = await s.new_job("a", a_url, dest / "a")
        b = await s.new_job("b", b_url, dest / "b", priority="high")
        s.store.hold = holding(a, JobState.CONNECTING)
        await s.manager.resume(OWNER, a.id)
        await asyncio.wait_for(s.store.holding.wait(), DEADLINE)
        await settle(s, a)
        # Commands change the job at once; their writes (and answers) wait behind the start.
        lowered = asyncio.create_task(s.manager.set_properties(OWNER, a.id, {"priority": "low"}))
        await settle(s, a)
        assert s.scheduler.running == {a.id} and a.priority.value == "low"

        resumed = asyncio.create_task(s.manager.resume(OWNER, b.id))  # pre-empts A
        await settle(s, a)
        await until(lambda: a.state is JobState.QUEUED, "A to be requeued")
        await settle(s, a)
        # A's run is stopping, but its requeue is not written yet: it keeps the one slot.
        assert s.scheduler.running == {a.id} and b.state is JobState.QUEUED and runs(b) == 0

        s.store.release()
        await lowered
        await resumed
        for _ in range(int(DEADLINE * 50)):
            assert runs(a) <= 1 and runs(b) <= 1 and runs(a) + runs(b) <= 1
            if a.state is JobState.TRANSFERRED and b.state is JobState.TRANSFERRED:
                break
            await asyncio.sleep(0.02)
        assert (a.state, b.state) == (JobState.TRANSFERRED, JobState.TRANSFERRED)
    # A's first run was stopped before the engine ran: one request each, one at a time.
    assert len(server.requests_for("a")) == 1 and len(server.requests_for("b")) == 1
    assert server.max_active == 1


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_retry_is_requeued_once(tmp_path: Path, dest: Path) -> None:
    db = tmp_path / "state" / "ferry.db"
    url = f"http://127.0.0.1:{closed_port()}/nothing-listens-here"
    async with services(db) as s:
        job = await s.new_job("retry", url, dest / "r")
        await s.manager.resume(OWNER, job.id)
        await until(lambda: job.state is JobState.TRANSIENT_ERROR, "the connection refused")
        assert job.retry_at is not None

        s.store.hold = holding(job, JobState.QUEUED)
        s.clock.offset += job.retry_at - s.clock() + 1  # its retry time has come
        s.scheduler.kick()
        await asyncio.wait_for(s.store.holding.wait(), DEADLINE)
        await settle(s, job, passes=10)
        # One requeue in flight, and the job does not start before it is written.
        assert s.store.writes_of(job, "save_job_header")[-2:] == ["TRANSIENT_ERROR", "QUEUED"]
        assert runs(job) == 0 and job.state is JobState.QUEUED

        s.store.release()
        await until(lambda: job.error_count == 2, "the second attempt to fail")
        headers = s.store.writes_of(job, "save_job_header")
        assert headers.count("QUEUED") == 2  # resume, and the one retry
        assert headers.count("CONNECTING") == 2


async def test_commands_that_stop_a_job_take_turns(
    tmp_path: Path, dest: Path, server: FaultServer
) -> None:
    """A cancel that arrives while a suspend is still recording its change waits for it:
    the temporary file stays until the suspension is written, then the cancel runs on the
    suspended job (stop-then-change commands hold the job's lock, service/table.py)."""
    db = tmp_path / "state" / "ferry.db"
    url = server.add("c", DATA_A, pause_after=64 * 1024)
    async with services(db) as s:
        job = await s.new_job("c", url, dest / "c")
        await s.manager.resume(OWNER, job.id)
        await until(lambda: server.paused("c") and bool(temps(dest)), "the transfer to pause")
        s.store.hold = holding(job, JobState.SUSPENDED)
        suspending = asyncio.create_task(s.manager.suspend(OWNER, job.id))
        await asyncio.wait_for(s.store.holding.wait(), DEADLINE)
        cancelling = asyncio.create_task(s.manager.cancel(OWNER, job.id))
        await asyncio.sleep(0.1)
        assert not suspending.done() and not cancelling.done()
        assert job.state is JobState.SUSPENDED and len(temps(dest)) == 1
        s.store.release()
        assert await suspending is job
        assert await cancelling == (job, "S_OK")
        assert job.state is JobState.CANCELLED
        headers = s.store.writes_of(job)
        assert headers[-2:] == ["SUSPENDED", "CANCELLED"]
        server.release("c")
    assert temps(dest) == [] and not (dest / "c").exists()
    assert (await stored(db, job)).state is JobState.CANCELLED
