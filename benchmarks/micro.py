"""Micro-benchmarks of ferry's hot paths, with timeit (no extra dependency).

    python benchmarks/micro.py            (QUICK=1: fewer repetitions)

* job_view, and the store round trip job_record -> JSON -> job_from_record, of a job with
  one file;
* SqliteStore.insert_job and save_progress on a temporary database (real fsyncs: this is
  what a job creation and a progress checkpoint cost);
* API dispatch: GET /v1/status through a running ferryd on one kept-alive connection;
* the chunk write loop: os.write of 1 MiB chunks to a temporary file (the floor under the
  engine's pwrite of each received chunk).

Each figure is the best of several repeats (timeit's advice: the minimum is the least
disturbed). Results are printed and written to benchmarks/results/micro.json.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.env import ROOT, say  # noqa: E402
from harness.ferryd import Daemon  # noqa: E402
from harness.files import MIB  # noqa: E402

from benchmarks.common import machine_description, quick  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def best(fn: Callable[[], object], number: int, repeat: int) -> float:
    """Seconds per call: the best of ``repeat`` runs of ``number`` calls."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number


def sample_job() -> Any:
    from ferry.model.job import Job, JobFile, Limits
    from ferry.model.token import Token

    owner = Token(os.getuid(), os.getgid(), (), None, "bench", False)
    job = Job.new(owner, "micro", time.time(), Limits(), description="a benchmark job")
    job.files.append(
        JobFile("http://127.0.0.1:8080/some/file.bin", "/tmp/ferry-micro/file.bin", 1 << 30)
    )
    return job


def main() -> int:
    from ferry.protocol.views import job_view
    from ferry.store import codec
    from ferry.store.sqlite import SqliteStore

    q = quick()
    rep = 3 if q else 5
    figures: dict[str, dict[str, float]] = {}

    def record(name: str, per_call: float, unit: str = "us") -> None:
        scale = {"us": 1e6, "ms": 1e3}[unit]
        figures[name] = {"seconds_per_call": per_call, "calls_per_second": 1 / per_call}
        say(f"  {name:<44} {per_call * scale:10.2f} {unit}/call  {1 / per_call:12,.0f} /s")

    say("micro-benchmarks" + (" (QUICK)" if q else ""))
    job = sample_job()
    record("job_view", best(lambda: job_view(job), 2000 if q else 20000, rep))
    dumps = json.JSONEncoder(separators=(",", ":")).encode

    def round_trip() -> None:
        rec = json.loads(dumps(codec.job_record(job)))
        files = [codec.file_from_record(json.loads(dumps(codec.file_record(f)))) for f in job.files]
        codec.job_from_record(rec, files)

    record("Job record round trip (to/from JSON)", best(round_trip, 2000 if q else 20000, rep))

    tmp = Path(tempfile.mkdtemp(prefix="fm-", dir="/tmp"))
    try:
        store = SqliteStore.open(tmp / "state" / "ferry.db")
        try:
            n = 200 if q else 1000
            jobs = [sample_job() for _ in range(n * rep)]
            it = iter(jobs)
            record("SqliteStore.insert_job (fsync)",
                   best(lambda: store.insert_job(next(it)), n, rep))
            target = jobs[0]
            counter = [0]

            def progress() -> None:
                counter[0] += 1
                target.record_progress(0, counter[0] * 65536, time.time())
                store.save_progress(target, 0)

            record("SqliteStore.save_progress (fsync)", best(progress, n, rep))
        finally:
            store.close()

        d = Daemon(tmp / "d", log_level="warning")
        d.start()
        try:
            import ferry

            with ferry.Client(socket=d.socket) as c:
                c.status()
                record("GET /v1/status via ferry.Client (kept alive)",
                       best(c.status, 500 if q else 3000, rep))
        finally:
            d.stop()

        chunk = os.urandom(MIB)
        chunks = 64 if q else 256
        path = tmp / "chunks.bin"

        def write_loop() -> None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                for _ in range(chunks):
                    os.write(fd, chunk)
            finally:
                os.close(fd)

        per_loop = best(write_loop, 1, rep)
        figures["os.write 1 MiB chunks"] = {
            "seconds_per_call": per_loop / chunks,
            "calls_per_second": chunks / per_loop,
            "mib_per_second": chunks / per_loop,
        }
        say(f"  {'os.write of 1 MiB chunks':<44} {per_loop / chunks * 1e6:10.2f} us/call  "
            f"{chunks / per_loop:12,.0f} MiB/s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "micro.json"
    out.write_text(json.dumps(
        {"machine": machine_description(), "quick": q, "figures": figures}, indent=2) + "\n")
    say(f"micro figures: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
