"""Fleet mode end to end (SPEC §12, docs/fleet.md): real ferryd processes on one throwaway
PostgreSQL cluster (harness/postgres.py) and one shared directory, downloading from the fault
server, which records every response it sends (the counting server).

The many-jobs run uses 30 jobs by default; ``FERRY_FLEET_JOBS=200`` runs the full size.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.env import short_tmpdir
from harness.faultserver import FaultServer
from harness.fleet import Fleet, overlapping_fetches
from harness.postgres import PgCluster, available

from ferry.client import Client
from tests.integration.api_schema import assert_response

LEASE = 3.0
MANY = int(os.environ.get("FERRY_FLEET_JOBS", "30"))

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the fleet tests run ferryd as root")


@pytest.fixture(scope="module")
def pg() -> Iterator[PgCluster]:
    why = available()
    if why:
        pytest.skip(why)
    cluster = PgCluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def base() -> Iterator[Path]:
    import shutil

    path = short_tmpdir("fl-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as srv:
        yield srv


def payload(i: int, size: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest() * (size // 32)


def all_in(state: str, ids: list[str]) -> Any:
    return lambda jobs: all(jobs.get(i, {}).get("state") == state for i in ids)


def fleet_doc(d: Any) -> dict[str, Any]:
    status, doc = d.call("GET", "/v1/fleet")
    assert status == 200, doc
    return dict(doc)


def no_range_fetched_twice_at_once(server: FaultServer) -> None:
    """The counting server: no file's response overlapped another response of the same file
    (one file belongs to one job, so that would be two workers on one job at once)."""
    overlapping = overlapping_fetches(server)
    assert not overlapping, f"{overlapping} fetched by two clients at once"


# ---- visibility ----------------------------------------------------------------------------


def test_any_worker_lists_changes_and_streams_every_job(
    pg: PgCluster, base: Path, server: FaultServer
) -> None:
    with Fleet(pg, base, workers=3, lease=LEASE) as fleet:
        a, b, c = fleet.daemons
        stream = Client(c.socket).events(all_users=True, all_events=True)
        events: list[Any] = []
        reader = threading.Thread(target=lambda: events.extend(_drain(stream)), daemon=True)
        reader.start()
        url = server.add("v", payload(1, 64 * 1024))
        job = fleet.create(a, "made-on-a", [(url, fleet.shared / "v")])
        # b lists it, and changes it; a sees the change.
        fleet.wait(b, lambda jobs: job in jobs, "b to see a's job", timeout=30)
        fleet.wait(a, all_in("TRANSFERRED", [job]), "the transfer")
        status, body = b.call("PATCH", f"/v1/jobs/{job}", {"description": "set on b"})
        assert status == 200, body
        fleet.wait(a, lambda jobs: jobs[job]["description"] == "set on b", "a to see b's change")
        status, body = c.call("POST", f"/v1/jobs/{job}/complete", {})
        assert status == 200 and body["result"]["code"] == "S_OK", body
        assert (fleet.shared / "v").read_bytes() == payload(1, 64 * 1024)
        fleet.wait(a, all_in("ACKNOWLEDGED", [job]), "a to see c's complete")
        # c's event stream saw the whole life of a job it never touched until complete.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            kinds = {e.type for e in events if e.job_id == job}
            if {"job-transferred", "job-modification"} <= kinds:
                break
            time.sleep(0.2)
        kinds = {e.type for e in events if e.job_id == job}
        assert "job-transferred" in kinds, kinds
        states = [e.state.value for e in events if e.job_id == job and e.state is not None]
        assert "TRANSFERRING" in states and states[-1] == "ACKNOWLEDGED", states
        stream.close()


def _drain(stream: Any) -> Iterator[Any]:
    try:
        yield from stream
    except Exception:
        return


def test_a_command_on_another_workers_transfer_takes_it_back(
    pg: PgCluster, base: Path, server: FaultServer
) -> None:
    """Suspend on b while a transfers: a stops and releases, b suspends the job as stored;
    resumed, it finishes byte-identical."""
    with Fleet(pg, base, workers=2, lease=LEASE) as fleet:
        a, b = fleet.daemons
        data = payload(7, 512 * 1024)
        url = server.add("slow", data, rate=128 * 1024)
        status, job = a.call("POST", "/v1/jobs", {"display_name": "slow"})
        jid = job["id"]
        # b must not win the claim: create and resume on a, and look for a's lease.
        files = [{"remote_name": url, "local_name": str(fleet.shared / "slow")}]
        assert a.call("POST", f"/v1/jobs/{jid}/files", {"files": files})[0] == 200
        assert a.call("POST", f"/v1/jobs/{jid}/resume", {})[0] == 200
        deadline = time.monotonic() + 30
        holder = None
        while time.monotonic() < deadline:
            leases = fleet_doc(b)["leases"]
            if leases and fleet.jobs(b)[jid]["progress"]["bytes_transferred"] > 0:
                holder = leases[0]["worker"]
                break
            time.sleep(0.1)
        assert holder is not None, "no worker took the job"
        other = b if holder == "w0" else a
        status, body = other.call("POST", f"/v1/jobs/{jid}/suspend", {})
        assert status == 200 and body["job"]["state"] == "SUSPENDED", body
        assert fleet_doc(other)["leases"] == []
        time.sleep(LEASE / 2)
        for d in fleet.daemons:
            assert fleet.jobs(d)[jid]["state"] == "SUSPENDED"
        assert other.call("POST", f"/v1/jobs/{jid}/resume", {})[0] == 200
        fleet.wait(a, all_in("TRANSFERRED", [jid]), "the resumed transfer")
        assert other.call("POST", f"/v1/jobs/{jid}/complete", {})[0] == 200
        assert (fleet.shared / "slow").read_bytes() == data
        no_range_fetched_twice_at_once(server)


# ---- failures --------------------------------------------------------------------------------


def test_kill_9_of_a_worker_mid_transfer(pg: PgCluster, base: Path, server: FaultServer) -> None:
    size = 192 * 1024
    with Fleet(pg, base, workers=3, lease=LEASE) as fleet:
        ids: list[str] = []
        names: dict[str, str] = {}
        for i in range(MANY):
            url = server.add(f"k{i}", payload(i, size), rate=64 * 1024)
            d = fleet.daemons[i % 3]
            jid = fleet.create(d, f"k{i}", [(url, fleet.shared / f"k{i}")])
            ids.append(jid)
            names[jid] = f"k{i}"
        victim, survivor = fleet.daemons[0], fleet.daemons[1]
        deadline = time.monotonic() + 60
        mine: list[str] = []
        while time.monotonic() < deadline:
            leases = fleet_doc(survivor)["leases"]
            mine = [lease["job_id"] for lease in leases if lease["worker"] == "w0"]
            progress = fleet.jobs(survivor)
            if mine and any(progress[j]["progress"]["bytes_transferred"] > 0 for j in mine):
                break
            time.sleep(0.1)
        assert mine, "the victim never held a lease"
        victim.kill()
        killed = time.time()
        fleet.wait(survivor, all_in("TRANSFERRED", ids), "every job after the kill", timeout=180)
        for jid in ids:
            i = int(names[jid][1:])
            assert (fleet.shared / f"k{i}").exists() is False  # not completed yet: a temp file
        # Complete them all on another worker than the one that created them.
        for jid in ids:
            status, body = survivor.call("POST", f"/v1/jobs/{jid}/complete", {})
            assert status == 200 and body["result"]["code"] == "S_OK", body
        for jid in ids:
            i = int(names[jid][1:])
            assert (fleet.shared / f"k{i}").read_bytes() == payload(i, size), names[jid]
        no_range_fetched_twice_at_once(server)
        # Takeover: each job the victim held was asked for again within lease + 5 s.
        for jid in mine:
            after = [r.time for r in server.requests_for(names[jid]) if r.time > killed]
            if (fleet.shared / f"k{names[jid][1:]}").exists() and not after:
                continue  # it had finished just before the kill
            assert after, f"{names[jid]} was never fetched again"
            assert min(after) - killed <= LEASE + 5, (names[jid], min(after) - killed)


def test_postgresql_restart_mid_run(pg: PgCluster, base: Path, server: FaultServer) -> None:
    size = 128 * 1024
    with Fleet(pg, base, workers=2, lease=5.0) as fleet:
        ids = []
        for i in range(20):
            url = server.add(f"r{i}", payload(100 + i, size), rate=64 * 1024)
            ids.append(fleet.create(fleet.daemons[i % 2], f"r{i}", [(url, fleet.shared / f"r{i}")]))
        time.sleep(1.0)
        pg.restart(down_for=1.0)
        fleet.wait(fleet.daemons[0], all_in("TRANSFERRED", ids), "every job after the restart")
        fleet.wait(fleet.daemons[1], all_in("TRANSFERRED", ids), "the other worker to agree")
        for d in fleet.daemons:
            assert d.alive(), d.log()
        for k, jid in enumerate(ids):
            status, body = fleet.daemons[k % 2].call("POST", f"/v1/jobs/{jid}/complete", {})
            assert status == 200, body
        for i in range(20):
            assert (fleet.shared / f"r{i}").read_bytes() == payload(100 + i, size)


def test_a_stopped_worker_is_fenced(pg: PgCluster, base: Path, server: FaultServer) -> None:
    """SIGSTOP a worker mid-transfer: another takes the job over after the lease; woken, the
    stopped one abandons its transfer without writing, and the job ends byte-identical."""
    data = payload(9, 768 * 1024)
    with Fleet(pg, base, workers=2, lease=LEASE) as fleet:
        a, b = fleet.daemons
        url = server.add("stop", data, rate=96 * 1024)
        jid = fleet.create(a, "stop", [(url, fleet.shared / "stop")])
        deadline = time.monotonic() + 30
        holder = None
        while time.monotonic() < deadline and holder is None:
            for lease in fleet_doc(a)["leases"]:
                if fleet.jobs(a)[jid]["progress"]["bytes_transferred"] > 0:
                    holder = lease["worker"]
            time.sleep(0.1)
        assert holder is not None
        stopped, other = (a, b) if holder == "w0" else (b, a)
        os.kill(stopped.pid, signal.SIGSTOP)
        try:
            deadline = time.monotonic() + LEASE + 10
            taken = False
            while time.monotonic() < deadline and not taken:
                taken = any(
                    lease["worker"] != holder and lease["job_id"] == jid
                    for lease in fleet_doc(other)["leases"]
                )
                time.sleep(0.1)
            assert taken, "nobody took the stopped worker's job over"
        finally:
            os.kill(stopped.pid, signal.SIGCONT)
        fleet.wait(other, all_in("TRANSFERRED", [jid]), "the taken-over transfer")
        time.sleep(1.0)
        assert fleet.jobs(other)[jid]["state"] == "TRANSFERRED"
        assert other.call("POST", f"/v1/jobs/{jid}/complete", {})[0] == 200
        assert (fleet.shared / "stop").read_bytes() == data
        log = stopped.log(200_000)
        assert "lease lost" in log or "no lease renewal" in log, log[-3000:]


def test_a_worker_that_shuts_down_mid_transfer_hands_its_jobs_over(
    pg: PgCluster, base: Path, server: FaultServer
) -> None:
    """SIGTERM: the worker stops at a checkpoint and releases its leases; another worker
    queues its jobs again (after a lease period) and finishes them byte-identical."""
    size = 256 * 1024
    with Fleet(pg, base, workers=2, lease=LEASE) as fleet:
        a, b = fleet.daemons
        ids = []
        for i in range(6):
            url = server.add(f"t{i}", payload(200 + i, size), rate=64 * 1024)
            ids.append(fleet.create(a, f"t{i}", [(url, fleet.shared / f"t{i}")]))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(lease["worker"] == "w0" for lease in fleet_doc(b)["leases"]):
                break
            time.sleep(0.1)
        assert a.stop() == 0
        fleet.wait(b, all_in("TRANSFERRED", ids), "the other worker to finish")
        for k, jid in enumerate(ids):
            assert b.call("POST", f"/v1/jobs/{jid}/complete", {})[0] == 200
            assert (fleet.shared / f"t{k}").read_bytes() == payload(200 + k, size)
        no_range_fetched_twice_at_once(server)


# ---- ferry fleet -------------------------------------------------------------------------------


def test_ferry_fleet_lists_workers_and_heartbeats(pg: PgCluster, base: Path) -> None:
    with Fleet(pg, base, workers=2, lease=LEASE) as fleet:
        a, _ = fleet.daemons
        cli = [sys.executable, "-m", "ferry.cli.main", "--socket", a.socket, "fleet"]
        out = subprocess.run(cli, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "w0" in out.stdout and "w1" in out.stdout and "this worker: w0" in out.stdout
        doc = Client(a.socket).fleet()
        status, raw = a.call("GET", "/v1/fleet")
        assert status == 200
        assert_response("GET", "/v1/fleet", status, raw)  # the OpenAPI document's schema
        assert [w["id"] for w in doc["workers"]] == ["w0", "w1"]
        assert all(w["alive"] and w["heartbeat_age"] < LEASE for w in doc["workers"])
        # A worker that stops cleanly leaves the roster.
        fleet.daemons[1].stop()
        assert [w["id"] for w in Client(a.socket).fleet()["workers"]] == ["w0"]


def test_ferry_fleet_is_for_administrators_only(pg: PgCluster, base: Path) -> None:
    """A system-mode fleet worker serves every local uid, but the fleet view is refused to
    a non-administrator (and the refusal changes nothing: the roster is intact)."""
    import pwd

    from tests.helpers.as_user import run_cli_as

    nobody = pwd.getpwnam("nobody")
    with Fleet(pg, base, workers=1, lease=LEASE, system=True) as fleet:
        (a,) = fleet.daemons
        res = run_cli_as(nobody.pw_uid, nobody.pw_gid, ["--socket", a.socket, "fleet"])
        assert res.code != 0 and "E_ACCESSDENIED" in res.stderr, (res.stdout, res.stderr)
        res = run_cli_as(nobody.pw_uid, nobody.pw_gid, ["--socket", a.socket, "list"])
        assert res.code == 0, res.stderr  # the same caller is served otherwise
        assert [w["id"] for w in Client(a.socket).fleet()["workers"]] == ["w0"]


def test_fleet_on_a_single_machine_ferryd_is_not_implemented(short_tmp: Path) -> None:
    from harness.ferryd import Daemon

    d = Daemon(short_tmp)
    d.start()
    try:
        status, body = d.call("GET", "/v1/fleet")
        assert status == 501 or body["error"]["code"] == "E_NOTIMPL", body
    finally:
        assert d.stop() == 0


# ---- secrets across workers ------------------------------------------------------------------


class _BasicServer:
    """An aiohttp server serving DATA to Basic USER:PASSWORD only; records the header."""

    def __init__(self, user: str, password: str, data: bytes) -> None:
        import base64

        from aiohttp import web
        from harness.aio import AppServer

        good = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.headers: list[str | None] = []
        seen = self.headers

        class Srv(AppServer):
            def make_app(self) -> web.Application:
                async def get(request: web.Request) -> web.StreamResponse:
                    seen.append(request.headers.get("X-Token"))
                    if request.headers.get("Authorization") != good:
                        return web.Response(status=401,
                                            headers={"WWW-Authenticate": 'Basic realm="f"'})
                    return web.Response(body=data)

                app = web.Application()
                app.router.add_get("/d", get)
                return app

        self.srv = Srv()


def test_a_job_s_secrets_open_on_the_worker_that_takes_it_over(pg: PgCluster, base: Path) -> None:
    """Found by the fleet torture (issue 16): each worker sealed passwords and write-only
    headers under its own state directory's key, so a job created on one worker and
    transferred by another failed BG_E_INVALID_CREDENTIALS. With ``[store] credentials_key``
    (the Fleet harness gives every worker the same), the other worker opens them."""
    data = payload(77, 64 * 1024)
    server = _BasicServer("fleet-bob", "s3cret-across-workers", data)
    with server.srv as srv, Fleet(pg, base, workers=2, lease=LEASE) as fleet:
        a, b = fleet.daemons
        status, job = a.call("POST", "/v1/jobs", {"display_name": "sealed"})
        jid = job["id"]
        url = f"{srv.base}/d"
        files = [{"remote_name": url, "local_name": str(fleet.shared / "sealed")}]
        assert a.call("POST", f"/v1/jobs/{jid}/files", {"files": files})[0] == 200
        with Client(a.socket) as c:
            j = c.get_job(jid)
            j.set_credentials("SERVER", "BASIC", "fleet-bob", "s3cret-across-workers")
            j.set_http_options(custom_headers=["X-Token: wo-across-workers"],
                               custom_headers_write_only=True)
        assert a.stop() == 0  # only b is left to transfer it
        assert b.call("POST", f"/v1/jobs/{jid}/resume", {})[0] == 200
        jobs = fleet.wait(b, lambda js: js[jid]["state"] in ("TRANSFERRED", "ERROR"), "b")
        assert jobs[jid]["state"] == "TRANSFERRED", jobs[jid].get("error")
        assert "wo-across-workers" in server.headers
        assert b.call("POST", f"/v1/jobs/{jid}/complete", {})[0] == 200
        assert (fleet.shared / "sealed").read_bytes() == data
