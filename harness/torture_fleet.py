"""Torture of fleet mode (issue 16, ``make torture``): real ferryd fleet workers on a
throwaway PostgreSQL (harness/postgres.py, harness/fleet.py) download files of mixed sizes
from nginx and the fault server into one shared directory, while a fleet worker holding
leases is SIGKILLed at random moments mid-transfer and restarted, again and again.

Per kill: the victim is a worker holding at least one lease of a job with bytes already
transferred; the time until another worker holds every lease the victim held (or the job is
done) is the takeover time (``Report.fleet_takeovers``: median and max in the summary).
Only then is the victim restarted (under the same worker id), a random moment later the next
kill comes. Jobs keep being created so there is always something to kill mid-transfer; some
carry a password (Basic SERVER credentials, set through the library) and a write-only
custom header, both markers of harness/secrets.py.

At the end it checks:

* every job reaches its expected final state: ACKNOWLEDGED (completed, on a random worker)
  or CANCELLED (some are cancelled once TRANSFERRED, some mid-transfer);
* every completed file has its source's SHA-256, no cancelled job left a file, no
  temporary (``.*.ferry-part``) and nothing unexpected is left in the shared directory;
* no file was fetched by two workers at once (the fault server's overlapping responses)
  and no nginx file was served more than once beyond a checkpoint window per kill or error;
* the write-only headers reached the server (they were used, not just stored);
* no marker secret is in the PostgreSQL tables (SELECT dump) or in the cluster's files.

``fleet_kill_phase(work, report, seed=, q=, kills=)``; needs root and PostgreSQL (a note
says why it was skipped otherwise).
"""

from __future__ import annotations

import os
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import secrets
from harness.env import ensure_tools, say
from harness.faultserver import FaultServer
from harness.ferryd import Daemon
from harness.files import KIB, MIB, make_file
from harness.fleet import Fleet, lease_holders, overlapping_fetches, wait_takeover
from harness.nginx import Nginx
from harness.postgres import PgCluster, available
from harness.report import Report
from harness.torture import CHECKPOINT_WINDOW, IN_FLIGHT, TEMP_GLOB, TFile, check_file

__all__ = ["fleet_kill_phase"]

FINAL = {"ACKNOWLEDGED", "CANCELLED"}
HEADER = "X-Ferry-Torture-Token"


@dataclass
class FJob:
    name: str
    fate: str  # "complete", "cancel" (once TRANSFERRED) or "cancel-early"
    files: list[TFile]
    created: float
    id: str = ""
    expected: str | None = None
    done_at: float | None = None
    errors: int = 0
    header: str | None = None
    refusals: dict[str, int] = field(default_factory=dict)


def fleet_kill_phase(
    work: Path,
    report: Report,
    *,
    seed: int,
    q: bool,
    kills: int = 10,
    workers: int = 3,
    lease: float = 3.0,
    rate: int = 384 * KIB,
    timeout: float | None = None,
) -> None:
    if kills <= 0:
        return
    why = available()
    if why is None and os.geteuid() != 0:
        why = "fleet workers run as root here (PostgreSQL runs as nobody)"
    if why:
        report.note(f"fleet kills skipped: {why}")
        return
    rng = random.Random(seed ^ 0xF1EE7)
    started = time.monotonic()
    timeout = timeout if timeout is not None else 120.0 + kills * (4 * lease + 12)
    work.mkdir(parents=True, exist_ok=True)
    www = work / "www"
    (www / "pool").mkdir(parents=True)
    sizes = [20 * KIB, 300 * KIB, 1 * MIB, 3 * MIB] if q else [20 * KIB, 300 * KIB, 1 * MIB,
                                                               4 * MIB, 9 * MIB]
    pool = {f"p{i}": (s, make_file(www / "pool" / f"p{i}", s)) for i, s in enumerate(sizes)}
    tools = ensure_tools(["nginx"], install=False)
    nginx = None
    if tools.get("nginx"):
        nginx = Nginx(www, work / "nginx", rate=rate, binary=tools["nginx"]).start()
    fault = FaultServer(root=www, rate=rate, drop_probability=0.03, seed=seed).start()
    (work / "fleet").mkdir()
    pg = PgCluster.start()
    try:
        fleet = Fleet(pg, work / "fleet", workers=workers, lease=lease, max_background_jobs=6)
    except BaseException:
        pg.destroy()
        fault.stop()
        if nginx is not None:
            nginx.stop()
        raise
    user = "fleet-user"
    jobs: list[FJob] = []
    kill_times: list[float] = []
    say(f"fleet phase: {kills} kills of a fleet worker ({workers} workers, lease {lease:g} s, "
        f"files up to {max(sizes) // MIB} MiB at {rate // KIB} KiB/s)")
    try:
        fleet.start()

        def live() -> list[Daemon]:
            return [d for d in fleet.daemons if d.alive()]

        def new_job() -> None:
            n = len(jobs)
            files = []
            for k in range(rng.choice((1, 1, 2))):
                name = rng.choice(list(pool))
                size, sha = pool[name]
                link = www / f"fj{n:03d}-{k}.bin"
                link.symlink_to(www / "pool" / name)
                server = "nginx" if nginx is not None and rng.random() < 0.4 else "fault"
                url = nginx.url(link.name, route="slow") if nginx is not None and \
                    server == "nginx" else fault.url(link.name)
                files.append(TFile(server, link.name, url, fleet.shared / f"fj{n:03d}-{k}",
                                   size, sha))
            fate = rng.choices(("complete", "cancel", "cancel-early"), (0.75, 0.1, 0.15))[0]
            fj = FJob(f"fj{n:03d}", fate, files, time.monotonic())
            d = rng.choice(live())
            with_secrets = rng.random() < 0.5

            def setup(jid: str) -> None:
                fj.id = jid
                if with_secrets:
                    _add_secrets(d, fj, user)

            fleet.create(d, fj.name, [(f.url, f.local) for f in files], setup)
            jobs.append(fj)
            report.jobs += 1

        for _ in range(3 * workers):
            new_job()
        deadline = started + timeout
        next_kill = time.monotonic() + rng.uniform(1.0, 3.0)
        while time.monotonic() < deadline:
            views = _views(live(), report)
            for fj in jobs:
                _drive(fleet, fj, views.get(fj.id), rng, report, live())
            unfinished = [j for j in jobs if j.done_at is None]
            if len(kill_times) < kills:
                if sum(1 for j in unfinished if j.expected is None) < 2 * workers:
                    new_job()
                if time.monotonic() >= next_kill and _kill_one(
                    fleet, views, jobs, lease, rng, report, kill_times
                ):
                    next_kill = time.monotonic() + rng.uniform(0.5, 2.5)
                    if not q or len(kill_times) == kills:
                        say(f"  fleet kill {len(kill_times)} at "
                            f"{time.monotonic() - started:.0f} s, {len(jobs)} jobs so far")
            elif not unfinished:
                break
            time.sleep(0.2)
        else:
            stuck = [f"{j.name}({j.fate}, expected {j.expected})" for j in jobs
                     if j.done_at is None]
            report.fail(f"fleet phase timed out after {timeout:.0f} s; {len(kill_times)} "
                        f"kills; not finished: {stuck[:20]}")
        report.fleet_kills += len(kill_times)
        say(f"  every fleet job final at {time.monotonic() - started:.0f} s")
        for d in fleet.daemons:
            if not d.alive() and d.proc is not None:
                report.fail(f"fleet worker {d.base.name} died by itself:\n{d.log(3000)}")
        _verify(fleet, jobs, kill_times, nginx, fault, report)
        secrets.scan_postgres(fleet.url, report)
    finally:
        codes = []
        for d in fleet.daemons:
            if d.alive():
                codes.append((d.base.name, d.stop()))
        for name, code in codes:
            if code != 0:
                report.fail(f"fleet worker {name} exited with {code} on SIGTERM")
        try:
            secrets.scan_tree(pg.root, report)  # the cluster's files: tables, WAL, logs
        finally:
            fleet.__exit__(None, None, None)
            pg.destroy()
            if nginx is not None:
                nginx.stop()
            fault.stop()
    t = report.fleet_takeovers[-len(kill_times):] if kill_times else []
    took = f"median {statistics.median(t):.1f} s, max {max(t):.1f} s" if t else "n/a"
    say(f"  {len(kill_times)} fleet kills, {len(jobs)} jobs, takeover {took}, "
        f"{time.monotonic() - started:.0f} s")


def _add_secrets(d: Daemon, fj: FJob, user: str) -> None:
    """Basic SERVER credentials and a write-only header, markers both, set through the
    library (the fault server and nginx never challenge: the password is only stored)."""
    import ferry

    password = secrets.marker("fleet-basic")
    fj.header = secrets.marker("fleet-header")
    with ferry.Client(socket=d.socket) as c:
        job = c.get_job(fj.id)
        job.set_credentials("SERVER", "BASIC", user, password)
        job.set_http_options(custom_headers=[f"{HEADER}: {fj.header}"],
                             custom_headers_write_only=True)


def _views(daemons: list[Daemon], report: Report) -> dict[str, dict[str, Any]]:
    """Every job as the first worker that answers sees it (the answer is scanned)."""
    for d in daemons:
        try:
            status, body = d.call("GET", "/v1/jobs?all_users=true")
        except OSError:
            continue
        if status == 200:
            secrets.scan_bytes(repr(body), f"GET /v1/jobs on fleet worker {d.base.name}",
                               report)
            return {j["id"]: j for j in body["jobs"]}
    return {}


def _drive(
    fleet: Fleet, fj: FJob, view: dict[str, Any] | None, rng: random.Random, report: Report,
    daemons: list[Daemon],
) -> None:
    if fj.done_at is not None or view is None or not daemons:
        return
    state = view["state"]
    fj.errors = max(fj.errors, int(view.get("error_count") or 0))
    d = rng.choice(daemons)  # any worker may be asked
    try:
        if state in FINAL:
            if fj.expected is None:
                fj.expected = "ACKNOWLEDGED" if fj.fate == "complete" else "CANCELLED"
            if state != fj.expected:
                report.fail(f"{fj.name} is {state}, expected {fj.expected}")
            fj.done_at = time.monotonic()
        elif state == "TRANSIENT_ERROR":
            d.call("POST", f"/v1/jobs/{fj.id}/resume", {})
        elif state == "ERROR":
            err = view.get("error") or {}
            report.fail(f"{fj.name} went to ERROR: {err.get('code')}: {err.get('description')}")
            d.call("POST", f"/v1/jobs/{fj.id}/resume", {})
        elif state == "TRANSFERRED" or (
            fj.fate == "cancel-early" and view["progress"]["bytes_transferred"] > 0
        ):
            verb = "complete" if fj.fate == "complete" else "cancel"
            fj.expected = "ACKNOWLEDGED" if verb == "complete" else "CANCELLED"
            status, body = d.call("POST", f"/v1/jobs/{fj.id}/{verb}", {})
            if status != 200:
                key = str(body)[:200]
                fj.refusals[key] = fj.refusals.get(key, 0) + 1
                if fj.refusals[key] == 1 and "BG_E_INVALID_STATE" not in key:
                    report.fail(f"{fj.name}: {verb} on {d.base.name} answered {status}: {key}")
    except OSError:
        pass  # that worker is being killed


def _kill_one(
    fleet: Fleet,
    views: dict[str, dict[str, Any]],
    jobs: list[FJob],
    lease: float,
    rng: random.Random,
    report: Report,
    kill_times: list[float],
) -> bool:
    """SIGKILL a worker holding a lease of a job mid-transfer; wait for the takeover;
    restart it. False when no worker qualifies now."""
    alive = [d for d in fleet.daemons if d.alive()]
    if len(alive) < 2:
        return False
    try:
        holders = lease_holders(alive[0])
    except (OSError, RuntimeError):
        return False
    active = {
        jid: w for jid, w in holders.items()
        if views.get(jid, {}).get("progress", {}).get("bytes_transferred", 0) > 0
    }
    if not active:
        return False
    victim_id = rng.choice(sorted(set(active.values())))
    victim = next(d for d in fleet.daemons if d.base.name == victim_id)
    held = [jid for jid, w in holders.items() if w == victim_id]
    survivor = rng.choice([d for d in alive if d is not victim])
    victim.kill()
    kill_times.append(time.monotonic())
    ours = {j.id: j for j in jobs}

    def finished(jid: str) -> bool:
        status, body = survivor.call("GET", f"/v1/jobs/{jid}")
        return status == 200 and body["state"] in FINAL | {"TRANSFERRED"}

    limit = 4 * lease + 15
    took = wait_takeover(survivor, held, victim_id, limit, done=finished)
    if took is None:
        report.fail(f"fleet kill {len(kill_times)}: {victim_id}'s jobs "
                    f"{[ours[j].name if j in ours else j for j in held]} not taken over "
                    f"within {limit:.0f} s", "fleet-takeover")
    else:
        report.fleet_takeovers.append(took)
    victim.start()
    return True


def _verify(
    fleet: Fleet,
    jobs: list[FJob],
    kill_times: list[float],
    nginx: Nginx | None,
    fault: FaultServer,
    report: Report,
) -> None:
    d = next((d for d in fleet.daemons if d.alive()), fleet.daemons[0])
    if not d.alive():
        d.start()
    states = {jid: j["state"] for jid, j in fleet.jobs(d).items()}
    expected_names: set[str] = set()
    for fj in jobs:
        if states.get(fj.id) != fj.expected:
            report.fail(f"{fj.name}: state {states.get(fj.id)}, expected {fj.expected}")
        for f in fj.files:
            if fj.expected == "ACKNOWLEDGED":
                expected_names.add(f.local.name)
            if check_file(fj.name, f, fj.expected == "ACKNOWLEDGED", report):
                report.fleet_files_verified += 1
    present = {p.name for p in fleet.shared.iterdir()}
    temps = {p.name for p in fleet.shared.glob(TEMP_GLOB)}
    if temps:
        report.fail(f"fleet: temporary files left in {fleet.shared}: {sorted(temps)[:10]}",
                    "temp-left")
    extra = present - expected_names - temps
    if extra:
        report.fail(f"fleet: unexpected files in {fleet.shared}: {sorted(extra)[:10]}")
    for name in overlapping_fetches(fault):
        report.fail(f"fleet: {name} was fetched by two workers at once", "fleet-overlap")
    if nginx is not None:
        served = nginx.bytes_served()
        for fj in jobs:
            end = fj.done_at or time.monotonic()
            k = sum(1 for t in kill_times if fj.created <= t <= end)
            for f in fj.files:
                if f.server != "nginx":
                    continue
                allowed = f.size + (k + fj.errors + 1) * min(CHECKPOINT_WINDOW + IN_FLIGHT, f.size)
                if served.get(f.key, 0) > allowed:
                    report.fail(f"fleet: {f.key} served {served[f.key]} bytes for {f.size}; "
                                f"{k} kills and {fj.errors} errors allow {allowed}")
    # The write-only headers were sent (to the fault server, which records headers).
    for fj in jobs:
        if fj.header is None or fj.expected != "ACKNOWLEDGED":
            continue
        for f in fj.files:
            if f.server == "fault":
                got = {r.headers.get(HEADER) for r in fault.requests_for(f.key)}
                if fj.header not in got:
                    report.fail(f"{fj.name}: its write-only header never reached the server")
