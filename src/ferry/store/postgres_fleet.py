"""The fleet's own statements on PostgreSQL: the roster of workers, job leases, and the
notification channels. Async (psycopg's ``AsyncConnection``) on connections of their own, so
a claim or a heartbeat never waits behind the job store's group commits.

Leases (SPEC §12). A job row's ``lease_worker``/``lease_epoch``/``lease_expires`` say who
transfers it, with which fencing token, until when (the database's clock decides expiry, so
workers' clocks need not agree):

* ``claim`` takes a job whose lease is free or expired with ``FOR UPDATE SKIP LOCKED`` (two
  workers claiming at once never wait for each other: one gets it, the other skips) and bumps
  the epoch — from then on the old holder's fenced writes are refused (store/postgres.py).
* ``renew`` (the heartbeat) extends every lease this worker holds and reports the ones it no
  longer holds; ``release`` gives one up (suspend, complete, the end of a run, shutdown).
* ``reap`` frees expired leases (a dead or stalled worker's), bumping their epoch, and
  returns their jobs, for the caller to queue again from their last durable byte.

Channels: ``ferry_jobs`` (a job changed: ``WORKER<TAB>JOB``, sent by the store's commits)
and ``ferry_release`` (``WORKER<TAB>JOB``: the named worker is asked to stop transferring a
job and release it, because another worker has a command to run on it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import psycopg

from ..errors import FerryError
from .postgres import CHANNEL
from .postgres_schema import redact

log = logging.getLogger("ferry.fleet")

RELEASE_CHANNEL = "ferry_release"


@dataclass(frozen=True)
class Notice:
    channel: str
    worker: str
    job_id: str


class FleetDb:
    """This worker's view of the fleet tables; one connection for statements, one for
    LISTEN. Every method raises FerryError(E_FAIL) when PostgreSQL cannot be reached; the
    caller (service/fleet.py) decides what that means."""

    def __init__(self, url: str, worker: str, lease_seconds: float, socket_path: str = "") -> None:
        self.url = url
        self.where = redact(url)
        self.worker = worker
        self.lease = lease_seconds
        self.socket_path = socket_path
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=max(1, int(self.lease / 3))
                )
            except psycopg.Error as exc:
                raise FerryError("E_FAIL", f"job store {self.where} unreachable: {exc}") from None
            self._conn = conn
        return conn

    async def _run(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        async with self._lock:
            conn = await self._connection()
            try:
                cur = await conn.execute(sql.encode(), params)
                return await cur.fetchall() if cur.description else []
            except psycopg.Error as exc:
                if conn.broken:
                    self._conn = None
                raise FerryError("E_FAIL", f"job store {self.where}: {exc}") from None

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                await self._conn.close()
                self._conn = None

    # ---- the roster ------------------------------------------------------------------

    async def register(self) -> None:
        await self._run(
            "INSERT INTO workers (id, host, pid, lease_seconds, socket) VALUES (%s,%s,%s,%s,%s)"
            " ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid,"
            " started = now(), heartbeat = now(), lease_seconds = excluded.lease_seconds,"
            " socket = excluded.socket",
            (self.worker, socket.gethostname(), os.getpid(), self.lease, self.socket_path),
        )

    async def unregister(self) -> None:
        await self._run("DELETE FROM workers WHERE id = %s", (self.worker,))

    async def workers(self) -> list[dict[str, Any]]:
        rows = await self._run(
            "SELECT w.id, w.host, w.pid, w.socket, w.lease_seconds,"
            " extract(epoch FROM w.started)::float8, extract(epoch FROM w.heartbeat)::float8,"
            " extract(epoch FROM now() - w.heartbeat)::float8,"
            " w.heartbeat > now() - make_interval(secs => w.lease_seconds),"
            " (SELECT count(*) FROM jobs j WHERE j.lease_worker = w.id"
            "  AND j.lease_expires > now())"
            " FROM workers w ORDER BY w.id"
        )
        return [
            {
                "id": r[0],
                "host": r[1],
                "pid": r[2],
                "socket": r[3],
                "lease_seconds": r[4],
                "started": r[5],
                "heartbeat": r[6],
                "heartbeat_age": max(0.0, r[7]),
                "alive": bool(r[8]),
                "leases": int(r[9]),
                "self": r[0] == self.worker,
            }
            for r in rows
        ]

    async def leases(self) -> list[dict[str, Any]]:
        rows = await self._run(
            "SELECT id, lease_worker, lease_epoch, extract(epoch FROM lease_expires)::float8,"
            " extract(epoch FROM lease_expires - now())::float8, state, owner_uid"
            " FROM jobs WHERE lease_worker IS NOT NULL ORDER BY lease_worker, seq"
        )
        return [
            {
                "job_id": r[0],
                "worker": r[1],
                "epoch": int(r[2]),
                "expires": r[3],
                "expires_in": r[4],
                "state": r[5],
                "owner_uid": int(r[6]),
            }
            for r in rows
        ]

    # ---- leases ------------------------------------------------------------------------

    async def claim(self, job_id: str) -> int | None:
        """The new lease epoch, or None when another worker holds a live lease."""
        rows = await self._run(
            "UPDATE jobs SET lease_worker = %(me)s, lease_epoch = lease_epoch + 1,"
            " lease_expires = now() + make_interval(secs => %(lease)s)"
            " WHERE id = (SELECT id FROM jobs WHERE id = %(id)s AND (lease_worker IS NULL"
            "  OR lease_worker = %(me)s OR lease_expires < now()) FOR UPDATE SKIP LOCKED)"
            " RETURNING lease_epoch",
            {"me": self.worker, "lease": self.lease, "id": job_id},
        )
        return int(rows[0][0]) if rows else None

    async def release(self, job_id: str, epoch: int) -> bool:
        """Give the lease up; False when it was no longer ours (taken over)."""
        rows = await self._run(
            "UPDATE jobs SET lease_worker = NULL, lease_expires = NULL"
            " WHERE id = %s AND lease_worker = %s AND lease_epoch = %s RETURNING id",
            (job_id, self.worker, epoch),
        )
        return bool(rows)

    async def renew(self, held: dict[str, int]) -> set[str]:
        """Heartbeat: this worker is alive, and its leases last another period. Returns the
        ids of ``held`` (job id -> epoch) that are no longer this worker's."""
        ids = list(held)
        async with self._lock:
            conn = await self._connection()
            try:
                async with conn.transaction():
                    await conn.execute(
                        b"UPDATE workers SET heartbeat = now() WHERE id = %s", (self.worker,)
                    )
                    cur = await conn.execute(
                        b"UPDATE jobs SET lease_expires = now() + make_interval(secs => %s)"
                        b" WHERE lease_worker = %s AND id = ANY(%s) RETURNING id, lease_epoch",
                        (self.lease, self.worker, ids),
                    )
                    kept = {r[0] for r in await cur.fetchall() if held.get(r[0]) == r[1]}
            except psycopg.Error as exc:
                if conn.broken:
                    self._conn = None
                raise FerryError("E_FAIL", f"job store {self.where}: {exc}") from None
        return set(ids) - kept

    async def reap(self) -> list[str]:
        """Free the leases that expired (a dead or stalled worker's); their job ids. Also
        the jobs left running without a lease for a lease period: a worker that shut down
        mid-transfer (SIGTERM) releases its leases without queueing its jobs again."""
        rows = await self._run(
            "UPDATE jobs SET lease_worker = NULL, lease_expires = NULL,"
            " lease_epoch = lease_epoch + 1"
            " WHERE id IN (SELECT id FROM jobs WHERE (lease_worker IS NOT NULL"
            "  AND lease_expires < now()) OR (lease_worker IS NULL"
            "  AND state IN ('CONNECTING', 'TRANSFERRING')"
            "  AND modified < extract(epoch FROM now()) - %s)"
            " FOR UPDATE SKIP LOCKED) RETURNING id",
            (self.lease,),
        )
        return [r[0] for r in rows]

    async def holder(self, job_id: str) -> str | None:
        """The worker holding a live lease on the job, if any."""
        rows = await self._run(
            "SELECT lease_worker FROM jobs WHERE id = %s AND lease_expires > now()", (job_id,)
        )
        return rows[0][0] if rows and rows[0][0] else None

    async def ask_release(self, worker: str, job_id: str) -> None:
        await self._run("SELECT pg_notify(%s, %s)", (RELEASE_CHANNEL, f"{worker}\t{job_id}"))

    # ---- listening ---------------------------------------------------------------------

    async def listen(self) -> AsyncIterator[Notice | None]:
        """Notices from the fleet, on a connection of their own. Yields None first, once
        listening (and again after every reconnection: the caller then resynchronises, as
        notices sent meanwhile are lost). Reconnects with back-off for ever."""
        delay = 0.2
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
            except psycopg.Error as exc:
                log.warning("fleet: cannot listen on %s: %s; retrying", self.where, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.2
            try:
                await conn.execute(f"LISTEN {CHANNEL}".encode())
                await conn.execute(f"LISTEN {RELEASE_CHANNEL}".encode())
                yield None
                async for n in conn.notifies():
                    worker, _, job_id = n.payload.partition("\t")
                    yield Notice(n.channel, worker, job_id)
            except psycopg.Error as exc:
                log.warning("fleet: the listening connection broke: %s", exc)
            finally:
                await conn.close()
