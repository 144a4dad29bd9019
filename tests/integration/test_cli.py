"""The ``ferry`` command (SPEC §6) as a user runs it: a real process against a real ferryd."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.faultserver import FaultServer
from harness.ferryd import Daemon
from harness.wait import wait_until

from ferry import Client
from tests.integration.cli_helpers import (
    Cli,
    SlowServer,
    assert_file_shape,
    assert_job_shape,
    others_in,
    run_ferry,
)


@pytest.fixture
def cli(ferryd: Daemon) -> Cli:
    return Cli(ferryd.socket)


@pytest.fixture
def slow_server() -> Iterator[SlowServer]:
    server = SlowServer().start()
    yield server
    server.stop()


def error_of(r: Any) -> str:
    """The code of a failed JSON-mode run, checking SPEC §6's stderr line on the way."""
    assert r.returncode == 1, r
    err = r.json["error"]
    assert set(err) >= {"code", "hresult", "message"}
    assert f"{err['code']} ({err['hresult']}): " in r.stderr
    return str(err["code"])


# ---- help and usage ----------------------------------------------------------------------


def test_help_lists_the_commands() -> None:
    r = run_ferry("--help", json_mode=False)
    assert r.returncode == 0, r
    for command in (
        "create", "add", "files", "info", "list", "resume", "suspend", "cancel",
        "complete", "take-ownership", "set", "wait", "transfer", "events",
    ):  # fmt: skip
        assert command in r.stdout, command
    for command in ("set", "transfer", "wait", "complete"):
        sub = run_ferry(command, "--help", json_mode=False)
        assert sub.returncode == 0 and "bitsadmin" in sub.stdout, sub


@pytest.mark.parametrize(
    "args",
    [
        ("add", "job", "http://only-a-remote"),
        ("create",),
        ("create", "x", "--priority", "urgent"),
        ("set", "job"),
        ("no-such-command",),
        ("wait", "job", "--timeout", "soon"),
        ("transfer",),
    ],
)
def test_usage_errors_exit_2(cli: Cli, args: tuple[str, ...]) -> None:
    r = cli(*args, json=False)
    assert r.returncode == 2, r
    assert "Usage" in r.stderr or "Error" in r.stderr


def test_usage_error_in_json_mode_still_prints_one_document(cli: Cli) -> None:
    r = cli("add", "job", "http://only-a-remote")
    assert r.returncode == 2, r
    assert r.json["error"]["code"] == "E_INVALIDARG"


# ---- no daemon -----------------------------------------------------------------------------


@pytest.fixture
def lonely_env() -> Iterator[dict[str, str]]:
    """A runtime and state directory with no daemon in it (short: socket paths are limited)."""
    base = Path(tempfile.mkdtemp(prefix="fy-"))
    env = {
        "XDG_RUNTIME_DIR": str(base / "run"),
        "XDG_STATE_HOME": str(base / "state"),
        "HOME": str(base),
    }
    (base / "run").mkdir(mode=0o700)
    yield env
    sock = base / "run" / "ferry" / "ferryd.sock"
    if sock.exists():
        # An autostarted daemon: stop it by the pid it reports.
        try:
            with Client(str(sock)) as c:
                pid = int(c.status()["pid"])
            os.kill(pid, signal.SIGTERM)
            wait_until(lambda: not _alive(pid), timeout=20, what="ferryd to exit")
        except Exception:
            pass
    shutil.rmtree(base, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_daemon_not_running_is_exit_1(tmp_path: Path) -> None:
    sock = str(tmp_path / "none.sock")
    r = run_ferry("list", socket=sock)
    assert error_of(r) == "E_FAIL"
    assert f"ferryd is not running at {sock}" in r.stderr
    # An explicit socket is never replaced by an autostarted daemon.
    r = run_ferry("create", "x", socket=sock)
    assert error_of(r) == "E_FAIL"


def test_no_autostart_for_queries_or_when_told_not_to(lonely_env: dict[str, str]) -> None:
    sock = Path(lonely_env["XDG_RUNTIME_DIR"]) / "ferry" / "ferryd.sock"
    assert error_of(run_ferry("list", env=lonely_env)) == "E_FAIL"
    assert error_of(run_ferry("--no-autostart", "create", "x", env=lonely_env)) == "E_FAIL"
    assert not sock.exists()


def test_autostart_on_create(lonely_env: dict[str, str]) -> None:
    r = run_ferry("create", "autostarted", env=lonely_env)
    assert r.returncode == 0, r
    assert_job_shape(r.json)
    sock = Path(lonely_env["XDG_RUNTIME_DIR"]) / "ferry" / "ferryd.sock"
    assert sock.exists()
    # The next command finds the user daemon by default.
    listed = run_ferry("list", env=lonely_env)
    assert listed.returncode == 0, listed
    assert [j["display_name"] for j in listed.json] == ["autostarted"]


# ---- the job life cycle ---------------------------------------------------------------------


def test_life_cycle_by_display_name(
    cli: Cli, http_server: FaultServer, dest: Path, tmp_path: Path
) -> None:
    payload = os.urandom(150_000)
    url = http_server.add("cli.bin", payload)
    job = cli.ok("create", "nightly", "--priority", "high", "--description", "from the CLI")
    assert_job_shape(job)
    assert (job["state"], job["priority"], job["type"]) == ("SUSPENDED", "high", "download")
    assert job["description"] == "from the CLI"
    assert job["error"] is None and job["progress"]["files_total"] == 0

    # A relative local name is relative to the CLI's working directory.
    added = cli.ok("add", "nightly", url, "cli.bin", cwd=dest)
    assert_job_shape(added)
    assert added["progress"]["files_total"] == 1
    files = cli.ok("files", "nightly")
    assert isinstance(files, list) and len(files) == 1
    assert_file_shape(files[0])
    assert files[0]["local_name"] == str(dest / "cli.bin")
    assert files[0]["remote_name"] == url

    assert cli.ok("resume", "nightly")["id"] == job["id"]
    waited = cli.ok("wait", "nightly", "--timeout", "60")
    assert waited["state"] == "TRANSFERRED"
    info = cli.ok("info", job["id"])
    assert_job_shape(info)
    assert info["progress"]["bytes_transferred"] == len(payload)
    assert info["times"]["transfer_completed"] is not None

    done = cli.ok("complete", "nightly")
    assert done["result"] == {"code": "S_OK", "hresult": "0x00000000"}
    assert_job_shape(done["job"])
    assert done["job"]["state"] == "ACKNOWLEDGED"
    assert (dest / "cli.bin").read_bytes() == payload
    assert others_in(dest, "cli.bin") == []

    listed = cli.ok("list")
    assert isinstance(listed, list)
    for j in listed:
        assert_job_shape(j)
    assert job["id"] in [j["id"] for j in listed]


def test_unknown_and_ambiguous_names(cli: Cli) -> None:
    assert error_of(cli("info", "ghost")) == "BG_E_NOT_FOUND"
    cli.ok("create", "twin")
    cli.ok("create", "twin")
    r = cli("info", "twin")
    assert error_of(r) == "BG_E_NOT_FOUND"
    assert "0x80200001" in r.stderr
    # Human mode: same exit status and stderr line, nothing on stdout.
    r = cli("resume", "ghost", json=False)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("BG_E_NOT_FOUND (0x80200001): ")


def test_bad_input_is_reported(cli: Cli, dest: Path) -> None:
    cli.ok("create", "bad")
    assert error_of(cli("add", "bad", "ftp://example.org/f", str(dest / "f"))) == "E_INVALIDARG"
    assert error_of(cli("resume", "bad")) == "BG_E_EMPTY"
    assert error_of(cli("set", "bad", "--min-retry-delay", "1")) == "E_INVALIDARG"


def test_set_options(cli: Cli) -> None:
    cli.ok("create", "props")
    j = cli.ok(
        "set", "props",
        "--display-name", "renamed",
        "--description", "desc",
        "--priority", "low",
        "--min-retry-delay", "30",
        "--no-progress-timeout", "0",
        "--notify-flags", "JOB_TRANSFERRED,FILE_TRANSFERRED",
        "--notify-cmdline", "/bin/echo 'two words' x",
    )  # fmt: skip
    assert_job_shape(j)
    assert (j["display_name"], j["description"], j["priority"]) == ("renamed", "desc", "low")
    assert (j["min_retry_delay"], j["no_progress_timeout"], j["notify_flags"]) == (30, 0, 0x11)
    assert j["notify_cmdline"] == ["/bin/echo", "two words", "x"]
    j = cli.ok("set", "renamed", "--notify-cmdline", "", "--notify-flags", "0x1f")
    assert (j["notify_cmdline"], j["notify_flags"]) == (None, 0x1F)


def test_suspend_cancel_take_ownership(cli: Cli, slow_server: SlowServer, dest: Path) -> None:
    local = dest / "keep.bin"
    local.write_bytes(b"precious")
    cli.ok("create", "c", "--priority", "foreground")
    cli.ok("add", "c", slow_server.url("c"), str(local))
    assert cli.ok("take-ownership", "c")["owner"]["uid"] == os.getuid()
    cli.ok("resume", "c")
    wait_until(lambda: others_in(dest, "keep.bin") != [], what="the temporary file")
    assert cli.ok("suspend", "c")["state"] == "SUSPENDED"
    assert cli.ok("cancel", "c")["state"] == "CANCELLED"
    slow_server.release()
    assert others_in(dest, "keep.bin") == []
    assert local.read_bytes() == b"precious"
    assert error_of(cli("resume", "c")) == "BG_E_INVALID_STATE"


def test_wait_exit_status(cli: Cli, http_server: FaultServer, dest: Path) -> None:
    cli.ok("create", "missing")
    cli.ok("add", "missing", http_server.url("absent.bin"), str(dest / "absent.bin"))
    r = cli("wait", "missing", "--timeout", "0.3")
    assert error_of(r) == "BG_E_WATCHDOG_TIMEOUT"
    cli.ok("resume", "missing")
    r = cli("wait", "missing", "--timeout", "60")
    assert r.returncode == 1, r
    assert r.json["state"] == "ERROR"
    assert r.json["error"]["code"] == "BG_E_HTTP_ERROR_404"
    assert "BG_E_HTTP_ERROR_404 (0x80190194)" in r.stderr


def test_human_output(cli: Cli, http_server: FaultServer, dest: Path) -> None:
    job = cli.ok("create", "human")
    cli.ok("add", "human", http_server.add("h.bin", b"hello"), str(dest / "h.bin"))
    for args in (("list",), ("info", "human"), ("files", "human")):
        r = cli(*args, json=False)
        assert r.returncode == 0, r
        assert "human" in r.stdout or "h.bin" in r.stdout
    info = cli("info", "human", json=False).stdout
    assert job["id"] in info and "SUSPENDED" in info and f"S-1-22-1-{os.getuid()}" in info
    assert "h.bin" in cli("files", "human", json=False).stdout


# ---- transfer ---------------------------------------------------------------------------------


def test_transfer_end_to_end(cli: Cli, http_server: FaultServer, dest: Path) -> None:
    a, b = os.urandom(120_000), os.urandom(5)
    r = cli(
        "transfer", "--name", "xfer", "--priority", "foreground",
        http_server.add("a.bin", a), str(dest / "a.bin"),
        http_server.add("b.bin", b), str(dest / "b.bin"),
    )  # fmt: skip
    assert r.returncode == 0, r
    assert r.json["result"]["code"] == "S_OK"
    assert_job_shape(r.json["job"])
    assert (r.json["job"]["display_name"], r.json["job"]["state"]) == ("xfer", "ACKNOWLEDGED")
    assert (dest / "a.bin").read_bytes() == a and (dest / "b.bin").read_bytes() == b


def test_transfer_human_mode(cli: Cli, http_server: FaultServer, dest: Path) -> None:
    r = cli("transfer", http_server.add("h.bin", b"x" * 70_000), "h.bin", json=False, cwd=dest)
    assert r.returncode == 0, r
    assert str(dest / "h.bin") in r.stdout
    assert (dest / "h.bin").read_bytes() == b"x" * 70_000


def test_transfer_error_keeps_the_job(cli: Cli, http_server: FaultServer, dest: Path) -> None:
    r = cli("transfer", "--name", "broken", http_server.url("nope.bin"), str(dest / "nope.bin"))
    assert error_of(r) == "BG_E_HTTP_ERROR_404"
    assert r.json["job"]["state"] == "ERROR"
    assert "ferry resume" in r.stderr
    assert cli.ok("info", "broken")["state"] == "ERROR"
    assert not (dest / "nope.bin").exists()


def test_ctrl_c_during_transfer_cancels(cli: Cli, slow_server: SlowServer, dest: Path) -> None:
    proc = cli.popen("transfer", "--name", "interrupted", slow_server.url("i"), str(dest / "i"))
    try:
        wait_until(lambda: others_in(dest) != [], what="the temporary file")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (out, err)
    assert cli.ok("info", "interrupted")["state"] == "CANCELLED"
    slow_server.release()
    assert others_in(dest) == []


# ---- events -----------------------------------------------------------------------------------


def _reader(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_events_json_lines(cli: Cli, http_server: FaultServer, dest: Path) -> None:
    job = cli.ok("create", "streamed")
    cli.ok("add", "streamed", http_server.add("s.bin", os.urandom(40_000)), str(dest / "s.bin"))
    proc = cli.popen("events", "--all-events", "streamed")
    try:
        lines = _reader(proc)
        first = json.loads(lines.get(timeout=20))
        assert (first["type"], first["job_id"]) == ("job-snapshot", job["id"])
        assert_job_shape(first["job"])
        cli.ok("resume", "streamed")
        states: list[str] = []
        while not states or states[-1] != "TRANSFERRED":
            ev = json.loads(lines.get(timeout=30))
            assert set(ev) == {"type", "job_id", "job"}
            states.append(ev["job"]["state"])
        assert "QUEUED" in states
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=20)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_directory_as_the_local_name(cli: Cli, http_server: FaultServer, dest: Path) -> None:
    """`ferry add` refuses a local name that is a directory, and adds nothing; `ferry
    transfer URL DIR` (or DIR/) writes DIR/NAME, the name from the URL, as curl -O does."""
    url = http_server.add("named.bin", b"n" * 10_000)
    job = cli.ok("create", "dir-test")
    for local in (str(dest), str(dest) + "/", "."):
        r = cli("add", job["id"], url, local, cwd=dest)
        assert error_of(r) == "E_INVALIDARG", r
        assert "directory" in r.json["error"]["message"]
    assert cli.ok("info", job["id"])["progress"]["files_total"] == 0
    assert others_in(dest) == []

    r = cli("transfer", url, str(dest) + "/")
    assert r.returncode == 0, r
    assert (dest / "named.bin").read_bytes() == b"n" * 10_000
    (dest / "named.bin").unlink()
    r = cli("transfer", url, ".", cwd=dest, json=False)
    assert r.returncode == 0, r
    assert (dest / "named.bin").read_bytes() == b"n" * 10_000
    assert others_in(dest, "named.bin") == []
    # A URL that names no file: the user must name the local file.
    r = cli("transfer", http_server.url("/"), str(dest))
    assert error_of(r) == "E_INVALIDARG" and "names no file" in r.json["error"]["message"]


def test_complete_says_how_many_files_were_transferred(cli: Cli, dest: Path) -> None:
    job = cli.ok("create", "nothing-yet")
    cli.ok("add", job["id"], "http://127.0.0.1:9/a", str(dest / "a"),
           "http://127.0.0.1:9/b", str(dest / "b"))  # fmt: skip
    r = cli("complete", job["id"], json=False)
    assert r.returncode == 0, r
    assert "BG_S_PARTIAL_COMPLETE" in r.stdout
    assert "No file was transferred: all 2 files were discarded." in r.stderr
    assert "only some" not in r.stderr.lower()
