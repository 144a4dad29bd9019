"""``ferry bitsadmin /VERB …`` through a real ferryd: bitsadmin's syntax (switches in any
case, GUIDs in braces), its output shapes, and the verbs of parts not built yet refusing
clearly with a non-zero exit."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness.faultserver import FaultServer, Status
from harness.ferryd import Daemon

from ferry import Client, JobState
from ferry.cli.bitsadmin import VERBS
from tests.integration.cli_helpers import Cli, cli_env

GUID = re.compile(r"\{[0-9A-F-]{36}\}")


def ba(cli: Cli, *args: str, ok: bool = True) -> str:
    r = cli("bitsadmin", *args, json=False)
    if ok:
        assert r.returncode == 0, r
    return r.stdout if ok else r  # type: ignore[return-value]


def test_create_add_resume_complete(ferryd: Daemon, http_server: FaultServer, dest: Path) -> None:
    cli = Cli(ferryd.socket)
    data = os.urandom(50_000)
    url = http_server.add("a", data)
    out = ba(cli, "/CREATE", "/Download", "nightly")
    (gid,) = GUID.findall(out)
    assert f"Created job {gid}." in out
    assert GUID.fullmatch(ba(cli, "/rawreturn", "/create", "other").strip())
    assert "Added" in ba(cli, "/AddFile", gid.lower(), url, str(dest / "a"))
    assert ba(cli, "/rawreturn", "/getstate", "nightly").strip() == "SUSPENDED"
    assert ba(cli, "/rawreturn", "/GETFILESTOTAL", gid).strip() == "1"
    assert ba(cli, "/rawreturn", "/getbytestotal", gid).strip() == str(0xFFFFFFFFFFFFFFFF)
    assert "Priority set to HIGH." in ba(cli, "/setpriority", gid, "high")
    assert ba(cli, "/rawreturn", "/getpriority", gid).strip() == "HIGH"
    assert "Display name set to renamed." in ba(cli, "/setdisplayname", gid, "renamed")
    assert "Description set to d e." in ba(cli, "/setdescription", gid, "d e")
    assert "Minimum retry delay set to 30." in ba(cli, "/setminretrydelay", gid, "30")
    assert "No progress timeout set to 90." in ba(cli, "/setnoprogresstimeout", gid, "90")
    assert "Notification flags set to 3." in ba(cli, "/setnotifyflags", gid, "3")
    assert "set to '/bin/echo'" in ba(cli, "/setnotifycmdline", gid, "/bin/echo", "/bin/echo done")
    with Client(ferryd.socket) as c:
        j = c.get_job(gid[1:-1].lower())
        assert j.data["notify_cmdline"] == ["/bin/echo", "done"]
        assert j.data["min_retry_delay"] == 30 and j.description == "d e"
    assert "Job resumed." in ba(cli, "/resume", gid)
    with Client(ferryd.socket) as c:
        j = c.get_job(gid[1:-1].lower())
        assert j.wait(timeout=60) is JobState.TRANSFERRED
    assert ba(cli, "/rawreturn", "/getbytestransferred", gid).strip() == "50000"
    assert ba(cli, "/rawreturn", "/getfilestransferred", gid).strip() == "1"
    info = ba(cli, "/info", gid, "/VERBOSE")
    assert f"GUID: {gid} DISPLAY: 'renamed'" in info
    assert "TYPE: DOWNLOAD STATE: TRANSFERRED" in info and "JOB FILES:" in info
    listing = ba(cli, "/list")
    assert f"{gid} 'renamed' TRANSFERRED 1 / 1 50000 / 50000" in listing
    assert "Listed 2 job(s)." in listing
    assert "Took ownership of the job." in ba(cli, "/takeownership", gid)
    assert "Job completed." in ba(cli, "/complete", gid)
    assert (dest / "a").read_bytes() == data


def test_transfer_several_pairs(ferryd: Daemon, http_server: FaultServer, dest: Path) -> None:
    cli = Cli(ferryd.socket)
    a, b = os.urandom(10_000), os.urandom(20_000)
    out = ba(
        cli, "/transfer", "both", "/DOWNLOAD", "/Priority", "FOREGROUND",
        http_server.add("a", a), str(dest / "a"), http_server.add("b", b), str(dest / "b"),
    )  # fmt: skip
    assert "DISPLAY: 'both' TYPE: DOWNLOAD STATE:" in out
    assert "PRIORITY: FOREGROUND FILES:" in out
    assert out.rstrip().endswith("Transfer complete.")
    assert (dest / "a").read_bytes() == a and (dest / "b").read_bytes() == b


def test_transfer_error_cancels(ferryd: Daemon, http_server: FaultServer, dest: Path) -> None:
    cli = Cli(ferryd.socket)
    url = http_server.add("gone", b"x")
    http_server.script["gone"] = [Status(404)]
    r = ba(cli, "/transfer", "broken", url, str(dest / "x"), ok=False)
    assert r.returncode == 1
    assert "Unable to complete transfer." in r.stderr
    assert "ERROR CODE:    0x80190194" in r.stderr
    assert "ERROR CONTEXT: 0x00000005" in r.stderr
    with Client(ferryd.socket) as c:
        assert [j.state for j in c.jobs()] == [JobState.CANCELLED]


def test_addfileset_ranges_geterror_and_reset(
    ferryd: Daemon, http_server: FaultServer, dest: Path, tmp_path: Path
) -> None:
    cli = Cli(ferryd.socket)
    data = os.urandom(4000)
    url = http_server.add("r", data)
    ba(cli, "/create", "set")
    listing = tmp_path / "files.txt"
    listing.write_text(f"{url} {dest / 'one'}\n# a comment\n\n{url} '{dest / 'two words'}'\n")
    assert "Added 2 file(s) to job." in ba(cli, "/addfileset", "set", str(listing))
    assert "Listed 2 file(s)." in ba(cli, "/listfiles", "set")
    ba(cli, "/create", "ranged")
    ba(cli, "/addfilewithranges", "ranged", url, str(dest / "part"), "10:20,3000:eof")
    ba(cli, "/resume", "ranged")
    with Client(ferryd.socket) as c:
        assert c.get_job("ranged").wait(timeout=60) is JobState.TRANSFERRED
    ba(cli, "/complete", "ranged")
    got = (dest / "part").read_bytes()
    assert got[10:30] == data[10:30] and got[3000:] == data[3000:] and got[:10] == bytes(10)
    r = ba(cli, "/geterror", "set", ok=False)
    assert r.returncode == 1 and "0x8020000F" in r.stderr  # no error to show
    out = ba(cli, "/reset")
    assert "1 out of 1 jobs canceled." in out


def test_missing_parts_say_so(ferryd: Daemon) -> None:
    cli = Cli(ferryd.socket)
    ba(cli, "/create", "j")
    for args in (
        ("/setproxysettings", "j", "OVERRIDE", "proxy:8080", "NULL"),
        ("/SetCredentials", "j", "SERVER", "BASIC", "u", "p"),
        ("/removecredentials", "j", "SERVER", "BASIC"),
        ("/setcustomheaders", "j", "X-A: 1"),
        ("/setsecurityflags", "j", "0"),
        ("/setreplyfilename", "j", "/tmp/r"),
        ("/getreplydata", "j", "/hex"),
        ("/create", "/upload", "u"),
        ("/create", "/upload-reply", "u"),
        ("/transfer", "u", "/upload", "http://h/x", "/tmp/x"),
    ):
        r = ba(cli, *args, ok=False)
        assert r.returncode == 1, (args, r)
        assert "E_NOTIMPL" in r.stderr and "not available" in r.stderr, r
    r = ba(cli, "/frobnicate", ok=False)
    assert r.returncode == 2 and "Unknown bitsadmin verb" in r.stderr
    r = ba(cli, "/addfile", "j", ok=False)
    assert r.returncode == 2 and "Usage: ferry bitsadmin /addfile JOB" in r.stderr
    assert "/addfilewithranges" in ba(cli, "/?")


def test_monitor_redraws(ferryd: Daemon) -> None:
    cli = Cli(ferryd.socket)
    ba(cli, "/create", "watched")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferry.cli.main", "--socket", ferryd.socket,
         "bitsadmin", "/monitor", "/refresh", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
    )  # fmt: skip
    try:
        time.sleep(3)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert out.count("MONITORING BACKGROUND COPY MANAGER(1 second refresh)") >= 2
    assert "'watched' SUSPENDED 0 / 0 0 / 0" in out


@pytest.mark.parametrize(
    "verb",
    sorted(
        v
        for v in [
            "/transfer",
            "/create",
            "/addfile",
            "/addfileset",
            "/addfilewithranges",
            "/resume",
            "/suspend",
            "/cancel",
            "/complete",
            "/reset",
            "/info",
            "/list",
            "/monitor",
            "/getstate",
            "/getbytestotal",
            "/getbytestransferred",
            "/getfilestotal",
            "/getfilestransferred",
            "/geterror",
            "/getpriority",
            "/setpriority",
            "/setdisplayname",
            "/setdescription",
            "/setminretrydelay",
            "/setnoprogresstimeout",
            "/setnotifyflags",
            "/setnotifycmdline",
            "/setproxysettings",
            "/setcredentials",
            "/removecredentials",
            "/setcustomheaders",
            "/setsecurityflags",
            "/setreplyfilename",
            "/getreplydata",
            "/takeownership",
        ]
    ),
)
def test_every_verb_of_the_issue_is_known_and_documented(verb: str) -> None:
    assert verb in VERBS
    doc = (Path(__file__).parents[2] / "docs" / "bitsadmin.md").read_text()
    assert f"`{verb}" in doc
