"""The PostgreSQL schema of the fleet store (store/postgres.py): versioned migrations, applied
once by whichever worker connects first, and PostgreSQL's errors named as FerryErrors.

Versioned like the SQLite file's (store/sqlite_file.py): entry N-1 takes version N-1 to N,
never edit an entry that has shipped. The version lives in ``ferry_schema`` (one row); a
database whose version is newer than this code knows is refused, untouched. Migrations run in
one transaction under an advisory lock, so workers starting together migrate exactly once and
a crash leaves the old schema intact.

Records are the codec's JSON (store/codec.py) kept as ``text``, exactly as SQLite keeps them:
lone surrogates are ``\\udcXX`` escapes and the text round-trips byte for byte (``jsonb``
would reorder and re-encode). Besides SQLite's columns, a job row carries its **lease**
(``lease_worker``, ``lease_epoch``, ``lease_expires``: who transfers it, the fencing token,
until when) and ``seq``, the insertion order ``load_all`` keeps. ``workers`` is the fleet's
roster with each worker's last heartbeat.
"""

from __future__ import annotations

import psycopg

from ..errors import FerryError

# "FRRY" as in SQLite's application_id: an advisory lock key of our own.
MIGRATION_LOCK = 0x46525259

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE jobs (
            seq BIGSERIAL UNIQUE,
            id TEXT PRIMARY KEY,
            owner_uid BIGINT NOT NULL,
            state TEXT NOT NULL,
            modified DOUBLE PRECISION NOT NULL,
            record TEXT NOT NULL,
            lease_worker TEXT,
            lease_epoch BIGINT NOT NULL DEFAULT 0,
            lease_expires TIMESTAMPTZ
        )""",
        "CREATE INDEX jobs_owner_uid ON jobs(owner_uid)",
        "CREATE INDEX jobs_lease_worker ON jobs(lease_worker) WHERE lease_worker IS NOT NULL",
        """CREATE TABLE files (
            job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            record TEXT NOT NULL,
            PRIMARY KEY (job_id, idx)
        )""",
        # No foreign key to jobs: an owed notification outlives the purge of its job.
        # ``worker``: who delivers it (the one that stored it, or who adopted it).
        """CREATE TABLE notifications (
            id BIGSERIAL PRIMARY KEY,
            job_id TEXT NOT NULL,
            next_attempt DOUBLE PRECISION NOT NULL,
            record TEXT NOT NULL,
            worker TEXT
        )""",
        """CREATE TABLE workers (
            id TEXT PRIMARY KEY,
            host TEXT NOT NULL,
            pid INTEGER NOT NULL,
            started TIMESTAMPTZ NOT NULL DEFAULT now(),
            heartbeat TIMESTAMPTZ NOT NULL DEFAULT now(),
            lease_seconds DOUBLE PRECISION NOT NULL,
            socket TEXT NOT NULL DEFAULT ''
        )""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: psycopg.Connection[tuple[object, ...]], where: str) -> None:
    """Bring the schema to SCHEMA_VERSION (``conn`` in autocommit mode)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS ferry_schema ("
            " one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one), version INTEGER NOT NULL)"
        )
        row = conn.execute("SELECT version FROM ferry_schema").fetchone()
        version = 0 if row is None else int(str(row[0]))
        if version > SCHEMA_VERSION:
            raise FerryError(
                "BG_E_DATABASE_CORRUPT",
                f"the job store {where} has schema version {version}, newer than this ferry "
                f"knows ({SCHEMA_VERSION}); run the newer ferryd that wrote it",
            )
        if version == 0:
            others = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema ="
                " current_schema() AND table_name IN ('jobs', 'files', 'notifications')"
            ).fetchone()
            if others and int(str(others[0])):
                raise FerryError(
                    "BG_E_DATABASE_CORRUPT",
                    f"the job store {where} has tables named like ferry's but no ferry "
                    "schema version; it was left untouched",
                )
        for statements in MIGRATIONS[version:]:
            for sql in statements:
                conn.execute(sql.encode())
        if row is None:
            conn.execute("INSERT INTO ferry_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
        else:
            conn.execute("UPDATE ferry_schema SET version = %s", (SCHEMA_VERSION,))


def redact(url: str) -> str:
    """The URL without a password, for messages and logs."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        d = conninfo_to_dict(url)
    except Exception:
        return "postgresql://…"
    host = d.get("host", "")
    return f"postgresql://{d.get('user', '')}@{host}/{d.get('dbname', '')}"


def runtime_error(where: str, exc: BaseException) -> FerryError:
    if isinstance(exc, psycopg.errors.UniqueViolation):
        return FerryError("E_FAIL", f"the job store {where}: duplicate row: {exc}")
    if isinstance(exc, psycopg.errors.DiskFull):
        return FerryError("ERROR_DISK_FULL", f"the job store {where} cannot grow: {exc}")
    return FerryError("E_FAIL", f"the job store {where} failed: {exc}")
