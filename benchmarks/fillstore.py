"""Fill a ferry job store with N suspended one-file jobs, fast, while no ferryd runs.

    python benchmarks/fillstore.py STATE_DIR/ferry.db N

It goes through the store's own API (``SqliteStore.insert_job`` with ``Job.new``), so the
rows are exactly what ferryd writes. Only durability is relaxed: the connection runs with
``synchronous=OFF`` while filling (a benchmark fixture needs no fsync per job) and closing
the store checkpoints everything into the database file.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import harness  # noqa: E402, F401  (a bare checkout: puts src/ on the import path)


def fill(db: Path, count: int) -> float:
    """Insert ``count`` jobs; returns the seconds it took."""
    from ferry.model.job import Job, JobFile, Limits
    from ferry.model.token import Token
    from ferry.security.peer import user_name
    from ferry.store.sqlite import SqliteStore

    uid, gid = os.getuid(), os.getgid()
    owner = Token(uid, gid, tuple(os.getgroups()), None, user_name(uid), uid == 0)
    limits = Limits()
    t0 = time.perf_counter()
    store = SqliteStore.open(db)
    try:
        conn = store._conn  # the fixture's one concession: no fsync per job
        assert conn is not None
        conn.execute("PRAGMA synchronous = OFF")
        now = time.time()
        for i in range(count):
            job = Job.new(owner, f"stored-{i:06d}", now, limits, description="benchmark job")
            job.files.append(
                JobFile(f"http://127.0.0.1:9/file-{i:06d}.bin", f"/tmp/ferry-bench/file-{i:06d}")
            )
            store.insert_job(job)
    finally:
        store.close()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    elapsed = fill(Path(args[0]), int(args[1]))
    print(f"filled {args[0]} with {args[1]} jobs in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
