"""The SQLite file of the job store itself: creating it privately, refusing a damaged or
foreign one, configuring and migrating it, and naming SQLite's errors as FerryErrors.

A damaged or foreign database is refused with ``BG_E_DATABASE_CORRUPT`` and left exactly
as it was found, never deleted or replaced: it may be the only copy of someone's jobs, and
an administrator (or ``sqlite3 .recover``) decides what to do with it. Nothing is written
to the file until it is known to be a healthy ferry database of a version this code knows.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import suppress
from pathlib import Path

from ..errors import FerryError

# "FRRY": marks the file as a ferry store, so a foreign SQLite file is never migrated.
APPLICATION_ID = 0x46525259

_SQLITE_MAGIC = b"SQLite format 3\x00"

# Each entry upgrades the schema by one version; entry N-1 takes version N-1 to N.
# Never edit an entry that has shipped: append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            owner_uid INTEGER NOT NULL,
            state TEXT NOT NULL,
            modified REAL NOT NULL,
            record TEXT NOT NULL
        )""",
        "CREATE INDEX jobs_owner_uid ON jobs(owner_uid)",
        """CREATE TABLE files (
            job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            record TEXT NOT NULL,
            PRIMARY KEY (job_id, idx)
        )""",
        "CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)",  # dropped by 3
    ),
    # 2: the outbox of command-line notifications (service/notify.py). No foreign key to
    # jobs: a notification that is owed outlives the purge of its job.
    (
        """CREATE TABLE notifications (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id TEXT NOT NULL,
            next_attempt REAL NOT NULL,
            record TEXT NOT NULL
        )""",
    ),
    # 3: the kv table of daemon-wide values never found a use.
    ("DROP TABLE IF EXISTS kv",),
)
SCHEMA_VERSION = len(MIGRATIONS)

# Primary SQLite result codes (the low byte of an extended code).
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_NOTADB = 26


def _primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def connect(path: Path, *, check: bool = True) -> sqlite3.Connection:
    """A connection to the ferry store at ``path``, created if missing (0600, in 0700
    directories), vetted, configured (WAL, synchronous=FULL) and migrated; or
    ``BG_E_DATABASE_CORRUPT`` for a file that is not a healthy ferry store, left untouched.
    The connection may be used from any thread (``check_same_thread=False``); its owner
    serialises the use.
    """
    try:
        created_dir = _ensure_dir(path.parent)
        created = _create_file(path)
        if not created:
            _check_header(path)
    except OSError as exc:
        raise FerryError.from_oserror(exc, f"cannot open the job store {path}") from exc
    try:
        conn = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=5.0
        )
    except sqlite3.Error as exc:
        raise _open_error(path, exc) from exc
    try:
        _prepare(conn, path, check)
        if created:
            # The new file's directory entry must survive a crash, like its contents.
            _fsync_dir(path.parent)
            if created_dir:
                _fsync_dir(path.parent.parent)
    except BaseException as exc:
        conn.close()
        if isinstance(exc, sqlite3.Error):
            raise _open_error(path, exc) from exc
        if isinstance(exc, OSError):
            raise FerryError.from_oserror(exc, f"cannot open the job store {path}") from exc
        raise
    return conn


def _ensure_dir(directory: Path) -> bool:
    """Create missing directories private to the daemon (0700); existing ones are left as
    the administrator made them. Returns True when the last one was created."""
    if directory.is_dir():
        return False
    missing: list[Path] = []
    d = directory
    while not d.exists():
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        with suppress(FileExistsError):
            os.mkdir(d, 0o700)
    return True


def _create_file(path: Path) -> bool:
    """Create the database file 0600 before SQLite sees it, so it is never world-readable
    (it holds every job's tokens and paths); SQLite gives the WAL files the same mode.
    Returns False when the file already existed."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def _check_header(path: Path) -> None:
    """Refuse a file that is not SQLite before SQLite opens it: then nothing can ever write
    to it. An empty file is fine (a crash right after _create_file leaves one)."""
    with open(path, "rb") as f:
        head = f.read(len(_SQLITE_MAGIC))
    if head and head != _SQLITE_MAGIC:
        raise FerryError(
            "BG_E_DATABASE_CORRUPT",
            f"the job store {path} is not a SQLite database; it was left untouched "
            "(move it away to start with an empty store)",
        )


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _prepare(conn: sqlite3.Connection, path: Path, check: bool) -> None:
    """Vet, configure and migrate a fresh connection. Nothing is written to the file
    until it is known to be a healthy ferry database of a version this code understands."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    (app_id,) = conn.execute("PRAGMA application_id").fetchone()
    if app_id not in (0, APPLICATION_ID):
        raise _corrupt(path, f"it belongs to another application (application_id {app_id:#x})")
    if version > SCHEMA_VERSION:
        raise _corrupt(
            path,
            f"its schema version {version} is newer than this ferry knows ({SCHEMA_VERSION}); "
            "run the newer ferryd that wrote it",
        )
    if version == 0:
        (tables,) = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        if tables:
            raise _corrupt(path, "it is a SQLite database of some other application")
    if check:
        problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            text = "; ".join(str(p).replace("\n", "; ") for p in problems)
            raise _corrupt(path, "integrity check failed: " + text)
    (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    if str(mode).lower() != "wal":
        raise FerryError("E_FAIL", f"the job store {path} cannot use WAL mode (got {mode})")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")  # a no-op inside a transaction: set it here
    # A huge save_job can grow the WAL; shrink it back after the next checkpoint.
    conn.execute("PRAGMA journal_size_limit = 16777216")
    if version < SCHEMA_VERSION:
        _migrate(conn, path)


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Apply the missing migrations in order, all in one transaction: a crash leaves the
    old schema intact, never a half-upgraded one."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Re-read under the write lock: another process may have migrated meanwhile.
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise _corrupt(path, f"its schema version {version} is newer than this ferry knows")
        for statements in MIGRATIONS[version:]:
            for sql in statements:
                conn.execute(sql)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID:d}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _corrupt(path: Path, why: str) -> FerryError:
    return FerryError(
        "BG_E_DATABASE_CORRUPT",
        f"the job store {path} cannot be used: {why}; it was left untouched",
    )


def _open_error(path: Path, exc: sqlite3.Error) -> FerryError:
    """An SQLite error while opening: busy means another process, anything else means the
    file cannot be read as a ferry store."""
    if _primary_code(exc) in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return FerryError("E_FAIL", f"the job store {path} is locked by another process: {exc}")
    return _corrupt(path, f"SQLite says: {exc}")


def runtime_error(path: Path, exc: sqlite3.Error) -> FerryError:
    code = _primary_code(exc)
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return FerryError("BG_E_DATABASE_CORRUPT", f"the job store {path} is corrupt: {exc}")
    if code == _SQLITE_FULL:
        return FerryError("ERROR_DISK_FULL", f"the job store {path} cannot grow: {exc}")
    return FerryError("E_FAIL", f"the job store {path} failed: {exc}")
