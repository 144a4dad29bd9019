"""Offline (SPEC §10) in network namespaces the test makes: ferryd runs in one, nginx in the
other, joined by a veth pair with addresses only on that pair. Bringing the link down holds
jobs (QUEUED, BG_E_NETWORK_DISCONNECTED) instead of letting them stall or wait out
min_retry_delay; bringing it up lets them go on at once. Bounds are generous (the 2 s
figure is measured in benchmarks/bandwidth.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import netns
from harness.ferryd import Daemon
from harness.wait import wait_state, wait_until

from tests.integration.cli_helpers import run_ferry

SIZE = 1 << 20


class NetnsDaemon(Daemon):
    """ferryd inside a namespace; its Unix socket is a path, reachable from outside."""

    def __init__(self, ns: str, base: Path, **kw: object) -> None:
        super().__init__(base, **kw)  # type: ignore[arg-type]
        self.ns = ns

    def command(self) -> list[str]:
        return [netns.IP, "netns", "exec", self.ns, *super().command()]


@pytest.fixture
def pair() -> Iterator[netns.NetnsPair]:
    why = netns.missing()
    if why:
        pytest.skip(why)
    with netns.NetnsPair() as p:
        yield p


@pytest.fixture
def web(pair: netns.NetnsPair, tmp_path: Path) -> Iterator[netns.NetnsNginx]:
    root = tmp_path / "www"
    root.mkdir()
    (root / "big.bin").write_bytes(os.urandom(4 * SIZE))
    (root / "one.bin").write_bytes(os.urandom(SIZE))
    server = netns.NetnsNginx(pair, root, tmp_path / "nginx", rate=256 << 10).start()
    yield server
    server.stop()


@pytest.fixture
def daemon(pair: netns.NetnsPair, short_tmp: Path) -> Iterator[Daemon]:
    # The default min_retry_delay (600 s): a job must not wait it out.
    d = NetnsDaemon(pair.client, short_tmp)
    d.start()
    yield d
    code = d.stop()
    assert code == 0, f"ferryd exited with {code}:\n{d.log()}"


def new_job(d: Daemon, url: str, dest: Path) -> str:
    status, job = d.call("POST", "/v1/jobs", {"display_name": f"offline-{dest.name}"})
    assert status == 201, job
    jid = str(job["id"])
    status, body = d.call(
        "POST", f"/v1/jobs/{jid}/files", {"files": [{"remote_name": url, "local_name": str(dest)}]}
    )
    assert status == 200, body
    status, body = d.call("POST", f"/v1/jobs/{jid}/resume", {})
    assert status == 200, body
    return jid


def test_link_down_holds_a_running_job_and_up_resumes_it(
    pair: netns.NetnsPair, web: netns.NetnsNginx, daemon: Daemon, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    jid = new_job(daemon, web.url("big.bin", slow=True), out / "big.bin")
    wait_state(daemon, jid, "TRANSFERRING", timeout=30)
    pair.link_down()
    job = wait_until(
        lambda: (j := daemon.call("GET", f"/v1/jobs/{jid}")[1])["waiting"]
        and j["state"] in ("QUEUED", "TRANSIENT_ERROR")
        and j,
        "the job waits offline",
        timeout=15,
    )
    assert job["waiting"]["code"] == "BG_E_NETWORK_DISCONNECTED", job
    assert pair.server_addr in job["waiting"]["description"]
    info = run_ferry("info", jid, socket=daemon.socket, json_mode=False)
    assert "offline" in info.stdout, info
    routes = run_ferry("network", socket=daemon.socket).json["routes"]
    assert routes["status"] == "watching" and pair.server_addr in routes["unreachable"]
    pair.link_up()
    wait_state(daemon, jid, "TRANSFERRING", "TRANSFERRED", timeout=10)
    wait_state(daemon, jid, "TRANSFERRED", timeout=60)


def test_job_started_offline_does_not_wait_out_its_retry_delay(
    pair: netns.NetnsPair, web: netns.NetnsNginx, daemon: Daemon, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    pair.link_down()
    jid = new_job(daemon, web.url("one.bin"), out / "one.bin")
    job = wait_until(
        lambda: (j := daemon.call("GET", f"/v1/jobs/{jid}")[1])["waiting"] and j,
        "the job waits offline",
        timeout=15,
    )
    assert job["waiting"]["code"] == "BG_E_NETWORK_DISCONNECTED", job
    pair.link_up()
    # min_retry_delay is 600 s: transferred well before it, because the route came back.
    wait_state(daemon, jid, "TRANSFERRED", timeout=20)
