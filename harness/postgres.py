"""A throwaway PostgreSQL cluster for tests and benchmarks: Debian's ``initdb`` + ``pg_ctl``
in a temporary directory, listening on a Unix socket only (``listen_addresses=''``), never a
system service.

PostgreSQL refuses to run as root, so as root the cluster belongs to an unprivileged uid
(``nobody`` unless told otherwise) that owns the temporary directory; the server trusts local
connections (the socket directory is private to the test's machine user and the cluster dies
with the test). ``url(db)`` is a libpq URL naming the socket directory and the superuser, for
``psycopg.connect`` and for ferryd's ``[store] url``.

Use::

    with PgCluster.start() as pg:
        url = pg.url()
        ...
        pg.restart()   # a server restart mid-run
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self
from urllib.parse import quote

PG_BIN = Path(os.environ.get("FERRY_PG_BIN", "/usr/lib/postgresql/15/bin"))
SUPERUSER = "ferry"


def available() -> str | None:
    """None when a cluster can be made here, else why not (for a skip)."""
    for tool in ("initdb", "pg_ctl", "postgres"):
        if not (PG_BIN / tool).exists():
            return f"PostgreSQL not installed ({PG_BIN / tool} missing; apt-get install postgresql)"
    return None


class PgCluster:
    def __init__(self, root: Path, run_as: str | None) -> None:
        self.root = root
        self.data = root / "data"
        self.sockdir = root / "sock"
        self.log = root / "server.log"
        self.run_as = run_as
        self.port = 5432  # only names the socket file (.s.PGSQL.5432) in our own directory

    # ---- lifecycle --------------------------------------------------------------------

    @classmethod
    def start(cls, run_as: str = "nobody", **settings: str) -> PgCluster:
        why = available()
        if why:
            raise RuntimeError(why)
        root = Path(tempfile.mkdtemp(prefix="ferry-pg-"))
        user = run_as if os.geteuid() == 0 else None
        if user is not None:
            pw = pwd.getpwnam(user)
            os.chown(root, pw.pw_uid, pw.pw_gid)
        os.chmod(root, 0o700)
        cluster = cls(root, user)
        try:
            cluster._run_tool(
                [
                    str(PG_BIN / "initdb"),
                    "-D",
                    str(cluster.data),
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ]
            )
            cluster._as_owner(lambda: cluster.sockdir.mkdir(mode=0o700))
            conf = {
                "listen_addresses": "''",
                "unix_socket_directories": f"'{cluster.sockdir}'",
                "max_connections": "200",
                "shared_buffers": "32MB",
                "fsync": "on",
                "log_min_messages": "warning",
            }
            conf.update(settings)
            text = "".join(f"{k} = {v}\n" for k, v in conf.items())
            cluster._as_owner(lambda: _append(cluster.data / "postgresql.conf", text))
            cluster.start_server()
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    def start_server(self) -> None:
        self._run_tool(
            [
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "-t",
                "60",
                "start",
            ]
        )
        # The socket directory must be reachable by the test (root, or the same user).
        self._wait_ready()

    def stop_server(self, mode: str = "fast") -> None:
        self._run_tool(
            [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop"],
            check=False,
        )

    def restart(self, down_for: float = 0.0) -> None:
        """Stop the server (``fast``: connections are cut), wait ``down_for`` s, start it."""
        self.stop_server("fast")
        if down_for:
            time.sleep(down_for)
        self.start_server()

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            if (self.data / "postmaster.pid").exists():
                self.stop_server("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # ---- connecting ------------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@/{dbname}?host={quote(str(self.sockdir), safe='')}"

    def create_database(self, name: str) -> str:
        """A fresh database; its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # ---- helpers -----------------------------------------------------------------------

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(self.url(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _run_tool(self, argv: list[str], check: bool = True) -> None:
        if self.run_as is not None:
            argv = [
                "setpriv",
                f"--reuid={self.run_as}",
                f"--regid={_gid(self.run_as)}",
                "--clear-groups",
                "--",
                *argv,
            ]
        res = subprocess.run(
            argv,
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and res.returncode != 0:
            raise RuntimeError(f"{argv[-1]} failed ({res.returncode}): {res.stderr or res.stdout}")

    def _as_owner(self, fn: object) -> None:
        assert callable(fn)
        fn()
        if self.run_as is not None:
            pw = pwd.getpwnam(self.run_as)
            for p in (self.sockdir, self.data / "postgresql.conf"):
                if p.exists():
                    os.chown(p, pw.pw_uid, pw.pw_gid)


def _gid(user: str) -> int:
    return pwd.getpwnam(user).pw_gid


def _append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)
