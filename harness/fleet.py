"""A fleet of real ferryd processes on one throwaway PostgreSQL database (harness/postgres.py),
each with its own socket and state directory, all writing into one shared directory — for the
fleet tests and benchmarks.

    with PgCluster.start() as pg, Fleet(pg, base, workers=3, lease=3) as fleet:
        a, b, c = fleet.daemons
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Self

from harness.ferryd import Daemon
from harness.postgres import PgCluster

_names = itertools.count()


class Fleet:
    def __init__(
        self,
        pg: PgCluster,
        base: Path,
        workers: int = 3,
        lease: float = 3.0,
        max_background_jobs: int = 50,
        extra: str = "",
        system: bool = False,
    ) -> None:
        self.pg = pg
        self.base = base
        self.lease = lease
        self.dbname = f"fleet_{os.getpid()}_{next(_names)}"
        self.url = pg.create_database(self.dbname)
        self.shared = base / "shared"
        self.shared.mkdir(exist_ok=True)
        self.credentials_key = base / "credentials.key"
        self.daemons: list[Daemon] = []
        for i in range(workers):
            d = base / f"w{i}"
            d.mkdir(exist_ok=True)
            config = (
                f"[daemon]\nmax_background_jobs = {max_background_jobs}\n{extra}"
                f'[store]\nurl = "{self.url}"\nlease_seconds = {lease}\nworker_id = "w{i}"\n'
                # One sealing key for the whole fleet, as docs/fleet.md asks.
                f'credentials_key = "{self.credentials_key}"\n'
            )
            self.daemons.append(Daemon(d, config=config, log_level="info", system=system))

    def start(self) -> Self:
        for d in self.daemons:
            d.start()
        return self

    def stop(self) -> list[int]:
        codes = []
        for d in self.daemons:
            if d.alive():
                codes.append(d.stop())
        return codes

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        for d in self.daemons:
            if d.proc is not None:
                with contextlib.suppress(OSError):
                    os.kill(d.pid, signal.SIGCONT)  # a stopped worker must be able to stop
        self.stop()
        with contextlib.suppress(Exception):
            self.pg.drop_database(self.dbname)

    # ---- jobs ------------------------------------------------------------------------------

    def create(
        self,
        d: Daemon,
        name: str,
        pairs: list[tuple[str, Path]],
        setup: Callable[[str], None] | None = None,
        **props: Any,
    ) -> str:
        """A job with these files, resumed; ``setup(job_id)`` runs before the resume."""
        status, job = d.call("POST", "/v1/jobs", {"display_name": name, **props})
        assert status == 201, job
        files = [{"remote_name": r, "local_name": str(p)} for r, p in pairs]
        status, body = d.call("POST", f"/v1/jobs/{job['id']}/files", {"files": files})
        assert status == 200, body
        if setup is not None:
            setup(str(job["id"]))
        status, body = d.call("POST", f"/v1/jobs/{job['id']}/resume", {})
        assert status == 200, body
        return str(job["id"])

    def jobs(self, d: Daemon) -> dict[str, dict[str, Any]]:
        status, body = d.call("GET", "/v1/jobs?all_users=true")
        assert status == 200, body
        return {j["id"]: j for j in body["jobs"]}

    def wait(
        self,
        d: Daemon,
        check: Callable[[dict[str, dict[str, Any]]], bool],
        what: str,
        timeout: float = 120.0,
    ) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.jobs(d)
            if check(jobs):
                return jobs
            if time.monotonic() > deadline:
                states: dict[str, int] = {}
                for j in jobs.values():
                    states[j["state"]] = states.get(j["state"], 0) + 1
                errors = [j.get("error") for j in jobs.values() if j.get("error")][:3]
                raise AssertionError(f"timed out waiting for {what}: {states}; {errors}")
            time.sleep(0.2)


# ---- checks shared by the fleet tests, benchmark and torture ------------------------------------


def lease_holders(d: Daemon) -> dict[str, str]:
    """job id -> the worker holding its lease, as worker ``d`` sees the fleet."""
    status, doc = d.call("GET", "/v1/fleet")
    if status != 200:
        raise RuntimeError(f"GET /v1/fleet answered {status}: {doc}")
    return {str(r["job_id"]): str(r["worker"]) for r in doc["leases"]}


def wait_takeover(
    survivor: Daemon,
    job_ids: Collection[str],
    victim: str,
    timeout: float,
    done: Callable[[str], bool] | None = None,
) -> float | None:
    """Seconds until every job of ``job_ids`` is leased by another worker than ``victim``
    (a job for which ``done(job_id)`` is true counts as taken over), polled every 50 ms
    through ``survivor``; None when ``timeout`` passes first."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        holders = lease_holders(survivor)
        if all(
            holders.get(j, victim) != victim or (done is not None and done(j)) for j in job_ids
        ):
            return time.monotonic() - t0
        time.sleep(0.05)
    return None


def overlapping_fetches(server: Any) -> list[str]:
    """The file names of the fault server's responses that overlapped another response of
    the same file: one file belongs to one job, so that would be two workers on one job at
    once (a range fetched twice at the same time)."""
    return sorted({r.name for r in list(server.responses) if r.name in r.overlapped})
