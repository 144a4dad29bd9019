"""The fleet job store: the ``JobStore`` protocol (store/base.py) on PostgreSQL, with psycopg 3.

Chosen by ferryd's ``[store] url = "postgresql://…"`` (daemon/config.py); the default stays
the embedded SQLite file. Several ferryd ("workers") share one database: the jobs, their
files, the notification outbox, and two things only a fleet needs — each job's **lease**
(store/postgres_leases.py) and the roster of workers.

Where the work runs. Like SQLite's, every statement of the store runs on one thread of its
own that owns one connection (store/writer.py's ``StoreThread``): writes are encoded on the
event loop when a method is *called* (the snapshot), queued in call order and committed in
groups — the writes that queue up while a commit is in flight go in one transaction, a
``SAVEPOINT`` each, so one failing write fails alone. One round trip per statement on a Unix
socket is tens of microseconds; psycopg releases the GIL while it waits, and prepares the
statements the hot path repeats. The same thread-and-group design as SQLite's means the
conformance suite (tests/store/) holds both to one contract.

Fleet duties of a write:

* **Announced.** Each committed group sends ``NOTIFY ferry_jobs, 'WORKER<TAB>JOB'`` for
  every job it touched, in its transaction (PostgreSQL delivers notifications on commit,
  never for a rolled-back one). The other workers refresh those jobs (service/fleet.py).
* **Fenced.** While this worker holds a job's lease (``fence(job_id, epoch)``), each write
  of that job's row also requires ``lease_worker = me AND lease_epoch = epoch``. A worker
  whose lease was taken over (the epoch moved on) gets ``LeaseLost`` for every later write:
  it can no longer record progress, and its transfer ends.
* **Reconnected.** When the connection breaks (a PostgreSQL restart, a failover), the thread
  reconnects with back-off for up to ``reconnect_timeout`` seconds and applies the group
  again; callers just wait longer. Writes are pure functions of their snapshot, so applying
  one again stores the same rows.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

import psycopg

from ..errors import FerryError
from ..model.job import Job, JobFile
from ..model.notification import PendingNotification
from ..model.token import TokenInterner
from . import codec
from .postgres_schema import SCHEMA_VERSION, migrate, redact, runtime_error
from .writer import MAX_GROUP, Outcome, StoreThread

if TYPE_CHECKING:
    from .base import JobStore

log = logging.getLogger("ferry.store.postgres")

_dumps = json.JSONEncoder(separators=(",", ":")).encode
_loads = json.loads

CHANNEL = "ferry_jobs"

_INSERT_JOB = (
    "INSERT INTO jobs (id, owner_uid, state, modified, record) VALUES (%s, %s, %s, %s, %s)"
)
_UPDATE_JOB = "UPDATE jobs SET owner_uid = %s, state = %s, modified = %s, record = %s WHERE id = %s"
_UPDATE_FENCED = _UPDATE_JOB + " AND lease_worker = %s AND lease_epoch = %s"
_INSERT_FILE = "INSERT INTO files (job_id, idx, record) VALUES (%s, %s, %s)"
_UPSERT_FILE = (
    "INSERT INTO files (job_id, idx, record) VALUES (%s, %s, %s) "
    "ON CONFLICT (job_id, idx) DO UPDATE SET record = excluded.record "
    "WHERE files.record IS DISTINCT FROM excluded.record"
)
_TRIM_FILES = "DELETE FROM files WHERE job_id = %s AND idx >= %s"
_INSERT_NOTIFICATION = (
    "INSERT INTO notifications (job_id, next_attempt, record, worker) "
    "VALUES (%s, %s, %s, %s) RETURNING id"
)

Cursor = psycopg.Cursor[Any]


class LeaseLost(FerryError):
    """A write of a job whose lease this worker no longer holds: refused (fencing)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(
            "E_FAIL", f"job {job_id}: this worker's lease was taken over; the write was refused"
        )
        self.job_id = job_id


class PgWrite:
    """One write, encoded at call time: ``run(cursor)`` inside an open transaction, and the
    job it touches (announced to the fleet when its group commits)."""

    __slots__ = ("run", "job_id")

    def __init__(self, run: Callable[[Cursor], Any], job_id: str | None) -> None:
        self.run = run
        self.job_id = job_id


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class PostgresStore:
    """The synchronous face: one connection, used by one thread at a time (a lock)."""

    def __init__(
        self,
        url: str,
        *,
        worker: str | None = None,
        reconnect_timeout: float = 60.0,
        connect_timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.where = redact(url)
        self.worker = worker or default_worker_id()
        self.reconnect_timeout = reconnect_timeout
        self.connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._closed = False
        self._conn: psycopg.Connection[Any] | None = None
        # job id -> the lease epoch this worker holds (set and dropped by the lease code on
        # the event loop, read there when a write is encoded).
        self.fences: dict[str, int] = {}
        self._conn = self._connect(migrate_schema=True)

    # ---- connection ------------------------------------------------------------------

    def _connect(self, migrate_schema: bool = False) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.connect(
                self.url, autocommit=True, connect_timeout=max(1, int(self.connect_timeout))
            )
        except psycopg.Error as exc:
            raise FerryError(
                "E_FAIL", f"cannot connect to the job store {self.where}: {exc}"
            ) from None
        try:
            if migrate_schema:
                migrate(conn, self.where)
            else:
                row = conn.execute("SELECT version FROM ferry_schema").fetchone()
                if row is None or row[0] != SCHEMA_VERSION:
                    raise FerryError("E_FAIL", f"the job store {self.where} changed schema")
        except BaseException:
            conn.close()
            raise
        return conn

    def _reconnect(self) -> psycopg.Connection[Any]:
        """A fresh connection after the old one broke, retried with back-off."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        deadline = time.monotonic() + self.reconnect_timeout
        delay = 0.1
        while True:
            try:
                self._conn = self._connect()
                log.warning("reconnected to the job store %s", self.where)
                return self._conn
            except FerryError as exc:
                if time.monotonic() + delay > deadline:
                    raise
                log.info("job store %s unreachable (%s); retrying", self.where, exc.message)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def closed_error(self) -> FerryError:
        return FerryError("E_FAIL", f"the job store {self.where} is closed")

    def _with_conn(self, fn: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        """Run ``fn`` on the connection, reconnecting and running it again when the
        connection broke under it."""
        with self._lock:
            if self._closed:
                raise self.closed_error()
            conn = self._conn or self._reconnect()
            try:
                return fn(conn)
            except psycopg.OperationalError as exc:
                if not conn.broken and not conn.closed:
                    _idle(conn)  # never leave an aborted transaction behind
                    raise runtime_error(self.where, exc) from exc
                log.warning("the job store connection broke: %s", exc)
            return fn(self._reconnect())

    # ---- groups of writes -------------------------------------------------------------

    def apply_group(self, writes: Sequence[PgWrite]) -> list[Outcome]:
        try:
            out: list[Outcome] = self._with_conn(lambda conn: self._apply(conn, writes))
            return out
        except Exception as exc:
            err = exc if isinstance(exc, FerryError) else runtime_error(self.where, exc)
            return [(None, FerryError(err.code, err.message, hresult=err.hresult)) for _ in writes]

    def _apply(self, conn: psycopg.Connection[Any], writes: Sequence[PgWrite]) -> list[Outcome]:
        """The group in one transaction; a deadlock with another worker's transaction (or a
        serialization failure) rolls it back whole and runs it again: a write is a pure
        function of its snapshot, so running it again stores the same rows."""
        for attempt in range(_RETRIES):
            try:
                return self._apply_once(conn, writes)
            except psycopg.errors.TransactionRollback as exc:
                _idle(conn)
                log.info("job store: %s; applying the group again", exc)
                time.sleep(0.005 * (attempt + 1))
        return self._apply_once(conn, writes)

    def _apply_once(
        self, conn: psycopg.Connection[Any], writes: Sequence[PgWrite]
    ) -> list[Outcome]:
        outcomes: list[Outcome] = []
        touched: list[str] = []
        savepoints = len(writes) > 1
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            try:
                for w in writes:
                    if savepoints:
                        cur.execute("SAVEPOINT w")
                    try:
                        value = w.run(cur)
                    except psycopg.OperationalError:
                        raise
                    except Exception as exc:
                        if not savepoints:
                            cur.execute("ROLLBACK")
                            return [(None, self._error(exc))]
                        cur.execute("ROLLBACK TO SAVEPOINT w")
                        outcomes.append((None, self._error(exc)))
                        continue
                    if savepoints:
                        cur.execute("RELEASE SAVEPOINT w")
                    outcomes.append((value, None))
                    if w.job_id is not None:
                        touched.append(w.job_id)
                if touched:
                    cur.execute(
                        "SELECT pg_notify(%s, %s || chr(9) || j) FROM unnest(%s::text[]) AS j",
                        (CHANNEL, self.worker, list(dict.fromkeys(touched))),
                    )
                cur.execute("COMMIT")
            except psycopg.OperationalError:
                raise
            except Exception as exc:
                if not conn.broken:
                    with contextlib.suppress(psycopg.Error):
                        cur.execute("ROLLBACK")
                err = self._error(exc)
                return [
                    (None, FerryError(err.code, str(err), hresult=err.hresult))
                    if isinstance(err, FerryError)
                    else (None, err)
                    for _ in writes
                ]
        return outcomes

    def _error(self, exc: BaseException) -> BaseException:
        if isinstance(exc, psycopg.Error):
            err = runtime_error(self.where, exc)
            err.__cause__ = exc
            return err
        return exc

    # ---- reads ------------------------------------------------------------------------

    def load_all(self) -> list[Job]:
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            jobs: list[Job] = self._with_conn(self._load_all)
            return jobs
        finally:
            if gc_was_enabled:
                gc.enable()

    def _load_all(self, conn: psycopg.Connection[Any]) -> list[Job]:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cur.execute("SELECT job_id, record FROM files ORDER BY job_id, idx")
            files: dict[str, list[JobFile]] = {}
            for job_id, record in cur:
                files.setdefault(job_id, []).append(codec.file_from_record(_loads(record)))
            cur.execute("SELECT id, record FROM jobs ORDER BY seq")
            return self._decode_jobs(cur.fetchall(), files)

    def _decode_jobs(self, rows: list[Any], files: dict[str, list[JobFile]]) -> list[Job]:
        tokens = TokenInterner()
        jobs: list[Job] = []
        for job_id, record in rows:
            try:
                d = _loads(record)
                if d["id"] != job_id:
                    raise ValueError(f"the record is that of job {d['id']}")
                jobs.append(codec.job_from_record(d, files.pop(job_id, []), tokens))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise FerryError(
                    "BG_E_DATABASE_CORRUPT",
                    f"the job store {self.where} holds an unreadable record of job {job_id}: "
                    f"{type(exc).__name__}: {exc}",
                ) from exc
        return jobs

    def load_job(self, job_id: str) -> Job | None:
        """One job as stored now (the fleet's refresh), or None when it is gone."""

        def read(conn: psycopg.Connection[Any]) -> Job | None:
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                cur.execute("SELECT id, record FROM jobs WHERE id = %s", (job_id,))
                rows = cur.fetchall()
                if not rows:
                    return None
                cur.execute("SELECT record FROM files WHERE job_id = %s ORDER BY idx", (job_id,))
                fl = [codec.file_from_record(_loads(r)) for (r,) in cur]
                return self._decode_jobs(rows, {job_id: fl})[0]

        job: Job | None = self._with_conn(read)
        return job

    def load_jobs(self, job_ids: Sequence[str]) -> dict[str, Job]:
        """Several jobs as stored now, by id (the fleet's batched refresh); a job that is
        gone is absent from the answer."""

        def read(conn: psycopg.Connection[Any]) -> dict[str, Job]:
            ids = list(job_ids)
            with conn.transaction(), conn.cursor() as cur:
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                cur.execute(
                    "SELECT job_id, record FROM files WHERE job_id = ANY(%s) ORDER BY job_id, idx",
                    (ids,),
                )
                files: dict[str, list[JobFile]] = {}
                for job_id, record in cur:
                    files.setdefault(job_id, []).append(codec.file_from_record(_loads(record)))
                cur.execute("SELECT id, record FROM jobs WHERE id = ANY(%s)", (ids,))
                return {job.id: job for job in self._decode_jobs(cur.fetchall(), files)}

        jobs: dict[str, Job] = self._with_conn(read)
        return jobs

    def pending_notifications(self) -> list[PendingNotification]:
        """Owed notifications this worker delivers: its own, and those of workers that are
        gone (adopted here, so exactly one live worker runs each command)."""

        def read(conn: psycopg.Connection[Any]) -> list[Any]:
            with conn.transaction():
                conn.execute(
                    "UPDATE notifications SET worker = %s WHERE worker IS NULL OR"
                    " (worker <> %s AND worker NOT IN (SELECT id FROM workers WHERE"
                    " heartbeat > now() - make_interval(secs => lease_seconds)))",
                    (self.worker, self.worker),
                )
                return conn.execute(
                    "SELECT id, next_attempt, record FROM notifications WHERE worker = %s"
                    " ORDER BY id",
                    (self.worker,),
                ).fetchall()

        rows = self._with_conn(read)
        out: list[PendingNotification] = []
        for id_, next_attempt, record in rows:
            try:
                out.append(PendingNotification.from_record(_loads(record), id_, next_attempt))
            except (ValueError, KeyError, TypeError) as exc:
                raise FerryError(
                    "BG_E_DATABASE_CORRUPT",
                    f"the job store {self.where} holds an unreadable notification {id_}: {exc}",
                ) from exc
        return out

    # ---- encoding writes (on the calling thread, at call time) ------------------------

    def _job_row(self, job: Job) -> tuple[Any, ...]:
        row: tuple[Any, ...] = (
            job.owner.uid,
            job.state.value,
            job.modified,
            _dumps(codec.job_record(job)),
            job.id,
        )
        epoch = self.fences.get(job.id)
        if epoch is not None:
            row += (self.worker, epoch)
        return row

    @staticmethod
    def _update_job(cur: Cursor, row: tuple[Any, ...]) -> None:
        fenced = len(row) > 5
        cur.execute(_UPDATE_FENCED if fenced else _UPDATE_JOB, row)
        if cur.rowcount == 1:
            return
        if fenced:
            cur.execute("SELECT 1 FROM jobs WHERE id = %s", (row[4],))
            if cur.fetchone() is not None:
                raise LeaseLost(row[4])
        raise FerryError("BG_E_NOT_FOUND", f"job {row[4]} is not in the job store")

    def _note(self, n: PendingNotification | None) -> tuple[Any, ...] | None:
        if n is None:
            return None
        return (n.job_id, n.next_attempt, _dumps(n.to_record()), self.worker)

    def write_insert_job(self, job: Job) -> PgWrite:
        row = (job.id, job.owner.uid, job.state.value, job.modified, _dumps(codec.job_record(job)))
        jid = job.id
        files = [(jid, i, _dumps(codec.file_record(f))) for i, f in enumerate(job.files)]

        def run(cur: Cursor) -> None:
            cur.execute(_INSERT_JOB, row)
            if files:
                cur.executemany(_INSERT_FILE, files)

        return PgWrite(run, jid)

    def write_save_job(self, job: Job) -> PgWrite:
        row = self._job_row(job)
        jid, count = job.id, len(job.files)
        files = [(jid, i, _dumps(codec.file_record(f))) for i, f in enumerate(job.files)]
        update = self._update_job

        def run(cur: Cursor) -> None:
            update(cur, row)
            cur.execute(_TRIM_FILES, (jid, count))
            if files:
                cur.executemany(_UPSERT_FILE, files)

        return PgWrite(run, jid)

    def write_save_files(
        self, job: Job, indices: Sequence[int], notification: PendingNotification | None
    ) -> PgWrite:
        files = job.files
        for index in indices:
            if not 0 <= index < len(files):
                raise IndexError(f"job {job.id} has no file {index}")
        row = self._job_row(job)
        jid = job.id
        file_rows = [(jid, i, _dumps(codec.file_record(files[i]))) for i in indices]
        note = self._note(notification)
        update = self._update_job

        def run(cur: Cursor) -> int | None:
            update(cur, row)
            if len(file_rows) == 1:
                cur.execute(_UPSERT_FILE, file_rows[0])
            elif file_rows:
                cur.executemany(_UPSERT_FILE, file_rows)
            if note is None:
                return None
            cur.execute(_INSERT_NOTIFICATION, note)
            got = cur.fetchone()
            assert got is not None
            return int(got[0])

        return PgWrite(run, jid)

    def write_add_files(self, job: Job, first_index: int) -> PgWrite:
        files = job.files
        if not 0 <= first_index <= len(files):
            raise IndexError(f"job {job.id} has no file {first_index}")
        row = self._job_row(job)
        jid = job.id
        file_rows = [
            (jid, i, _dumps(codec.file_record(files[i]))) for i in range(first_index, len(files))
        ]
        update = self._update_job

        def run(cur: Cursor) -> None:
            update(cur, row)
            if file_rows:
                cur.executemany(_INSERT_FILE, file_rows)

        return PgWrite(run, jid)

    def write_delete_job(self, job_id: str) -> PgWrite:
        def run(cur: Cursor) -> bool:
            cur.execute("DELETE FROM jobs WHERE id = %s", (job_id,))
            return cur.rowcount > 0

        return PgWrite(run, job_id)

    def write_update_notification(self, n: PendingNotification, job: Job | None) -> PgWrite:
        params = (n.next_attempt, _dumps(n.to_record()), n.id)
        row = None if job is None else self._job_row(job)
        update = self._update_job

        def run(cur: Cursor) -> None:
            cur.execute(
                "UPDATE notifications SET next_attempt = %s, record = %s WHERE id = %s", params
            )
            if row is not None:
                update(cur, row)

        return PgWrite(run, None if job is None else job.id)

    def write_finish_notification(self, n: PendingNotification, job: Job | None) -> PgWrite:
        nid = n.id
        row = None if job is None else self._job_row(job)
        update = self._update_job

        def run(cur: Cursor) -> None:
            cur.execute("DELETE FROM notifications WHERE id = %s", (nid,))
            if row is not None:
                update(cur, row)

        return PgWrite(run, None if job is None else job.id)


class PostgresJobStore:
    """The ``JobStore`` protocol on :class:`PostgresStore`, for the event loop: methods are
    plain functions returning coroutines (they encode at call time), the work runs on the
    store's thread with group commit (store/writer.py)."""

    def __init__(self, db: PostgresStore, *, max_group: int = MAX_GROUP) -> None:
        self.db = db
        self.url = db.url
        self.worker = db.worker
        self._thread: StoreThread[PgWrite] = StoreThread(
            "ferry-pgstore", db.apply_group, db.close, db.closed_error, max_group=max_group
        )

    @classmethod
    def open(cls, url: str, *, worker: str | None = None, **kw: Any) -> PostgresJobStore:
        """Connect and migrate (on the calling thread: before the daemon serves)."""
        return cls(PostgresStore(url, worker=worker, **kw))

    async def __aenter__(self) -> PostgresJobStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- fencing (the lease code, on the event loop) -------------------------------------

    def fence(self, job_id: str, epoch: int) -> None:
        """Writes of ``job_id`` called from now on require this worker's lease ``epoch``."""
        self.db.fences[job_id] = epoch

    def unfence(self, job_id: str) -> None:
        self.db.fences.pop(job_id, None)

    def fenced(self, job_id: str) -> int | None:
        return self.db.fences.get(job_id)

    # ---- JobStore -----------------------------------------------------------------------

    def _write(
        self, encode: Callable[[], PgWrite], then: Callable[[Any], Any] | None = None
    ) -> Coroutine[Any, Any, Any]:
        if self._thread.closed:
            return _fail(self.db.closed_error())
        try:
            write = encode()
        except Exception as exc:
            return _fail(exc)
        return self._thread.write(write, then)

    def load_all(self) -> Coroutine[Any, Any, list[Job]]:
        return self._thread.read(self.db.load_all)

    def load_job(self, job_id: str) -> Coroutine[Any, Any, Job | None]:
        return self._thread.read(lambda: self.db.load_job(job_id))

    def load_jobs(self, job_ids: Sequence[str]) -> Coroutine[Any, Any, dict[str, Job]]:
        ids = list(job_ids)
        return self._thread.read(lambda: self.db.load_jobs(ids))

    def insert_job(self, job: Job) -> Coroutine[Any, Any, None]:
        return self._write(lambda: self.db.write_insert_job(job))

    def save_job(self, job: Job) -> Coroutine[Any, Any, None]:
        return self._write(lambda: self.db.write_save_job(job))

    def save_job_header(
        self, job: Job, notification: PendingNotification | None = None
    ) -> Coroutine[Any, Any, None]:
        return self._write(
            lambda: self.db.write_save_files(job, (), notification), _id_setter(notification)
        )

    def save_progress(
        self, job: Job, index: int, notification: PendingNotification | None = None
    ) -> Coroutine[Any, Any, None]:
        return self._write(
            lambda: self.db.write_save_files(job, (index,), notification),
            _id_setter(notification),
        )

    def save_files(
        self, job: Job, indices: Sequence[int], notification: PendingNotification | None = None
    ) -> Coroutine[Any, Any, None]:
        return self._write(
            lambda: self.db.write_save_files(job, indices, notification),
            _id_setter(notification),
        )

    def add_files(self, job: Job, first_index: int) -> Coroutine[Any, Any, None]:
        return self._write(lambda: self.db.write_add_files(job, first_index))

    def delete_job(self, job_id: str) -> Coroutine[Any, Any, bool]:
        return self._write(lambda: self.db.write_delete_job(job_id))

    def pending_notifications(self) -> Coroutine[Any, Any, list[PendingNotification]]:
        return self._thread.read(self.db.pending_notifications)

    def update_notification(
        self, n: PendingNotification, job: Job | None = None
    ) -> Coroutine[Any, Any, None]:
        return self._write(lambda: self.db.write_update_notification(n, job))

    def finish_notification(
        self, n: PendingNotification, job: Job | None = None
    ) -> Coroutine[Any, Any, None]:
        return self._write(lambda: self.db.write_finish_notification(n, job))

    async def close(self) -> None:
        await self._thread.close()


_RETRIES = 5


def _idle(conn: psycopg.Connection[Any]) -> None:
    """Roll back whatever transaction is open on a healthy connection."""
    if conn.broken or conn.closed:
        return
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        with contextlib.suppress(psycopg.Error):
            conn.execute("ROLLBACK")


def _id_setter(n: PendingNotification | None) -> Callable[[Any], None] | None:
    if n is None:
        return None

    def then(rowid: Any) -> None:
        n.id = rowid

    return then


async def _fail(exc: BaseException) -> Any:
    raise exc


if TYPE_CHECKING:
    _conforms: type[JobStore] = PostgresJobStore


__all__ = ["CHANNEL", "LeaseLost", "PostgresJobStore", "PostgresStore", "SCHEMA_VERSION"]
