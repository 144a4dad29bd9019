"""Housekeeping's pass over every job (SPEC §2.1) when it is long enough to give the event
loop back on the way (service/housekeeping.py, YIELD_EVERY): it still purges every final
job past its retention and cancels every inactive one, exactly once, on a real store; and
the table's bulk load puts queued jobs in the run queue as one by one did."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from ferry.model.job import Job, Limits
from ferry.model.token import Token
from ferry.model.types import JobState, Priority
from ferry.service import housekeeping
from ferry.service.events import EventBus
from ferry.service.housekeeping import Housekeeper
from ferry.service.runqueue import RunQueue
from ferry.service.table import JobTable
from ferry.store.sqlite import SqliteJobStore, SqliteStore

OWNER = Token(os.getuid(), os.getgid(), (), None, "owner", False)
NOW = 1_000_000.0


def _fill(db: Path, count: int) -> list[Job]:
    """``count`` jobs: every 7th cancelled long ago, every 11th (not final) idle long ago,
    every 13th queued; the rest suspended and fresh."""
    store = SqliteStore.open(db)
    assert store._conn is not None
    store._conn.execute("PRAGMA synchronous = OFF")  # a fixture: no fsync per job
    jobs = []
    try:
        for i in range(count):
            old = i % 7 == 0 or i % 11 == 0
            job = Job.new(OWNER, f"job-{i}", NOW - (10_000 if old else 1), Limits())
            if i % 7 == 0:
                job.state = JobState.CANCELLED
            elif i % 13 == 0:
                job.state = JobState.QUEUED
            store.insert_job(job)
            jobs.append(job)
    finally:
        store.close()
    return jobs


def test_a_long_pass_purges_and_cancels_each_job_once(tmp_path: Path) -> None:
    count = housekeeping.YIELD_EVERY * 2 + 500  # the pass yields twice on the way
    stored = _fill(tmp_path / "ferry.db", count)

    async def main() -> tuple[list[str], JobTable, RunQueue, int]:
        store = SqliteJobStore.open(tmp_path / "ferry.db")
        queue = RunQueue()
        table = JobTable(store, EventBus(), queue, clock=lambda: NOW)
        await table.load()
        cancelled: list[str] = []

        async def cancel(job: Job, unless_after: float) -> None:
            cancelled.append(job.id)

        keeper = Housekeeper(table, store, cancel, clock=lambda: NOW)

        async def meanwhile() -> None:
            # Runs while the pass lets others in: a final job the pass has not reached is
            # removed by someone else; the pass must not purge it a second time.
            await asyncio.sleep(0)
            gone = stored[(len(stored) - 1) - (len(stored) - 1) % 7]  # the last cancelled job
            assert gone.state is JobState.CANCELLED
            table.remove(table.get(gone.id) or gone)

        await asyncio.gather(keeper.sweep(retention=100, inactivity=100), meanwhile())
        left = table.job_count()
        await store.close()
        return cancelled, table, queue, left

    cancelled, table, queue, left = asyncio.run(main())
    final_old = [j for i, j in enumerate(stored) if i % 7 == 0]
    idle = [j for i, j in enumerate(stored) if i % 7 != 0 and i % 11 == 0]
    assert sorted(cancelled) == sorted(j.id for j in idle)
    assert left == count - len(final_old)
    assert all(table.get(j.id) is None for j in final_old)
    # The purge reached the store: a fresh load has none of the final jobs.
    db = SqliteStore.open(tmp_path / "ferry.db")
    try:
        ids = {j.id for j in db.load_all()}
    finally:
        db.close()
    gone = stored[(len(stored) - 1) - (len(stored) - 1) % 7]
    assert ids == {j.id for j in stored} - {j.id for j in final_old} | {gone.id}
    # The bulk load filed exactly the queued jobs in the run queue, in stored order.
    queued = [j.id for i, j in enumerate(stored) if i % 7 != 0 and i % 13 == 0]
    assert [j.id for j in queue.queued(Priority.NORMAL)] == queued
