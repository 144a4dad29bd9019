"""The job store's write path: SqliteJobStore (its own thread, group commit) against the
synchronous SqliteStore, on a temporary database on disk (real fsyncs).

    python benchmarks/store_bench.py        (QUICK=1: fewer jobs)

Figures, each the best of a few runs:

* ``SqliteStore.insert_job``: one transaction per call on the calling thread, the floor
  for one caller (one fsync each);
* ``await SqliteJobStore.insert_job`` by one caller, sequentially: the same fsync plus the
  hand-over to the store's thread and back;
* the same with 8 (and 32) concurrent writer tasks: group commit lets each fsync carry the
  writes that queued up during the previous one (``group``: the mean writes per commit);
* ``save_progress`` checkpoints of 8 jobs at once, the other hot path;
* event-loop stall: a probe thread posts a stamped callback to the loop every millisecond
  and records how long the loop takes to run it (LagProbe); the worst delay is the longest
  the loop was unresponsive. The idle loop gives the probe's floor (thread wake-ups; a busy
  machine adds its own), and the synchronous store called on the loop (what the interim
  async face did) shows what the thread saves. With many writers the delay also holds the
  loop's legitimate work (resuming the writers, encoding their jobs), not only blocking;
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
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.env import ROOT, say  # noqa: E402

from benchmarks.common import machine_description, quick  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


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


class LagProbe:
    """How long the event loop takes to run a callback posted to it: a thread posts one,
    stamped, every millisecond (``call_soon_threadsafe``), and the loop records its delay.
    The delay is the loop's unresponsiveness at that moment — whatever blocked it (an
    fsync on the loop, waiting for the GIL, a long callback) — at a resolution of tens of
    microseconds, where a sleeping ticker would see epoll's whole milliseconds."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lags: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._post, daemon=True)

    def _post(self) -> None:
        while not self._stop.wait(0.001):
            self.loop.call_soon_threadsafe(self._hit, time.perf_counter())

    def _hit(self, posted: float) -> None:
        self.lags.append(time.perf_counter() - posted)

    def __enter__(self) -> LagProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        lags = sorted(self.lags) or [0.0]
        return {
            "max_ms": lags[-1] * 1e3,
            "p99_ms": lags[int(len(lags) * 0.99)] * 1e3,
            "median_ms": statistics.median(lags) * 1e3,
        }


async def timed(run: Callable[[], Awaitable[None]], n: int) -> dict[str, Any]:
    """Run ``run`` (n writes) beside a lag probe: rate, loop stall and loop CPU per write."""
    with LagProbe(asyncio.get_running_loop()) as probe:
        await asyncio.sleep(0.01)
        cpu0, t0 = time.thread_time(), time.perf_counter()
        await run()
        elapsed, cpu = time.perf_counter() - t0, time.thread_time() - cpu0
    # The probe's callbacks are in the loop's CPU time too: a few µs a millisecond.
    return {
        "per_second": n / elapsed,
        "stall": probe.summary(),
        "loop_cpu_us_per_write": cpu / n * 1e6,
    }


async def bench(tmp: Path, n: int, repeat: int) -> dict[str, Any]:
    """Each configuration once per round, rounds interleaved (the disk's speed drifts), best
    round kept."""
    from ferry.store.sqlite import SqliteJobStore, SqliteStore

    runs: dict[str, list[dict[str, Any]]] = {}

    async def sync_on_loop(path: Path) -> dict[str, Any]:
        db = SqliteStore.open(path)
        jobs = make_jobs(n)

        async def run() -> None:
            for job in jobs:
                db.insert_job(job)
                # One write per callback, as one per request handler: the loop runs
                # between writes, and each write blocks it for one transaction.
                await asyncio.sleep(0)

        try:
            return await timed(run, n)
        finally:
            db.close()

    async def inserts(path: Path, k: int) -> dict[str, Any]:
        store = SqliteJobStore.open(path)
        jobs = make_jobs(n)

        async def one(mine: list[Any]) -> None:
            for job in mine:
                await store.insert_job(job)

        async def run() -> None:
            await asyncio.gather(*[one(jobs[i::k]) for i in range(k)])

        try:
            return with_groups(await timed(run, n), store)
        finally:
            await store.close()

    async def checkpoints(path: Path, k: int) -> dict[str, Any]:
        store = SqliteJobStore.open(path)
        jobs = make_jobs(k)
        for job in jobs:
            await store.insert_job(job)
        groups0, writes0 = store._thread.groups, store._thread.writes

        async def one(job: Any) -> None:
            for i in range(n // k):
                job.files[0].bytes_transferred = (i + 1) * 65536
                await store.save_progress(job, 0)

        async def run() -> None:
            await asyncio.gather(*[one(job) for job in jobs])

        try:
            return with_groups(await timed(run, n // k * k), store, groups0, writes0)
        finally:
            await store.close()

    async def idle(path: Path) -> dict[str, Any]:
        """The probe alone for a while: the floor under every stall (thread wake-ups)."""
        return await timed(lambda: asyncio.sleep(0.5), 1)

    configs: list[tuple[str, Callable[[Path], Awaitable[dict[str, Any]]]]] = [
        ("idle loop (the probe's own floor)", idle),
        ("SqliteStore.insert_job (sync, on the loop)", sync_on_loop),
        ("await SqliteJobStore.insert_job, sequential", lambda p: inserts(p, 1)),
        ("await SqliteJobStore.insert_job, 8 writers", lambda p: inserts(p, 8)),
        ("await SqliteJobStore.insert_job, 32 writers", lambda p: inserts(p, 32)),
        ("await SqliteJobStore.save_progress, 8 jobs", lambda p: checkpoints(p, 8)),
    ]
    for r in range(repeat):
        for c, (name, run) in enumerate(configs):
            runs.setdefault(name, []).append(await run(tmp / f"r{r}-c{c}" / "ferry.db"))

    figures: dict[str, Any] = {}
    for name, results in runs.items():
        best = dict(max(results, key=lambda x: x["per_second"]))
        best["worst_stall_ms"] = max(x["stall"]["max_ms"] for x in results)
        best["all_rates"] = [round(x["per_second"]) for x in results]
        figures[name] = best
        group = f"   group {best['mean_group']:4.1f}" if "mean_group" in best else ""
        if name.startswith("idle"):
            say(f"  {name:<44} {'':>10}   stall max {best['worst_stall_ms']:6.2f} ms,"
                f" p99 {best['stall']['p99_ms']:5.2f}")  # fmt: skip
            continue
        say(
            f"  {name:<44} {best['per_second']:7,.0f} /s   stall max {best['worst_stall_ms']:6.2f}"
            f" ms, p99 {best['stall']['p99_ms']:5.2f}   loop CPU"
            f" {best['loop_cpu_us_per_write']:5.1f} us/write{group}"
        )
    return figures


def with_groups(
    figures: dict[str, Any], store: Any, groups0: int = 0, writes0: int = 0
) -> dict[str, Any]:
    groups = store._thread.groups - groups0
    figures["mean_group"] = (store._thread.writes - writes0) / groups if groups else 0.0
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
