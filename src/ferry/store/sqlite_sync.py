"""``SqliteStore``: the SQLite job store's synchronous face, on one connection.

Each call runs on the calling thread in a transaction of its own (tests, benchmarks, tools);
``apply_group`` commits several callers' writes in one transaction, a savepoint each (the
group commit that ``SqliteJobStore``'s thread drives); ``load_all`` reads every job back at
startup. Why the store is shaped this way is told in store/sqlite.py; the writes it runs
are store/sqlite_writes.py's, the database file store/sqlite_file.py's.
"""

from __future__ import annotations

import gc
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

from ..errors import FerryError
from ..model.job import Job, JobFile
from ..model.notification import PendingNotification
from ..model.token import TokenInterner
from . import codec
from .sqlite_file import connect, runtime_error
from .sqlite_writes import (
    Write,
    write_add_files,
    write_delete_job,
    write_finish_notification,
    write_insert_job,
    write_save_files,
    write_save_job,
    write_update_notification,
)
from .writer import Outcome

T = TypeVar("T")

_loads = json.loads
# Rows per json.loads in load_all: one call shares the key strings among its objects, and a
# small batch is still in the CPU cache when its objects are built (at 100,000 jobs, 256 loads
# about 10% faster than 2048, and with less memory).
_BATCH = 256


class SqliteStore:
    """The job store on one SQLite database file; open it with :meth:`open`.

    Methods are synchronous and run on the calling thread: each write is a single short
    transaction (a commit costs one fsync). :class:`SqliteJobStore` drives one from its
    thread (``load_all``, ``pending_notifications``, ``apply_group``, ``close``). A lock
    serialises all of them, so two threads can never interleave transactions on the one
    connection.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        """Use :meth:`open`; this only adopts an already configured connection."""
        self._conn: sqlite3.Connection | None = conn
        self.path = path
        self._lock = threading.Lock()

    # ---- opening and closing ---------------------------------------------------------

    @classmethod
    def open(cls, path: Path, *, check: bool = True) -> SqliteStore:
        """Open (creating if needed) and migrate the store at ``path`` (store/sqlite_file.py).

        ``check`` runs ``PRAGMA quick_check`` first, so a damaged file is reported at startup
        rather than when some page is first touched mid-transfer.
        """
        path = Path(path)
        return cls(connect(path, check=check), path)

    def close(self) -> None:
        """Close the connection; SQLite checkpoints the WAL into the database file. Idempotent."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- transactions ----------------------------------------------------------------

    @contextmanager
    def _transaction(self, begin: str = "BEGIN IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """One transaction, committed on exit, rolled back on any exception.

        Writers use BEGIN IMMEDIATE: taking the write lock up front means a commit can never
        fail with SQLITE_BUSY half-way through a change the caller already believes in.
        SQLite errors come out as FerryError so callers handle one exception type.
        """
        with self._lock:
            conn = self._conn
            if conn is None:
                raise self.closed_error()
            try:
                conn.execute(begin)
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    # Suppressed: SQLite may have rolled back already (e.g. after SQLITE_FULL).
                    with suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise runtime_error(self.path, exc) from exc
                raise

    def _run(self, write: Write[T]) -> T:
        """One write in a transaction of its own: the synchronous face."""
        with self._transaction() as conn:
            return write(conn)

    def apply_group(self, writes: Sequence[Write[Any]]) -> list[Outcome]:
        """Apply several callers' writes in one transaction, one commit (one fsync).

        The group commit of :class:`SqliteJobStore`'s thread. Each write runs inside its own
        SAVEPOINT: a write that fails is rolled back to it and gets its own error, and the
        others go on and commit. SQLite may abandon the whole transaction when a statement
        fails (it does for SQLITE_FULL); then that write fails alone and the others are
        applied again, in order, in a fresh transaction (a write is a pure function of its
        snapshot, so running it again is safe). When BEGIN or COMMIT fails, nothing of the
        group is stored and every write gets that error. Returns one outcome per write, in
        order; never raises.
        """
        with self._lock:
            conn = self._conn
            if conn is None:
                return [(None, self.closed_error()) for _ in writes]
            return self._apply(conn, writes)

    def _apply(self, conn: sqlite3.Connection, writes: Sequence[Write[Any]]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        savepoints = len(writes) > 1  # a lone write is rolled back with its transaction
        try:
            conn.execute("BEGIN IMMEDIATE")
            for write in writes:
                if savepoints:
                    conn.execute("SAVEPOINT w")
                try:
                    value = write(conn)
                except Exception as exc:
                    if not savepoints or not conn.in_transaction:
                        raise _TransactionLost(exc) from exc
                    conn.execute("ROLLBACK TO w")
                    conn.execute("RELEASE w")
                    outcomes.append((None, self._error(exc)))
                    continue
                if savepoints:
                    conn.execute("RELEASE w")
                outcomes.append((value, None))
            conn.execute("COMMIT")
            return outcomes
        except Exception as exc:
            if conn.in_transaction:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            # Writes that failed by themselves keep their error whatever happens next.
            out: list[Outcome | None] = [o if o[1] is not None else None for o in outcomes]
            out += [None] * (len(writes) - len(out))
            if isinstance(exc, _TransactionLost):
                out[len(outcomes)] = (None, self._error(exc.cause))
                again = [i for i, o in enumerate(out) if o is None]
                if again:
                    redone = self._apply(conn, [writes[i] for i in again])
                    for i, o in zip(again, redone, strict=True):
                        out[i] = o
            return [(None, self._error(exc, shared=True)) if o is None else o for o in out]

    def _error(self, exc: BaseException, shared: bool = False) -> BaseException:
        """The error a caller sees: SQLite's errors as FerryError (a fresh object per caller,
        as one exception object must not be raised in several tasks)."""
        if isinstance(exc, sqlite3.Error):
            err = runtime_error(self.path, exc)
        elif shared and isinstance(exc, FerryError):
            err = FerryError(exc.code, exc.message, hresult=exc.hresult)
        elif shared:
            err = FerryError("E_FAIL", f"the job store {self.path} failed: {exc!r}")
        else:
            return exc
        err.__cause__ = exc
        return err

    def closed_error(self) -> FerryError:
        return FerryError("E_FAIL", f"the job store {self.path} is closed")

    # ---- reading ---------------------------------------------------------------------

    def load_all(self) -> list[Job]:
        """Every job with its files in index order, jobs in the order they were inserted.

        Built for startup with 100,000 jobs, where nearly all the time is JSON and object
        construction, not SQLite:

        * one table scan per table; files are scanned in storage order, not through the
          primary-key index (random lookups cost a quarter of the load) and grouped in a
          dict; rows of a job arrive in index order in practice, and a job whose rows do
          not is re-read ordered (`_files_in_order`);
        * records are parsed a batch at a time (`_decode_batch`): one json.loads per batch
          shares the key strings among its objects instead of allocating them per record;
        * the garbage collector is paused: the load allocates hundreds of thousands of
          containers and no garbage cycles, so collections would only cost time.
        """
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            with self._transaction("BEGIN") as conn:
                return self._load_all(conn)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _load_all(self, conn: sqlite3.Connection) -> list[Job]:
        files: dict[str, list[JobFile]] = {}
        disordered: set[str] = set()
        jobs: list[Job] = []
        job_id = ""
        file_from_record = codec.file_from_record
        job_from_record = codec.job_from_record
        tokens = TokenInterner()  # the jobs of one owner share one Token
        try:
            cur = conn.execute("SELECT job_id, idx, record FROM files")
            while rows := cur.fetchmany(_BATCH):
                for (job_id, idx, _), d in zip(rows, self._decode_batch(rows), strict=True):
                    lst = files.get(job_id)
                    if lst is None:
                        # Built as a one-item list, not appended to an empty one: most jobs
                        # have one file, and append would reserve room for four.
                        files[job_id] = [file_from_record(d)]
                        if idx != 0:
                            disordered.add(job_id)
                        continue
                    if idx != len(lst):
                        disordered.add(job_id)
                    lst.append(file_from_record(d))
            for job_id in disordered:
                files[job_id] = self._files_in_order(conn, job_id)
            pop = files.pop
            cur = conn.execute("SELECT id, record FROM jobs ORDER BY rowid")
            while rows := cur.fetchmany(_BATCH):
                for (job_id, _), d in zip(rows, self._decode_batch(rows), strict=True):
                    if d["id"] != job_id:
                        raise ValueError(f"the record is that of job {d['id']}")
                    jobs.append(job_from_record(d, pop(job_id, []), tokens))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise FerryError(
                "BG_E_DATABASE_CORRUPT",
                f"the job store {self.path} holds an unreadable record of job {job_id}: "
                f"{type(exc).__name__}: {exc}",
            ) from exc
        return jobs

    def _decode_batch(self, rows: list[Any]) -> list[Any]:
        """Parse the JSON records (the last column) of a batch of rows with one json.loads.

        A batch that does not parse to exactly one object per row is re-parsed record by
        record, so the error names the job whose record is damaged.
        """
        try:
            parsed = _loads("[" + ",".join([r[-1] for r in rows]) + "]")
        except (ValueError, TypeError):
            parsed = None
        if isinstance(parsed, list) and len(parsed) == len(rows):
            return parsed
        out = []
        for r in rows:
            try:
                out.append(_loads(r[-1]))
            except (ValueError, TypeError) as exc:
                raise FerryError(
                    "BG_E_DATABASE_CORRUPT",
                    f"the job store {self.path} holds an unreadable record of job {r[0]}: {exc}",
                ) from exc
        return out

    def _files_in_order(self, conn: sqlite3.Connection, job_id: str) -> list[JobFile]:
        """The files of one job by index; the indices must be exactly 0..n-1."""
        rows = conn.execute(
            "SELECT idx, record FROM files WHERE job_id = ? ORDER BY idx", (job_id,)
        ).fetchall()
        for position, (idx, _) in enumerate(rows):
            if idx != position:
                raise ValueError(f"its file indices are not contiguous (missing {position})")
        return [codec.file_from_record(d) for d in self._decode_batch(rows)]

    # ---- writing ---------------------------------------------------------------------
    # Each method encodes its write at once (the write_* functions of store/sqlite_writes.py)
    # and runs it in a transaction of its own, committed when the method returns.

    def insert_job(self, job: Job) -> None:
        """Store a new job and all its files. A job id already stored is a bug: E_FAIL."""
        self._run(write_insert_job(job))

    def save_job(self, job: Job) -> None:
        """Rewrite the job row and every file row (rows beyond the file list are dropped).

        The catch-all for changes that touch many files at once (complete, cancel). Unchanged
        file rows are not rewritten (see _UPSERT_FILE), so it stays cheap for big jobs; the
        cost left is serialising every file.
        """
        self._run(write_save_job(job))

    def save_job_header(self, job: Job, notification: PendingNotification | None = None) -> None:
        """Only the job row: state changes, properties, owner, helper token, error; and the
        command-line notification the change made due, in the same transaction."""
        _set_id(notification, self._run(write_save_files(job, (), notification)))

    def save_file(self, job: Job, index: int) -> None:
        """The job row and one file row, in one transaction (a file started or completed)."""
        self._run(write_save_files(job, (index,)))

    def save_progress(
        self, job: Job, index: int, notification: PendingNotification | None = None
    ) -> None:
        """The progress checkpoint: the job row and one file row, in one transaction.

        Both rows, because recording progress also moves the job's no-progress clock.
        The last file's completion may make a notification due: it is stored in the same
        transaction.
        """
        _set_id(notification, self._run(write_save_files(job, (index,), notification)))

    def save_files(
        self, job: Job, indices: Sequence[int], notification: PendingNotification | None = None
    ) -> None:
        """The job row and several file rows in one transaction: the engine's batched reports
        (a group of small files started, or completed together)."""
        _set_id(notification, self._run(write_save_files(job, indices, notification)))

    def add_files(self, job: Job, first_index: int) -> None:
        """Insert ``job.files[first_index:]`` (just added by ``Job.add_files``) and the job row."""
        self._run(write_add_files(job, first_index))

    def delete_job(self, job_id: str) -> bool:
        """Remove a job and (by cascade) its files; False when there was no such job."""
        return self._run(write_delete_job(job_id))

    # ---- the notification outbox ---------------------------------------------------------

    def pending_notifications(self) -> list[PendingNotification]:
        """Every owed command-line notification, oldest first."""
        with self._transaction("BEGIN") as conn:
            rows = conn.execute(
                "SELECT id, next_attempt, record FROM notifications ORDER BY id"
            ).fetchall()
        out: list[PendingNotification] = []
        for id_, next_attempt, record in rows:
            try:
                out.append(PendingNotification.from_record(_loads(record), id_, next_attempt))
            except (ValueError, KeyError, TypeError) as exc:
                raise FerryError(
                    "BG_E_DATABASE_CORRUPT",
                    f"the job store {self.path} holds an unreadable notification {id_}: {exc}",
                ) from exc
        return out

    def update_notification(self, n: PendingNotification, job: Job | None = None) -> None:
        """Record an attempt (its count and when the next one is due), and the job's
        notification status with it when ``job`` is given."""
        self._run(write_update_notification(n, job))

    def finish_notification(self, n: PendingNotification, job: Job | None = None) -> None:
        """The notification is settled (delivered, or failed for the last time): drop it
        from the outbox, and save the job's notification status in the same transaction."""
        self._run(write_finish_notification(n, job))


def _set_id(n: PendingNotification | None, rowid: int | None) -> None:
    if n is not None:
        n.id = rowid


class _TransactionLost(Exception):
    """A write failed and SQLite rolled back the whole transaction with it."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause
