"""The notifier: runs a job's notification command line (BITS SetNotifyCmdLine, SPEC §2.6)
when the job is transferred or fails, as the job's owner, never as root for anyone else.

Delivery goes through the outbox (service/outbox.py, and a table in the store). The part that
changes the job writes the owed notification in the same transaction as the state change that
makes it due (model/notification.py says when), then announces it to the outbox, which the
notifier reads. Each attempt is counted durably before its program starts, and
the entry leaves the outbox, in one transaction with the job's ``notification`` status,
once the program has succeeded or failed for the last time. So:

* a notification due while ferryd was down (a crash right after the job finished) runs
  after the restart, once;
* a crash *while the program runs* re-runs it after the restart: at-least-once in that
  window, exactly once otherwise.

A program that cannot be started, exits non-zero or outlives ``timeout`` is recorded on the
job (``notification.error``, context QUEUE_MANAGER_NOTIFICATION) and retried with backoff
(``retry_delay``, doubling, at most the job's min_retry_delay) up to ``max_attempts`` times.
Programs run as tasks of the notifier's own TaskGroup and never block transfers.

How a program runs: no shell; as the owner's uid, gid and supplementary groups when ferryd is
root (``subprocess`` drops them in the child before exec, so a failure to drop is a failure
to start, never a run as root); as ferryd's own user in user mode. A clean environment
(PATH, HOME/USER/LOGNAME when the owner has a passwd entry, FERRY_JOB_ID, FERRY_JOB_STATE,
FERRY_EVENT, FERRY_SOCKET), the owner's home as working directory if the owner may enter it
(else ``/``), stdin from /dev/null, stdout and stderr captured (the first ``output_limit``
bytes go to the log), a new session so that on timeout its whole process group is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import posixpath
import pwd
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

from ..errors import FerryError
from ..model import notification as notif
from ..model.notification import NotificationStatus, PendingNotification
from ..model.token import Token
from ..security.identity import IdentityIO
from .metrics import Metrics
from .outbox import Outbox

log = logging.getLogger("ferry.notify")

SAFE_PATH = "/usr/bin:/bin"
OUTPUT_GRACE = 1.0  # seconds to drain output after the program exited


class Notifier:
    def __init__(
        self,
        outbox: Outbox,
        identity: IdentityIO,
        *,
        socket_path: str | None = None,
        timeout: float = 30.0,
        retry_delay: float = 60.0,
        max_attempts: int = 5,
        start_delay: float = 0.0,
        max_concurrent: int = 8,
        output_limit: int = 4096,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.outbox = outbox
        self.identity = identity
        self.socket_path = socket_path
        self.timeout = timeout
        self.retry_delay = retry_delay
        self.max_attempts = max(1, max_attempts)
        self.start_delay = start_delay
        self.output_limit = output_limit
        self.clock = clock
        self.switch_identity = os.geteuid() == 0
        self._running: set[int] = set()
        self._slots = asyncio.Semaphore(max_concurrent)

    def backoff(self, attempts: int, cap: float) -> float:
        """The wait after the ``attempts``-th failure: retry_delay, doubling, capped at the
        job's min_retry_delay (or retry_delay, if that is longer)."""
        return float(min(self.retry_delay * 2 ** max(attempts - 1, 0), max(self.retry_delay, cap)))

    async def run(self) -> None:
        if self.start_delay > 0:
            await asyncio.sleep(self.start_delay)
        try:
            for n in await self.outbox.restore():
                if n.attempts >= self.max_attempts:
                    # ferryd stopped while the last allowed attempt ran: whether it succeeded
                    # is unknown, and running it again would exceed the bound.
                    await self._settle(
                        n, FerryError("E_FAIL", "ferryd stopped during the last attempt")
                    )
                    continue
                self.outbox.announce(n)
        except Exception:
            # Transfers must go on; what is left in the outbox is delivered at the next start.
            log.exception("cannot read the notification outbox; pending notifications wait")
        if owed := len(self.outbox.owed()):
            log.info("%d notification(s) pending from before the start", owed)
        async with asyncio.TaskGroup() as tg:
            while True:
                now = self.clock()
                next_due: float | None = None
                for n in self.outbox.owed():
                    assert n.id is not None
                    if n.id in self._running:
                        continue
                    if n.next_attempt <= now:
                        self._running.add(n.id)
                        tg.create_task(self._deliver(n), name=f"notify-{n.job_id}")
                    else:
                        wait = n.next_attempt - now
                        next_due = wait if next_due is None else min(next_due, wait)
                await self.outbox.wait(next_due)

    async def _deliver(self, n: PendingNotification) -> None:
        assert n.id is not None
        try:
            async with self._slots:
                n.attempts += 1
                n.next_attempt = self.clock() + self.backoff(n.attempts, n.retry_cap)
                await self.outbox.attempt(n)
                failure = await self.execute(n)
                if self.metrics is not None:
                    outcome = (
                        "delivered"
                        if failure is None
                        else "gave_up"
                        if n.attempts >= self.max_attempts
                        else "failed"
                    )
                    self.metrics.notified(n.event, outcome)
                if failure is None:
                    await self._settle(n, None)
                elif n.attempts >= self.max_attempts:
                    log.warning(
                        "notification %s of job %s failed %d times; giving up: %s",
                        n.event,
                        n.job_id,
                        n.attempts,
                        failure.message,
                    )
                    await self._settle(n, failure)
                else:
                    log.info(
                        "notification %s of job %s failed (attempt %d of %d), retrying in "
                        "%.0f s: %s",
                        n.event,
                        n.job_id,
                        n.attempts,
                        self.max_attempts,
                        max(n.next_attempt - self.clock(), 0.0),
                        failure.message,
                    )
                    await self.outbox.outcome(n, _status(n, notif.PENDING, failure))
        except asyncio.CancelledError:
            raise
        except Exception:
            # The store failed: the entry stays in the outbox and is tried again later.
            log.exception("notification %s of job %s could not be processed", n.event, n.job_id)
            n.next_attempt = max(n.next_attempt, self.clock() + self.retry_delay)
        finally:
            self._running.discard(n.id)
            self.outbox.wake()

    async def _settle(self, n: PendingNotification, failure: FerryError | None) -> None:
        """Delivered, or failed for the last time: it leaves the outbox."""
        state = notif.DELIVERED if failure is None else notif.FAILED
        await self.outbox.outcome(n, _status(n, state, failure))

    # ---- running the program ---------------------------------------------------------

    def _identity(self, n: PendingNotification) -> Token:
        if self.switch_identity:
            return n.owner
        return Token(os.geteuid(), os.getegid(), tuple(os.getgroups()))

    async def execute(self, n: PendingNotification) -> FerryError | None:
        """Run the command line once; None on success (exit status 0)."""
        token = self._identity(n)
        argv = list(n.cmdline)
        env = {
            "PATH": SAFE_PATH,
            "FERRY_JOB_ID": n.job_id,
            "FERRY_JOB_STATE": n.job_state,
            "FERRY_EVENT": n.event,
        }
        if self.socket_path:
            env["FERRY_SOCKET"] = self.socket_path
        cwd = "/"
        pw = await asyncio.to_thread(_passwd, token.uid)  # NSS may be remote (LDAP)
        if pw is not None:
            env.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name)
            if pw.pw_dir.startswith("/"):
                try:
                    # Stat'ing HOME/. as the owner: they may search (enter) their home.
                    await self.identity.check_directory(token, posixpath.join(pw.pw_dir, "."))
                    cwd = pw.pw_dir
                except FerryError as exc:
                    log.info(
                        "notification %s of job %s runs in / : uid %d cannot enter its home "
                        "%s (%s)",
                        n.event,
                        n.job_id,
                        token.uid,
                        pw.pw_dir,
                        exc,
                    )
        drop: dict[str, Any] = {}
        if self.switch_identity:
            # An empty list matters: without it the child would keep root's groups.
            drop = {"user": token.uid, "group": token.gid, "extra_groups": list(token.groups)}
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        output = _Output(read_fd, self.output_limit)
        try:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=subprocess.DEVNULL,
                    stdout=write_fd,
                    stderr=write_fd,
                    env=env,
                    cwd=cwd,
                    close_fds=True,
                    start_new_session=True,
                    umask=0o022,
                    **drop,
                )
            except OSError as exc:
                return FerryError.from_oserror(exc, f"cannot start {argv[0]} as uid {token.uid}")
            except (ValueError, subprocess.SubprocessError) as exc:
                return FerryError("E_INVALIDARG", f"cannot start {argv[0]}: {exc}")
            finally:
                os.close(write_fd)
            failure = await self._supervise(proc, argv[0])
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(OUTPUT_GRACE):
                    await asyncio.shield(output.eof)
        finally:
            output.close()
        text = bytes(output.data).decode("utf-8", "replace")
        if output.truncated:
            text += "…"
        log.info(
            "notification %s of job %s ran %s as uid %d (attempt %d): %s; output: %s",
            n.event,
            n.job_id,
            argv[0],
            token.uid,
            n.attempts,
            "ok" if failure is None else failure.message,
            repr(text) if text else "none",
        )
        return failure

    async def _supervise(self, proc: asyncio.subprocess.Process, program: str) -> FerryError | None:
        try:
            async with asyncio.timeout(self.timeout):
                rc = await proc.wait()
        except TimeoutError:
            _kill_group(proc.pid)
            await proc.wait()
            return FerryError(
                "BG_E_WATCHDOG_TIMEOUT",
                f"{program} did not finish within {self.timeout:g} s; its process group was killed",
            )
        except asyncio.CancelledError:
            # ferryd is stopping: the program does not outlive it. The attempt was counted
            # and the entry stays in the outbox, so it runs again after the restart.
            _kill_group(proc.pid)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(proc.wait())
            raise
        if rc == 0:
            return None
        if rc < 0:
            return FerryError("E_FAIL", f"{program} was killed by signal {-rc}")
        return FerryError("E_FAIL", f"{program} exited with status {rc}")


def _status(n: PendingNotification, state: str, failure: FerryError | None) -> NotificationStatus:
    if failure is None:
        return notif.status(n, state)
    return notif.status(n, state, failure.code, failure.message, failure.hresult)


def _passwd(uid: int) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwuid(uid)
    except KeyError:
        return None


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class _Output:
    """The program's stdout and stderr, read from the event loop without blocking: the first
    ``limit`` bytes are kept, the rest is read and thrown away so the program never stalls
    on a full pipe."""

    def __init__(self, fd: int, limit: int) -> None:
        self.fd = fd
        self.limit = limit
        self.data = bytearray()
        self.truncated = False
        self._loop = asyncio.get_running_loop()
        self.eof: asyncio.Future[None] = self._loop.create_future()
        os.set_blocking(fd, False)
        self._loop.add_reader(fd, self._readable)
        self._open = True

    def _readable(self) -> None:
        try:
            chunk = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._loop.remove_reader(self.fd)
            if not self.eof.done():
                self.eof.set_result(None)
            return
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        if len(chunk) > room:
            self.truncated = True

    def close(self) -> None:
        if self._open:
            self._open = False
            self._loop.remove_reader(self.fd)
            os.close(self.fd)
            if not self.eof.done():
                self.eof.cancel()
