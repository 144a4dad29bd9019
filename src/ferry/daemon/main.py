"""ferryd: the transfer daemon (SPEC §1). System mode (root, shared socket) or user mode.

Start-up order: lock the state directory, open the store (a corrupt one stops the daemon and
is left untouched), load the jobs, listen (or take the socket systemd passed), start the
scheduler, then tell systemd READY=1. SIGTERM/SIGINT stop transfers at a checkpoint and exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import functools
import gc
import io
import logging
import os
import signal
import socket
import ssl
import stat
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from aiohttp import web

from ..errors import FerryError
from ..security.identity import IdentityIO
from ..security.localfiles import LocalFiles
from ..security.secretbox import SecretBox
from ..security.sessions import SessionTracker
from ..service.credentials import Credentials
from ..service.events import EventBus
from ..service.fleet import Fleet, FleetTransfers
from ..service.handles import Handles
from ..service.housekeeping import Housekeeper
from ..service.httpoptions import HttpOptions
from ..service.logon import Logon
from ..service.manager import QueueManager
from ..service.metrics import Metrics
from ..service.network import NetworkState
from ..service.notify import Notifier
from ..service.outbox import Outbox
from ..service.reports import EngineReports
from ..service.runqueue import RunQueue, Transfers
from ..service.scheduler import Scheduler
from ..service.table import JobTable
from ..store.base import JobStore
from ..store.sqlite import SqliteJobStore
from ..transfer.auth import clear_ambient_kerberos
from ..transfer.bandwidth import Limiter
from ..transfer.bits_upload import BitsUploadTransport
from ..transfer.engine import TransferEngine
from ..transfer.gsscreds import remove_stale_copies
from ..transfer.http import HttpTransport
from ..transfer.lean import LeanHttpTransport
from ..transfer.lean import enabled as lean_enabled
from ..transfer.local import LocalTransport
from .api import Api, metrics_app
from .config import Config, load_config, parse_listen
from .httpserver import AppRunner as BitsAppRunner
from .network import proxy_router

log = logging.getLogger("ferry.daemon")
SD_LISTEN_FDS_START = 3


class LogfmtFormatter(logging.Formatter):
    """One line per record, key=value, which journald and grep both read well."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage().replace('"', "'")
        line = f'level={record.levelname.lower()} logger={record.name} msg="{msg}"'
        if record.exc_info:
            exc = self.formatException(record.exc_info).replace("\n", "\\n").replace('"', "'")
            line += f' exc="{exc}"'
        return line


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_malloc() -> bool:
    """Keep the download path's buffers on the heap.

    asyncio reads a socket into a fresh 256 KiB bytes object and aiohttp joins them into
    1 MiB chunks. Above glibc's default threshold (128 KiB, raised only when a *large*
    mapped block is freed, which never happens here because the read buffer is shrunk
    first) each of those buffers is a new mmap: 64 page faults and a munmap per read, a
    third of ferryd's CPU on a fast download. Served from the heap they are reused. Blocks
    over 8 MiB still get their own mapping, and the heap gives memory back once more than
    32 MiB at its top is free, so a burst does not pin RSS. Not glibc: nothing to do.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 8 << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, 32 << 20))


def sd_notify(message: str) -> None:
    """Tell systemd about our state, when it asked (NOTIFY_SOCKET)."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        try:
            s.connect(addr)
            s.sendall(message.encode())
        except OSError as exc:
            log.warning("could not notify systemd: %s", exc)


def activated_socket() -> socket.socket | None:
    """The listening socket systemd passed us (socket activation), if any."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    if int(os.environ.get("LISTEN_FDS", "0")) < 1:
        return None
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    os.set_inheritable(sock.fileno(), False)
    return sock


def listen(path: Path, mode: int) -> socket.socket:
    """Bind the Unix socket; a stale socket file is replaced, a live daemon is not."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755 if mode == 0o666 else 0o700)
    with contextlib.suppress(FileNotFoundError):
        st = path.lstat()
        if not stat.S_ISSOCK(st.st_mode):
            raise FerryError("E_INVALIDARG", f"{path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()
        else:
            raise FerryError("E_INVALIDARG", f"another ferryd is already serving {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, mode)
    sock.listen(128)
    return sock


def tls_context(cfg: Config) -> ssl.SSLContext:
    """What https servers are checked against: the system trust store, plus the extra
    anchors of ``ca_file`` (a private CA) when configured."""
    ctx = ssl.create_default_context()
    if cfg.ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(cfg.ca_file))
        except OSError as exc:  # ssl.SSLError too: not PEM, no certificate in it
            raise FerryError("E_INVALIDARG", f"ca_file {cfg.ca_file}: {exc}") from None
    return ctx


def lock_state_dir(state_dir: Path) -> int:
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(state_dir / "ferryd.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FerryError(
            "E_ACCESSDENIED", f"another ferryd is using the state directory {state_dir}"
        ) from None
    return fd


async def serve(cfg: Config) -> None:
    """Build the services in the one order their dependencies allow (each gets what it
    needs through its constructor), then serve until SIGTERM/SIGINT.

    The run queue comes first: the job table tells it of every change of a job and the
    scheduler reads it, which breaks the cycle between the two (service/runqueue.py). The
    scheduler is built on the job side's records of a run (EngineReports) and handed to the
    parts that stop jobs to change them (as ``Transfers``)."""
    started = time.monotonic()
    tls = tls_context(cfg)
    lock_fd = lock_state_dir(cfg.state_dir)
    stale = remove_stale_copies()  # Kerberos copies an older ferryd left when it crashed
    if stale:
        log.info("removed %d stale Kerberos credential copies from the temporary directory", stale)
    clock = time.time
    metrics = Metrics()
    fleet_db = None
    if cfg.store_url:  # fleet mode (docs/fleet.md): many ferryd on one PostgreSQL
        from ..store.postgres import PostgresJobStore, default_worker_id
        from ..store.postgres_fleet import FleetDb

        worker = cfg.worker_id or default_worker_id()
        pg_store = PostgresJobStore.open(cfg.store_url, worker=worker)
        store: JobStore = pg_store
        fleet_db = FleetDb(cfg.store_url, worker, cfg.lease_seconds, str(cfg.socket))
    else:
        store = SqliteJobStore.open(cfg.db_path, on_commit=metrics.committed)
    identity = IdentityIO()
    # Secrets of jobs (credentials' passwords, SPEC §8.2; write-only custom headers, §8.3)
    # are sealed under a key in the state directory; the transport opens them per request.
    secrets = (
        SecretBox.from_file(str(cfg.credentials_key))
        if cfg.credentials_key is not None
        else SecretBox.in_state_dir(str(cfg.state_dir))
    )
    http = HttpTransport(
        ssl_context=tls,
        read_timeout=cfg.stall_timeout,
        proxy_router=proxy_router(cfg),
        secrets=secrets,
    )
    # The BITS Upload Protocol client; an Ack may take a while (the server fsyncs a fragment
    # first), so its silence bound is the longer of the stall timeout and Windows's 5 min.
    uploads = BitsUploadTransport(
        ssl_context=tls,
        read_timeout=max(cfg.stall_timeout, 300.0),
        fragment_size=cfg.upload_fragment_size,
        retries=cfg.upload_retries,
        http=http,  # the job's proxies, credentials, headers and TLS options (issue #12)
    )
    # SPEC §10: the bandwidth limits in the data path, and what ferryd sees of the network.
    limiter = Limiter(cfg.bandwidth, clock)
    controller = limiter.enable_yielding()
    # Plain http GETs on ferryd's own kept-alive sockets (issue #15; FERRY_LEAN_HTTP=0 turns
    # it off): the rest (proxies, credentials, custom headers, ranges, redirects) via ``http``.
    plain_http: HttpTransport | LeanHttpTransport = (
        LeanHttpTransport(http) if lean_enabled() else http
    )
    engine = TransferEngine(
        identity,
        limiter=limiter,
        # One transport per scheme and direction: a new one is a file in transfer/ and a line.
        downloads={"http": plain_http, "https": http, "file": LocalTransport(identity)},
        uploads={"http": uploads, "https": uploads},
        secrets=secrets,
        keytabs=cfg.keytabs,
    )
    bus = EventBus(min_interval=cfg.min_notification_interval_ms / 1000)
    runqueue = RunQueue()
    table = JobTable(store, bus, runqueue, clock)
    fleet = None
    if fleet_db is not None:
        fleet = Fleet(fleet_db, pg_store, table, clock)
    count = await table.load(requeue_interrupted=fleet is None)
    # The loaded jobs live as long as the daemon: move them out of the collector's sight so
    # neither this start-up nor every later full collection walks 100,000 jobs again.
    gc.freeze()
    outbox = Outbox(store, table, clock)
    reports = EngineReports(table, store, outbox, clock, metrics=metrics)
    sessions = SessionTracker()
    network = NetworkState(
        limiter, runqueue.kick, cfg.network_cost, cfg.dbus_address, netlink=cfg.netlink
    )
    scheduler = Scheduler(
        runqueue,
        reports,
        engine,
        cfg.max_background_jobs,
        sessions.token_logged_on,
        time_slice=cfg.time_slice,
        clock=clock,
        leases=fleet,
        gate=network.gate,
    )
    transfers: Transfers = scheduler
    if fleet is not None:
        fleet.attach_stop(scheduler.stop, scheduler.kick)
        transfers = FleetTransfers(scheduler, fleet)
    manager = QueueManager(
        table, store, outbox, LocalFiles(identity), transfers, cfg.limits, clock, uploads=engine
    )
    handles = Handles(table, store, clock)
    credentials = Credentials(table, store, identity, secrets, clock)
    logon = Logon(table, store, outbox, sessions, transfers, reports.requeued, clock)
    housekeeper = Housekeeper(table, store, manager.cancel_job, clock)
    notifier = Notifier(
        outbox,
        identity,
        socket_path=str(cfg.socket),
        timeout=cfg.notify_timeout,
        retry_delay=cfg.notify_retry_delay,
        max_attempts=cfg.notify_max_attempts,
        start_delay=cfg.notify_start_delay,
        clock=clock,
        metrics=metrics,
    )
    # Who is logged on, before the scheduler's first pass asks.
    await logon.refresh()
    stop = asyncio.Event()
    api = Api(
        manager,
        handles,
        logon,
        bus,
        cfg.admin_groups,
        "system" if cfg.system else "user",
        None if cfg.system else os.geteuid(),
        stop.set,
        credentials=credentials,
        fleet=fleet,
        network=network,
        reload=functools.partial(reload_config, cfg, limiter, network),
        http_options=HttpOptions(table, store, secrets, clock, scheduler.kick),
        metrics=metrics,
    )
    sock = activated_socket()
    owns_socket = sock is None
    if sock is None:
        sock = listen(cfg.socket, cfg.socket_mode)
    # Unparsable requests get BITS error bodies too (daemon/httpserver.py).
    runner = BitsAppRunner(
        api.app(), handle_signals=False, access_log=None, shutdown_timeout=2.0
    )
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    runners: list[web.AppRunner] = [runner]
    if cfg.metrics_listen is not None:
        host, port = parse_listen(cfg.metrics_listen)
        exporter = web.AppRunner(
            metrics_app(metrics), handle_signals=False, access_log=None, shutdown_timeout=1.0
        )
        await exporter.setup()
        runners.append(exporter)
        await web.TCPSite(exporter, host, port, reuse_address=True).start()
        log.info("metrics on http://%s/metrics", cfg.metrics_listen)
    metrics.jobs = table.all
    metrics.running = lambda: len(scheduler.running)
    metrics.connections = lambda: sum(
        len(r.server.connections) for r in runners if r.server is not None
    )

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload_on_signal, cfg, limiter, network)
    log.info(
        "serving %s (%s mode), %d jobs, ready in %.3f s",
        cfg.socket if owns_socket else "an activated socket",
        api.mode,
        count,
        time.monotonic() - started,
    )
    sd_notify("READY=1\nSTATUS=serving")
    services: list[asyncio.Task[Any]] = []
    failed: list[BaseException] = []

    def service_ended(task: asyncio.Task[Any]) -> None:
        # A service that fails stops ferryd (as the TaskGroup this replaces did).
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            assert exc is not None
            log.error("service %s failed", task.get_name(), exc_info=exc)
            failed.append(exc)
            stop.set()

    stuck: list[asyncio.Task[Any]] = []
    try:
        for name, coro in [
            ("scheduler", scheduler.run()),
            (
                "housekeeping",
                housekeeper.run(
                    cfg.final_job_retention,
                    cfg.job_inactivity_timeout,
                    cfg.housekeeping_interval,
                ),
            ),
            ("sessions", logon.run(cfg.session_poll_interval)),
            ("notifier", notifier.run()),
            ("network", network.run()),
            ("routes", network.run_routes()),
            ("yielding", controller.run(limiter.set_yield_rate)),
            *([("fleet", fleet.run())] if fleet is not None else []),
        ]:
            task = asyncio.create_task(coro, name=name)
            task.add_done_callback(service_ended)
            services.append(task)
        await stop.wait()
    finally:
        log.info("stopping")
        sd_notify("STOPPING=1")
        api.closing.set()
        bus.close()
        stuck = await stop_services(services, SERVICE_STOP_TIMEOUT)
        for r in reversed(runners):
            await bounded("the API server", r.cleanup())
        await bounded("the transports", engine.close())
        await bounded("the identity helpers", identity.shutdown())
        await bounded("the store", store.close())
        if fleet_db is not None:
            await bounded("the fleet database", fleet_db.close())
        if owns_socket:
            with contextlib.suppress(OSError):
                cfg.socket.unlink()
        os.close(lock_fd)
        log.info("stopped")
    if failed:
        raise BaseExceptionGroup("ferryd services failed", failed)
    if stuck:
        # asyncio.run would wait for these forever: the state is saved, so leave now.
        logging.shutdown()
        os._exit(0)


# How long each service (and each closing step) has to stop after SIGTERM. One that has not
# is logged with where it waits, and ferryd exits anyway: a stuck part never keeps it running.
SERVICE_STOP_TIMEOUT = 10.0


async def stop_services(tasks: list[asyncio.Task[Any]], timeout: float) -> list[asyncio.Task[Any]]:
    """Cancel the services and wait (``timeout`` seconds at most) until they have ended;
    returns those that have not (each logged with its stack)."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return []
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    stuck = [t for t in tasks if t in pending]
    for task in stuck:
        where = io.StringIO()
        task.print_stack(file=where)
        log.error(
            "service %s did not stop within %.0f s of being cancelled; exiting without it:\n%s",
            task.get_name(),
            timeout,
            where.getvalue().rstrip(),
        )
    return stuck


async def bounded(what: str, aw: Awaitable[Any], timeout: float = SERVICE_STOP_TIMEOUT) -> None:
    """Await one closing step for ``timeout`` seconds at most (logged if it takes longer)."""
    try:
        async with asyncio.timeout(timeout):
            await aw
    except TimeoutError:
        log.error("closing %s took longer than %.0f s; going on without it", what, timeout)


def reload_config(cfg: Config, limiter: Limiter, network: NetworkState) -> dict[str, Any]:
    """SIGHUP and ``ferry reload``: read the config file again and apply what can change
    while ferryd runs (``[bandwidth]``, ``[network] cost``); running transfers see new
    limits within a second. An invalid file raises FerryError and changes nothing."""
    if cfg.config_file is None:
        return {"config_file": None, "applied": []}
    new = load_config(cfg.system, cfg.config_file)
    limiter.set_policy(new.bandwidth)
    network.reconfigure(new.network_cost)
    log.info("reloaded %s", cfg.config_file)
    return {"config_file": str(cfg.config_file), "applied": ["bandwidth", "network.cost"]}


def reload_on_signal(cfg: Config, limiter: Limiter, network: NetworkState) -> None:
    try:
        reload_config(cfg, limiter, network)
    except FerryError as exc:
        log.error("SIGHUP: the configuration was not reloaded: %s", exc)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    """ferryd's command line (also the source of the ferryd(8) man page, ferry/manpages.py)."""
    p = argparse.ArgumentParser(prog="ferryd", description="ferry transfer daemon")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--system", action="store_true", help="one daemon per machine (root)")
    mode.add_argument("--user", action="store_true", help="one daemon for the calling user")
    p.add_argument("--socket", help="Unix socket path to listen on")
    p.add_argument("--state-dir", help="directory for the job store")
    p.add_argument("--config", type=Path, help="TOML configuration file")
    p.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="log verbosity"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    system = args.system or (not args.user and os.geteuid() == 0)
    setup_logging(args.log_level or "info")
    try:
        if system and os.geteuid() != 0:
            raise FerryError("E_ACCESSDENIED", "system mode needs root; use --user")
        cfg = load_config(system, args.config, args.socket, args.state_dir, args.log_level)
        setup_logging(cfg.log_level)
        # ferryd acts on no ambient Kerberos credentials (SPEC §8.2, docs/security.md).
        cleared = clear_ambient_kerberos()
        if cleared:
            log.info("ignoring %s from the environment", ", ".join(cleared))
        if not tune_malloc():
            log.debug("malloc tuning not available (not glibc)")
        asyncio.run(serve(cfg))
    except FerryError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
