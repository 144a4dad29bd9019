"""The in-process work of the create and start paths, to count under callgrind (issue #15):
instruction counts do not move with a shared VM's load, wall times do.

    python benchmarks/fillstore.py /tmp/f.db 20000
    PYTHONPATH=SRC valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python benchmarks/store_instr.py create
    PYTHONPATH=SRC valgrind ... .venv/bin/python benchmarks/store_instr.py start /tmp/f.db

``create``: 2,000 x (``Job.new``, the insert's encoding, ``job_view`` and its JSON);
``start``: a copy of the store opened, ``JobTable.load``, one housekeeping sweep, closed.
Run it with each checkout's ``src`` on PYTHONPATH and compare ``Collected``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path


def create(count: int = 2000) -> None:
    from ferry.model.job import Job, Limits
    from ferry.model.token import Token
    from ferry.protocol.views import job_view
    from ferry.store.sqlite_writes import write_insert_job

    owner = Token(os.getuid(), os.getgid(), tuple(os.getgroups()), None, "owner", False)
    limits = Limits()
    for i in range(count):
        job = Job.new(owner, f"job{i}", 1.0, limits)
        write_insert_job(job)
        json.dumps(job_view(job))


def start(db: Path) -> None:
    from ferry.model.job import Job
    from ferry.service.events import EventBus
    from ferry.service.housekeeping import Housekeeper
    from ferry.service.runqueue import RunQueue
    from ferry.service.table import JobTable
    from ferry.store.sqlite import SqliteJobStore

    with tempfile.TemporaryDirectory(prefix="ferry-instr-") as tmp:
        copy = Path(tmp) / "ferry.db"
        shutil.copyfile(db, copy)

        async def main() -> None:
            store = SqliteJobStore.open(copy)
            table = JobTable(store, EventBus(), RunQueue())
            await table.load()

            async def cancel(job: Job, unless_after: float) -> None:
                pass

            await Housekeeper(table, store, cancel).sweep(1e9, 1e9)
            await store.close()

        asyncio.run(main())


if __name__ == "__main__":
    if sys.argv[1:2] == ["create"]:
        create()
    elif sys.argv[1:2] == ["start"] and len(sys.argv) == 3:
        start(Path(sys.argv[2]))
    else:
        print(__doc__, file=sys.stderr)
        raise SystemExit(2)
