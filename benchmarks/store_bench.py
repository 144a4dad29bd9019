"""The job store's write path: SqliteJobStore (its own thread, group commit) against the
synchronous SqliteStore, on a temporary database on disk (real fsyncs).

    python benchmarks/store_bench.py        (QUICK=1: fewer jobs)

Figures, each the best of a few runs:

* ``SqliteStore.insert_job``: one transaction per call on the calling thread, the floor
  for one caller (one fsync each);
* ``await SqliteJobStore.insert_job`` by one caller, sequentially: the same fsync plus the
  hand-over to the store's thread and back;
* the same with 8 (and 32) concurrent writer tasks: group commit lets each fsync carry the
  writes that queued up during the previous one;
* event-loop stall: a ticker task sleeps 1 ms at a time through each async run and records
  how late it wakes; the worst lateness is the longest the loop was blocked. The same ticker
  beside the synchronous store called on the loop (what the interim async face did) shows
  what the thread saves;
* loop CPU per write: the event-loop thread's CPU time (encoding, queueing, resolving)
  divided by the writes, i.e. what a write still costs the loop.

Printed, and written to benchmarks/results/store.json.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, machine_description, quick, say  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TICK = 0.001


def make_jobs(n: int) -> list[Any]:
    import os

    from ferry.model.job import Job, JobFile, Limits
    from ferry.model.token import Token

    owner = Token(os.getuid(), os.getgid(), (), None, "bench", False)
    limits, now = Limits(), time.time()
    jobs = []
    for i in range(n):
        job = Job.new(owner, f"bench-{i:06d}", now, limits, description="a benchmark job")
        job.files.append(JobFile(f"http://127.0.0.1:9/f-{i:06d}.bin", f"/tmp/ferry-b/f-{i:06d}"))
        jobs.append(job)
    return jobs


class Ticker:
    """Sleeps TICK at a time and records how late each wake-up is."""

    def __init__(self) -> None:
        self.late: list[float] = []
        self._stop = False

    async def run(self) -> None:
        while not self._stop:
            t0 = time.perf_counter()
            await asyncio.sleep(TICK)
            self.late.append(time.perf_counter() - t0 - TICK)

    def stop(self) -> None:
        self._stop = True

    def summary(self) -> dict[str, float]:
        late = sorted(self.late) or [0.0]
        return {
            "max_ms": late[-1] * 1e3,
            "p99_ms": late[int(len(late) * 0.99)] * 1e3,
            "median_ms": statistics.median(late) * 1e3,
        }


async def timed(run: Callable[[], Awaitable[None]], n: int) -> dict[str, Any]:
    """Run ``run`` (n writes) beside a ticker: rate, loop stall and loop CPU per write."""
    ticker = Ticker()
    tick = asyncio.create_task(ticker.run())
    await asyncio.sleep(0.01)
    cpu0, t0 = time.thread_time(), time.perf_counter()
    await run()
    elapsed, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
    ticker.stop()
    await tick
    # The ticker's own wake-ups are in the loop's CPU time too; they are a few µs each.
    return {
        "per_second": n / elapsed,
        "stall": ticker.summary(),
        "loop_cpu_us_per_write": cpu / n * 1e6,
    }


async def bench(tmp: Path, n: int, repeat: int) -> dict[str, Any]:
    from ferry.store.sqlite import SqliteJobStore, SqliteStore

    figures: dict[str, Any] = {}

    def keep(name: str, runs: list[dict[str, Any]]) -> None:
        best = max(runs, key=lambda r: r["per_second"])
        worst_stall = max(r["stall"]["max_ms"] for r in runs)
        best = dict(best, worst_stall_ms=worst_stall)
        figures[name] = best
        say(
            f"  {name:<46} {best['per_second']:9,.0f} /s   loop stall max {worst_stall:6.2f} ms"
            f" (p99 {best['stall']['p99_ms']:.2f})   loop CPU {best['loop_cpu_us_per_write']:5.1f}"
            " us/write"
        )

    # The synchronous store, called on the loop: the old interim face.
    runs = []
    for r in range(repeat):
        db = SqliteStore.open(tmp / f"sync{r}" / "ferry.db")
        jobs = make_jobs(n)

        async def sync_run(db: SqliteStore = db, jobs: list[Any] = jobs) -> None:
            for i, job in enumerate(jobs):
                db.insert_job(job)
                if i % 16 == 0:
                    await asyncio.sleep(0)  # let the ticker see how late it is

        runs.append(await timed(sync_run, n))
        db.close()
    keep("SqliteStore.insert_job (sync, on the loop)", runs)

    async def writers(store: SqliteJobStore, jobs: list[Any], k: int) -> None:
        async def one(mine: list[Any]) -> None:
            for job in mine:
                await store.insert_job(job)

        await asyncio.gather(*[one(jobs[i::k]) for i in range(k)])

    for k in (1, 8, 32):
        runs = []
        for r in range(repeat):
            store = SqliteJobStore.open(tmp / f"async{k}-{r}" / "ferry.db")
            jobs = make_jobs(n)
            runs.append(
                await timed(lambda s=store, j=jobs, k=k: writers(s, j, k), n)  # type: ignore[misc]
            )
            await store.close()
        label = "sequential" if k == 1 else f"{k} concurrent writers"
        keep(f"await SqliteJobStore.insert_job, {label}", runs)

    # Progress checkpoints of 8 running jobs, concurrently: the other hot path.
    runs = []
    for r in range(repeat):
        store = SqliteJobStore.open(tmp / f"progress-{r}" / "ferry.db")
        jobs = make_jobs(8)
        for job in jobs:
            await store.insert_job(job)

        async def checkpoints(store: SqliteJobStore = store, jobs: list[Any] = jobs) -> None:
            async def one(job: Any) -> None:
                for i in range(n // 8):
                    job.files[0].bytes_transferred = (i + 1) * 65536
                    await store.save_progress(job, 0)

            await asyncio.gather(*[one(job) for job in jobs])

        runs.append(await timed(checkpoints, n // 8 * 8))
        await store.close()
    keep("await SqliteJobStore.save_progress, 8 jobs", runs)
    return figures


def fsync_time(tmp: Path) -> float:
    """The median time of one fsync of a 4 KiB append, for scale."""
    import os

    fd = os.open(tmp / "fsync-probe", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        times = []
        for _ in range(200):
            os.write(fd, b"x" * 4096)
            t0 = time.perf_counter()
            os.fsync(fd)
            times.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
    return statistics.median(times)


def main() -> int:
    q = quick()
    n, repeat = (400, 2) if q else (2000, 3)
    tmp = Path(tempfile.mkdtemp(prefix="fsb-", dir="/tmp"))  # on disk here, not tmpfs
    try:
        say(f"store write path ({n} jobs per run, best of {repeat})" + (" (QUICK)" if q else ""))
        fsync = fsync_time(tmp)
        say(f"  one fsync of a 4 KiB append: {fsync * 1e3:.3f} ms (median)")
        figures = asyncio.run(bench(tmp, n, repeat))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"machine": machine_description(), "fsync_ms": fsync * 1e3, "figures": figures}
    (RESULTS / "store.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
