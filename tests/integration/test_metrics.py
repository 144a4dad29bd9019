"""Metrics (docs/operations.md): a real ferryd scraped on its socket (GET /v1/metrics) and on
its TCP listener ([daemon] metrics_listen) while it transfers, fails, retries and notifies."""

from __future__ import annotations

import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.faultserver import FaultServer, Status
from harness.ferryd import Daemon, api_call
from harness.wait import wait_until
from prometheus_client.parser import text_string_to_metric_families

from ferry import Client, JobState, NotifyFlags


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def port() -> int:
    return _free_port()


@pytest.fixture
def metered(short_tmp: Path, port: int) -> Iterator[Daemon]:
    daemon = Daemon(
        short_tmp / "m",
        # A long stall timeout: the held transfer must still be TRANSFERRING when scraped,
        # however slowly a loaded machine runs the rest of the test.
        config=f'[daemon]\nmetrics_listen = "127.0.0.1:{port}"\nstall_timeout = 900\n',
    )
    daemon.start()
    yield daemon
    assert daemon.stop() == 0, daemon.log()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _scrape(daemon: Daemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = api_call(daemon.socket, "GET", "/v1/metrics")
    assert status == 200, body
    assert isinstance(body, bytes)
    return _samples(body.decode())


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_follow_what_ferryd_does(
    metered: Daemon, port: int, http_server: FaultServer, dest: Path
) -> None:
    before = _scrape(metered)
    assert _value(before, "ferry_jobs", state="QUEUED", priority="normal") == 0
    assert (
        _value(before, "ferry_transferred_bytes_total", priority="high", direction="download") == 0
    )

    data = os.urandom(300_000)
    ok = http_server.add("ok", data)
    flaky = http_server.add("flaky", b"f" * 1000)
    http_server.script["flaky"] = [Status(503)]
    slow = http_server.add("slow", b"s" * 200_000, pause_after=1000)
    with Client(metered.socket) as c:
        j1 = c.create_job("ok")
        j1.set(priority="high", notify_flags=NotifyFlags.JOB_TRANSFERRED,
               notify_cmdline=["/bin/true"])  # fmt: skip
        j1.add_file(ok, str(dest / "ok"))
        j1.resume()
        j2 = c.create_job("flaky")
        j2.set(min_retry_delay=5)
        j2.add_file(flaky, str(dest / "flaky"))
        j2.resume()
        wait_until(lambda: j1.info().state is JobState.TRANSFERRED, "job 1", timeout=120)
        wait_until(
            lambda: j1.info().data["notification"]
            and j1.data["notification"]["state"] == "DELIVERED",
            "the notification",
            timeout=120,
        )
        wait_until(lambda: j2.info().state is JobState.TRANSFERRED, "the retry", timeout=120)
        # Last, so that it is still held when scraped: a transfer running now.
        j3 = c.create_job("slow", priority="foreground")
        j3.add_file(slow, str(dest / "slow"))
        j3.resume()
        wait_until(lambda: http_server.paused("slow"), "the slow transfer", timeout=120)
        wait_until(lambda: j3.info().state is JobState.TRANSFERRING, "TRANSFERRING", timeout=60)

        m = _scrape(metered)
        assert _value(
            m, "ferry_transferred_bytes_total", priority="high", direction="download"
        ) == len(data)
        assert (
            _value(m, "ferry_transferred_bytes_total", priority="normal", direction="download")
            == 1000
        )
        assert (
            _value(m, "ferry_job_errors_total", code="BG_E_HTTP_ERROR_503", kind="transient") == 1
        )
        assert _value(m, "ferry_retries_total") == 1
        assert (
            _value(m, "ferry_notification_runs_total", event="JOB_TRANSFERRED", outcome="delivered")
            == 1
        )
        assert _value(m, "ferry_jobs", state="TRANSFERRED", priority="high") == 1
        assert _value(m, "ferry_jobs", state="TRANSFERRED", priority="normal") == 1
        assert _value(m, "ferry_jobs", state="TRANSFERRING", priority="foreground") == 1
        # At least the held one (a finished job's run may still be letting go of its slot).
        assert _value(m, "ferry_transfers_running") >= 1
        assert _value(m, "ferry_api_connections") >= 1  # the scrape itself
        assert _value(m, "ferry_tasks") >= 2  # the scrape's handler and a transfer at least
        assert _value(m, "ferry_store_commit_seconds_count") > 5
        assert _value(m, "ferry_store_commit_seconds_bucket", le="+Inf") == _value(
            m, "ferry_store_commit_seconds_count"
        )
        # Every commit carried at least one write; group commit may put several in one.
        assert _value(m, "ferry_store_writes_total") >= _value(
            m, "ferry_store_commit_seconds_count"
        )
        j3.cancel()
        http_server.release("slow")

    # The TCP listener: the same metrics, and nothing else.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        tcp = _samples(resp.read().decode())
    assert _value(tcp, "ferry_retries_total") == 1
    assert _value(tcp, "ferry_jobs", state="CANCELLED", priority="foreground") == 1
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        assert resp.read().decode().rstrip().endswith("# EOF")
    for path in ("/v1/jobs", "/v1/status", "/v1/openapi.json"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10)
        assert e.value.code == 404


def test_no_listener_unless_configured(ferryd: Daemon) -> None:
    status, body = api_call(ferryd.socket, "GET", "/v1/metrics")
    assert status == 200 and b"ferry_jobs" in body


def test_library_sync_and_asyncio(ferryd: Daemon) -> None:
    import asyncio

    from ferry import AsyncClient

    with Client(ferryd.socket) as c:
        c.create_job("counted")
        text = c.metrics()
    assert _value(_samples(text), "ferry_jobs", state="SUSPENDED", priority="normal") == 1

    async def aio() -> str:
        async with AsyncClient(ferryd.socket) as ac:
            return await ac.metrics()

    assert "ferry_store_commit_seconds_bucket" in asyncio.run(aio())


def test_bad_listen_address_is_refused(short_tmp: Path) -> None:
    daemon = Daemon(short_tmp / "bad", config='[daemon]\nmetrics_listen = "nowhere"\n')
    daemon.spawn()
    assert daemon.proc is not None
    assert daemon.proc.wait(timeout=60) != 0
    assert "metrics_listen" in daemon.log()
