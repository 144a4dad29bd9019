"""The SQLite job store on real database files: round trips, durability, refusal of bad files."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import ferry
from ferry.errors import FerryError
from ferry.model.job import Job, JobFile
from ferry.model.types import JobState, JobType, TokenFlags
from ferry.store import codec
from ferry.store.sqlite import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION, SqliteStore
from tests.store.jobs import HELPER, LIM, NOW, OWNER, full_job, make_job, rich_job, upload_job


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "jobs.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore.open(db_path)
    yield s
    s.close()


def reopen(store: SqliteStore) -> SqliteStore:
    store.close()
    return SqliteStore.open(store.path)


def raw(path: Path) -> sqlite3.Connection:
    """A second, independent connection for looking behind the store's back."""
    return sqlite3.connect(str(path), isolation_level=None)


def count_jobs(path: Path) -> int:
    with raw(path) as c:
        (n,) = c.execute("SELECT count(*) FROM jobs").fetchone()
    return int(n)


# ---- opening ------------------------------------------------------------------------------


def test_open_creates_private_directories_and_file(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "jobs.db"
    s = SqliteStore.open(path)
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700
        s.insert_job(make_job())
        wal = path.with_name("jobs.db-wal")
        assert wal.exists() and stat.S_IMODE(wal.stat().st_mode) == 0o600
    finally:
        s.close()


def test_durability_settings(store: SqliteStore) -> None:
    conn = store._conn
    assert conn is not None
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert conn.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)


def test_reopen_keeps_the_schema_version(store: SqliteStore) -> None:
    store.insert_job(make_job())
    store = reopen(store)
    try:
        assert count_jobs(store.path) == 1
        with raw(store.path) as c:
            assert c.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    finally:
        store.close()


def _tables(path: Path) -> set[str]:
    with raw(path) as c:
        return {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_a_new_store_has_no_kv_table(store: SqliteStore) -> None:
    assert _tables(store.path) == {"jobs", "files", "notifications", "sqlite_sequence"}


def test_a_version_2_store_drops_the_kv_table_and_keeps_its_jobs(db_path: Path) -> None:
    db_path.parent.mkdir()
    with raw(db_path) as c:
        for statements in MIGRATIONS[:2]:
            for sql in statements:
                c.execute(sql)
        c.execute("INSERT INTO kv VALUES ('outbox', '[]')")
        c.execute("PRAGMA user_version = 2")
        c.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    job = make_job(2)
    row = (job.id, job.owner.uid, job.state.value, job.modified, json.dumps(codec.job_record(job)))
    with raw(db_path) as c:
        c.execute("INSERT INTO jobs VALUES (?, ?, ?, ?, ?)", row)
        for i, f in enumerate(job.files):
            c.execute(
                "INSERT INTO files VALUES (?, ?, ?)", (job.id, i, json.dumps(codec.file_record(f)))
            )
    assert SCHEMA_VERSION == 3
    with SqliteStore.open(db_path) as s:
        assert s.load_all() == [job]
    assert "kv" not in _tables(db_path)
    with raw(db_path) as c:
        assert c.execute("PRAGMA user_version").fetchone() == (3,)


def test_an_empty_existing_file_is_a_new_store(db_path: Path) -> None:
    db_path.parent.mkdir()
    db_path.write_bytes(b"")
    with SqliteStore.open(db_path) as s:
        assert s.load_all() == []


def test_close_is_idempotent_and_a_closed_store_refuses(store: SqliteStore) -> None:
    store.close()
    store.close()
    with pytest.raises(FerryError) as exc:
        store.insert_job(make_job())
    assert exc.value.code == "E_FAIL"


# ---- refusing damaged, foreign and newer files ------------------------------------------------


def _healthy_db(path: Path, jobs: int = 50) -> None:
    with SqliteStore.open(path) as s:
        for i in range(jobs):
            s.insert_job(make_job(3, name=f"j{i}"))


def _assert_refused(path: Path, *fragments: str) -> None:
    before = path.read_bytes()
    siblings = sorted(p.name for p in path.parent.iterdir())
    with pytest.raises(FerryError) as exc:
        SqliteStore.open(path)
    assert exc.value.code == "BG_E_DATABASE_CORRUPT"
    assert exc.value.hresult == 0x8020006C
    assert str(path) in exc.value.message
    for fragment in fragments:
        assert fragment in exc.value.message
    # never deleted, replaced or written
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == siblings


@pytest.mark.parametrize("size", [1, 100, 4096, 100_000])
def test_garbage_file_is_refused_and_left_alone(db_path: Path, size: int) -> None:
    db_path.parent.mkdir()
    db_path.write_bytes(os.urandom(size).replace(b"S", b"s"))
    _assert_refused(db_path, "not a SQLite database")


def test_text_file_is_refused_and_left_alone(db_path: Path) -> None:
    db_path.parent.mkdir()
    db_path.write_text("these are my notes, not a database\n")
    _assert_refused(db_path)


def test_scribbled_pages_are_refused_and_left_alone(db_path: Path) -> None:
    _healthy_db(db_path)
    data = bytearray(db_path.read_bytes())
    page = 4096
    assert len(data) > 4 * page
    data[page : len(data) - page] = os.urandom(len(data) - 2 * page)
    db_path.write_bytes(bytes(data))
    _assert_refused(db_path)


def test_truncated_database_is_refused_and_left_alone(db_path: Path) -> None:
    _healthy_db(db_path, jobs=200)
    data = db_path.read_bytes()
    db_path.write_bytes(data[: len(data) // 2])
    _assert_refused(db_path)


def test_newer_schema_version_is_refused_and_left_alone(db_path: Path) -> None:
    _healthy_db(db_path, jobs=3)
    with raw(db_path) as c:
        c.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    _assert_refused(db_path, "newer")


def test_foreign_sqlite_database_is_refused_and_left_alone(db_path: Path) -> None:
    db_path.parent.mkdir()
    with raw(db_path) as c:
        c.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, title TEXT)")
        c.execute("INSERT INTO photos (title) VALUES ('cat')")
    _assert_refused(db_path, "other application")


def test_other_application_id_is_refused(db_path: Path) -> None:
    db_path.parent.mkdir()
    with raw(db_path) as c:
        c.execute("PRAGMA application_id = 1234")
    _assert_refused(db_path, "another application")


def test_unreadable_record_is_reported_as_corrupt(store: SqliteStore) -> None:
    good, bad = make_job(name="good"), make_job(name="bad")
    store.insert_job(good)
    store.insert_job(bad)
    with raw(store.path) as c:
        c.execute("UPDATE jobs SET record = '{not json' WHERE id = ?", (bad.id,))
    with pytest.raises(FerryError) as exc:
        store.load_all()
    assert exc.value.code == "BG_E_DATABASE_CORRUPT" and bad.id in exc.value.message


def test_record_of_another_job_is_reported_as_corrupt(store: SqliteStore) -> None:
    a, b = make_job(name="a"), make_job(name="b")
    store.insert_job(a)
    store.insert_job(b)
    with raw(store.path) as c:
        rec = c.execute("SELECT record FROM jobs WHERE id = ?", (a.id,)).fetchone()[0]
        c.execute("UPDATE jobs SET record = ? WHERE id = ?", (rec, b.id))
    with pytest.raises(FerryError) as exc:
        store.load_all()
    assert exc.value.code == "BG_E_DATABASE_CORRUPT" and b.id in exc.value.message


def test_record_missing_a_field_is_reported_as_corrupt(store: SqliteStore) -> None:
    job = make_job()
    store.insert_job(job)
    with raw(store.path) as c:
        c.execute("UPDATE files SET record = '{}' WHERE job_id = ?", (job.id,))
    with pytest.raises(FerryError) as exc:
        store.load_all()
    assert exc.value.code == "BG_E_DATABASE_CORRUPT" and job.id in exc.value.message


# ---- round trips ------------------------------------------------------------------------------


def test_round_trip_of_jobs_with_files_errors_and_helper_tokens(store: SqliteStore) -> None:
    jobs = [rich_job(), make_job(0, name="empty"), make_job(5, name="five"), upload_job()]
    for job in jobs:
        store.insert_job(job)
    assert store.load_all() == jobs
    store = reopen(store)
    try:
        loaded = store.load_all()
        assert loaded == jobs
        r = loaded[0]
        assert r.helper_token == HELPER and r.helper_flags == TokenFlags.all()
        assert r.error is not None and r.error.code == "BG_E_HTTP_ERROR_503"
        assert r.files[1].local_name == "/srv/dl/b\udcff"
        assert r.state is JobState.TRANSIENT_ERROR
    finally:
        store.close()


def test_round_trip_of_a_job_with_every_field_set(store: SqliteStore) -> None:
    job = full_job()
    plain = make_job(2, name="plain")
    store.insert_job(job)
    store.insert_job(plain)
    store = reopen(store)
    try:
        loaded, loaded_plain = store.load_all()
        assert loaded == job and loaded_plain == plain
        for f in dataclasses.fields(Job):
            assert getattr(loaded, f.name) == getattr(job, f.name), f.name
        for got, want in zip(loaded.files, job.files, strict=True):
            for f in dataclasses.fields(JobFile):
                assert getattr(got, f.name) == getattr(want, f.name), f.name
        assert loaded.error is not None and loaded.error.file_index == 2
        assert loaded.state is JobState.TRANSIENT_ERROR and loaded.type is JobType.UPLOAD_REPLY
    finally:
        store.close()


def test_jobs_share_their_owners_token_only_when_equal(store: SqliteStore) -> None:
    other_session = dataclasses.replace(OWNER, session=99)
    a, b = make_job(name="a"), make_job(0, name="b")
    c = make_job(name="c", owner=other_session)
    d = make_job(name="d", owner=HELPER)
    d.set_helper_token(OWNER, NOW)
    e = make_job(name="e", owner=dataclasses.replace(OWNER, pid=1234))  # pid is not stored
    for job in (a, b, c, d, e):
        store.insert_job(job)
    store = reopen(store)
    try:
        la, lb, lc, ld, le = store.load_all()
        assert la.owner is lb.owner is ld.helper_token is le.owner
        assert la.owner == OWNER and le.owner.pid is None
        assert lc.owner is not la.owner and lc.owner == other_session != OWNER
        assert ld.owner is not la.owner and ld.owner == HELPER
        # Shared, yet independent: changing one job's owner replaces its token.
        la.take_ownership(HELPER, NOW + 1)
        assert lb.owner == OWNER and la.owner == HELPER
        # Each load decodes afresh.
        assert store.load_all()[0].owner is not lb.owner
    finally:
        store.close()


def test_unknown_enum_value_in_a_record_is_corrupt(store: SqliteStore) -> None:
    job = make_job()
    store.insert_job(job)
    record = codec.job_record(job)
    record["state"] = "NAPPING"
    with raw(store.path) as c:
        c.execute("UPDATE jobs SET record = ? WHERE id = ?", (json.dumps(record), job.id))
    with pytest.raises(FerryError) as exc:
        store.load_all()
    assert exc.value.code == "BG_E_DATABASE_CORRUPT" and job.id in exc.value.message
    assert "NAPPING" in exc.value.message


def test_load_all_keeps_insertion_order(store: SqliteStore) -> None:
    jobs = [make_job(i % 3, name=f"j{i}") for i in range(30)]
    for job in jobs:
        store.insert_job(job)
    assert [j.id for j in store.load_all()] == [j.id for j in jobs]


def test_load_of_2000_jobs(store: SqliteStore) -> None:
    jobs = [make_job(1, name=f"j{i}") for i in range(2000)]
    jobs[7] = make_job(40, name="many")  # one bigger job among them
    for job in jobs:
        store.insert_job(job)
    store = reopen(store)
    try:
        assert count_jobs(store.path) == 2000
        loaded = store.load_all()
        assert loaded == jobs
        assert [f.local_name for f in loaded[7].files] == [f"/srv/dl/many-{i}" for i in range(40)]
    finally:
        store.close()


def test_files_stored_out_of_order_load_in_index_order(store: SqliteStore) -> None:
    job = make_job(4)
    store.insert_job(job)
    with raw(store.path) as c:
        rows = c.execute("SELECT job_id, idx, record FROM files ORDER BY idx").fetchall()
        c.execute("DELETE FROM files")
        for r in [rows[2], rows[0], rows[3], rows[1]]:
            c.execute("INSERT INTO files VALUES (?, ?, ?)", r)
    assert store.load_all() == [job]


def test_a_gap_in_file_indices_is_corrupt(store: SqliteStore) -> None:
    job = make_job(3)
    store.insert_job(job)
    with raw(store.path) as c:
        c.execute("DELETE FROM files WHERE job_id = ? AND idx = 1", (job.id,))
    with pytest.raises(FerryError) as exc:
        store.load_all()
    assert exc.value.code == "BG_E_DATABASE_CORRUPT" and job.id in exc.value.message


# ---- writes -----------------------------------------------------------------------------------


def test_save_progress_persists(store: SqliteStore) -> None:
    job = make_job(2)
    store.insert_job(job)
    job.resume(NOW + 1)
    job.start(NOW + 1)
    job.no_progress_since = NOW  # a stretch of transient errors was running
    store.save_job_header(job)
    job.files[1].temp_name = "/srv/dl/.tmp-1"
    job.files[1].bytes_total = 10_000
    job.record_progress(1, 6_000, NOW + 2)
    store.save_progress(job, 1)
    store = reopen(store)
    try:
        (loaded,) = store.load_all()
        assert loaded == job
        assert loaded.files[1].bytes_transferred == 6_000
        assert loaded.no_progress_since is None, "progress stopped the clock, in the job row too"
        assert loaded.state is JobState.CONNECTING
    finally:
        store.close()


def test_save_file_persists_one_file(store: SqliteStore) -> None:
    job = make_job(3)
    store.insert_job(job)
    job.files[0].temp_name = "/srv/dl/.t0"
    job.files[2].validator = '"v2"'
    store.save_file(job, 2)
    (loaded,) = store.load_all()
    assert loaded.files[2].validator == '"v2"'
    assert loaded.files[0].temp_name is None  # only the named file was written


def test_save_job_header_writes_only_the_job_row(store: SqliteStore) -> None:
    job = make_job(2)
    store.insert_job(job)
    job.set_properties({"description": "changed", "priority": "low"}, LIM, NOW + 1)
    job.files[0].bytes_transferred = 77  # not saved by save_job_header
    store.save_job_header(job)
    (loaded,) = store.load_all()
    assert loaded.description == "changed" and loaded.priority.value == "low"
    assert loaded.modified == NOW + 1
    assert loaded.files[0].bytes_transferred == 0
    with raw(store.path) as c:
        row = c.execute("SELECT state, modified FROM jobs WHERE id = ?", (job.id,)).fetchone()
    assert row == ("SUSPENDED", NOW + 1)


def test_save_job_writes_everything(store: SqliteStore) -> None:
    job = make_job(3)
    store.insert_job(job)
    for i, f in enumerate(job.files):
        f.temp_name = f"/srv/dl/.t{i}"
        f.completed = True
    job.mark_acknowledged(job.plan_complete(), NOW + 9)
    store.save_job(job)
    assert store.load_all() == [job]
    del job.files[1:]  # a shorter file list drops the rows beyond it
    store.save_job(job)
    assert store.load_all() == [job]


def test_add_files_inserts_the_new_tail(store: SqliteStore) -> None:
    job = make_job(1)
    store.insert_job(job)
    first = len(job.files)
    job.add_files(
        [
            JobFile("https://example.com/x", "/srv/dl/x"),
            JobFile("https://example.com/y", "/srv/dl/y"),
        ],
        LIM,
        NOW + 1,
    )
    store.add_files(job, first)
    store = reopen(store)
    try:
        (loaded,) = store.load_all()
        assert loaded == job
        assert [f.local_name for f in loaded.files] == ["/srv/dl/job-0", "/srv/dl/x", "/srv/dl/y"]
    finally:
        store.close()


def test_a_failed_write_changes_nothing(store: SqliteStore) -> None:
    job = make_job(2)
    store.insert_job(job)
    job.set_properties({"description": "should not stick"}, LIM, NOW + 1)
    with pytest.raises(FerryError):
        store.add_files(job, 0)  # rows 0 and 1 exist: the whole transaction rolls back
    (loaded,) = store.load_all()
    assert loaded.description == ""


def test_insert_of_an_existing_job_fails(store: SqliteStore) -> None:
    job = make_job()
    store.insert_job(job)
    with pytest.raises(FerryError) as exc:
        store.insert_job(job)
    assert exc.value.code == "E_FAIL"
    assert count_jobs(store.path) == 1


def test_saving_a_deleted_job_does_not_resurrect_it(store: SqliteStore) -> None:
    job = make_job(1)
    store.insert_job(job)
    assert store.delete_job(job.id) is True
    for save in (store.save_job, store.save_job_header, lambda j: store.save_progress(j, 0)):
        with pytest.raises(FerryError) as exc:
            save(job)
        assert exc.value.code == "BG_E_NOT_FOUND"
    assert count_jobs(store.path) == 0


def test_delete_cascades_to_files(store: SqliteStore) -> None:
    keep, drop = make_job(2, name="keep"), make_job(5, name="drop")
    store.insert_job(keep)
    store.insert_job(drop)
    assert count_jobs(store.path) == 2
    assert store.delete_job(drop.id) is True
    assert store.delete_job(drop.id) is False
    assert count_jobs(store.path) == 1
    with raw(store.path) as c:
        left = c.execute("SELECT count(*) FROM files WHERE job_id = ?", (drop.id,)).fetchone()
        assert left == (0,)
        assert c.execute("SELECT count(*) FROM files").fetchone() == (2,)
    assert store.load_all() == [keep]


def test_bad_file_index_is_refused(store: SqliteStore) -> None:
    job = make_job(1)
    store.insert_job(job)
    with pytest.raises(IndexError):
        store.save_progress(job, 1)
    with pytest.raises(IndexError):
        store.save_file(job, -1)


# ---- durability -------------------------------------------------------------------------------

_KILLED_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from ferry.model.job import Job, JobFile, Limits
    from ferry.model.token import Token
    from ferry.store.sqlite import SqliteStore

    store = SqliteStore.open(Path(sys.argv[1]))
    limits = Limits()
    job = Job.new(Token(uid=1000, gid=1000), "survivor", 1.0, limits)
    job.add_files([JobFile("https://example.com/a", "/srv/dl/a")], limits, 1.0)
    store.insert_job(job)
    print("ok", job.id, flush=True)
    time.sleep(120)
    """
)


def test_insert_survives_sigkill(db_path: Path) -> None:
    src = str(Path(ferry.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(db_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        assert line[:1] == ["ok"], proc.stderr.read() if proc.stderr else ""
        job_id = line[1]
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    with SqliteStore.open(db_path) as s:
        (job,) = s.load_all()
    assert job.id == job_id and job.display_name == "survivor"
    assert [f.local_name for f in job.files] == ["/srv/dl/a"]
