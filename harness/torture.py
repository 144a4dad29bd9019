"""The torture run (``make torture``, benchmarks/torture.py; a short one in the tests):
crash ferryd over and over mid-transfer, then attack its API.

Phase 1 (kills): jobs of mixed sizes (a few KiB to ~100 MiB) download from nginx and from a
fault-injecting server (paced, dropping some connections), while a killer thread SIGKILLs
ferryd at random moments — mid-transfer, mid-``complete``, and during its own start-up —
and restarts it. The driver resumes jobs that land in TRANSIENT_ERROR, waits for every job
to be TRANSFERRED and then completes some and cancels others (some are cancelled
mid-transfer). At the end it checks:

* every completed file has its source's SHA-256; cancelled jobs left no file;
* every job is in the state it should be (ACKNOWLEDGED or CANCELLED);
* no temporary file (``.*.ferry-part``) and nothing unexpected is left in the destinations;
* no byte was fetched twice beyond one checkpoint window (8 MiB, plus 4 MiB in flight)
  per interruption per active file — a kill, an error of the job, a pre-emption (in-flight
  bytes only) — and none at all without one (bytes counted by the servers: nginx's access
  log, the fault server's counters);
* the store passes ``PRAGMA integrity_check`` after every kill (on a copy) and at the end
  (read-only, after a clean stop).

Phase 2 (hostile API, in hostile.py): generated cases for every operation of
/v1/openapi.json (harness/apifuzz.py's schema-driven generator, and a share by
schemathesis through a TCP->Unix forwarder), as ``nobody`` and a second unprivileged uid
against their own jobs and a victim uid's (whose jobs carry passwords, write-only headers,
a client certificate and a helper token: every such attempt is denied and changes
nothing, and no secret shows in any answer, in ferryd's log or its store), raw
malformed HTTP and JSON go straight to the socket, and hand-written path and symlink
attacks try to make ferryd write outside the caller's reach. As root, ferryd runs in
system mode and the attacker is ``nobody``. Checks: never a 500, ferryd never dies, jobs
that existed before are unchanged, /etc and a root-owned sentinel file are untouched.

Phase 3 (fleet worker kills, harness/torture_fleet.py) and phase 4 (secrets in use under
kills, harness/torture_secrets.py) run when asked (``fleet_kills``, ``secret_restarts``);
at the end ``run`` scans every file of the work directory for every marker secret any phase
registered (harness/secrets.py).

``run`` does the phases and returns the Report (``torture: N kills, M files verified,
0 lost``, or the failures); ``kill_phase`` and ``harness.hostile.fuzz_phase`` are the
phases on their own.
"""

from __future__ import annotations

import random
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.env import ensure_tools, say, short_tmpdir
from harness.faultserver import FaultServer
from harness.ferryd import Daemon
from harness.files import KIB, MIB, make_file, sha256_file
from harness.hostile import fuzz_phase
from harness.nginx import Nginx
from harness.report import Report
from harness.serverfuzz import server_fuzz_phase

__all__ = ["Report", "fuzz_phase", "kill_phase", "run"]

CHECKPOINT_WINDOW = 8 * MIB  # the engine's CHECKPOINT_BYTES
# Bytes a server counts as sent that a killed ferryd may never have seen, or saw while the
# checkpoint's fsync was still running: socket buffers (loopback's are megabytes) and the
# HTTP client's read buffer. Measured excess is up to ~2 MB per kill at 25 MiB/s.
IN_FLIGHT = 4 * MIB
TEMP_GLOB = ".*.ferry-part"


# ---- helpers ------------------------------------------------------------------------------------


def integrity_check(db: Path, *, copy_to: Path | None = None) -> str:
    """``PRAGMA integrity_check`` of the store; with ``copy_to``, of a copy of the database
    and its WAL (a killed ferryd leaves a WAL that opening the copy recovers), else of the
    file itself opened read-only."""
    if copy_to is not None:
        shutil.rmtree(copy_to, ignore_errors=True)
        copy_to.mkdir(parents=True)
        for suffix in ("", "-wal"):
            src = Path(str(db) + suffix)
            if src.exists():
                shutil.copyfile(src, copy_to / (db.name + suffix))
        target = copy_to / db.name
        if not target.exists():
            return "ok"  # killed before the store was created
        conn = sqlite3.connect(str(target))
    else:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = [r[0] for r in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()
    return "; ".join(str(r) for r in rows)


def temp_files(dirs: list[Path]) -> list[Path]:
    found: list[Path] = []
    for d in dirs:
        if d.is_dir():
            found.extend(d.glob(TEMP_GLOB))
    return found


def retrying(fn: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Call ``fn`` until it stops failing because ferryd is away (killed, restarting)."""
    import ferry
    from ferry.client import DaemonUnavailable

    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except (DaemonUnavailable, ConnectionError, TimeoutError) as exc:
            err: BaseException = exc
        except ferry.FerryError as exc:
            if exc.code != "E_FAIL":  # E_FAIL: "did not answer in time" during a kill
                raise
            err = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"ferryd stayed unavailable: {err}")
        time.sleep(0.05)


def ensure_job(d: Daemon, name: str, files: list[tuple[str, str]], **props: Any) -> str:
    """The id of the job called ``name``, created (with ``props``), given ``files`` (remote,
    local) and resumed, all in one go, for ``retrying``: a retry after a kill in between
    finds the half-made job by name and finishes it."""
    import ferry

    with ferry.Client(socket=d.socket) as c:
        try:
            job = c.get_job(name)
        except ferry.FerryError as exc:
            if exc.code != "BG_E_NOT_FOUND":
                raise
            job = c.create_job(name, **props)
        if not job.data["progress"]["files_total"]:
            job.add_files(files)
        if job.state is ferry.JobState.SUSPENDED:
            job.resume()
        return job.id


def stop_and_check(d: Daemon, lock: threading.Lock, report: Report) -> None:
    """At a phase's end: stop ``d`` (if up) with SIGTERM, holding ``lock`` (the killer's, so
    it does not restart it meanwhile); it must exit 0 and leave an intact store."""
    with lock:
        code = d.stop() if d.alive() else None
    if code not in (None, 0):
        report.fail(f"ferryd exited with status {code} on SIGTERM:\n{d.log(3000)}")
    if d.db_path.exists():
        result = integrity_check(d.db_path)
        if result != "ok":
            report.fail(f"store integrity at the end: {result}")


# ---- phase 1: kills -----------------------------------------------------------------------------


@dataclass
class TFile:
    server: str  # "nginx" or "fault"
    key: str  # what the server counts bytes under
    url: str
    local: Path
    size: int
    sha: str


@dataclass
class TJob:
    name: str
    fate: str  # "complete", "cancel" (once TRANSFERRED) or "cancel-early" (mid-transfer)
    files: list[TFile]
    dest: Path
    created: float
    id: str = ""
    transferred_at: float | None = None
    final_at: float | None = None
    acted: bool = False
    expected: str | None = None
    resumes: int = 0
    errors: int = 0  # the job's error_count, last seen
    refusals: dict[str, int] = field(default_factory=dict)


class KillThread(threading.Thread):
    """A thread that kills something at random intervals (``interval``, seconds) until
    ``done`` (``kills`` kills, by default) or ``stop_event``; each wake-up is one ``round``.
    ``times`` holds when each kill landed; ``error`` what ended the thread early (the driver
    reports it)."""

    def __init__(
        self, name: str, kills: int, rng: random.Random, interval: tuple[float, float]
    ) -> None:
        super().__init__(name=name, daemon=True)
        self.kills = kills
        self.rng = rng
        self.interval = interval
        self.stop_event = threading.Event()
        self.times: list[float] = []
        self.error: BaseException | None = None

    @property
    def done(self) -> bool:
        return len(self.times) >= self.kills

    def round(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        try:
            while not self.done and not self.stop_event.wait(self.rng.uniform(*self.interval)):
                self.round()
        except BaseException as exc:  # reported by the driver
            self.error = exc


class Killer(KillThread):
    """SIGKILLs ferryd at random moments and restarts it; sometimes kills it again while it
    is still starting (loading the store, requeueing). Checks the store after every kill."""

    def __init__(
        self,
        daemon: Daemon,
        kills: int,
        rng: random.Random,
        report: Report,
        scratch: Path,
        interval: tuple[float, float],
    ) -> None:
        super().__init__("killer", kills, rng, interval)
        self.d = daemon
        self.report = report
        self.scratch = scratch
        self.lock = threading.Lock()
        self.moments: dict[str, int] = {}  # kills by the kind of moment aimed at

    def _kill(self) -> None:
        self.d.kill()
        self.times.append(time.monotonic())
        result = integrity_check(self.d.db_path, copy_to=self.scratch)
        if result != "ok":
            self.report.fail(f"store integrity after kill {len(self.times)}: {result}")

    def aim(self) -> str:
        """Wait for the moment of the next kill; its kind, counted in ``moments``. Here: none
        (a random moment); a subclass may wait for a kind of moment first."""
        return "random"

    def round(self) -> None:
        moment = self.aim()
        with self.lock:
            self._kill()
            self.moments[moment] = self.moments.get(moment, 0) + 1
            if not self.done and self.rng.random() < 0.15:
                self.d.spawn()  # and kill it again before it serves
                time.sleep(self.rng.uniform(0.0, 0.3))
                self._kill()
                self.moments["start-up"] = self.moments.get("start-up", 0) + 1
            self.d.start()


def build_pool(www: Path, q: bool, max_size: int | None) -> dict[str, tuple[int, str]]:
    """Source files of mixed sizes: name -> (size, sha256)."""
    sizes = [3 * KIB, 50 * KIB, 700 * KIB, 3 * MIB, 12 * MIB, 40 * MIB, 100 * MIB]
    if q:
        sizes = [3 * KIB, 50 * KIB, 700 * KIB, 3 * MIB, 12 * MIB, 24 * MIB]
    if max_size is not None:
        sizes = [s for s in sizes if s <= max_size] or [min(sizes)]
    pool_dir = www / "pool"
    pool_dir.mkdir(parents=True)
    return {
        f"p{i}-{s}.bin": (s, make_file(pool_dir / f"p{i}-{s}.bin", s)) for i, s in enumerate(sizes)
    }


def kill_phase(
    work: Path,
    report: Report,
    *,
    kills: int,
    duration: float,
    seed: int,
    q: bool,
    max_size: int | None = None,
    active_jobs: int = 6,
    rate: int = 25 * MIB,
    interval: tuple[float, float] = (0.3, 3.0),
) -> None:
    import ferry
    from ferry.client import DaemonUnavailable

    rng = random.Random(seed)
    started = time.monotonic()
    lost_before, verified_before = report.lost, report.files_verified
    www = work / "www"
    www.mkdir(parents=True)
    pool = build_pool(www, q, max_size)
    names = sorted(pool, key=lambda n: pool[n][0])
    tools = ensure_tools(["nginx"], install=True)
    nginx: Nginx | None = None
    if tools["nginx"]:
        nginx = Nginx(www, work / "nginx", rate=rate, binary=tools["nginx"]).start()
    else:
        report.note("nginx is not installed: every file comes from the fault server")
    fault = FaultServer(root=www, rate=rate, drop_probability=0.1, seed=seed).start()
    d = Daemon(work / "ferryd", log_level="info")
    d.start()
    killer = Killer(d, kills, rng, report, work / "db-copy", interval)
    jobs: list[TJob] = []
    counter = [0]

    def new_job() -> None:
        counter[0] += 1
        n = counter[0]
        dest = work / "dest" / f"j{n:03d}"
        dest.mkdir(parents=True)
        files = []
        for k in range(rng.choice((1, 1, 2, 3))):
            # Small files often, big ones now and then.
            pick = names[min(int(rng.expovariate(0.6)), len(names) - 1)]
            size, sha = pool[pick]
            link = www / f"j{n:03d}-f{k}.bin"  # a URL of its own, so bytes count per file
            link.symlink_to(www / "pool" / pick)
            server = "fault" if nginx is None or rng.random() < 0.4 else "nginx"
            if server == "nginx":
                assert nginx is not None
                url = nginx.url(link.name, route="slow")  # paced, so kills land mid-file
            else:
                url = fault.url(link.name)
            key = link.name
            files.append(TFile(server, key, url, dest / f"file{k}.bin", size, sha))
        fate = rng.choices(("complete", "cancel", "cancel-early"), (0.7, 0.15, 0.15))[0]
        tj = TJob(f"torture-{n:03d}", fate, files, dest, time.monotonic())
        priority = rng.choice(("normal", "normal", "normal", "high", "low", "foreground"))

        pairs = [(f.url, str(f.local)) for f in files]
        tj.id = retrying(lambda: ensure_job(d, tj.name, pairs, priority=priority))
        jobs.append(tj)
        report.jobs += 1

    kill_deadline = started + duration * 0.6
    hard_deadline = started + duration
    say(f"phase 1: {kills} kills of ferryd mid-transfer ({len(pool)} source sizes, up to "
        f"{max(s for s, _ in pool.values()) // MIB or 1} MiB, paced at {rate // MIB} MiB/s)")
    try:
        for _ in range(active_jobs):
            new_job()
        killer.start()
        while True:
            now = time.monotonic()
            if now > hard_deadline:
                stuck = [f"{j.name}({j.fate})" for j in jobs if j.final_at is None]
                report.fail(f"timed out after {duration:.0f} s; jobs not finished: {stuck}")
                break
            if killer.error is not None:  # e.g. ferryd no longer starts after a kill
                report.fail(f"restarting ferryd after a kill failed: {killer.error}")
                break
            stop_kills = killer.done or now > kill_deadline
            if stop_kills:
                killer.stop_event.set()
            live = [j for j in jobs if j.expected is None or j.final_at is None]
            if not stop_kills and len([j for j in live if j.expected is None]) < active_jobs:
                new_job()
            with killer.lock:
                if d.proc is not None and d.proc.poll() is not None:
                    report.fail(f"ferryd died by itself (status {d.proc.returncode}):\n"
                                + d.log(3000))
                    d.proc = None
                    d.start()
            try:
                with ferry.Client(socket=d.socket) as c:
                    states = {j.id: j for j in c.jobs()}
                    for tj in live:
                        try:
                            _drive(c, tj, states.get(tj.id), report, rng)
                        except DaemonUnavailable:
                            raise
                        except ferry.FerryError as exc:
                            _refused(tj, exc, report)
            except (ferry.FerryError, OSError):
                time.sleep(0.05)  # ferryd is being killed or restarted
                continue
            if stop_kills and all(j.final_at is not None for j in jobs):
                break
            time.sleep(0.15)
        killer.stop_event.set()
        killer.join(60)
        report.kills += len(killer.times)
        try:
            if not d.alive():
                d.start()
            _verify_jobs(d, jobs, report)
        except (ferry.FerryError, OSError, RuntimeError) as exc:
            report.fail(f"could not verify the jobs: {exc}")
    finally:
        killer.stop_event.set()
        stop_and_check(d, killer.lock, report)
        if nginx is not None:
            nginx.stop()
        fault.stop()
    _verify_bytes(jobs, killer.times, _preemptions(d), nginx, fault, report)
    say(f"  {len(killer.times)} kills, {len(jobs)} jobs, "
        f"{report.files_verified - verified_before} files verified, "
        f"{report.lost - lost_before} lost, {time.monotonic() - started:.0f} s")


def _drive(c: Any, tj: TJob, job: Any, report: Report, rng: random.Random) -> None:
    """One look at one job: resume after transient errors, act on TRANSFERRED, note finals."""
    import ferry

    S = ferry.JobState
    if job is None:
        report.fail(f"{tj.name} ({tj.id}) vanished from the job list")
        tj.final_at = time.monotonic()
        return
    st = job.state
    tj.errors = max(tj.errors, int(job.data.get("error_count") or 0))
    if st in (S.ACKNOWLEDGED, S.CANCELLED):
        if tj.expected is None:
            # An answer lost to a kill: the call was applied all the same.
            tj.expected = "ACKNOWLEDGED" if tj.fate == "complete" else "CANCELLED"
        if tj.final_at is None:
            tj.final_at = time.monotonic()
            if st.value != tj.expected:
                report.fail(f"{tj.name} is {st.value}, expected {tj.expected}")
        return
    if tj.expected is not None:
        # complete/cancel was sent but its answer was lost: send it again.
        _act(job, tj, report)
        return
    if st is S.TRANSIENT_ERROR:
        job.resume()
        tj.resumes += 1
    elif st is S.ERROR:
        err = job.error or {}
        report.fail(f"{tj.name} went to ERROR: {err.get('code')}: {err.get('description')}")
        job.resume()
        tj.resumes += 1
    elif st is S.SUSPENDED:
        report.fail(f"{tj.name} is SUSPENDED; nobody suspended it")
        job.resume()
    elif st is S.TRANSFERRED:
        if tj.transferred_at is None:
            tj.transferred_at = time.monotonic()
        _act(job, tj, report)
    elif tj.fate == "cancel-early" and job.data["progress"]["bytes_transferred"] > 0:
        _act(job, tj, report)


def _refused(tj: TJob, exc: Exception, report: Report) -> None:
    """A call on a job failed with a BITS error (not because ferryd was away). Reported
    once per job and error; a job whose call keeps failing is given up on."""
    key = f"{type(exc).__name__}: {exc}"
    if key not in tj.refusals:
        kind = "other"
        if tj.expected == "ACKNOWLEDGED" and getattr(exc, "code", "") == "ERROR_FILE_NOT_FOUND":
            kind = "complete-after-kill"
        report.fail(f"{tj.name} ({tj.id}, fate {tj.fate}, expected {tj.expected}): {key}",
                    kind)
    tj.refusals[key] = tj.refusals.get(key, 0) + 1
    if tj.refusals[key] >= 20 and tj.final_at is None:
        report.note(f"{tj.name}: giving up after 20 refusals")
        tj.final_at = time.monotonic()


def _act(job: Any, tj: TJob, report: Report) -> None:
    if tj.fate == "complete":
        tj.expected = "ACKNOWLEDGED"
        code = job.complete()
        if code != "S_OK":
            report.fail(f"{tj.name}: complete returned {code}")
    else:
        tj.expected = "CANCELLED"
        job.cancel()
    tj.final_at = time.monotonic()


def check_file(job: str, f: TFile, acknowledged: bool, report: Report) -> bool:
    """A file of ``job`` once it is over: if the job was completed (``acknowledged``), it is
    there with its source's bytes (else it counts as lost); if cancelled, it is not there.
    True when it was verified intact."""
    if not acknowledged:
        if f.local.exists():
            report.fail(f"{job} was cancelled but {f.local} exists")
        return False
    if not f.local.is_file():
        report.lost += 1
        report.fail(f"{job}: {f.local} is missing")
        return False
    if sha256_file(f.local) != f.sha:
        report.lost += 1
        report.fail(f"{job}: {f.local} differs from its source "
                    f"({f.local.stat().st_size} of {f.size} bytes)")  # fmt: skip
        return False
    return True


def _verify_jobs(d: Daemon, jobs: list[TJob], report: Report) -> None:
    import ferry

    with ferry.Client(socket=d.socket) as c:
        states = {j.id: j.state.value for j in c.jobs()}
    for tj in jobs:
        st = states.get(tj.id)
        if st != tj.expected:
            kind = "other"
            if any("ERROR_FILE_NOT_FOUND" in k for k in tj.refusals) and st == "TRANSFERRED":
                kind = "complete-after-kill"
            report.fail(f"{tj.name}: state {st}, expected {tj.expected}", kind)
        expected_names: set[str] = set()
        for f in tj.files:
            if tj.expected == "ACKNOWLEDGED":
                expected_names.add(f.local.name)
            if check_file(tj.name, f, tj.expected == "ACKNOWLEDGED", report):
                report.files_verified += 1
        present = {p.name for p in tj.dest.iterdir()}
        extra = present - expected_names
        temps = {p.name for p in temp_files([tj.dest])}
        if extra - temps:
            report.fail(f"{tj.name}: unexpected files left in {tj.dest}: {sorted(extra - temps)}")
        if temps:
            report.fail(
                f"{tj.name} ({tj.expected}): temporary files left behind in {tj.dest}: "
                f"{sorted(temps)}",
                "temp-left",
            )


def _preemptions(d: Daemon) -> dict[str, int]:
    """How often the scheduler stopped each job to run another (``job ID pre-empted`` or
    ``job ID rotated out`` in ferryd's log)."""
    counts: dict[str, int] = {}
    try:
        text = d.log_path.read_text(errors="replace")
    except OSError:
        return counts
    for m in re.finditer(r"job ([0-9a-f-]{36}) (?:pre-empted|rotated out)", text):
        counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    return counts


def _verify_bytes(
    jobs: list[TJob], kill_times: list[float], preempted: dict[str, int],
    nginx: Nginx | None, fault: FaultServer, report: Report,
) -> None:
    """No byte beyond one checkpoint window per interruption per active file was fetched
    twice. An interruption is a kill of ferryd while the job was active, or an error of the
    job (the fault server drops connections): either may cost the bytes received since the
    last checkpoint of each file in flight (plus what was in flight), and nothing more.
    A pre-emption (or the end of a time slice) stops the job gracefully — what arrived is
    saved — and may cost only what was in flight. Nothing else may fetch a byte twice:
    with no interruption, no excess is allowed."""
    served = fault.bytes_served()
    if nginx is not None:
        served.update(nginx.bytes_served())
    worst = 0.0
    for tj in jobs:
        end = tj.transferred_at or tj.final_at or time.monotonic()
        kills = sum(1 for t in kill_times if tj.created <= t <= end)
        stops = preempted.get(tj.id, 0)
        for f in tj.files:
            got = served.get(f.key, 0)
            allowed = (
                f.size
                + (kills + tj.errors) * min(CHECKPOINT_WINDOW + IN_FLIGHT, f.size)
                + stops * min(IN_FLIGHT, f.size)
            )
            worst = max(worst, got / f.size if f.size else 1.0)
            if got > allowed:
                report.fail(
                    f"{tj.name}: {f.url} was served {got} bytes for a {f.size}-byte file, "
                    f"{got - f.size} more than once; {kills} kills, {tj.errors} errors and "
                    f"{stops} pre-emptions while active allow at most {allowed - f.size}",
                    "refetch-uninterrupted" if kills + tj.errors + stops == 0 else "other",
                )
    say(f"  bytes served: worst file {worst:.3f} x its size")


# ---- both phases --------------------------------------------------------------------------------


def run(
    *,
    kills: int,
    duration: float,
    fuzz_cases: int,
    seed: int,
    q: bool,
    max_size: int | None = None,
    use_schemathesis: bool = True,
    keep: bool = False,
    server_requests: int = 0,
    upload_kills: int = 0,
    fleet_kills: int = 0,
    secret_restarts: int = -1,
    schemathesis_cases: int | None = None,
) -> Report:
    from harness import secrets
    from harness.torture_fleet import fleet_kill_phase
    from harness.torture_secrets import secrets_phase

    report = Report()
    work = short_tmpdir("ft-")
    try:
        if kills > 0:  # --kills 0 runs the other phases alone
            kill_phase(work / "k", report, kills=kills, duration=duration * 0.75, seed=seed,
                       q=q, max_size=max_size)
        if fuzz_cases >= 0:
            fuzz_phase(work / "f", report, cases=fuzz_cases, seed=seed,
                       use_schemathesis=use_schemathesis,
                       schemathesis_cases=schemathesis_cases)
        if server_requests > 0:
            server_fuzz_phase(work / "s", report, seed=seed, q=q, requests=server_requests)
        if upload_kills > 0:  # the upload phase (torture_upload.py): N ferryd kills, N/3 servers
            from harness.torture_upload import upload_kill_phase

            upload_kill_phase(work / "u", report, seed=seed, q=q, ferryd_kills=upload_kills,
                              server_kills=max(1, round(upload_kills / 3)),
                              duration=max(120.0, duration * 0.75), max_size=max_size)
        if fleet_kills > 0:
            fleet_kill_phase(work / "fleet", report, seed=seed, q=q, kills=fleet_kills)
        if secret_restarts >= 0:
            secrets_phase(work / "secrets", report, seed=seed, q=q, restarts=secret_restarts)
        # Every marker any phase registered, in every file the run left (logs, stores,
        # outputs), the secretbox keys and the exempted files (a client key) excepted.
        say(f"secrets scan: {len(secrets.registry)} markers over {work}")
        secrets.scan_tree(work, report)
    finally:
        if keep or report.failures:
            say(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return report
