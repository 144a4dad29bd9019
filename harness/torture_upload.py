"""The torture run's upload phase (issue #16, "kills"): crash ferryd and ``ferry-server`` over
and over while upload and upload-reply jobs run, then check that nothing was lost, corrupted,
left behind or committed twice.

Set-up: two real ``ferry-server`` processes, each with its sessions in a state directory
outside its root (so the root is exactly what the server makes visible): "plain" (uploads are
stored) and "reply" (``--notify-url`` to an in-process back end, by value). Most jobs reach
them through a paced, fault-injecting TCP relay (``PacedRelay``: a few MiB/s per connection
and direction, some connections cut mid-stream), so kills land mid-fragment and mid-reply;
some go straight to the plain server. The back end answers each upload with a reply derived
from the upload's SHA-256 and the size named in its URL (``-r<bytes>``), so a repeated
notification gets the same answer; for names with ``-keep`` it also asks the server to keep
the upload at its destination (``BITS-Copy-File-To-Destination``).

Jobs of mixed sizes (a few KiB to tens of MiB; replies a few KiB to MiB) are created while

* a ferryd killer (``UploadKiller``, the kill phase's ``Killer`` aiming at moments)
  SIGKILLs ferryd ``ferryd_kills`` times — mid-fragment, mid-reply download, mid-``complete``
  or ``cancel``, at random, and sometimes again during its start-up — checks the store on a
  copy after each kill, and restarts it;
* a server killer SIGKILLs one of the two servers ``server_kills`` times while fragment
  bytes are flowing through the relay, leaves it down a moment, and restarts it on the same
  port, root and state directory.

The driver resumes jobs in TRANSIENT_ERROR, completes most once TRANSFERRED and cancels the
others (some mid-transfer). At the end:

* every completed upload is at its destination with its source's SHA-256 (the plain server,
  and the reply server for ``-keep``); every handed-over upload reached the back end with
  that SHA-256 (every notification of it); every reply file is byte-identical to the back
  end's answer;
* no upload was committed twice: (1) the servers' logs (``session ID closing: PATH``
  before each commit, ``closed`` after it; kept across restarts) name exactly one session
  per completed destination and none for a cancelled one; (2) the servers run without
  ``--allow-overwrite``, so a second session for a taken name is refused at
  Create-Session (the job would fail); (3) each destination's (inode, mtime) never
  changes once it has appeared;
* cancelled jobs left nothing at the server's destination and no reply file;
* the client's job directories hold the source and (completed upload-reply jobs) the reply
  only: no temporary file; the servers' roots hold the expected destinations only: no
  ``.ferry-upload-*`` staging file;
* every job is ACKNOWLEDGED or CANCELLED as it should be; ferryd's store passes
  ``PRAGMA integrity_check`` after every kill and at the end.

Counts go to ``Report.upload_kills``, ``server_kills``, ``uploads_verified`` and
``replies_verified``; every violation is ``report.fail(msg, kind)``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from harness.aio import AppServer, LoopThread
from harness.env import say
from harness.ferryd import Daemon
from harness.files import KIB, MIB, make_file, sha256_file
from harness.report import Report
from harness.torture import Killer, KillThread, ensure_job, retrying, stop_and_check
from harness.upserver import FerryServer

__all__ = ["ReplyBackend", "PacedRelay", "upload_kill_phase"]

FERRYD_CONFIG = (
    "[daemon]\n"
    "upload_fragment_size = 1048576\n"  # many fragments per file: kills land between them
    "upload_retries = 3\n"
)
# "session {GUID} closing: /up/name" (before the commit) and "... closed: /up/name stored"
# (after it), in ferry-server's -v log
_CLOSED_RE = re.compile(r"session (\{[0-9A-F-]+\}) (?:closing|closed): (\S+)")
_REPLY_SIZE_RE = re.compile(r"-r(\d+)")


# ---- the back end and the relay -----------------------------------------------------------------


def reply_bytes(upload_sha: str, url_path: str) -> bytes:
    """What the back end answers for an upload: deterministic in the upload's bytes and its
    URL (a repeated notification gets the same reply); its size is the URL's ``-r<bytes>``."""
    m = _REPLY_SIZE_RE.search(url_path.rsplit("/", 1)[-1])
    size = int(m.group(1)) if m else 1000
    seed = int(hashlib.sha256(f"{upload_sha} {url_path}".encode()).hexdigest()[:16], 16)
    return random.Random(seed).randbytes(size)


class ReplyBackend(AppServer):
    """The upload-reply back end (``--notify-type by-value``): records the SHA-256 of every
    upload it is told about, per URL path, and answers ``reply_bytes``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, list[str]] = {}
        self.lock = threading.Lock()

    def make_app(self) -> web.Application:
        async def notify(request: web.Request) -> web.Response:
            digest = hashlib.sha256()
            async for block in request.content.iter_chunked(1 << 20):
                digest.update(block)
            sha = digest.hexdigest()
            from yarl import URL

            path = URL(request.headers.get("BITS-Original-Request-URL", "/")).path
            with self.lock:
                self.calls.setdefault(path, []).append(sha)
            headers = {}
            if "-keep" in path:
                headers["BITS-Copy-File-To-Destination"] = "true"
            return web.Response(body=reply_bytes(sha, path), headers=headers)

        app = web.Application(client_max_size=1 << 30)
        app.router.add_post("/notify", notify)
        return app

    def url(self) -> str:
        return f"{self.base}/notify"


class PacedRelay:
    """A TCP relay on a free loopback port to ``upstream`` (a port on 127.0.0.1), paced at
    ``rate`` bytes/s per connection and direction; a connection is cut after a random number
    of bytes with ``drop_probability``. ``last_body`` is when a chunk of a request body (a
    fragment) last went upstream; ``last_down`` when a large chunk last came back (a reply)."""

    def __init__(self, upstream: int, *, rate: int, drop_probability: float, seed: int) -> None:
        self.upstream = upstream
        self.rate = rate
        self.drop_probability = drop_probability
        self.rng = random.Random(seed)
        self.port = 0
        self.last_body = 0.0
        self.last_down = 0.0
        self.last_close = 0.0
        self.drops = 0
        self.connections = 0
        self._thread = LoopThread("relay")
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> PacedRelay:
        self._thread.start()

        async def open_() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]

        self._thread.call(open_())
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        try:
            self._thread.call(close())
        finally:
            self._thread.stop()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def window(self) -> float:
        """Seconds between two paced chunks of one stream, doubled: a body whose last chunk
        went within this window is still on its way."""
        return max(0.05, 2 * 64 * KIB / self.rate)

    def mid_body(self) -> bool:
        return time.monotonic() - self.last_body <= self.window

    def mid_reply(self) -> bool:
        return time.monotonic() - self.last_down <= self.window

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            try:
                ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream)
            except OSError:
                return  # the server is down: the client sees the connection closed
            cut = None
            if self.rng.random() < self.drop_probability:
                cut = self.rng.randint(1, 3 * MIB)
            up = asyncio.ensure_future(self._pump(reader, uw, True, cut))
            down = asyncio.ensure_future(self._pump(ur, writer, False, None))
            try:
                await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (up, down):
                    t.cancel()
                await asyncio.gather(up, down, return_exceptions=True)
                uw.close()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _pump(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool, cut: int | None
    ) -> None:
        sent = 0
        try:
            while True:
                data = await src.read(64 * KIB)
                if not data:
                    return
                if cut is not None and sent + len(data) >= cut:
                    self.drops += 1
                    return  # cut mid-stream: both sides see the connection closed
                now = time.monotonic()
                if up and b"close-session" in data[:4096].lower():
                    self.last_close = now
                if up and len(data) > 2 * KIB:
                    self.last_body = now
                elif not up and len(data) > 2 * KIB:
                    self.last_down = now
                dst.write(data)
                await dst.drain()
                sent += len(data)
                await asyncio.sleep(len(data) / self.rate)
        except (OSError, ConnectionError):
            return


class _Either:
    """Two relays seen as one by the killer: body bytes of either, reply bytes of either."""

    def __init__(self, a: PacedRelay, b: PacedRelay) -> None:
        self.a, self.b = a, b

    def mid_body(self) -> bool:
        return self.a.mid_body() or self.b.mid_body()

    def mid_reply(self) -> bool:
        return self.a.mid_reply() or self.b.mid_reply()


# ---- the killers --------------------------------------------------------------------------------


class UploadKiller(Killer):
    """The kill phase's Killer, aiming: before most kills it waits (briefly) for a moment of
    its kind — fragment bytes flowing, a reply coming back, the driver in a ``complete`` or
    ``cancel`` — else it kills at a random moment. ``moments`` counts the kills by kind."""

    def __init__(self, *args: Any, relay: _Either, acting: threading.Event, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.relay = relay
        self.acting = acting

    def aim(self) -> str:
        kind = self.rng.choice(("fragment", "reply", "complete", "random"))
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and not self.stop_event.is_set():
            if kind == "fragment" and self.relay.mid_body():
                return kind
            if kind == "reply" and self.relay.mid_reply():
                return kind
            if kind == "complete" and self.acting.is_set():
                time.sleep(self.rng.uniform(0.0, 0.03))
                return kind
            if kind == "random":
                return kind
            time.sleep(0.005)
        return "random"


class ServerKiller(KillThread):
    """SIGKILLs a ferry-server (one of ``servers``, at random) while fragment bytes flow
    through its relay, leaves it down a moment and restarts it on the same port, root and
    state directory; after every second such kill, one more aimed at a Close-Session (the
    commit). ``kills`` is how many land mid-fragment (``mid_fragment``; a try that finds no
    fragment on its way within 5 s kills nothing); ``mid_close`` counts the extra ones."""

    def __init__(
        self,
        servers: list[FerryServer],
        kills: int,
        rng: random.Random,
        relays: list[PacedRelay],
        interval: tuple[float, float],
    ) -> None:
        super().__init__("server-killer", kills, rng, interval)
        self.servers = servers
        self.relays = relays
        self.aimed = 0  # tries at a kill mid-fragment
        self.mid_fragment = 0  # kills that landed while fragment bytes were flowing
        self.mid_close = 0

    @property
    def done(self) -> bool:
        return self.mid_fragment >= self.kills

    def _wait(self, ready: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not ready() and not self.stop_event.is_set():
            time.sleep(0.002)
        return ready()

    def _kill(self, i: int) -> None:
        self.servers[i].kill()
        self.times.append(time.monotonic())
        time.sleep(self.rng.uniform(0.0, 1.0))
        self.servers[i].start()

    def round(self) -> None:
        i = self.rng.randrange(len(self.servers))
        relay = self.relays[i]
        self.aimed += 1
        if not self._wait(relay.mid_body, 5.0):
            return  # no fragment on its way to this server: try again later
        self.mid_fragment += 1
        self._kill(i)
        if self.mid_fragment % 2 == 0 and not self.stop_event.is_set():

            def closing() -> bool:
                return any(time.monotonic() - r.last_close < 0.01 for r in self.relays)

            if self._wait(closing, 10.0):
                time.sleep(self.rng.uniform(0.0, 0.04))
                j = max(range(len(self.relays)), key=lambda k: self.relays[k].last_close)
                self.mid_close += 1
                self._kill(j)


# ---- jobs ---------------------------------------------------------------------------------------


@dataclass
class UJob:
    name: str
    kind: str  # "upload" or "upload-reply"
    fate: str  # "complete", "cancel" (once TRANSFERRED) or "cancel-early" (mid-transfer)
    server: str  # "plain" or "reply"
    url: str
    url_path: str  # the destination's path on its server
    src: Path
    size: int
    sha: str
    dir: Path
    id: str = ""
    expected: str | None = None
    final_at: float | None = None
    refusals: dict[str, int] = field(default_factory=dict)
    last: str = ""  # the state last seen

    @property
    def reply_file(self) -> Path:
        return Path(str(self.src) + ".reply")


def _pool(work: Path, sizes: list[int]) -> dict[int, tuple[Path, str]]:
    pool = work / "pool"
    pool.mkdir(parents=True)
    return {s: (pool / f"p{s}.bin", make_file(pool / f"p{s}.bin", s)) for s in sizes}


def upload_kill_phase(
    work: Path,
    report: Report,
    *,
    seed: int,
    q: bool,
    ferryd_kills: int = 30,
    server_kills: int = 10,
    duration: float = 420.0,
    max_size: int | None = None,
    active_jobs: int = 5,
    rate: int = 6 * MIB,
    interval: tuple[float, float] = (0.3, 2.5),
    server_interval: tuple[float, float] = (1.0, 6.0),
) -> None:
    """Run the phase (see the module's docstring); adds to ``report``."""
    import ferry
    from ferry.client import DaemonUnavailable

    rng = random.Random(seed)
    started = time.monotonic()
    sizes = [3 * KIB, 60 * KIB, 700 * KIB, 3 * MIB, 12 * MIB, 30 * MIB]
    if q:
        sizes = [3 * KIB, 60 * KIB, 700 * KIB, 3 * MIB, 10 * MIB]
    if max_size is not None:
        sizes = [s for s in sizes if s <= max_size] or [min(sizes)]
    reply_sizes = [0, 2 * KIB, 300 * KIB, 3 * MIB, 9 * MIB]
    if q or max_size is not None:
        reply_sizes = [s for s in reply_sizes if s <= min(3 * MIB, max_size or 3 * MIB)]
    pool = _pool(work, sizes)
    ordered = sorted(pool)

    backend = ReplyBackend().start()
    roots = {"plain": work / "srv-plain" / "root", "reply": work / "srv-reply" / "root"}
    # The plain server keeps its sessions on another file system when there is one (tmpfs):
    # Close-Session then copies the upload beside its destination, the slow commit path, and
    # a kill can land in it. The reply server's sessions are on the root's (a hard link).
    plain_state = work / "srv-plain" / "state"
    other_fs = Path("/dev/shm")
    if other_fs.is_dir() and other_fs.stat().st_dev != work.stat().st_dev:
        plain_state = Path(tempfile.mkdtemp(prefix="fyu-state-", dir=other_fs))
    for r in roots.values():
        (r / "up").mkdir(parents=True)
    servers = {
        "plain": FerryServer(roots["plain"], state_dir=plain_state),
        "reply": FerryServer(
            roots["reply"],
            ["--notify-url", backend.url(), "--notify-type", "by-value"],
            state_dir=work / "srv-reply" / "state",
        ),
    }
    relays: dict[str, PacedRelay] = {}
    d = Daemon(work / "ferryd", config=FERRYD_CONFIG, log_level="info")
    acting = threading.Event()
    killer: UploadKiller | None = None
    skiller: ServerKiller | None = None
    jobs: list[UJob] = []
    seen: dict[str, tuple[int, int]] = {}  # destination -> (inode, mtime_ns) when first seen
    counter = [0]
    try:
        for name, s in servers.items():
            s.start()
            relays[name] = PacedRelay(
                s.port, rate=rate, drop_probability=0.08, seed=seed + len(relays)
            ).start()
        d.start()
        killer = UploadKiller(
            d, ferryd_kills, rng, report, work / "db-copy", interval,
            relay=_Either(relays["plain"], relays["reply"]), acting=acting,
        )  # fmt: skip
        skiller = ServerKiller(
            [servers["plain"], servers["reply"]], server_kills, rng,
            [relays["plain"], relays["reply"]], server_interval,
        )  # fmt: skip

        def new_job() -> None:
            counter[0] += 1
            n = counter[0]
            size = ordered[min(int(rng.expovariate(0.55)), len(ordered) - 1)]
            kind = "upload-reply" if rng.random() < 0.4 else "upload"
            server = "reply" if kind == "upload-reply" else "plain"
            name = f"u{n:03d}"
            if kind == "upload-reply":
                name += f"-r{rng.choice(reply_sizes)}"
                if rng.random() < 0.5:
                    name += "-keep"
            url_path = f"/up/{name}.bin"
            direct = server == "plain" and rng.random() < 0.25
            url = servers[server].url(url_path) if direct else relays[server].url(url_path)
            jdir = work / "cli" / f"j{n:03d}"
            jdir.mkdir(parents=True)
            src = jdir / "src.bin"
            os.link(pool[size][0], src)
            fate = rng.choices(("complete", "cancel", "cancel-early"), (0.7, 0.15, 0.15))[0]
            uj = UJob(f"torture-up-{n:03d}", kind, fate, server, url, url_path, src, size,
                      pool[size][1], jdir)  # fmt: skip

            uj.id = retrying(lambda: ensure_job(d, uj.name, [(url, str(src))], type=kind))
            jobs.append(uj)
            report.jobs += 1

        say(
            f"upload kills: {ferryd_kills} kills of ferryd, {server_kills} of ferry-server "
            f"(sources up to {max(sizes) // KIB} KiB, relay {rate // KIB} KiB/s)"
        )
        for _ in range(active_jobs):
            new_job()
        killer.start()
        skiller.start()
        # The set-up (sources, servers, ferryd) does not count against the duration.
        t0 = time.monotonic()
        kill_deadline = t0 + duration * 0.8
        hard_deadline = t0 + duration
        next_status = started + 10
        while True:
            now = time.monotonic()
            if now > next_status:
                next_status = now + 10
                say(
                    f"  {now - started:.0f} s: {len(killer.times)} + {len(skiller.times)} kills, "
                    f"{len(jobs)} jobs, {len([j for j in jobs if j.final_at is None])} open: "
                    + ", ".join(f"{j.name}:{j.fate}:{j.last}" for j in jobs if j.final_at is None)
                )
            if now > hard_deadline:
                stuck = [f"{j.name}({j.fate})" for j in jobs if j.final_at is None]
                report.fail(
                    f"upload kills: timed out after {duration:.0f} s; jobs not finished: {stuck}"
                )
                break
            for k, what in ((killer, "ferryd"), (skiller, "ferry-server")):
                if k.error is not None:
                    report.fail(f"restarting {what} after a kill failed: {k.error}")
                    raise _Abort
            stop_kills = (killer.done and skiller.done) or now > kill_deadline
            if stop_kills:
                killer.stop_event.set()
                skiller.stop_event.set()
            open_jobs = [j for j in jobs if j.final_at is None]
            if not stop_kills and len([j for j in open_jobs if j.expected is None]) < active_jobs:
                new_job()
            with killer.lock:
                if d.proc is not None and d.proc.poll() is not None:
                    report.fail(
                        f"ferryd died by itself (status {d.proc.returncode}):\n" + d.log(3000)
                    )
                    d.proc = None
                    d.start()
            _watch_destinations(jobs, roots, seen, report)
            try:
                with ferry.Client(socket=d.socket) as c:
                    states = {j.id: j for j in c.jobs()}
                    for uj in open_jobs:
                        try:
                            _drive(uj, states.get(uj.id), report, acting)
                        except DaemonUnavailable:
                            raise
                        except ferry.FerryError as exc:
                            _refused(uj, exc, report)
                        finally:
                            acting.clear()
            except (ferry.FerryError, OSError):
                time.sleep(0.05)  # ferryd is being killed or restarted
                continue
            if (
                stop_kills
                and not killer.is_alive()
                and not skiller.is_alive()
                and all(j.final_at is not None for j in jobs)
            ):
                break
            time.sleep(0.1)
        killer.stop_event.set()
        skiller.stop_event.set()
        killer.join(60)
        skiller.join(60)
        for s in servers.values():
            if not s.alive():
                s.start()
        if not d.alive():
            d.start()
        _watch_destinations(jobs, roots, seen, report)
        _verify(d, jobs, roots, servers, backend, seen, report)
    except _Abort:
        pass
    finally:
        if killer is not None:
            killer.stop_event.set()
        if skiller is not None:
            skiller.stop_event.set()
            skiller.join(30)
        stop_and_check(d, killer.lock if killer is not None else threading.Lock(), report)
        for relay in relays.values():
            relay.stop()
        for s in servers.values():
            s.stop()
        backend.stop()
        if plain_state.parent == other_fs:
            shutil.rmtree(plain_state, ignore_errors=True)
    fk = len(killer.times) if killer is not None else 0
    sk = len(skiller.times) if skiller is not None else 0
    report.upload_kills += fk
    report.server_kills += sk
    moments = dict(sorted((killer.moments if killer is not None else {}).items()))
    say(
        f"  {fk} ferryd kills {moments}, {sk} ferry-server kills "
        f"({skiller.mid_fragment if skiller else 0} mid-fragment, "
        f"{skiller.mid_close if skiller else 0} mid-close), {len(jobs)} jobs, "
        f"{sum(r.drops for r in relays.values())} connections cut, "
        f"{time.monotonic() - started:.0f} s"
    )


class _Abort(Exception):
    pass


# ---- the driver ---------------------------------------------------------------------------------


def _drive(uj: UJob, job: Any, report: Report, acting: threading.Event) -> None:
    """One look at one job: resume after transient errors, act on TRANSFERRED (the killer
    may aim at that moment: ``acting``), note finals."""
    import ferry

    S = ferry.JobState
    if job is None:
        report.fail(f"{uj.name} ({uj.id}) vanished from the job list")
        uj.final_at = time.monotonic()
        return
    st = job.state
    uj.last = f"{st.value}@{job.data['progress']['bytes_transferred']}"
    if st in (S.ACKNOWLEDGED, S.CANCELLED):
        if uj.expected is None:  # an answer lost to a kill: the call was applied all the same
            uj.expected = "ACKNOWLEDGED" if uj.fate == "complete" else "CANCELLED"
        if uj.final_at is None:
            uj.final_at = time.monotonic()
            if st.value != uj.expected:
                report.fail(f"{uj.name} is {st.value}, expected {uj.expected}")
        return
    if uj.expected is not None:  # complete/cancel sent, its answer lost or refused: again
        _act(job, uj, acting)
        return
    if st is S.TRANSIENT_ERROR:
        job.resume()
    elif st is S.ERROR:
        err = job.error or {}
        report.fail(f"{uj.name} went to ERROR: {err.get('code')}: {err.get('description')}")
        job.resume()
    elif st is S.SUSPENDED:
        report.fail(f"{uj.name} is SUSPENDED; nobody suspended it")
        job.resume()
    elif st is S.TRANSFERRED or (
        uj.fate == "cancel-early"
        and (st is S.TRANSFERRING or job.data["progress"]["bytes_transferred"] > 0)
    ):
        _act(job, uj, acting)


def _act(job: Any, uj: UJob, acting: threading.Event) -> None:
    acting.set()
    if uj.fate == "complete":
        uj.expected = "ACKNOWLEDGED"
        job.complete()
    else:
        uj.expected = "CANCELLED"
        job.cancel()
    uj.final_at = time.monotonic()


# Refusals of complete that are the network's (a server killed, a connection cut), not a bug:
# the job stays TRANSFERRED and complete is sent again.
_TRANSIENT = re.compile(
    r"BG_E_HTTP_ERROR_5\d\d|BG_E_CONNECT|BG_E_NETWORK|ERROR_INTERNET|E_FAIL|WSA|TIMEOUT"
)


def _refused(uj: UJob, exc: Exception, report: Report) -> None:
    code = str(getattr(exc, "code", ""))
    key = f"{type(exc).__name__}: {exc}"
    if uj.expected == "ACKNOWLEDGED":
        uj.final_at = None  # complete again at the next look
    if not _TRANSIENT.search(code) and key not in uj.refusals:
        report.fail(f"{uj.name} ({uj.id}, fate {uj.fate}, expected {uj.expected}): {key}")
    uj.refusals[key] = uj.refusals.get(key, 0) + 1
    if sum(uj.refusals.values()) >= 60 and uj.final_at is None:
        report.fail(f"{uj.name}: giving up after 60 refusals: {sorted(uj.refusals)}")
        uj.final_at = time.monotonic()


# ---- the checks ---------------------------------------------------------------------------------


def _dest(uj: UJob, roots: dict[str, Path]) -> Path:
    return roots[uj.server] / uj.url_path.lstrip("/")


def _watch_destinations(
    jobs: list[UJob], roots: dict[str, Path], seen: dict[str, tuple[int, int]], report: Report
) -> None:
    """A destination, once it appeared, is never replaced: same inode and mtime."""
    for uj in jobs:
        p = _dest(uj, roots)
        try:
            st = p.stat()
        except FileNotFoundError:
            if str(p) in seen:
                report.fail(f"{uj.name}: {p} appeared, then vanished", "double-commit")
                del seen[str(p)]
            continue
        now = (st.st_ino, st.st_mtime_ns)
        was = seen.setdefault(str(p), now)
        if was != now:
            report.fail(
                f"{uj.name}: {p} was replaced after it appeared (inode/mtime "
                f"{was} -> {now}): committed twice",
                "double-commit",
            )
            seen[str(p)] = now


def _closed_sessions(servers: dict[str, FerryServer]) -> dict[tuple[str, str], set[str]]:
    """(server, destination path) -> the sessions a server's log says it closed there."""
    out: dict[tuple[str, str], set[str]] = {}
    for name, s in servers.items():
        for m in _CLOSED_RE.finditer(s.log(1 << 30)):
            out.setdefault((name, m.group(2)), set()).add(m.group(1))
    return out


def _verify(
    d: Daemon,
    jobs: list[UJob],
    roots: dict[str, Path],
    servers: dict[str, FerryServer],
    backend: ReplyBackend,
    seen: dict[str, tuple[int, int]],
    report: Report,
) -> None:
    import ferry

    with ferry.Client(socket=d.socket) as c:
        states = {j.id: j.state.value for j in c.jobs()}
    closed = _closed_sessions(servers)
    expected_dests: dict[str, set[str]] = {"plain": set(), "reply": set()}
    for uj in jobs:
        st = states.get(uj.id)
        if st != uj.expected:
            report.fail(f"{uj.name} ({uj.kind}): state {st}, expected {uj.expected}")
        dest = _dest(uj, roots)
        sessions = closed.get((uj.server, uj.url_path), set())
        keep = uj.kind == "upload" or "-keep" in uj.url_path
        reply = uj.reply_file
        if uj.expected == "ACKNOWLEDGED":
            if len(sessions) != 1:
                report.fail(
                    f"{uj.name}: {uj.url_path} was committed by {len(sessions)} "
                    f"sessions {sorted(sessions)}, not 1",
                    "double-commit",
                )
            if keep:
                expected_dests[uj.server].add(dest.name)
                if not dest.is_file():
                    report.lost += 1
                    report.fail(f"{uj.name}: {dest} is missing")
                elif sha256_file(dest) != uj.sha:
                    report.lost += 1
                    report.fail(
                        f"{uj.name}: {dest} differs from its source "
                        f"({dest.stat().st_size} of {uj.size} bytes)"
                    )
                else:
                    report.uploads_verified += 1
            elif dest.exists():
                report.fail(f"{uj.name}: {dest} exists; the upload was to be handed over only")
            if uj.kind == "upload-reply":
                calls = backend.calls.get(uj.url_path, [])
                if not calls or any(sha != uj.sha for sha in calls):
                    report.lost += 1
                    report.fail(
                        f"{uj.name}: the back end got {len(calls)} notifications, "
                        f"not all of the source's bytes"
                    )
                elif not keep:
                    report.uploads_verified += 1
                want = reply_bytes(uj.sha, uj.url_path)
                if not reply.is_file():
                    report.lost += 1
                    report.fail(f"{uj.name}: the reply file {reply} is missing")
                elif reply.read_bytes() != want:
                    report.lost += 1
                    report.fail(
                        f"{uj.name}: {reply} differs from the back end's answer "
                        f"({reply.stat().st_size} of {len(want)} bytes)"
                    )
                else:
                    report.replies_verified += 1
        else:
            if sessions:
                report.fail(
                    f"{uj.name} was cancelled but {uj.url_path} was committed by "
                    f"{sorted(sessions)}",
                    "double-commit",
                )
            if dest.exists():
                report.fail(f"{uj.name} was cancelled but {dest} exists")
            if reply.exists():
                report.fail(f"{uj.name} was cancelled but its reply file {reply} exists")
        present = {p.name for p in uj.dir.iterdir()}
        wanted = {"src.bin"}
        if uj.expected == "ACKNOWLEDGED" and uj.kind == "upload-reply":
            wanted.add(reply.name)
        if present - wanted:
            report.fail(
                f"{uj.name} ({uj.expected}): files left in {uj.dir}: {sorted(present - wanted)}",
                "temp-left",
            )
    for name, root in roots.items():
        left = {p.name for p in (root / "up").iterdir()} - expected_dests[name]
        others = {p.name for p in root.iterdir()} - {"up"}
        if left or others:
            report.fail(
                f"ferry-server {name}: unexpected files in its root: {sorted(left | others)}",
                "temp-left",
            )
    say(
        f"  {report.uploads_verified} uploads and {report.replies_verified} replies verified so far"
    )
