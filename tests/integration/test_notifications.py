"""Notifications (SPEC §2.6) through a real ferryd: the event stream under notify_flags, its
rate limit, waiters that work whatever the flags, and the notification command line with its
outbox (retries, timeouts, a crash between the transfer and the notification)."""

from __future__ import annotations

import os
import pwd
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.faultserver import FaultServer
from harness.ferryd import Daemon
from harness.wait import wait_until

from ferry import Client, JobState
from ferry.client import Event, EventStream, Job
from tests.integration.cli_helpers import SlowServer, run_ferry

MakeDaemon = Callable[..., Daemon]
ALL_BUT_DISABLE = 0x1F & ~0x4  # 0x1B; 0x1F includes DISABLE (0x4), which silences the job
STATE_ORDER = ["SUSPENDED", "QUEUED", "CONNECTING", "TRANSFERRING", "TRANSFERRED", "ACKNOWLEDGED"]


def write_config(path: Path, daemon: dict[str, Any]) -> None:
    lines = ["[daemon]"] + [f"{k} = {v!r}" for k, v in daemon.items()]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def make_daemon(short_tmp: Path) -> Iterator[MakeDaemon]:
    """A user-mode ferryd with ``[daemon]`` settings; one per test (they share a socket)."""
    made: list[Daemon] = []
    config = short_tmp / "ferryd.toml"

    def make(**settings: Any) -> Daemon:
        write_config(config, settings)
        d = Daemon(short_tmp, ["--config", str(config)])
        d.start()
        made.append(d)
        return d

    yield make
    for d in made:
        code = d.stop()
        assert code == 0, f"ferryd exited with {code}:\n{d.log()}"


def collect(
    stream: EventStream, until: Callable[[Event], bool], timeout: float = 30
) -> list[Event]:
    got: list[Event] = []
    while True:
        ev = stream.next(timeout)
        assert ev is not None, f"the stream ended after {[(e.type, e.state) for e in got]}"
        got.append(ev)
        if until(ev):
            return got


def info(c: Client, job: Job) -> dict[str, Any]:
    return c.get_job(job.id).data


# ---- the event stream ----------------------------------------------------------------------


def test_full_life_cycle_in_order_with_every_flag_but_disable(
    make_daemon: MakeDaemon, http_server: FaultServer, dest: Path
) -> None:
    d = make_daemon(min_notification_interval_ms=0)
    data = os.urandom(300_000)
    with Client(d.socket) as c:
        job = c.create_job("life")
        job.set(notify_flags=ALL_BUT_DISABLE)
        with c.events(job.id) as stream:
            snap = stream.next(10)
            assert snap is not None and (snap.type, snap.state) == ("job-snapshot", "SUSPENDED")
            job.add_file(http_server.add("life.bin", data), str(dest / "life.bin"))
            job.resume()
            events = collect(stream, lambda e: e.type == "job-transferred")
            job.complete()
            events += collect(stream, lambda e: e.state is JobState.ACKNOWLEDGED)
    for e in events:
        assert e.job_id == job.id and e.job is not None
        assert {"state", "progress", "error", "notify_flags"} <= set(e.job)
        assert e.job["error"] is None
    added = events[0]
    assert (added.type, added.state, added.job["progress"]["files_total"]) == (  # type: ignore[index]
        "job-modification",
        "SUSPENDED",
        1,
    )
    states = [str(e.state) for e in events]
    assert [STATE_ORDER.index(s) for s in states] == sorted(STATE_ORDER.index(s) for s in states)
    assert {"QUEUED", "TRANSFERRING", "TRANSFERRED", "ACKNOWLEDGED"} <= set(states)
    kinds = [e.type for e in events]
    tail = kinds[kinds.index("file-transferred") :]
    assert tail == ["file-transferred", "job-transferred", "job-modification"], kinds
    assert set(kinds[: kinds.index("file-transferred")]) == {"job-modification"}
    final = events[-1].job
    assert final is not None and final["progress"]["bytes_transferred"] == len(data)


def test_late_subscriber_first_gets_the_current_state(
    make_daemon: MakeDaemon, http_server: FaultServer, dest: Path
) -> None:
    d = make_daemon()
    with Client(d.socket) as c:
        job = c.create_job("late")
        job.add_file(http_server.add("late.bin", b"x" * 5000), str(dest / "late.bin"))
        job.resume()
        assert job.wait(30) is JobState.TRANSFERRED
        for stream in (c.events(job.id), c.events()):
            with stream:
                first = stream.next(10)
            assert first is not None and first.type == "job-snapshot"
            assert first.state is JobState.TRANSFERRED and first.job is not None
            assert first.job["progress"]["bytes_transferred"] == 5000


def run_two_jobs(
    c: Client, flags: int, http_server: FaultServer, dest: Path
) -> dict[str, list[tuple[str, str]]]:
    """A job that transfers and one that fails (404), both with ``flags``, seen by a callback
    subscriber of all the caller's jobs; a sentinel change marks the end of their events."""
    ok = c.create_job("ok")
    ok.set(notify_flags=flags)
    ok.add_file(http_server.add(f"ok{flags}.bin", b"y" * 3000), str(dest / f"ok{flags}.bin"))
    bad = c.create_job("bad")
    bad.set(notify_flags=flags)
    bad.add_file(http_server.url("missing.bin"), str(dest / f"bad{flags}.bin"))
    seen: dict[str, list[tuple[str, str]]] = {"ok": [], "bad": []}
    with c.events() as stream:
        snapshots = [stream.next(10), stream.next(10)]
        assert {e.type for e in snapshots if e} == {"job-snapshot"}
        ok.resume()
        bad.resume()
        assert ok.wait(30) is JobState.TRANSFERRED
        assert bad.wait(30) is JobState.ERROR
        sentinel = c.create_job("sentinel")
        sentinel.set(notify_flags=0x8, description="end")
        for e in collect(stream, lambda e: e.job_id == sentinel.id):
            if e.job_id != sentinel.id:
                seen["ok" if e.job_id == ok.id else "bad"].append((e.type, str(e.state)))
    return seen


@pytest.mark.parametrize(
    ("flags", "ok_kinds", "bad_kinds"),
    [
        (0x1, {"job-transferred"}, set()),
        (0x2, set(), {"job-error"}),
        (0x3, {"job-transferred"}, {"job-error"}),
        (0x10, {"file-transferred"}, set()),
        (0x8, {"job-modification"}, {"job-modification"}),
        (ALL_BUT_DISABLE, {"job-modification", "file-transferred", "job-transferred"},
         {"job-modification", "job-error"}),
        (0x1F, set(), set()),  # every flag, DISABLE included: DISABLE wins
        (0x4, set(), set()),
        (0x0, set(), set()),
    ],
)  # fmt: skip
def test_notify_flags_filter_the_callback_stream(
    make_daemon: MakeDaemon,
    http_server: FaultServer,
    dest: Path,
    flags: int,
    ok_kinds: set[str],
    bad_kinds: set[str],
) -> None:
    d = make_daemon(min_notification_interval_ms=0)
    with Client(d.socket) as c:
        seen = run_two_jobs(c, flags, http_server, dest)
    assert {k for k, _ in seen["ok"]} == ok_kinds, seen
    assert {k for k, _ in seen["bad"]} == bad_kinds, seen
    if flags & 0x8 and not flags & 0x4:
        # JOB_MODIFICATION alone still shows every state: the transfer and the error arrive
        # as modifications when their own flags are off.
        assert ("job-modification" if flags == 0x8 else "job-transferred", "TRANSFERRED") in seen[
            "ok"
        ]
        assert ("job-modification" if flags == 0x8 else "job-error", "ERROR") in seen["bad"]
        assert [s for _, s in seen["ok"]][-1] == "TRANSFERRED"


def test_waiters_work_when_notifications_are_disabled(
    make_daemon: MakeDaemon, http_server: FaultServer, dest: Path
) -> None:
    d = make_daemon()
    with Client(d.socket) as c:
        job = c.create_job("silent")
        job.set(notify_flags=0x1F)  # DISABLE among them
        job.add_file(http_server.add("silent.bin", b"z" * 20_000), str(dest / "silent.bin"))
        job.resume()
        assert job.wait(30) is JobState.TRANSFERRED
        r = run_ferry("wait", job.id, "--timeout", "30", socket=d.socket)
        assert r.returncode == 0 and r.json["state"] == "TRANSFERRED", r
        # The callback stream of that job has nothing to say beyond the snapshot.
        with c.events(job.id) as stream:
            assert stream.next(10) is not None
            job.complete()
            with pytest.raises(TimeoutError):
                stream.next(1.0)
        assert (dest / "silent.bin").read_bytes() == b"z" * 20_000


def test_rate_limit_coalesces_progress_and_delivers_the_latest(
    make_daemon: MakeDaemon, http_server: FaultServer, dest: Path
) -> None:
    d = make_daemon(min_notification_interval_ms=3000)
    slow = SlowServer(size=100_000, head=1000).start()
    try:
        with Client(d.socket) as c:
            job = c.create_job("busy")
            job.set(notify_flags=0x8)
            n = 20
            job.add_files(
                [
                    (http_server.add(f"p{i}.bin", b"p" * 1000), str(dest / f"p{i}.bin"))
                    for i in range(n)
                ]
                + [(slow.url("last"), str(dest / "last.bin"))]
            )
            with c.events(job.id) as stream:
                stream.next(10)
                job.resume()
                # 20 files make at least 40 changes in the TRANSFERRING state; the stream
                # coalesces them, and the latest (20 files done) arrives although nothing
                # else happens while the last file is held back.
                burst = collect(
                    stream,
                    lambda e: e.job is not None and e.job["progress"]["files_transferred"] == n,
                )
                slow.release()
                rest = collect(stream, lambda e: e.state is JobState.TRANSFERRED)
    finally:
        slow.stop()
    assert {e.type for e in burst + rest} == {"job-modification"}
    transferring = [e for e in burst if e.state is JobState.TRANSFERRING]
    assert len(transferring) < n, [e.job["progress"] for e in transferring if e.job]
    final = rest[-1].job
    assert final is not None
    assert final["progress"]["bytes_transferred"] == n * 1000 + 100_000
    assert final["progress"]["files_transferred"] == n + 1


# ---- the notification command line -----------------------------------------------------------


def notification(c: Client, job: Job) -> dict[str, Any] | None:
    return info(c, job).get("notification")


def settled(c: Client, job: Job, state: str = "DELIVERED") -> Callable[[], bool]:
    def check() -> bool:
        n = notification(c, job)
        return n is not None and n["state"] == state

    return check


def transferred_job(
    c: Client, http_server: FaultServer, dest: Path, cmdline: list[str], name: str = "n"
) -> Job:
    job = c.create_job(name)
    job.set(notify_cmdline=cmdline)
    job.add_file(http_server.add(f"{name}.bin", b"n" * 2000), str(dest / f"{name}.bin"))
    job.resume()
    assert job.wait(30) is JobState.TRANSFERRED
    return job


def test_command_line_runs_with_a_clean_environment(
    make_daemon: MakeDaemon,
    http_server: FaultServer,
    dest: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FERRY_TEST_LEAK", "must not reach the program")
    d = make_daemon()
    out = tmp_path / "out"
    script = (
        f"env > {out}.env; pwd > {out}.pwd; id -u > {out}.uid; echo hello-out; echo hello-err >&2"
    )
    with Client(d.socket) as c:
        job = transferred_job(c, http_server, dest, ["/bin/sh", "-c", script])
        wait_until(settled(c, job), what="the notification")
        n = notification(c, job)
    assert n == {
        "last_event": "JOB_TRANSFERRED",
        "state": "DELIVERED",
        "attempts": 1,
        "error": None,
    }
    env = dict(
        line.split("=", 1) for line in Path(f"{out}.env").read_text().splitlines() if "=" in line
    )
    assert env["PATH"] == "/usr/bin:/bin"
    assert (env["FERRY_JOB_ID"], env["FERRY_EVENT"], env["FERRY_JOB_STATE"]) == (
        job.id,
        "JOB_TRANSFERRED",
        "TRANSFERRED",
    )
    assert env["FERRY_SOCKET"] == d.socket
    assert "FERRY_TEST_LEAK" not in env and "PYTHONPATH" not in env
    me = os.geteuid()
    assert Path(f"{out}.uid").read_text().strip() == str(me)
    try:
        home: str | None = pwd.getpwuid(me).pw_dir
    except KeyError:
        home = None
    if home is not None:
        assert env["HOME"] == home
        expected_cwd = home if os.path.isdir(home) and os.access(home, os.X_OK) else "/"
        assert Path(f"{out}.pwd").read_text().strip() == expected_cwd
    else:
        assert "HOME" not in env
    wait_until(lambda: "hello-err" in d.log(), what="the program's output in the log")
    assert "hello-out" in d.log()


def test_error_notification_runs_and_disable_silences_it(
    make_daemon: MakeDaemon, http_server: FaultServer, dest: Path, tmp_path: Path
) -> None:
    d = make_daemon()
    out = tmp_path / "errors"
    with Client(d.socket) as c:
        loud = c.create_job("loud")
        loud.set(notify_cmdline=["/bin/sh", "-c", f'echo "$FERRY_EVENT $FERRY_JOB_STATE" >> {out}'])
        loud.add_file(http_server.url("nothing-here"), str(dest / "loud"))
        quiet = c.create_job("quiet")
        quiet.set(notify_cmdline=["/bin/sh", "-c", f"echo quiet >> {out}"], notify_flags=0x4 | 0x3)
        quiet.add_file(http_server.url("nothing-here"), str(dest / "quiet"))
        only_transferred = c.create_job("only-transferred")
        only_transferred.set(
            notify_cmdline=["/bin/sh", "-c", f"echo ot >> {out}"], notify_flags=0x1
        )
        only_transferred.add_file(http_server.url("nothing-here"), str(dest / "ot"))
        for j in (loud, quiet, only_transferred):
            j.resume()
            assert j.wait(30) is JobState.ERROR
        wait_until(settled(c, loud), what="the error notification")
        # Nothing was owed for the others: the decision is stored with the state change.
        assert notification(c, quiet) is None and notification(c, only_transferred) is None
    assert out.read_text() == "JOB_ERROR ERROR\n"


def test_failing_programs_are_recorded_and_retried(
    make_daemon: MakeDaemon, http_server: FaultServer, dest: Path, tmp_path: Path
) -> None:
    d = make_daemon(notify_retry_delay=0.2, notify_max_attempts=3)
    tries = tmp_path / "tries"
    marker = tmp_path / "second-time-lucky"
    with Client(d.socket) as c:
        exit3 = transferred_job(
            c, http_server, dest, ["/bin/sh", "-c", f"echo try >> {tries}; exit 3"], "exit3"
        )
        missing = transferred_job(c, http_server, dest, ["/nonexistent/notify", "x"], "missing")
        flaky = transferred_job(
            c,
            http_server,
            dest,
            ["/bin/sh", "-c", f"[ -e {marker} ] || {{ touch {marker}; exit 3; }}"],
            "flaky",
        )
        for j in (exit3, missing):
            wait_until(settled(c, j, "FAILED"), what=f"{j.display_name} to fail for good")
        wait_until(settled(c, flaky), what="the flaky program to succeed on a retry")
        failed_exit = notification(c, exit3)
        failed_start = notification(c, missing)
        delivered = notification(c, flaky)
    assert tries.read_text() == "try\n" * 3
    assert failed_exit is not None and failed_exit["attempts"] == 3
    assert failed_exit["error"]["code"] == "E_FAIL"
    assert failed_exit["error"]["context"] == "QUEUE_MANAGER_NOTIFICATION"
    assert "exited with status 3" in failed_exit["error"]["description"]
    assert failed_exit["error"]["hresult"] == "0x80004005"
    assert failed_start is not None and failed_start["attempts"] == 3
    assert failed_start["error"]["code"] == "ERROR_FILE_NOT_FOUND"
    assert "/nonexistent/notify" in failed_start["error"]["description"]
    assert delivered == {
        "last_event": "JOB_TRANSFERRED",
        "state": "DELIVERED",
        "attempts": 2,
        "error": None,
    }
    # The jobs themselves are untouched by their notifications' troubles.
    with Client(d.socket) as c:
        assert c.get_job(exit3.id).state is JobState.TRANSFERRED


def test_a_program_that_outlives_the_timeout_loses_its_process_group(
    make_daemon: MakeDaemon, http_server: FaultServer, dest: Path, tmp_path: Path
) -> None:
    d = make_daemon(notify_timeout=1, notify_max_attempts=1)
    pidfile = tmp_path / "pid"
    script = f"sleep 120 & echo $! > {pidfile}; wait"
    with Client(d.socket) as c:
        job = transferred_job(c, http_server, dest, ["/bin/sh", "-c", script])
        wait_until(settled(c, job, "FAILED"), what="the timeout")
        n = notification(c, job)
    assert n is not None and n["error"]["code"] == "BG_E_WATCHDOG_TIMEOUT"
    pid = int(pidfile.read_text())

    def gone() -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        return stat.rsplit(")", 1)[1].split()[0] == "Z"  # killed, awaiting its reaper

    wait_until(gone, what="the program's child to be killed with its group")


def test_a_crash_between_transfer_and_notification_notifies_once_after_restart(
    make_daemon: MakeDaemon, http_server: FaultServer, dest: Path, tmp_path: Path, short_tmp: Path
) -> None:
    d = make_daemon(notify_start_delay=3600)  # the notifier sleeps: the window stays open
    out = tmp_path / "once"
    with Client(d.socket) as c:
        job = transferred_job(
            c, http_server, dest, ["/bin/sh", "-c", f"echo $FERRY_JOB_ID >> {out}"]
        )
        assert notification(c, job) == {
            "last_event": "JOB_TRANSFERRED",
            "state": "PENDING",
            "attempts": 0,
            "error": None,
        }
    assert not out.exists()
    d.kill()
    write_config(short_tmp / "ferryd.toml", {})
    d.start()
    with Client(d.socket) as c:
        wait_until(settled(c, job), what="the notification after the restart")
        assert c.get_job(job.id).state is JobState.TRANSFERRED
    assert out.read_text() == f"{job.id}\n"
    d.restart()  # a clean restart finds nothing owed
    assert d.stop() == 0
    db = sqlite3.connect(d.state_dir / "ferry.db")
    try:
        assert db.execute("SELECT count(*) FROM notifications").fetchone() == (0,)
    finally:
        db.close()
    assert out.read_text() == f"{job.id}\n"
