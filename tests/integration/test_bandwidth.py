"""Bandwidth and network conditions (SPEC §10) through a real ferryd and a real nginx on
loopback: the [bandwidth] config and its validation, per-job max_rate, background limits
that change on reload and SIGHUP, foreground never throttled, max_download_time, and the
network cost set by an administrator gating jobs by their cost flags.

Rates are checked with generous bounds (a capped transfer is clearly slower than an
uncapped one; a raised limit lets it finish), never with tight timings: the figures are
measured in benchmarks/bandwidth.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import nginx as nginx_mod
from harness.env import child_env
from harness.ferryd import Daemon
from harness.wait import wait_state, wait_until

from tests.integration.cli_helpers import run_ferry

pytestmark = pytest.mark.skipif(not nginx_mod.available(), reason="nginx is not installed")

SIZE = 1 << 20  # 1 MiB


@pytest.fixture
def web(tmp_path: Path) -> Iterator[nginx_mod.Nginx]:
    root = tmp_path / "www"
    root.mkdir()
    (root / "one.bin").write_bytes(os.urandom(SIZE))
    (root / "big.bin").write_bytes(os.urandom(8 * SIZE))
    server = nginx_mod.Nginx(root, tmp_path / "nginx", rate=64 << 10).start()
    yield server
    server.stop()


@pytest.fixture
def daemons(short_tmp: Path) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        if d.alive():
            code = d.stop()
            assert code == 0, f"ferryd exited with {code}:\n{d.log()}"


def start(daemons: list[Daemon], base: Path, config: str = "") -> Daemon:
    d = Daemon(base, config=config)
    d.start()
    daemons.append(d)
    return d


def new_job(d: Daemon, url: str, dest: Path, **props: Any) -> str:
    status, job = d.call("POST", "/v1/jobs", {"display_name": f"bw-{time.monotonic_ns()}"})
    assert status == 201, job
    jid = str(job["id"])
    if props:
        status, body = d.call("PATCH", f"/v1/jobs/{jid}", props)
        assert status == 200, body
    status, body = d.call(
        "POST", f"/v1/jobs/{jid}/files", {"files": [{"remote_name": url, "local_name": str(dest)}]}
    )
    assert status == 200, body
    return jid


def resume(d: Daemon, jid: str) -> None:
    status, body = d.call("POST", f"/v1/jobs/{jid}/resume", {})
    assert status == 200, body


def transferred(d: Daemon, jid: str) -> int:
    status, job = d.call("GET", f"/v1/jobs/{jid}")
    assert status == 200, job
    return int(job["progress"]["bytes_transferred"])


def timed_transfer(d: Daemon, jid: str, timeout: float = 60) -> float:
    t0 = time.monotonic()
    resume(d, jid)
    wait_state(d, jid, "TRANSFERRED", timeout=timeout)
    return time.monotonic() - t0


# ---- config ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key", "why"),
    [
        ("[bandwidth]\nbackground_limit = -5\n", "bandwidth.background_limit", "at least 1"),
        ("[bandwidth]\nbackground_limit = \"fast\"\n", "bandwidth.background_limit",
         "not a byte rate"),
        ("[bandwidth]\nspeed = 1\n", "bandwidth.speed", "not a known key"),
        ("[bandwidth.work_schedule]\ndays = [\"mon-fri\"]\nstart = \"8:00\"\nend = \"25:00\"\n",
         "bandwidth.work_schedule.end", "not a time of day"),
        ("[bandwidth.work_schedule]\ndays = [\"funday\"]\nstart = \"8:00\"\nend = \"17:00\"\n",
         "bandwidth.work_schedule.days", "not a day"),
        ("[bandwidth.work_schedule]\ndays = [\"mon\"]\nstart = \"8:00\"\nend = \"17:00\"\n"
         "work_limits = {high = 1000, foreground = 5}\n",
         "bandwidth.work_schedule.work_limits", "foreground is never throttled"),
        ("[bandwidth.maintenance_schedule]\ndays = [\"sun\"]\nstart = \"01:00\"\n",
         "bandwidth.maintenance_schedule.end", "missing"),
        ("[network]\ncost = \"cheap\"\n", "network.cost", "must be one of"),
    ],
)
def test_invalid_config_refused_at_start(
    short_tmp: Path, section: str, key: str, why: str
) -> None:
    config = short_tmp / "bad.toml"
    config.write_text(section)
    proc = subprocess.run(
        [sys.executable, "-m", "ferry.daemon.main", "--user", "--socket",
         str(short_tmp / "s.sock"), "--state-dir", str(short_tmp / "st"), "--config", str(config)],
        capture_output=True, text=True, env=child_env({}), timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1, proc
    assert str(config) in proc.stderr and key in proc.stderr and why in proc.stderr, proc.stderr


def test_valid_schedule_accepted_and_shown(short_tmp: Path, daemons: list[Daemon]) -> None:
    d = start(
        daemons,
        short_tmp,
        "[bandwidth]\nbackground_limit = \"2M\"\n"
        "[bandwidth.work_schedule]\ndays = [\"mon-sun\"]\nstart = \"00:00\"\nend = \"24:00\"\n"
        "work_limits = {high = 3000000, normal = \"1M\", low = 100000}\n"
        "non_work_limits = {low = 500000}\n",
    )
    out = run_ferry("network", socket=d.socket)
    assert out.returncode == 0, out
    bw = out.json["bandwidth"]
    assert bw["period"] == "work"
    assert bw["background_limit"] == 2_000_000
    assert bw["priority_limits"] == {"high": 3_000_000, "normal": 1_000_000, "low": 100_000}
    human = run_ferry("network", socket=d.socket, json_mode=False)
    assert "Background limit" in human.stdout and "2.00 MB/s" in human.stdout, human


def test_maintenance_window_overrides_work_hours(short_tmp: Path, daemons: list[Daemon]) -> None:
    d = start(
        daemons,
        short_tmp,
        "[bandwidth.work_schedule]\ndays = [\"mon-sun\"]\nstart = \"00:00\"\nend = \"24:00\"\n"
        "work_limits = 1000000\n"
        "[bandwidth.maintenance_schedule]\ndays = [\"mon-sun\"]\nstart = \"00:00\"\n"
        "end = \"00:00\"\nlimits = {low = 42000}\n",
    )
    bw = run_ferry("network", socket=d.socket).json["bandwidth"]
    assert bw["period"] == "maintenance"
    assert bw["priority_limits"]["low"] == 42_000
    assert bw["priority_limits"]["normal"] is None


# ---- per-job max_rate -------------------------------------------------------------------


def test_max_rate_caps_a_job_and_can_be_lifted(
    short_tmp: Path, daemons: list[Daemon], web: nginx_mod.Nginx, tmp_path: Path
) -> None:
    d = start(daemons, short_tmp)
    out = tmp_path / "out"
    out.mkdir()
    # Set through the CLI, as a user would.
    jid = new_job(d, web.url("big.bin"), out / "big.bin", priority="foreground")
    r = run_ferry("set", jid, "--max-rate", "256k", socket=d.socket)
    assert r.returncode == 0 and r.json["max_rate"] == 256_000, r
    resume(d, jid)
    wait_until(lambda: transferred(d, jid) > 0, "first bytes", timeout=30)
    time.sleep(2.0)
    got = transferred(d, jid)
    # 2 s at 256 kB/s (plus the first checkpoint) is far below the 8 MiB file.
    assert got < 4 * SIZE, got
    # Lifting the cap lets the rest go at full speed.
    r = run_ferry("set", jid, "--max-rate", "none", socket=d.socket)
    assert r.returncode == 0 and r.json["max_rate"] is None, r
    wait_state(d, jid, "TRANSFERRED", timeout=30)


def test_max_rate_bad_input_changes_nothing(short_tmp: Path, daemons: list[Daemon]) -> None:
    d = start(daemons, short_tmp)
    status, job = d.call("POST", "/v1/jobs", {"display_name": "bad-input"})
    jid = job["id"]
    for body in ({"max_rate": 0}, {"max_rate": -3}, {"max_rate": "fast"},
                 {"max_download_time": -1}, {"cost_flags": "CHEAP"}, {"cost_flags": 0},
                 {"cost_flags": "IGNORE_CONGESTION"}, {"max_rate": 5, "cost_flags": "NOPE"}):
        status, err = d.call("PATCH", f"/v1/jobs/{jid}", body)
        assert status == 400 and err["error"]["code"] == "E_INVALIDARG", (body, err)
    _, after = d.call("GET", f"/v1/jobs/{jid}")
    assert after["max_rate"] is None
    assert after["max_download_time"] == 7_776_000
    assert after["cost_flags"] == "TRANSFER_STANDARD"
    r = run_ferry("set", jid, "--max-rate", "lots", socket=d.socket)
    assert r.returncode != 0
    r = run_ferry("network", "--cost", "cheap", socket=d.socket)
    assert r.returncode != 0


def test_job_properties_persist_across_restart(short_tmp: Path, daemons: list[Daemon]) -> None:
    d = start(daemons, short_tmp)
    status, job = d.call("POST", "/v1/jobs", {"display_name": "persist"})
    jid = job["id"]
    status, body = d.call(
        "PATCH",
        f"/v1/jobs/{jid}",
        {"max_rate": 5000, "max_download_time": 99, "cost_flags": "UNRESTRICTED|ROAMING"},
    )
    assert status == 200, body
    assert body["cost_flags"] == "UNRESTRICTED|ROAMING"
    d.restart()
    _, after = d.call("GET", f"/v1/jobs/{jid}")
    assert (after["max_rate"], after["max_download_time"], after["cost_flags"]) == (
        5000, 99, "UNRESTRICTED|ROAMING",
    )


# ---- the background limit, reload and SIGHUP ---------------------------------------------


def _limit_config(limit: str) -> str:
    return f"[bandwidth]\nbackground_limit = \"{limit}\"\n"


def test_background_limit_reload_and_foreground_unthrottled(
    short_tmp: Path, daemons: list[Daemon], web: nginx_mod.Nginx, tmp_path: Path
) -> None:
    d = start(daemons, short_tmp, _limit_config("200k"))
    assert d.config_path is not None
    out = tmp_path / "out"
    out.mkdir()
    # A foreground job ignores the background limit: 8 MiB arrive at loopback speed.
    fg = new_job(d, web.url("big.bin"), out / "fg.bin", priority="foreground")
    resume(d, fg)
    wait_state(d, fg, "TRANSFERRED", timeout=20)
    # A background job is held to the limit...
    bg = new_job(d, web.url("big.bin"), out / "bg.bin")
    resume(d, bg)
    wait_until(lambda: transferred(d, bg) > 0, "first bytes", timeout=30)
    time.sleep(2.0)
    assert transferred(d, bg) < 4 * SIZE
    _, job = d.call("GET", f"/v1/jobs/{bg}")
    assert job["state"] == "TRANSFERRING"
    # ... a broken config is refused by ferry reload and changes nothing ...
    d.config_path.write_text("[bandwidth]\nbackground_limit = 0\n")
    r = run_ferry("reload", socket=d.socket)
    assert r.returncode != 0 and "background_limit" in (r.stdout + r.stderr), r
    assert run_ferry("network", socket=d.socket).json["bandwidth"]["background_limit"] == 200_000
    # ... and a raised limit applies to the running transfer at once.
    d.config_path.write_text(_limit_config("500M"))
    r = run_ferry("reload", socket=d.socket)
    assert r.returncode == 0, r
    wait_state(d, bg, "TRANSFERRED", timeout=20)
    # SIGHUP reloads too.
    d.config_path.write_text(_limit_config("300k"))
    os.kill(d.pid, signal.SIGHUP)
    wait_until(
        lambda: run_ferry("network", socket=d.socket).json["bandwidth"]["background_limit"]
        == 300_000,
        "SIGHUP reload",
        timeout=20,
    )


# ---- max_download_time -------------------------------------------------------------------


def test_max_download_time_fails_the_job_and_resume_resets_it(
    short_tmp: Path, daemons: list[Daemon], web: nginx_mod.Nginx, tmp_path: Path
) -> None:
    d = start(daemons, short_tmp)
    out = tmp_path / "out"
    out.mkdir()
    # The slow route sends 64 KiB/s: 8 MiB take two minutes; the job may spend 2 s.
    jid = new_job(d, web.url("big.bin", slow=True), out / "big.bin", max_download_time=2)
    resume(d, jid)
    job = wait_state(d, jid, "ERROR", timeout=30)
    assert job["error"]["code"] == "BG_E_MAXDOWNLOAD_TIMEOUT", job
    assert job["download_time"] >= 1.5
    got = job["progress"]["bytes_transferred"]
    # Resume starts the count again, and the transfer goes on from where it was.
    status, body = d.call("PATCH", f"/v1/jobs/{jid}", {"max_download_time": 0})
    assert status == 200, body
    resume(d, jid)
    _, job = d.call("GET", f"/v1/jobs/{jid}")
    assert job["download_time"] < 1.0 and job["state"] in {"QUEUED", "CONNECTING", "TRANSFERRING"}
    wait_until(lambda: transferred(d, jid) > got, "progress after resume", timeout=30)


# ---- network cost ------------------------------------------------------------------------


def test_cost_policy_blocks_and_releases_jobs(
    short_tmp: Path, daemons: list[Daemon], web: nginx_mod.Nginx, tmp_path: Path
) -> None:
    d = start(daemons, short_tmp, "[network]\ncost = \"unrestricted\"\n")
    out = tmp_path / "out"
    out.mkdir()
    r = run_ferry("network", "--cost", "metered", socket=d.socket)
    assert r.returncode == 0 and r.json["cost"] == "metered", r
    # TRANSFER_UNRESTRICTED jobs wait on a metered network; STANDARD ones do not.
    blocked = new_job(d, web.url("one.bin"), out / "a.bin", cost_flags="TRANSFER_UNRESTRICTED")
    standard = new_job(d, web.url("one.bin"), out / "b.bin")
    resume(d, blocked)
    resume(d, standard)
    wait_state(d, standard, "TRANSFERRED", timeout=30)
    job = wait_until(
        lambda: (j := d.call("GET", f"/v1/jobs/{blocked}")[1])["waiting"] and j,
        "the blocked job's reason",
        timeout=10,
    )
    assert job["state"] == "QUEUED"
    assert job["waiting"]["code"] == "BG_E_BLOCKED_BY_COST_TRANSFER_POLICY"
    assert job["waiting"]["hresult"] == "0x80200059"
    info = run_ferry("info", blocked, socket=d.socket, json_mode=False)
    assert "BG_E_BLOCKED_BY_COST_TRANSFER_POLICY" in info.stdout, info
    # Roaming blocks the standard preset too; back to auto (the config: unrestricted)
    # releases both.
    roaming = new_job(d, web.url("one.bin"), out / "c.bin")
    assert run_ferry("network", "--cost", "roaming", socket=d.socket).returncode == 0
    resume(d, roaming)
    wait_until(
        lambda: d.call("GET", f"/v1/jobs/{roaming}")[1]["waiting"], "roaming blocks", timeout=10
    )
    assert run_ferry("network", "--cost", "auto", socket=d.socket).json["cost"] == "unrestricted"
    wait_state(d, blocked, "TRANSFERRED", timeout=30)
    wait_state(d, roaming, "TRANSFERRED", timeout=30)


def test_cost_change_stops_a_running_job(
    short_tmp: Path, daemons: list[Daemon], web: nginx_mod.Nginx, tmp_path: Path
) -> None:
    d = start(daemons, short_tmp, "[network]\ncost = \"unrestricted\"\n")
    out = tmp_path / "out"
    out.mkdir()
    jid = new_job(
        d, web.url("big.bin", slow=True), out / "big.bin", cost_flags="TRANSFER_UNRESTRICTED"
    )
    resume(d, jid)
    wait_state(d, jid, "TRANSFERRING", timeout=30)
    assert run_ferry("network", "--cost", "metered", socket=d.socket).returncode == 0
    wait_until(
        lambda: (j := d.call("GET", f"/v1/jobs/{jid}")[1])["state"] == "QUEUED" and j["waiting"],
        "the running job stops and waits",
        timeout=10,
    )
    assert run_ferry("network", "--cost", "unrestricted", socket=d.socket).returncode == 0
    wait_state(d, jid, "TRANSFERRING", timeout=10)


# ---- NetworkManager over D-Bus -----------------------------------------------------------


@pytest.fixture
def network_manager(tmp_path: Path) -> Iterator[Any]:
    from harness import dbusnm

    why = dbusnm.missing()
    if why:
        pytest.skip(why)
    nm = dbusnm.MockNetworkManager(tmp_path / "dbus").start()
    yield nm
    nm.stop()


def test_networkmanager_metered_stops_and_starts_jobs(
    short_tmp: Path,
    daemons: list[Daemon],
    web: nginx_mod.Nginx,
    tmp_path: Path,
    network_manager: Any,
) -> None:
    network_manager.set_metered(2)  # not metered
    d = start(daemons, short_tmp, f"[network]\ndbus_address = \"{network_manager.address}\"\n")
    wait_until(
        lambda: run_ferry("network", socket=d.socket).json["networkmanager"]["status"]
        == "connected",
        "ferryd reads NetworkManager",
        timeout=20,
    )
    out = tmp_path / "out"
    out.mkdir()
    jid = new_job(
        d, web.url("big.bin", slow=True), out / "big.bin", cost_flags="TRANSFER_UNRESTRICTED"
    )
    resume(d, jid)
    wait_state(d, jid, "TRANSFERRING", timeout=30)
    network_manager.set_metered(1)  # metered: the job stops and waits
    job = wait_until(
        lambda: (j := d.call("GET", f"/v1/jobs/{jid}")[1])["state"] == "QUEUED"
        and j["waiting"]
        and j,
        "the job stops on a metered network",
        timeout=10,
    )
    assert job["waiting"]["code"] == "BG_E_BLOCKED_BY_COST_TRANSFER_POLICY"
    doc = run_ferry("network", socket=d.socket).json
    assert (doc["cost"], doc["cost_source"]) == ("metered", "NetworkManager")
    network_manager.set_metered(4)  # guess-no: it transfers again
    wait_state(d, jid, "TRANSFERRING", timeout=10)


def test_no_dbus_logged_once_and_configured_cost_used(
    short_tmp: Path, daemons: list[Daemon]
) -> None:
    d = start(
        daemons,
        short_tmp,
        f"[network]\ndbus_address = \"unix:path={short_tmp}/no-such-bus\"\n",
    )
    doc = wait_until(
        lambda: (n := run_ferry("network", socket=d.socket).json)["networkmanager"]["status"]
        != "not tried"
        and n,
        "the first attempt",
        timeout=20,
    )
    assert doc["networkmanager"]["status"].startswith("unavailable")
    assert doc["cost"] == "unrestricted" and doc["cost_source"] == "default"
    assert d.log().count("cannot read the network cost from NetworkManager") == 1


# ---- the library, sync and asyncio ---------------------------------------------------------


def test_library_sync_and_asyncio(short_tmp: Path, daemons: list[Daemon]) -> None:
    import asyncio

    from ferry import AsyncClient, Client, FerryError

    d = start(daemons, short_tmp, "[bandwidth]\nbackground_limit = 5000\n")
    with Client(d.socket) as c:
        job = c.create_job("lib-sync")
        job.set(max_rate=250_000, cost_flags="TRANSFER_NOT_ROAMING", max_download_time=600)
        data = job.info().data
        assert (data["max_rate"], data["cost_flags"], data["max_download_time"]) == (
            250_000, "TRANSFER_NOT_ROAMING", 600,
        )
        with pytest.raises(FerryError) as e:
            job.set(cost_flags="NOWHERE")
        assert e.value.code == "E_INVALIDARG"
        assert c.network()["bandwidth"]["background_limit"] == 5000
        assert c.set_network_cost("metered")["cost"] == "metered"
        assert c.reload()["applied"] == ["bandwidth", "network.cost"]

    async def run() -> None:
        async with AsyncClient(d.socket) as c:
            job = await c.create_job("lib-aio")
            await job.set(max_rate=None, cost_flags="TRANSFER_ALWAYS")
            assert job.data["cost_flags"] == "TRANSFER_ALWAYS"
            doc = await c.set_network_cost("auto")
            assert doc["cost"] == "unrestricted"
            assert (await c.network())["override"] is None
            assert (await c.reload())["config_file"] == str(d.config_path)

    asyncio.run(run())


# ---- shutdown ----------------------------------------------------------------------------


def test_sigterm_during_a_throttled_background_transfer_stops_ferryd(
    short_tmp: Path, daemons: list[Daemon], web: nginx_mod.Nginx, tmp_path: Path
) -> None:
    """SIGTERM while a background job transfers, throttled, with the network services (cost,
    routes, NetworkManager, the yielding controller) running and kicking the scheduler: ferryd
    stops at once and cleanly (it once hung: a cancellation lost to asyncio.wait_for)."""
    for _ in range(3):  # the race was narrow: stop it mid-transfer a few times
        d = start(
            daemons,
            short_tmp,
            '[bandwidth]\nbackground_limit = "256k"\nyield_to_others = true\n'
            '[network]\ncost = "unrestricted"\n',
        )
        out = tmp_path / f"out-{len(daemons)}"
        out.mkdir()
        jid = new_job(d, web.url("big.bin", slow=True), out / "big.bin")
        resume(d, jid)
        wait_state(d, jid, "TRANSFERRING", timeout=30)
        # A kick of the scheduler as SIGTERM arrives: back to the configured cost.
        assert run_ferry("network", "--cost", "auto", socket=d.socket).returncode == 0
        code = d.stop(timeout=15)
        assert code == 0, d.log()
        assert "stopped" in d.log() and "did not stop" not in d.log(), d.log()
