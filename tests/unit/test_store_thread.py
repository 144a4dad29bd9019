"""SqliteJobStore's own thread and its group commit, seen from SQLite's side.

The behaviour every store shares is in tests/store/; here: where the statements run, how
writes are grouped into transactions, and what a failure inside a group does. Groups are
made deterministic with a gate: a read that blocks the store's thread while writes queue up
behind it, so they form exactly one group when the gate opens.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import pytest

from ferry.errors import FerryError
from ferry.model import notification as notif
from ferry.model.types import JobState, NotifyFlags
from ferry.store.sqlite import SqliteJobStore
from tests.store.jobs import NOW, make_job


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteJobStore]:
    s = SqliteJobStore.open(tmp_path / "state" / "ferry.db")
    try:
        yield s
    finally:
        await s.close()


class Trace:
    """Every statement the store's connection runs, with the thread that ran it."""

    def __init__(self, store: SqliteJobStore) -> None:
        self.statements: list[tuple[int, str]] = []
        conn = store.db._conn
        assert conn is not None
        conn.set_trace_callback(lambda sql: self.statements.append((threading.get_ident(), sql)))

    def count(self, sql: str) -> int:
        return sum(1 for _, s in self.statements if s == sql)


def gate(store: SqliteJobStore) -> tuple[threading.Event, Coroutine[Any, Any, Any]]:
    """Occupy the store's thread until the event is set; await the coroutine afterwards."""
    event = threading.Event()
    return event, store._thread.read(lambda: event.wait(30))


async def test_sqlite_work_runs_on_the_store_thread(store: SqliteJobStore) -> None:
    trace = Trace(store)
    job = make_job(2)
    await store.insert_job(job)
    await store.save_progress(job, 1)
    assert await store.load_all() == [job]
    assert await store.pending_notifications() == []
    threads = {ident for ident, _ in trace.statements}
    assert len(trace.statements) >= 8
    assert threading.get_ident() not in threads and len(threads) == 1


async def test_writes_queued_meanwhile_share_one_transaction(store: SqliteJobStore) -> None:
    trace = Trace(store)
    jobs = [make_job(1, name=f"g{i}") for i in range(20)]
    opened, blocked = gate(store)
    calls = [store.insert_job(job) for job in jobs]
    opened.set()
    await blocked
    await asyncio.gather(*calls)
    assert trace.count("BEGIN IMMEDIATE") == 1 and trace.count("COMMIT") == 1
    assert trace.count("SAVEPOINT w") == 20
    assert await store.load_all() == jobs


async def test_a_lone_write_needs_no_savepoint(store: SqliteJobStore) -> None:
    trace = Trace(store)
    await store.insert_job(make_job(1))
    assert trace.count("COMMIT") == 1 and trace.count("SAVEPOINT w") == 0


async def test_groups_are_bounded(tmp_path: Path) -> None:
    from ferry.store.sqlite import SqliteStore

    store = SqliteJobStore(SqliteStore.open(tmp_path / "ferry.db"), max_group=4)
    try:
        trace = Trace(store)
        opened, blocked = gate(store)
        calls = [store.insert_job(make_job(1, name=f"b{i}")) for i in range(10)]
        opened.set()
        await blocked
        await asyncio.gather(*calls)
        assert trace.count("COMMIT") == 3  # 4 + 4 + 2
    finally:
        await store.close()


async def test_a_failing_write_rolls_back_to_its_savepoint(store: SqliteJobStore) -> None:
    a, b = make_job(1, name="a"), make_job(1, name="b")
    await store.insert_job(a)
    trace = Trace(store)
    opened, blocked = gate(store)
    calls = [store.insert_job(b), store.insert_job(a), store.save_progress(a, 0)]
    opened.set()
    await blocked
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], FerryError) and results[1].code == "E_FAIL"
    assert "UNIQUE" in results[1].message
    assert trace.count("ROLLBACK TO w") == 1 and trace.count("COMMIT") == 1
    assert await store.load_all() == [a, b]


async def test_a_write_that_loses_the_transaction_fails_alone(store: SqliteJobStore) -> None:
    """SQLite rolls back the whole transaction on SQLITE_FULL: the culprit gets
    ERROR_DISK_FULL and the rest of its group is applied again without it."""
    for i in range(5):
        await store.insert_job(make_job(1, name=f"pad{i}"))
    conn = store.db._conn
    assert conn is not None
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count = {pages + 10}")
    small, big, other = make_job(1, name="small"), make_job(1, name="big"), make_job(1, name="o")
    big.description = "x" * 200_000
    opened, blocked = gate(store)
    calls = [store.insert_job(small), store.insert_job(big), store.insert_job(other)]
    opened.set()
    await blocked
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[0] is None and results[2] is None, results
    assert isinstance(results[1], FerryError) and results[1].code == "ERROR_DISK_FULL"
    names = [j.display_name for j in await store.load_all()]
    assert names[-2:] == ["small", "o"] and "big" not in names


async def test_a_failed_commit_fails_every_write_of_its_group(store: SqliteJobStore) -> None:
    # A deferred foreign key is checked at COMMIT: a write that breaks it makes COMMIT fail.
    with sqlite3.connect(store.path, isolation_level=None) as c:
        c.execute(
            "CREATE TABLE probe (job_id TEXT REFERENCES jobs(id) DEFERRABLE INITIALLY DEFERRED)"
        )
    a, b = make_job(1, name="a"), make_job(1, name="b")
    job = make_job(1, name="n")
    await store.insert_job(job)
    job.state = JobState.TRANSFERRED
    n = notif.due(job.id, job.state, NotifyFlags.JOB_TRANSFERRED, ["/bin/true"], job.owner, 1, NOW)
    assert n is not None
    opened, blocked = gate(store)
    calls = [
        store.insert_job(a),
        store._thread.write(lambda conn: conn.execute("INSERT INTO probe VALUES ('nope')")),
        store.save_job_header(job, n),
        store.insert_job(b),
    ]
    opened.set()
    await blocked
    results = await asyncio.gather(*calls, return_exceptions=True)
    for r in results:
        assert isinstance(r, FerryError) and r.code == "E_FAIL", r
        assert "FOREIGN KEY" in r.message
    assert len({id(r) for r in results}) == 4, "one error object per caller"
    assert n.id is None
    assert [j.display_name for j in await store.load_all()] == ["n"]
    assert await store.pending_notifications() == []
    await store.insert_job(b)  # and the store goes on
    assert len(await store.load_all()) == 2


async def test_a_cancelled_caller_does_not_withdraw_its_write(store: SqliteJobStore) -> None:
    job = make_job(1)
    await store.insert_job(job)
    job.state = JobState.TRANSFERRED
    n = notif.due(job.id, job.state, NotifyFlags.JOB_TRANSFERRED, ["/bin/true"], job.owner, 1, NOW)
    assert n is not None
    late = make_job(1, name="late")
    opened, blocked = gate(store)
    tasks = [
        asyncio.create_task(store.insert_job(late)),
        asyncio.create_task(store.save_job_header(job, n)),
    ]
    await asyncio.sleep(0)
    for task in tasks:
        task.cancel()
    opened.set()
    await blocked
    assert [j.display_name for j in await store.load_all()] == ["job", "late"]
    assert isinstance(n.id, int), "the outbox id is recorded even for a cancelled caller"
    assert await store.pending_notifications() == [n]
    for task in tasks:
        assert task.cancelled()


def test_calls_made_outside_a_running_loop(tmp_path: Path) -> None:
    """``asyncio.run(store.insert_job(job))`` makes the coroutine before the loop exists."""
    store = SqliteJobStore.open(tmp_path / "ferry.db")
    job = make_job(2)
    asyncio.run(store.insert_job(job))
    assert asyncio.run(store.load_all()) == [job]
    asyncio.run(store.close())
    with pytest.raises(FerryError) as exc:
        asyncio.run(store.load_all())
    assert exc.value.code == "E_FAIL"


async def test_close_checkpoints_on_the_store_thread(store: SqliteJobStore) -> None:
    await store.insert_job(make_job(1))
    wal = store.path.with_name(store.path.name + "-wal")
    assert wal.exists()
    await store.close()
    assert not wal.exists()  # the last connection checkpointed and removed it
    assert not store._thread._thread.is_alive()


async def test_if_the_store_thread_dies_no_caller_waits_forever(store: SqliteJobStore) -> None:
    class Bug(BaseException):
        pass

    def bug() -> None:
        raise Bug("a bug in the store")

    opened, blocked = gate(store)
    calls = [store._thread.read(bug), store.insert_job(make_job(1)), store.load_all()]
    opened.set()
    await blocked
    for result in await asyncio.gather(*calls, return_exceptions=True):
        assert isinstance(result, FerryError) and result.code == "E_FAIL", result
        assert "thread died" in result.message
    with pytest.raises(FerryError) as exc:
        await store.insert_job(make_job(1))
    assert exc.value.code == "E_FAIL"
    await store.close()  # the dying thread released the database already
    assert store.db._conn is None
