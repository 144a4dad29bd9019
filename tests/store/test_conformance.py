"""What every job store must do, driven through the ``JobStore`` protocol only.

Runs once per implementation (conftest.py's FACTORIES). The contract is store/base.py's:
atomic writes committed before they return, applied in call order, each taking what it
stores from the job at call time, one failing write failing alone; the notification outbox;
deletes that stay deleted; and everything still there after close and reopen.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from ferry.errors import FerryError
from ferry.model import notification as notif
from ferry.model.job import Job, JobFile
from ferry.model.notification import PendingNotification
from ferry.model.types import JobState, JobType, NotifyFlags, TokenFlags
from ferry.store.base import JobStore
from tests.store.conftest import Stores
from tests.store.jobs import HELPER, LIM, NOW, OWNER, full_job, make_job, rich_job, upload_job


async def load_one(store: JobStore) -> Job:
    (job,) = await store.load_all()
    return job


def snapshot(job: Job) -> Job:
    return copy.deepcopy(job)


def owed(job: Job, state: JobState = JobState.TRANSFERRED) -> PendingNotification:
    """The notification ``job`` owes on entering ``state`` (JOB_TRANSFERRED / JOB_ERROR)."""
    flags = NotifyFlags.JOB_TRANSFERRED | NotifyFlags.JOB_ERROR
    n = notif.due(job.id, state, flags, ["/usr/bin/true", job.id], job.owner, 600.0, NOW + 10)
    assert n is not None
    return n


async def assert_fails(code: str, call: Awaitable[Any]) -> FerryError:
    with pytest.raises(FerryError) as exc:
        await call
    assert exc.value.code == code, exc.value
    return exc.value


# ---- round trips -------------------------------------------------------------------------------


async def test_an_empty_store_holds_nothing(store: JobStore) -> None:
    assert await store.load_all() == []
    assert await store.pending_notifications() == []


async def test_round_trip_of_jobs_with_every_field_set(store: JobStore, stores: Stores) -> None:
    jobs = [full_job(), rich_job(), make_job(0, name="empty"), make_job(5, name="five")]
    jobs.append(upload_job())
    for job in jobs:
        await store.insert_job(job)
    assert await store.load_all() == jobs
    store = await stores.reopen(store)
    loaded = await store.load_all()
    assert loaded == jobs
    for got, want in zip(loaded, jobs, strict=True):
        assert got is not want
        for f in dataclasses.fields(Job):
            assert getattr(got, f.name) == getattr(want, f.name), f.name
            assert type(getattr(got, f.name)) is type(getattr(want, f.name)), f.name
        for got_file, want_file in zip(got.files, want.files, strict=True):
            for f in dataclasses.fields(JobFile):
                assert getattr(got_file, f.name) == getattr(want_file, f.name), f.name
    full, rich = loaded[0], loaded[1]
    assert full.state is JobState.TRANSIENT_ERROR and full.type is JobType.UPLOAD_REPLY
    assert full.error is not None and full.error.file_index == 2
    assert rich.helper_token == HELPER and rich.helper_flags == TokenFlags.all()
    assert rich.files[1].local_name == "/srv/dl/b\udcff"
    assert loaded[4].owner == HELPER and loaded[0].owner == OWNER


async def test_load_all_keeps_insertion_order(store: JobStore, stores: Stores) -> None:
    jobs = [make_job(i % 3, name=f"j{i:02d}") for i in range(30)]
    await asyncio.gather(*[store.insert_job(job) for job in jobs])
    assert [j.id for j in await store.load_all()] == [j.id for j in jobs]
    store = await stores.reopen(store)
    assert await store.load_all() == jobs


async def test_each_load_builds_new_objects(store: JobStore) -> None:
    await store.insert_job(make_job(2))
    first, second = await load_one(store), await load_one(store)
    assert first == second and first is not second and first.files[0] is not second.files[0]


async def test_inserting_an_existing_id_fails_and_changes_nothing(store: JobStore) -> None:
    job = make_job(1)
    await store.insert_job(job)
    other = dataclasses.replace(make_job(3, name="other"), id=job.id)
    await assert_fails("E_FAIL", store.insert_job(other))
    assert await store.load_all() == [job]


# ---- what each write writes --------------------------------------------------------------------


async def test_save_job_writes_the_job_and_every_file(store: JobStore, stores: Stores) -> None:
    job = make_job(3)
    await store.insert_job(job)
    for i, f in enumerate(job.files):
        f.temp_name = f"/srv/dl/.t{i}"
        f.completed = True
    job.mark_acknowledged(job.plan_complete(), NOW + 9)
    await store.save_job(job)
    assert await store.load_all() == [job]
    del job.files[1:]  # a shorter file list drops the files beyond it
    await store.save_job(job)
    assert await store.load_all() == [job]
    grown = make_job(1, name="grown")
    await store.insert_job(grown)
    grown.add_files([JobFile("https://example.com/g", "/srv/dl/g")], LIM, NOW + 1)
    await store.save_job(grown)  # and a longer one stores the new files
    store = await stores.reopen(store)
    assert await store.load_all() == [job, grown]


async def test_save_job_header_writes_only_the_job(store: JobStore) -> None:
    job = make_job(2)
    await store.insert_job(job)
    stored_files = copy.deepcopy(job.files)
    job.set_properties({"description": "changed", "priority": "low"}, LIM, NOW + 1)
    job.files[0].bytes_transferred = 77  # not saved by save_job_header
    await store.save_job_header(job)
    loaded = await load_one(store)
    assert loaded.description == "changed" and loaded.priority.value == "low"
    assert loaded.modified == NOW + 1
    assert loaded.files == stored_files


async def test_save_progress_writes_the_job_and_one_file(store: JobStore, stores: Stores) -> None:
    job = make_job(2)
    await store.insert_job(job)
    job.resume(NOW + 1)
    job.start(NOW + 1)
    job.no_progress_since = NOW  # a stretch of transient errors was running
    await store.save_job_header(job)
    job.files[0].temp_name = "/srv/dl/.tmp-0"  # not saved: another file
    job.files[1].temp_name = "/srv/dl/.tmp-1"
    job.files[1].bytes_total = 10_000
    job.record_progress(1, 6_000, NOW + 2)
    await store.save_progress(job, 1)
    store = await stores.reopen(store)
    loaded = await load_one(store)
    assert loaded.files[1] == job.files[1] and loaded.files[1].bytes_transferred == 6_000
    assert loaded.files[0].temp_name is None
    assert loaded.no_progress_since is None, "progress stopped the clock, in the job row too"
    assert loaded.state is JobState.CONNECTING
    loaded.files[0].temp_name = job.files[0].temp_name
    assert loaded == job


async def test_save_files_writes_the_job_and_the_given_files(store: JobStore) -> None:
    job = make_job(4)
    await store.insert_job(job)
    for i, f in enumerate(job.files):
        f.temp_name = f"/srv/dl/.t{i}"
    job.description = "reported"
    await store.save_files(job, [2, 0])
    loaded = await load_one(store)
    assert loaded.description == "reported"
    assert [f.temp_name for f in loaded.files] == ["/srv/dl/.t0", None, "/srv/dl/.t2", None]
    job.description = "no files"
    await store.save_files(job, [])  # the job alone
    loaded = await load_one(store)
    assert loaded.description == "no files" and loaded.files[1].temp_name is None


async def test_add_files_inserts_only_the_new_tail(store: JobStore, stores: Stores) -> None:
    job = make_job(1)
    await store.insert_job(job)
    first = len(job.files)
    job.add_files(
        [
            JobFile("https://example.com/x", "/srv/dl/x"),
            JobFile("https://example.com/y", "/srv/dl/y"),
        ],
        LIM,
        NOW + 1,
    )
    job.files[0].bytes_transferred = 5  # an earlier file: not written by add_files
    await store.add_files(job, first)
    store = await stores.reopen(store)
    loaded = await load_one(store)
    assert [f.local_name for f in loaded.files] == ["/srv/dl/job-0", "/srv/dl/x", "/srv/dl/y"]
    assert loaded.files[0].bytes_transferred == 0
    assert loaded.modified == job.modified and loaded.files[1:] == job.files[1:]


async def test_add_files_over_stored_files_fails_and_changes_nothing(store: JobStore) -> None:
    job = make_job(2)
    await store.insert_job(job)
    stored = snapshot(job)
    job.set_properties({"description": "should not stick"}, LIM, NOW + 1)
    await assert_fails("E_FAIL", store.add_files(job, 0))  # files 0 and 1 are stored
    assert await store.load_all() == [stored]


async def test_a_file_index_the_job_lacks_is_refused(store: JobStore) -> None:
    job = make_job(2)
    await store.insert_job(job)
    stored = snapshot(job)
    job.description = "should not stick"
    calls: list[Callable[[], Awaitable[None]]] = [
        lambda: store.save_progress(job, 2),
        lambda: store.save_progress(job, -1),
        lambda: store.save_files(job, [0, 7]),
        lambda: store.add_files(job, 3),
    ]
    for call in calls:
        with pytest.raises(IndexError):
            await call()
    assert await store.load_all() == [stored]


# ---- delete --------------------------------------------------------------------------------------


async def test_delete_removes_the_job_and_its_files(store: JobStore, stores: Stores) -> None:
    keep, drop = make_job(2, name="keep"), make_job(5, name="drop")
    await store.insert_job(keep)
    await store.insert_job(drop)
    assert await store.delete_job(drop.id) is True
    assert await store.delete_job(drop.id) is False
    assert await store.delete_job("no-such-job") is False
    assert await store.load_all() == [keep]
    # A new job under the old id starts clean: none of the old files linger.
    again = dataclasses.replace(make_job(1, name="again"), id=drop.id)
    await store.insert_job(again)
    store = await stores.reopen(store)
    assert await store.load_all() == [keep, again]


async def test_saving_a_deleted_job_does_not_resurrect_it(store: JobStore) -> None:
    job = make_job(1)
    await store.insert_job(job)
    assert await store.delete_job(job.id) is True
    job.add_files([JobFile("https://example.com/z", "/srv/dl/z")], LIM, NOW + 1)
    n = owed(job)
    calls: list[Callable[[], Awaitable[None]]] = [
        lambda: store.save_job(job),
        lambda: store.save_job_header(job),
        lambda: store.save_job_header(job, n),
        lambda: store.save_progress(job, 0),
        lambda: store.save_files(job, [0, 1], n),
        lambda: store.add_files(job, 1),
    ]
    for call in calls:
        await assert_fails("BG_E_NOT_FOUND", call())
    assert await store.load_all() == []
    assert await store.pending_notifications() == []


# ---- the notification outbox ---------------------------------------------------------------------


def _enter_transferred(job: Job) -> PendingNotification:
    job.state = JobState.TRANSFERRED
    for f in job.files:
        f.completed = True
    n = owed(job)
    job.notification = notif.status(n, notif.PENDING)
    return n


@pytest.mark.parametrize("save", ["save_job_header", "save_progress", "save_files"])
async def test_a_notification_is_stored_with_the_change_that_made_it_due(
    store: JobStore, stores: Stores, save: str
) -> None:
    job = make_job(2)
    await store.insert_job(job)
    n = _enter_transferred(job)
    if save == "save_job_header":
        await store.save_job_header(job, n)
    elif save == "save_progress":
        await store.save_progress(job, 1, n)
    else:
        await store.save_files(job, [0, 1], n)
    assert isinstance(n.id, int), "the outbox id is set when the save returns"
    assert await store.pending_notifications() == [n]
    store = await stores.reopen(store)
    assert await store.pending_notifications() == [n]
    loaded = await load_one(store)
    assert loaded.notification == job.notification and loaded.state is JobState.TRANSFERRED


async def test_pending_notifications_come_oldest_first(store: JobStore) -> None:
    jobs = [make_job(1, name=f"n{i}") for i in range(6)]
    for job in jobs:
        await store.insert_job(job)
    owed_ = [_enter_transferred(job) for job in jobs]
    # Called one after another without waiting: stored in call order.
    await asyncio.gather(*[store.save_job_header(j, n) for j, n in zip(jobs, owed_, strict=True)])
    pending = await store.pending_notifications()
    assert pending == owed_
    ids = [n.id for n in pending]
    assert all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids)


async def test_an_attempt_is_counted_and_the_outcome_settles_it(
    store: JobStore, stores: Stores
) -> None:
    job, other = make_job(1), make_job(1, name="other")
    await store.insert_job(job)
    await store.insert_job(other)
    n = _enter_transferred(job)
    m = _enter_transferred(other)
    await store.save_job_header(job, n)
    await store.save_job_header(other, m)

    n.attempts, n.next_attempt = 1, NOW + 70
    await store.update_notification(n)
    assert await store.pending_notifications() == [n, m]

    n.attempts, n.next_attempt = 2, NOW + 190
    job.notification = notif.status(n, notif.PENDING, "E_FAIL", "exited with status 3")
    await store.update_notification(n, job)  # with the job's status
    store = await stores.reopen(store)
    (got_n, got_m) = await store.pending_notifications()
    assert (got_n.attempts, got_n.next_attempt) == (2, NOW + 190) and got_m == m
    assert (await store.load_all())[0].notification == job.notification

    job.notification = notif.status(n, notif.DELIVERED)
    await store.finish_notification(n, job)
    assert await store.pending_notifications() == [m]
    loaded = (await store.load_all())[0]
    assert loaded.notification is not None and loaded.notification.state == "DELIVERED"


async def test_a_notification_outlives_its_job(store: JobStore) -> None:
    job = make_job(1)
    await store.insert_job(job)
    job.state = JobState.ERROR
    n = owed(job, JobState.ERROR)
    await store.save_job_header(job, n)
    assert await store.delete_job(job.id) is True
    assert await store.pending_notifications() == [n]  # owed, even after the purge
    # Settling it with the purged job's status fails as a whole: the job stays gone...
    await assert_fails("BG_E_NOT_FOUND", store.finish_notification(n, job))
    assert await store.pending_notifications() == [n]
    await assert_fails("BG_E_NOT_FOUND", store.update_notification(n, job))
    assert (await store.pending_notifications())[0].attempts == 0
    # ...and without it, it leaves the outbox.
    await store.finish_notification(n, None)
    assert await store.pending_notifications() == []
    assert await store.load_all() == []


# ---- failures, order, concurrency ----------------------------------------------------------------


async def test_a_failing_write_fails_alone(store: JobStore, stores: Stores) -> None:
    a, b, c = make_job(1, name="a"), make_job(2, name="b"), make_job(3, name="c")
    gone = make_job(1, name="gone")
    await store.insert_job(a)
    await store.insert_job(gone)
    assert await store.delete_job(gone.id)
    nb, ngone = _enter_transferred(b), _enter_transferred(gone)
    # Called without waiting in between, so a store may well commit them as one group.
    calls = [
        store.insert_job(b),
        store.insert_job(a),  # a duplicate
        store.save_job_header(b, nb),
        store.save_job_header(gone, ngone),  # a deleted job, with a notification
        store.save_progress(a, 5),  # no such file
        store.insert_job(c),
        store.add_files(a, 0),  # rows already stored
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert results[0] is None and results[2] is None and results[5] is None, results
    assert isinstance(results[1], FerryError) and results[1].code == "E_FAIL"
    assert isinstance(results[3], FerryError) and results[3].code == "BG_E_NOT_FOUND"
    assert isinstance(results[4], IndexError)
    assert isinstance(results[6], FerryError) and results[6].code == "E_FAIL"
    assert isinstance(nb.id, int) and ngone.id is None
    store = await stores.reopen(store)
    assert await store.load_all() == [a, b, c]
    assert await store.pending_notifications() == [nb]


async def test_writes_apply_in_call_order(store: JobStore) -> None:
    job = make_job(2)
    await store.insert_job(job)
    job.description = "first"
    first = store.save_job_header(job)
    job.description = "second"
    second = store.save_job_header(job)
    await second  # awaited in the other order: the call order still decides
    await first
    assert (await load_one(store)).description == "second"

    # A save called right after the insert, before either is awaited, follows it.
    new = make_job(1, name="new")
    insert = store.insert_job(new)
    new.files[0].bytes_transferred = 10
    progress = store.save_progress(new, 0)
    delete = store.delete_job(job.id)
    resurrect = store.save_job(job)  # after the delete: refused
    results = await asyncio.gather(resurrect, delete, progress, insert, return_exceptions=True)
    assert results[1:] == [True, None, None], results
    assert isinstance(results[0], FerryError) and results[0].code == "BG_E_NOT_FOUND"
    assert await store.load_all() == [new]


async def test_a_read_sees_the_writes_called_before_it(store: JobStore) -> None:
    jobs = [make_job(1, name=f"r{i}") for i in range(5)]
    inserts = [store.insert_job(job) for job in jobs]
    n = _enter_transferred(jobs[0])
    saved = store.save_progress(jobs[0], 0, n)
    loaded = store.load_all()
    pending = store.pending_notifications()
    assert await loaded == jobs
    assert await pending == [n]
    await asyncio.gather(*inserts, saved)


async def test_many_concurrent_writers_are_all_durable(store: JobStore, stores: Stores) -> None:
    async def writer(k: int) -> list[Job]:
        mine = []
        for i in range(25):
            job = make_job(2, name=f"w{k}-{i}")
            await store.insert_job(job)
            job.files[1].bytes_transferred = i + 1
            job.description = f"writer {k}"
            await store.save_progress(job, 1)
            mine.append(job)
        return mine

    written = [job for jobs in await asyncio.gather(*[writer(k) for k in range(8)]) for job in jobs]
    more = [make_job(1, name=f"burst{i}") for i in range(100)]
    await asyncio.gather(*[store.insert_job(job) for job in more])
    store = await stores.reopen(store)
    loaded = {job.id: job for job in await store.load_all()}
    assert len(loaded) == len(written) + len(more) == 300
    for job in written + more:
        assert loaded[job.id] == job


# ---- call-time snapshots -------------------------------------------------------------------------


async def test_a_write_stores_the_job_as_it_was_when_called(store: JobStore) -> None:
    job = make_job(2)
    insert = store.insert_job(job)
    at_insert = snapshot(job)
    job.description = "changed after insert_job was called"
    job.files[0].bytes_transferred = 5
    await insert
    assert await store.load_all() == [at_insert]

    job.description = "at save_progress"
    job.files[1].bytes_transferred = 7
    progress = store.save_progress(job, 1)
    job.description = "later"
    job.files[1].bytes_transferred = 99
    job.state = JobState.CANCELLED
    await progress
    loaded = await load_one(store)
    assert loaded.description == "at save_progress" and loaded.state is JobState.SUSPENDED
    assert [f.bytes_transferred for f in loaded.files] == [0, 7]
    job.state = JobState.SUSPENDED

    save = store.save_job(job)
    at_save = snapshot(job)
    del job.files[1:]
    job.files[0].local_name = "/srv/dl/renamed"
    await save
    assert await load_one(store) == at_save

    first = len(job.files)  # 1, though 2 are stored: add_files would clash...
    job.files.append(JobFile("https://example.com/t", "/srv/dl/t"))
    await store.save_job(job)
    job.add_files([JobFile("https://example.com/u", "/srv/dl/u")], LIM, NOW + 1)
    add = store.add_files(job, first + 1)
    job.files[2].local_name = "/srv/dl/changed-after-add_files"
    await add
    assert (await load_one(store)).files[2].local_name == "/srv/dl/u"


async def test_a_notification_is_stored_as_it_was_when_called(store: JobStore) -> None:
    job = make_job(1)
    await store.insert_job(job)
    n = _enter_transferred(job)
    save = store.save_job_header(job, n)
    at_save = snapshot(job)
    n.cmdline = ["/bin/false"]
    job.notification = None
    await save
    assert (await load_one(store)).notification == at_save.notification
    (stored,) = await store.pending_notifications()
    assert stored.cmdline == ["/usr/bin/true", job.id]

    n.attempts, n.next_attempt = 1, NOW + 70
    update = store.update_notification(n)
    n.attempts, n.next_attempt = 5, NOW + 999
    await update
    (stored,) = await store.pending_notifications()
    assert (stored.attempts, stored.next_attempt) == (1, NOW + 70)


# ---- close -------------------------------------------------------------------------------------


async def test_close_finishes_the_writes_called_before_it(store: JobStore, stores: Stores) -> None:
    jobs = [make_job(1, name=f"c{i}") for i in range(20)]
    calls = [store.insert_job(job) for job in jobs]
    n = _enter_transferred(jobs[0])
    calls.append(store.save_progress(jobs[0], 0, n))
    await store.close()
    assert await asyncio.gather(*calls) == [None] * 21
    assert isinstance(n.id, int)
    store = await stores.open()
    assert await store.load_all() == jobs
    assert await store.pending_notifications() == [n]


async def test_a_closed_store_refuses_every_call(store: JobStore) -> None:
    job = make_job(1)
    await store.insert_job(job)
    await store.close()
    await store.close()  # idempotent
    n = owed(job)
    calls: list[Callable[[], Awaitable[Any]]] = [
        store.load_all,
        store.pending_notifications,
        lambda: store.insert_job(make_job(1, name="late")),
        lambda: store.save_job(job),
        lambda: store.save_job_header(job, n),
        lambda: store.save_progress(job, 0),
        lambda: store.save_files(job, [0]),
        lambda: store.add_files(job, 1),
        lambda: store.delete_job(job.id),
        lambda: store.update_notification(n),
        lambda: store.finish_notification(n),
    ]
    for call in calls:
        await assert_fails("E_FAIL", call())
