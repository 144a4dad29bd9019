"""squid as the real proxy of the network tests and benchmarks: Debian's squid on 127.0.0.1
and a free port, in the foreground (``-N``, our child), with its configuration, pid file and
logs in a directory of its own, caching nothing (every request reaches the origin, so the
origin's log and squid's agree).

Open by default (any client, any port, CONNECT to any port: it listens on loopback only).
``extra`` is configuration placed before the access rules, for tests that add
authentication (``auth_param``, ``acl``, ``http_access``): with ``open_access=False`` only
what ``extra`` allows passes.

Every request is logged as ``METHOD URL STATUS BYTES USER`` (``access()`` parses it):
``GET http://127.0.0.1:PORT/f/x 200 1024 -``, ``CONNECT 127.0.0.1:PORT 200 5000 -``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from harness.env import short_tmpdir, which
from harness.process import stop_process, wait_for_port

SQUID = which("squid") or "/usr/sbin/squid"

_CONF = """\
http_port 127.0.0.1:{port}
pid_filename {dir}/squid.pid
cache_log {dir}/cache.log
logformat ferry %rm %ru %>Hs %<st %un
access_log stdio:{dir}/access.log ferry
logfile_rotate 0
coredump_dir {dir}
cache deny all
cache_mem 8 MB
netdb_filename none
pinger_enable off
shutdown_lifetime 0 seconds
forwarded_for delete
via off
{user}
acl CONNECT method CONNECT
{extra}
{access}
"""


@dataclass(frozen=True)
class Logged:
    method: str
    url: str
    status: int
    bytes: int
    user: str | None


def available() -> bool:
    return os.access(SQUID, os.X_OK)


def free_port() -> int:
    """A port nothing listens on now (also what a dead proxy's address is made of)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Squid:
    """``workdir`` must be reachable by the ``proxy`` user when we are root (squid writes
    its logs there after dropping to it); by default a new directory under /tmp is made,
    and removed by ``stop``."""

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        extra: str = "",
        open_access: bool = True,
        binary: str | None = None,
    ) -> None:
        self._own_dir = workdir is None
        self.dir = workdir if workdir is not None else short_tmpdir("fy-squid-")
        self.extra = extra
        self.open_access = open_access
        self.binary = binary or SQUID
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.dir / "access.log"

    def start(self, attempts: int = 5) -> Self:
        self.dir.mkdir(parents=True, exist_ok=True)
        user = ""
        if os.geteuid() == 0:
            # squid refuses to run as root: it drops to this user, which must write here.
            user = "cache_effective_user proxy"
            pw = pwd.getpwnam("proxy")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        for _ in range(attempts):
            self.port = free_port()
            conf = self.dir / "squid.conf"
            conf.write_text(
                _CONF.format(
                    port=self.port,
                    dir=self.dir,
                    user=user,
                    extra=self.extra,
                    access="http_access allow all" if self.open_access else "http_access deny all",
                )
            )
            with open(self.dir / "squid.stderr", "ab") as err:
                self.proc = subprocess.Popen(
                    [self.binary, "-N", "-f", str(conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=err,
                    start_new_session=True,
                )
            if wait_for_port(self.proc, self.port, timeout=20, every=0.05):
                return self
            self.stop()
        raise RuntimeError(f"squid did not start:\n{self.error_log()}")

    def stop(self) -> None:
        # SIGTERM: shut down (shutdown_lifetime 0: at once).
        stop_process(self.proc, timeout=15)
        self.proc = None

    def cleanup(self) -> None:
        """Stop, and remove the directory this object made."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def access(self) -> list[Logged]:
        try:
            text = self.access_log.read_text(errors="replace")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            parts = line.split(" ")
            if len(parts) < 5 or parts[0] == "-":
                continue
            method, url, status, size, user = parts[:5]
            out.append(
                Logged(
                    method,
                    url,
                    int(status) if status.isdigit() else 0,
                    int(size) if size.isdigit() else 0,
                    None if user == "-" else user,
                )
            )
        return out

    def wait_access(self, predicate: object = None, timeout: float = 15) -> list[Logged]:
        """The log once it has an entry for which ``predicate(entry)`` is true (squid logs
        a request when it ends); the whole log (maybe without one) at the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.access()
            if predicate is None and found:
                return found
            if callable(predicate) and any(predicate(e) for e in found):
                return found
            if time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def error_log(self) -> str:
        text = ""
        for name in ("squid.stderr", "cache.log"):
            with contextlib.suppress(OSError):
                text += (self.dir / name).read_text(errors="replace")[-4000:]
        return text
