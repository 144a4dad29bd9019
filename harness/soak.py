"""The soak run (``make soak``, benchmarks/soak.py; a short one in the tests): thousands of
small jobs through one ferryd for a long time, with connection drops and restarts, while a
sampler watches ferryd's and ferry-server's memory, descriptors and ferryd's asyncio tasks.

The load: jobs created at an even pace over the run (at most ``inflight`` unfinished at
once), each with one file, mostly small (1–256 KiB), 3 % larger (1–8 MiB, 2 MiB in QUICK):

* downloads (45 %) from nginx (60 % of them) and from the fault server, which drops a share
  of its responses mid-body (``drop_probability``);
* uploads (35 %) and upload-replies (20 %) to a real ``ferry-server`` whose back end
  (``--notify-url``, by value) answers ``sha256=<digest of the upload>`` and keeps the upload
  (``BITS-Copy-File-To-Destination``), so both the stored file and the reply are checked.

Restarts (fractions of the run): ferryd at 0.10 (SIGTERM), 0.20 (SIGKILL), 0.30 (SIGTERM),
0.40 (SIGKILL), 0.48 (SIGKILL); ferry-server at 0.15 (SIGTERM), 0.33 (SIGKILL), 0.45
(SIGKILL). From 0.5 to the end both run undisturbed: that last lifetime is where growth is
judged (``growth``). ferryd purges final jobs after ``final_job_retention`` (30 s here, a
week by default) so its job table is as large at the end as in the middle: without that,
10,000 retained job records would be growth by design, not a leak.

Checks (``SoakResult.failures``): every completed job's files have their source's SHA-256
(downloads at their local name, uploads at the server's destination, replies equal to the
back end's answer for the bytes sent), then they are deleted (so disk use stays flat); no
job ends in ERROR; no temporary file is left; RSS and descriptors of both processes grow
less than ``max_growth`` over the final lifetime (median of its last 20 % against the
median of its 20–40 %, after a warm-up of its first 20 %); once idle at the end, ferryd's
task count (``ferry_tasks`` from /v1/metrics) is back to its idle level at the start.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from harness.aio import AppServer
from harness.env import ensure_tools, say
from harness.faultserver import FaultServer
from harness.ferryd import Daemon, api_call
from harness.files import KIB, MIB, make_file, sha256_file
from harness.nginx import Nginx
from harness.upserver import FerryServer

TEMP_GLOB = ".*.ferry-part"
# (fraction of the run, signal) of each restart.
FERRYD_RESTARTS = ((0.10, "TERM"), (0.20, "KILL"), (0.30, "TERM"), (0.40, "KILL"), (0.48, "KILL"))
SERVER_RESTARTS = ((0.15, "TERM"), (0.33, "KILL"), (0.45, "KILL"))
# A short run (the test's): ferryd takes seconds to start on a loaded machine, so fewer.
LIGHT_FERRYD_RESTARTS = ((0.25, "KILL"),)
LIGHT_SERVER_RESTARTS = ((0.40, "KILL"),)
STEADY_FROM = 0.5  # no restart after this fraction of the run
JUDGED_SPAN = 0.4  # a lifetime at least this long (fraction of the run) is judged for growth
WARMUP = 0.2  # of a judged lifetime: ignored
WINDOW = 0.2  # of a judged lifetime: the first window after warm-up, and the last one

FIELDS = (
    "t", "ferryd_pid", "ferryd_rss_kib", "ferryd_fds", "ferryd_tasks", "server_pid",
    "server_rss_kib", "server_fds", "jobs_done", "bytes_done", "inflight", "ferryd_life",
    "server_life",
)  # fmt: skip


# ---- what a run produces ------------------------------------------------------------------------


@dataclass
class Growth:
    """One resource over one process lifetime: medians of the first window after warm-up and
    of the last window, and the relative growth between them."""

    process: str  # "ferryd" or "server"
    resource: str  # "rss_kib" or "fds"
    life: int
    start: float
    end: float
    first: float
    last: float

    @property
    def growth(self) -> float:
        return (self.last - self.first) / self.first if self.first else 0.0


@dataclass
class SoakResult:
    jobs_planned: int = 0
    jobs_created: int = 0
    jobs_done: int = 0
    files_verified: int = 0
    replies_verified: int = 0
    lost: int = 0
    bytes_done: int = 0
    errors_seen: int = 0  # jobs seen in ERROR (each a failure)
    transient_resumes: int = 0
    duration: float = 0.0
    samples: list[dict[str, Any]] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)  # (t, "ferryd KILL", ...)
    growth: list[Growth] = field(default_factory=list)
    tasks_idle_start: int | None = None
    tasks_idle_end: int | None = None
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    by_kind: dict[str, int] = field(default_factory=dict)

    def fail(self, msg: str) -> None:
        self.failures.append(msg)
        say(f"  FAIL: {msg}")

    def note(self, msg: str) -> None:
        self.notes.append(msg)
        say(f"  note: {msg}")

    def judged(self) -> list[Growth]:
        """The growth figures checked against the threshold: those of lifetimes spanning at
        least ``JUDGED_SPAN`` of the run (the last one of each process, with the restarts
        kept in the first half)."""
        return [g for g in self.growth if g.end - g.start >= JUDGED_SPAN * self.duration]

    def summary(self) -> str:
        worst = max((g.growth for g in self.judged()), default=0.0)
        line = (
            f"soak: {self.jobs_done} of {self.jobs_planned} jobs in {self.duration:.0f} s, "
            f"{self.files_verified} files and {self.replies_verified} replies verified, "
            f"{self.lost} lost; {len(self.events)} restarts; worst growth {worst * 100:+.1f} %; "
            f"tasks idle {self.tasks_idle_start} -> {self.tasks_idle_end}"
        )
        if self.failures:
            line += f"; {len(self.failures)} FAILURES"
        return line


# ---- the upload-reply back end ------------------------------------------------------------------


class DigestBackend(AppServer):
    """ferry-server's ``--notify-url`` (by value): answers the SHA-256 of what was uploaded
    and asks for the upload to be kept at its destination."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_post("/digest", self._digest)
        return app

    async def _digest(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.calls += 1
        return web.Response(
            body=reply_for(hashlib.sha256(body).hexdigest()),
            headers={"BITS-Copy-File-To-Destination": "true"},
        )


def reply_for(sha: str) -> bytes:
    return f"sha256={sha}\n".encode()


# ---- /proc --------------------------------------------------------------------------------------


def proc_rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def proc_fds(pid: int) -> int | None:
    try:
        return len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except OSError:
        return None


_TASKS = re.compile(rb"^ferry_tasks\s+([0-9.e+]+)\s*$", re.M)


def ferryd_tasks(sock: str, timeout: float = 5.0) -> int | None:
    """ferryd's ``ferry_tasks`` gauge (its asyncio task count), None if it does not answer."""
    try:
        status, body = api_call(sock, "GET", "/v1/metrics", timeout=timeout)
    except Exception:  # noqa: BLE001 - ferryd restarting: no sample
        return None
    if status != 200 or not isinstance(body, bytes):
        return None
    m = _TASKS.search(body)
    return int(float(m.group(1))) if m else None


# ---- the jobs -----------------------------------------------------------------------------------


@dataclass
class SJob:
    n: int
    kind: str  # "download-nginx", "download-fault", "upload", "upload-reply"
    size: int
    sha: str
    url: str
    local: Path  # download: its destination; upload: its source
    remote: Path | None = None  # upload: where ferry-server stores it
    reply: Path | None = None  # upload-reply: the reply file
    id: str = ""
    done: bool = False
    completing: bool = False
    error_seen: bool = False
    refusals: set[str] = field(default_factory=set)
    submitted: bool = False  # its creation was attempted
    ready: bool = False  # created, its file added and resumed

    @property
    def name(self) -> str:
        return f"soak-{self.n:05d}"

    @property
    def type(self) -> str:
        return {"upload": "upload", "upload-reply": "upload-reply"}.get(self.kind, "download")


class Sampler(threading.Thread):
    """Every ``every`` seconds: the resources of ferryd and ferry-server and the driver's
    counters, appended to ``result.samples``."""

    def __init__(
        self,
        t0: float,
        every: float,
        d: Daemon,
        server: FerryServer,
        result: SoakResult,
        counters: dict[str, int],
    ) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.t0, self.every, self.d, self.server = t0, every, d, server
        self.result, self.counters = result, counters
        self.stop_event = threading.Event()

    def sample(self) -> dict[str, Any]:
        dproc, sproc = self.d.proc, self.server.proc
        dpid = dproc.pid if dproc is not None and dproc.poll() is None else None
        spid = sproc.pid if sproc is not None and sproc.poll() is None else None
        row: dict[str, Any] = {
            "t": round(time.monotonic() - self.t0, 2),
            "ferryd_pid": dpid,
            "ferryd_rss_kib": proc_rss_kib(dpid) if dpid else None,
            "ferryd_fds": proc_fds(dpid) if dpid else None,
            "ferryd_tasks": ferryd_tasks(self.d.socket) if dpid else None,
            "server_pid": spid,
            "server_rss_kib": proc_rss_kib(spid) if spid else None,
            "server_fds": proc_fds(spid) if spid else None,
        }
        row.update(self.counters)
        return row

    def run(self) -> None:
        while not self.stop_event.is_set():
            started = time.monotonic()
            with contextlib.suppress(Exception):
                self.result.samples.append(self.sample())
            self.stop_event.wait(max(0.0, self.every - (time.monotonic() - started)))


def _pick_size(rng: random.Random, q: bool) -> int:
    if rng.random() < 0.03:
        return rng.randint(1 * MIB, (2 if q else 8) * MIB)
    return rng.choice((1, 4, 16, 32, 64, 128, 256)) * KIB - rng.randint(0, 512)


def run_soak(
    work: Path,
    *,
    jobs: int,
    duration: float,
    seed: int,
    q: bool,
    sample_every: float = 2.0,
    inflight: int = 24,
    drop_probability: float = 0.1,
    restarts: str = "full",
    max_growth: float = 0.10,
) -> SoakResult:
    """The whole run in ``work`` (made here); returns what it measured and found."""
    import ferry

    rng = random.Random(seed)
    result = SoakResult(jobs_planned=jobs)
    www, dl, replies, up_src = work / "www", work / "dl", work / "replies", work / "src"
    for p in (www, dl, replies, up_src, work / "sroot" / "u"):
        p.mkdir(parents=True)
    # Source pools: 24 files per direction, of the sizes the jobs draw (names by size).
    pool_dl: list[tuple[str, int, str]] = []
    pool_up: list[tuple[Path, int, str]] = []
    for i in range(24):
        size = _pick_size(rng, q) if i >= 3 else (1 if q else 4) * MIB + i
        pool_dl.append((f"p{i}.bin", size, make_file(www / f"p{i}.bin", size)))
        up = up_src / f"u{i}.bin"
        pool_up.append((up, size, make_file(up, size)))
    small_dl = [p for p in pool_dl if p[1] < MIB]
    big_dl = [p for p in pool_dl if p[1] >= MIB]
    small_up = [p for p in pool_up if p[1] < MIB]
    big_up = [p for p in pool_up if p[1] >= MIB]

    tools = ensure_tools(["nginx"], install=True)
    nginx: Nginx | None = None
    if tools["nginx"]:
        nginx = Nginx(www, work / "nginx", binary=tools["nginx"]).start()
    else:
        result.note("nginx is not installed: every download comes from the fault server")
    fault = FaultServer(root=www, drop_probability=drop_probability, seed=seed).start()
    backend = DigestBackend().start()
    server = FerryServer(
        work / "sroot",
        ["--notify-url", f"{backend.base}/digest", "--notify-type", "by-value"],
        state_dir=work / "sstate",
    ).start()
    d = Daemon(
        work / "ferryd",
        log_level="warning",
        config="[daemon]\nfinal_job_retention = 30\nhousekeeping_interval = 5\n",
    )
    d.start()
    counters = {"jobs_done": 0, "bytes_done": 0, "inflight": 0, "ferryd_life": 0,
                "server_life": 0}  # fmt: skip
    time.sleep(1.0)
    result.tasks_idle_start = ferryd_tasks(d.socket)
    t0 = time.monotonic()
    sampler = Sampler(t0, sample_every, d, server, result, counters)
    sampler.start()
    plan: list[tuple[float, str, str]] = []
    plans = {
        "full": (FERRYD_RESTARTS, SERVER_RESTARTS),
        "light": (LIGHT_FERRYD_RESTARTS, LIGHT_SERVER_RESTARTS),
        "none": ((), ()),
    }
    if restarts not in plans:
        raise ValueError(f"restarts: full, light or none, not {restarts!r}")
    for what, steps in zip(("ferryd", "server"), plans[restarts], strict=True):
        plan += [(f * duration, what, sig) for f, sig in steps]
    plan.sort()
    live: list[SJob] = []
    created = 0
    pace_until = duration * 0.95  # the last job is due then ...
    create_until = duration  # ... and may be created until then when the run lags
    hard_end = duration + max(60.0, 0.1 * duration)
    say(f"soak: {jobs} jobs over {duration:.0f} s (at most {inflight} at once), "
        f"{len(plan)} restarts, a sample every {sample_every:.0f} s")  # fmt: skip

    def new_job(n: int) -> SJob:
        r = rng.random()
        big = rng.random() < 0.03
        if r < 0.45:
            name, size, sha = rng.choice(big_dl if big else small_dl)
            via_nginx = nginx is not None and rng.random() < 0.6
            url = nginx.url(name) if via_nginx and nginx is not None else fault.url(name)
            kind = "download-nginx" if via_nginx else "download-fault"
            return SJob(n, kind, size, sha, url, dl / f"j{n:05d}.bin")
        src, size, sha = rng.choice(big_up if big else small_up)
        kind = "upload" if r < 0.80 else "upload-reply"
        sj = SJob(n, kind, size, sha, server.url(f"/u/j{n:05d}.bin"), src,
                  remote=work / "sroot" / "u" / f"j{n:05d}.bin")  # fmt: skip
        if kind == "upload-reply":
            sj.reply = replies / f"j{n:05d}.reply"
        return sj

    def submit(c: Any, sj: SJob) -> None:
        # A retry after a restart finds the half-made job by name and finishes it.
        job = None
        if sj.submitted:
            try:
                job = c.get_job(sj.name)
            except ferry.FerryError as exc:
                if exc.code != "BG_E_NOT_FOUND":
                    raise
        sj.submitted = True
        if job is None:
            job = c.create_job(sj.name, type=sj.type)
        sj.id = job.id
        if not job.data["progress"]["files_total"]:
            if sj.reply is not None:
                job.set_reply_file(str(sj.reply))
            job.add_file(sj.url, str(sj.local))
        if job.state is ferry.JobState.SUSPENDED:
            job.resume()
        sj.ready = True

    def verify(sj: SJob) -> None:
        target = sj.remote if sj.remote is not None else sj.local
        if not target.is_file():
            result.lost += 1
            result.fail(f"{sj.name} ({sj.kind}): {target} is missing")
        elif sha256_file(target) != sj.sha:
            result.lost += 1
            result.fail(f"{sj.name} ({sj.kind}): {target} differs from its source "
                        f"({target.stat().st_size} of {sj.size} bytes)")  # fmt: skip
        else:
            result.files_verified += 1
        if sj.reply is not None:
            got = sj.reply.read_bytes() if sj.reply.is_file() else None
            if got != reply_for(sj.sha):
                result.fail(f"{sj.name}: reply {got!r}, expected {reply_for(sj.sha)!r}")
            else:
                result.replies_verified += 1
            sj.reply.unlink(missing_ok=True)
        target.unlink(missing_ok=True)
        sj.done = True
        result.jobs_done += 1
        result.bytes_done += sj.size
        result.by_kind[sj.kind] = result.by_kind.get(sj.kind, 0) + 1
        counters["jobs_done"] = result.jobs_done
        counters["bytes_done"] = result.bytes_done

    def drive(c: Any, sj: SJob, state: str | None, job: Any) -> None:
        if state is None:
            result.fail(f"{sj.name} ({sj.id}) vanished from the job list")
            sj.done = True
            return
        if state == "ACKNOWLEDGED":
            verify(sj)
        elif state == "CANCELLED":
            result.fail(f"{sj.name} was cancelled; nobody cancelled it")
            sj.done = True
        elif state == "TRANSFERRED":
            code = job.complete()
            if code != "S_OK":
                result.fail(f"{sj.name}: complete returned {code}")
            verify(sj)
        elif state == "TRANSIENT_ERROR":
            job.resume()
            result.transient_resumes += 1
        elif state == "ERROR":
            err = job.error or {}
            if not sj.error_seen:
                result.errors_seen += 1
                result.fail(f"{sj.name} ({sj.kind}) went to ERROR: {err.get('code')}: "
                            f"{err.get('description')}")  # fmt: skip
            sj.error_seen = True
            job.resume()
        elif state == "SUSPENDED":
            job.resume()

    lock = threading.Lock()  # held while a process is being restarted
    stop = threading.Event()
    restarter_error: list[BaseException] = []

    def restart(what: str, sig: str) -> None:
        result.events.append((round(time.monotonic() - t0, 2), f"{what} {sig}"))
        say(f"  {time.monotonic() - t0:6.0f} s: {what} {sig} ({result.jobs_done} jobs done)")
        if what == "ferryd":
            if sig == "KILL":
                d.kill()
            else:
                code = d.stop()
                if code != 0:
                    result.fail(f"ferryd exited with {code} on SIGTERM:\n{d.log(3000)}")
            counters["ferryd_life"] += 1
            d.start()
        else:
            if sig == "KILL":
                server.kill()
            else:
                code = server.stop()
                if code != 0:
                    result.fail(f"ferry-server exited with {code} on SIGTERM")
            counters["server_life"] += 1
            server.start()

    def restarter() -> None:
        # On a thread of its own, so the driver keeps driving (and the restarts keep to
        # their times) while a process takes seconds to come back.
        try:
            for at, what, sig in plan:
                if stop.wait(max(0.0, at - (time.monotonic() - t0))):
                    return
                with lock:
                    restart(what, sig)
        except BaseException as exc:  # reported by the driver
            restarter_error.append(exc)

    restarts_thread = threading.Thread(target=restarter, name="soak-restarter", daemon=True)
    restarts_thread.start()

    try:
        while True:
            now = time.monotonic() - t0
            if restarter_error:
                result.fail(f"restarting failed: {restarter_error[0]!r}")
                break
            if lock.acquire(blocking=False):
                try:
                    for proc_name, alive in (
                        ("ferryd", d.alive()),
                        ("ferry-server", server.alive()),
                    ):
                        if not alive:
                            result.fail(f"{proc_name} died by itself")
                            if proc_name == "ferryd":
                                d.proc = None
                                counters["ferryd_life"] += 1
                                d.start()
                            else:
                                counters["server_life"] += 1
                                server.start()
                finally:
                    lock.release()
            live = [sj for sj in live if not sj.done]
            counters["inflight"] = len(live)
            if now > hard_end:
                result.fail(f"{len(live)} jobs not finished {hard_end:.0f} s into the run: "
                            f"{[sj.name for sj in live[:20]]}")  # fmt: skip
                break
            if (created >= jobs or now > create_until) and not live:
                break
            try:
                with ferry.Client(socket=d.socket, timeout=30) as c:
                    due = (
                        created if created >= jobs else min(jobs, int(now / pace_until * jobs) + 1)
                    )
                    while created < due and now <= create_until and len(live) < inflight:
                        sj = new_job(created)
                        created += 1
                        result.jobs_created = created
                        live.append(sj)
                        submit(c, sj)
                    states = {j.id: j for j in c.jobs()}
                    for sj in live:
                        if sj.done:
                            continue
                        if not sj.ready:  # a restart interrupted its creation
                            submit(c, sj)
                            continue
                        job = states.get(sj.id)
                        try:
                            drive(c, sj, job.state.value if job is not None else None, job)
                        except ferry.FerryError as exc:
                            if exc.code == "E_FAIL":  # ferryd away (DaemonUnavailable too)
                                raise
                            if exc.code not in sj.refusals:
                                result.note(f"{sj.name}: {exc}")
                            sj.refusals.add(exc.code)
            except (ferry.FerryError, OSError):
                time.sleep(0.1)  # ferryd is restarting
                continue
            time.sleep(0.2)
        result.duration = time.monotonic() - t0
        sampler.stop_event.set()  # its scrapes would count as tasks
        sampler.join(30)
        # Idle: the task count back to where an idle ferryd started.
        deadline = time.monotonic() + 60
        while True:
            result.tasks_idle_end = ferryd_tasks(d.socket)
            if (
                result.tasks_idle_end is not None
                and result.tasks_idle_start is not None
                and result.tasks_idle_end <= result.tasks_idle_start
            ) or time.monotonic() > deadline:
                break
            time.sleep(1)
    finally:
        stop.set()
        restarts_thread.join(120)
        sampler.stop_event.set()
        sampler.join(30)
        code = d.stop() if d.alive() else 0
        if code != 0:
            result.fail(f"ferryd exited with {code} on the final SIGTERM")
        server.stop()
        backend.stop()
        fault.stop()
        if nginx is not None:
            nginx.stop()
    if result.tasks_idle_end is None or result.tasks_idle_start is None:
        result.fail("ferry_tasks could not be read from ferryd's metrics")
    elif result.tasks_idle_end > result.tasks_idle_start:
        result.fail(f"ferryd's asyncio tasks did not come back to idle: "
                    f"{result.tasks_idle_start} at the start, {result.tasks_idle_end} "
                    "60 s after the last job")  # fmt: skip
    temps = list(dl.glob(TEMP_GLOB)) + list(replies.glob(TEMP_GLOB))
    left = list(dl.iterdir()) + list(replies.iterdir()) + list((work / "sroot" / "u").iterdir())
    leftovers = [p for p in left if p not in temps]
    if temps:
        result.fail(f"temporary files left: {sorted(p.name for p in temps)[:10]}")
    if leftovers:
        result.fail(f"unexpected files left: {sorted(p.name for p in leftovers)[:10]}")
    result.growth = growth(result.samples)
    for g in result.judged():
        if g.growth >= max_growth:
            result.fail(f"{g.process} {g.resource} grew {g.growth * 100:.1f} % over "
                        f"{g.start:.0f}-{g.end:.0f} s ({g.first:.0f} -> {g.last:.0f})")  # fmt: skip
    if not result.judged() and restarts == "full":
        result.fail("no lifetime long enough to judge growth")
    return result


def _median(vals: list[float]) -> float:
    vals = sorted(vals)
    n = len(vals)
    return vals[n // 2] if n % 2 else (vals[n // 2 - 1] + vals[n // 2]) / 2


def growth(samples: list[dict[str, Any]], min_samples: int = 3) -> list[Growth]:
    """For every process lifetime with enough samples: skip its first ``WARMUP``, then the
    median of the next ``WINDOW`` against the median of its last ``WINDOW``."""
    out: list[Growth] = []
    for proc in ("ferryd", "server"):
        lives: dict[int, list[dict[str, Any]]] = {}
        for s in samples:
            if s.get(f"{proc}_rss_kib") is not None:
                lives.setdefault(int(s[f"{proc}_life"]), []).append(s)
        for life, rows in sorted(lives.items()):
            start, end = rows[0]["t"], rows[-1]["t"]
            span = end - start
            for res in ("rss_kib", "fds"):
                key = f"{proc}_{res}"
                a, b = start + WARMUP * span, start + (WARMUP + WINDOW) * span
                first = [float(r[key]) for r in rows if a <= r["t"] <= b and r[key] is not None]
                last = [float(r[key]) for r in rows if r["t"] >= end - WINDOW * span
                        and r[key] is not None]  # fmt: skip
                if len(first) >= min_samples and len(last) >= min_samples:
                    out.append(Growth(proc, res, life, start, end, _median(first), _median(last)))
    return out


def cleanup(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
