"""Fleet mode figures (docs/fleet.md, issue 13), on one machine and a throwaway PostgreSQL:

* small-file jobs throughput: N one-file jobs (4 KiB each, from nginx) done by 1 worker and
  by 2 workers on one queue, jobs/s from the first resume to the last TRANSFERRED;
* creations/s over one worker's socket on PostgreSQL (the asyncio client, 32 at a time),
  with the same against a SQLite ferryd for reference;
* failover time over K kills: a worker transferring a slow job is killed (-9); the time until
  another worker holds the job's lease (polled every 50 ms), with the lease period used.

    python benchmarks/fleet_bench.py [--jobs N] [--kills K] [--lease S]    (QUICK=1: smaller)

Raw figures: benchmarks/results/fleet.json. Runs as root (PostgreSQL runs as nobody).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from harness.env import short_tmpdir  # noqa: E402
from harness.faultserver import FaultServer  # noqa: E402
from harness.ferryd import Daemon  # noqa: E402
from harness.fleet import Fleet, wait_takeover  # noqa: E402
from harness.nginx import Nginx  # noqa: E402
from harness.postgres import PgCluster, available  # noqa: E402

from ferry.client.aio import AsyncClient  # noqa: E402

QUICK = bool(os.environ.get("QUICK"))


def throughput(pg: PgCluster, workers: int, jobs: int, base: Path, nginx: Nginx) -> float:
    with Fleet(pg, base, workers=workers, lease=15.0, max_background_jobs=8) as fleet:
        ids = []
        for i in range(jobs):
            d = fleet.daemons[i % workers]
            status, job = d.call("POST", "/v1/jobs", {"display_name": f"s{i}"})
            assert status == 201, job
            files = [
                {"remote_name": nginx.url(f"s{i % 64}"), "local_name": str(fleet.shared / f"o{i}")}
            ]
            d.call("POST", f"/v1/jobs/{job['id']}/files", {"files": files})
            ids.append((d, job["id"]))
        time.sleep(1.0)  # let every worker learn every job
        t0 = time.monotonic()
        for d, jid in ids:
            d.call("POST", f"/v1/jobs/{jid}/resume", {})
        watcher = fleet.daemons[0]
        fleet.wait(
            watcher,
            lambda js: sum(j["state"] == "TRANSFERRED" for j in js.values()) == jobs,
            "every small job",
            timeout=600,
        )
        return jobs / (time.monotonic() - t0)


async def _creations(socket: str, n: int, concurrency: int = 32) -> float:
    async with AsyncClient(socket) as client:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                await client.create_job(f"c{i}")

        await asyncio.gather(*(one(i) for i in range(50)))  # warm up
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - t0)


def creations(pg: PgCluster, n: int, base: Path) -> dict[str, float]:
    out = {}
    (base / "pg").mkdir(parents=True)
    with Fleet(pg, base / "pg", workers=1, lease=15.0) as fleet:
        out["postgresql"] = asyncio.run(_creations(fleet.daemons[0].socket, n))
    (base / "sq").mkdir()
    d = Daemon(base / "sq", log_level="info")
    d.start()
    try:
        out["sqlite"] = asyncio.run(_creations(d.socket, n))
    finally:
        d.stop()
    return out


def failover(pg: PgCluster, kills: int, lease: float, base: Path) -> list[float]:
    times: list[float] = []
    with FaultServer() as srv, Fleet(pg, base, workers=2, lease=lease) as fleet:
        for k in range(kills):
            url = srv.add(f"f{k}", b"z" * (4 << 20), rate=256 * 1024)
            a = fleet.daemons[k % 2]
            other = fleet.daemons[(k + 1) % 2]
            jid = fleet.create(a, f"f{k}", [(url, fleet.shared / f"f{k}")])
            holder = None
            deadline = time.monotonic() + 30
            while holder is None and time.monotonic() < deadline:
                for lease_row in other.call("GET", "/v1/fleet")[1]["leases"]:
                    if lease_row["job_id"] == jid:
                        holder = lease_row["worker"]
                time.sleep(0.05)
            victim = fleet.daemons[int(str(holder)[1:])]
            survivor = fleet.daemons[1 - int(str(holder)[1:])]
            victim.kill()
            took = wait_takeover(survivor, [jid], str(holder), timeout=10 * lease + 30)
            times.append(took if took is not None else 10 * lease + 30)
            print(f"  kill {k + 1}/{kills}: taken over in {times[-1]:.2f} s", flush=True)
            survivor.call("POST", f"/v1/jobs/{jid}/cancel", {})
            victim.start()
    return times


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=100 if QUICK else 400)
    p.add_argument("--creations", type=int, default=500 if QUICK else 3000)
    p.add_argument("--kills", type=int, default=5 if QUICK else 20)
    p.add_argument("--lease", type=float, default=3.0)
    p.add_argument("--skip-throughput", action="store_true")
    args = p.parse_args()
    why = available()
    if why or os.geteuid() != 0:
        print(f"fleet bench skipped: {why or 'needs root'}")
        return 0
    results: dict[str, Any] = {"jobs": args.jobs, "lease_seconds": args.lease}
    base = short_tmpdir("fb-")
    pg = PgCluster.start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up on SIGTERM too
    try:
        root = base / "www"
        root.mkdir()
        for i in range(64):
            (root / f"s{i}").write_bytes(os.urandom(4096))
        (base / "nginx").mkdir()
        nginx = Nginx(root, base / "nginx").start()
        try:
            for workers in () if args.skip_throughput else (1, 2):
                d = base / f"t{workers}"
                d.mkdir()
                rate = throughput(pg, workers, args.jobs, d, nginx)
                results[f"small_jobs_per_s_{workers}_workers"] = round(rate, 1)
                print(f"small-file jobs, {workers} worker(s): {rate:.1f} jobs/s", flush=True)
        finally:
            nginx.stop()
        if not args.skip_throughput:
            results["small_jobs_speedup"] = round(
                results["small_jobs_per_s_2_workers"] / results["small_jobs_per_s_1_workers"], 2
            )
        (base / "c").mkdir()
        c = creations(pg, args.creations, base / "c")
        results["creations_per_s"] = {k: round(v) for k, v in c.items()}
        print(f"creations over one socket: {results['creations_per_s']}", flush=True)
        (base / "f").mkdir()
        times = failover(pg, args.kills, args.lease, base / "f")
        results["failover_s"] = {
            "kills": len(times),
            "median": round(statistics.median(times), 2),
            "max": round(max(times), 2),
            "all": [round(t, 2) for t in times],
        }
        print(
            f"failover over {len(times)} kills (lease {args.lease:g} s): "
            f"median {statistics.median(times):.2f} s, max {max(times):.2f} s"
        )
    finally:
        pg.destroy()
        shutil.rmtree(base, ignore_errors=True)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "fleet.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
