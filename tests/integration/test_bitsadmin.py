"""``ferry bitsadmin /VERB …`` through a real ferryd: bitsadmin's syntax (switches in any
case, GUIDs in braces), its output shapes, the network-identity, HTTP-option and
upload(-reply) verbs, and bad input refused with the right code and nothing changed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
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


def test_usage_errors(ferryd: Daemon) -> None:
    cli = Cli(ferryd.socket)
    ba(cli, "/create", "j")
    r = ba(cli, "/frobnicate", ok=False)
    assert r.returncode == 2 and "Unknown bitsadmin verb" in r.stderr
    r = ba(cli, "/addfile", "j", ok=False)
    assert r.returncode == 2 and "Usage: ferry bitsadmin /addfile JOB" in r.stderr
    help_text = ba(cli, "/?")
    assert "/addfilewithranges" in help_text and "/setcredentials" in help_text
    assert "Not available yet" not in help_text


def test_setproxysettings(ferryd: Daemon) -> None:
    cli = Cli(ferryd.socket)
    ba(cli, "/create", "p")
    out = ba(
        cli, "/SetProxySettings", "p", "override",
        "http://127.0.0.1:3128,http://[::1]:3128", "<local> .example.org",
    )  # fmt: skip
    assert "Proxy usage set to OVERRIDE." in out
    assert ba(cli, "/rawreturn", "/getproxyusage", "p").strip() == "OVERRIDE"
    with Client(ferryd.socket) as c:
        proxy = c.get_job("p").data["proxy"]
    assert proxy["usage"] == "OVERRIDE" and len(proxy["list"]) == 2
    assert ba(cli, "/rawreturn", "/getproxylist", "p").strip() == ",".join(proxy["list"])
    assert ba(cli, "/rawreturn", "/getproxybypasslist", "p").strip() == " ".join(proxy["bypass"])
    assert "PROXY USAGE: OVERRIDE PROXY LIST: http://127.0.0.1:3128" in ba(
        cli, "/info", "p", "/verbose"
    )
    # A bad value: BG_E_INVALID_PROXY_INFO, nothing changes.
    r = ba(cli, "/setproxysettings", "p", "NO_PROXY", "http://127.0.0.1:3128", ok=False)
    assert r.returncode == 1 and "BG_E_INVALID_PROXY_INFO" in r.stderr, r
    r = ba(cli, "/setproxysettings", "p", "SOMETIMES", ok=False)
    assert r.returncode == 1, r
    assert ba(cli, "/rawreturn", "/getproxyusage", "p").strip() == "OVERRIDE"
    ba(cli, "/setproxysettings", "p", "NO_PROXY")
    assert ba(cli, "/rawreturn", "/getproxylist", "p").strip() == "NULL"
    assert ba(cli, "/rawreturn", "/getproxyusage", "p").strip() == "NO_PROXY"


def test_setcredentials_and_removecredentials(ferryd: Daemon) -> None:
    cli = Cli(ferryd.socket)
    ba(cli, "/create", "c")
    assert "Credentials set." in ba(
        cli, "/SetCredentials", "c", "server", "basic", "alice", "s3cret-pw"
    )
    ba(cli, "/setcredentials", "c", "PROXY", "DIGEST", "bob", "other-pw")
    with Client(ferryd.socket) as c:
        creds = c.get_job("c").credentials()
    assert {(x["target"], x["scheme"], x["user"]) for x in creds} == {
        ("SERVER", "BASIC", "alice"),
        ("PROXY", "DIGEST", "bob"),
    }
    info = ba(cli, "/info", "c", "/verbose")
    assert "s3cret-pw" not in info and "other-pw" not in info
    r = ba(cli, "/setcredentials", "c", "SERVER", "PASSPORT", "u", "p", ok=False)
    assert r.returncode == 1 and "p" not in r.stdout.split("\n", 2)[-1], r
    r = ba(cli, "/setcredentials", "c", "SERVER", "BASIC", "u", ok=False)
    assert r.returncode == 2, r
    assert "Credentials removed." in ba(cli, "/removecredentials", "c", "SERVER", "BASIC")
    assert "S_FALSE" in ba(cli, "/removecredentials", "c", "SERVER", "BASIC")
    with Client(ferryd.socket) as c:
        creds = c.get_job("c").credentials()
    assert [(x["target"], x["scheme"]) for x in creds] == [("PROXY", "DIGEST")]


def test_setcustomheaders_securityflags_httpmethod(ferryd: Daemon) -> None:
    cli = Cli(ferryd.socket)
    ba(cli, "/create", "h")
    assert "2 custom header(s) set." in ba(cli, "/setcustomheaders", "h", "X-A: 1", "X-B: two")
    assert ba(cli, "/rawreturn", "/getcustomheaders", "h").splitlines() == ["X-A: 1", "X-B: two"]
    r = ba(cli, "/setcustomheaders", "h", "Authorization: Basic eA==", ok=False)
    assert r.returncode == 1 and "E_INVALIDARG" in r.stderr, r
    assert ba(cli, "/rawreturn", "/getcustomheaders", "h").splitlines() == ["X-A: 1", "X-B: two"]
    assert "Custom headers cleared." in ba(cli, "/setcustomheaders", "h", "NULL")
    assert ba(cli, "/rawreturn", "/getcustomheaders", "h").strip() == "NULL"
    ba(cli, "/setcustomheaders", "h", "X-Secret: 42")
    assert "write-only" in ba(cli, "/makecustomheaderswriteonly", "h")
    assert "42" not in ba(cli, "/rawreturn", "/getcustomheaders", "h")
    # 0x010A: IGNORE_CERT_CN_INVALID | IGNORE_UNKNOWN_CA | REDIRECT_POLICY_ALLOW_REPORT
    assert "Security flags set to 0x010A." in ba(cli, "/SetSecurityFlags", "h", "0x010A")
    with Client(ferryd.socket) as c:
        assert c.get_job("h").data["security_flags"] == [
            "IGNORE_CERT_CN_INVALID",
            "IGNORE_UNKNOWN_CA",
            "REDIRECT_POLICY_ALLOW_REPORT",
        ]
    assert ba(cli, "/rawreturn", "/getsecurityflags", "h").strip() == str(0x010A)
    for bad in ("0x4000", "0x0300", "lots"):
        r = ba(cli, "/setsecurityflags", "h", bad, ok=False)
        assert r.returncode in (1, 2), r
    assert ba(cli, "/rawreturn", "/getsecurityflags", "h").strip() == str(0x010A)
    ba(cli, "/setsecurityflags", "h", "0")
    assert ba(cli, "/rawreturn", "/getsecurityflags", "h").strip() == "0"
    assert ba(cli, "/rawreturn", "/gethttpmethod", "h").strip() == "GET"
    ba(cli, "/sethttpmethod", "h", "POST")
    assert ba(cli, "/rawreturn", "/gethttpmethod", "h").strip() == "POST"


def test_upload_and_upload_reply(ferryd: Daemon, tmp_path: Path) -> None:
    from tests.helpers.oddbits import OddBitsServer

    cli = Cli(ferryd.socket)
    odd = OddBitsServer()
    odd.start()
    try:
        data = os.urandom(30_000)
        (tmp_path / "src").write_bytes(data)
        out = ba(cli, "/transfer", "up", "/UPLOAD", odd.url("up"), str(tmp_path / "src"))
        assert "TYPE: UPLOAD STATE:" in out and out.rstrip().endswith("Transfer complete.")
        assert odd.published["up"] == data
        (gid,) = GUID.findall(ba(cli, "/create", "/upload", "up2"))
        assert ba(cli, "/rawreturn", "/gettype", gid).strip() == "UPLOAD"
        odd.reply_for["rr"] = b"\x00reply from the application\xff" * 3
        out = ba(cli, "/create", "/Upload-Reply", "rr")
        assert "Created job" in out
        assert ba(cli, "/rawreturn", "/gettype", "rr").strip() == "UPLOAD-REPLY"
        ba(cli, "/addfile", "rr", odd.url("rr"), str(tmp_path / "src"))
        assert ba(cli, "/rawreturn", "/getreplyfilename", "rr").strip() == str(
            tmp_path / "src.reply"
        )
        assert "Reply file name set to" in ba(
            cli, "/setreplyfilename", "rr", str(tmp_path / "answer")
        )
        assert ba(cli, "/rawreturn", "/getreplyfilename", "rr").strip() == str(tmp_path / "answer")
        r = ba(cli, "/getreplydata", "rr", ok=False)  # not transferred yet
        assert r.returncode == 1 and "BG_E_INVALID_STATE" in r.stderr, r
        ba(cli, "/resume", "rr")
        with Client(ferryd.socket) as c:
            assert c.get_job("rr").wait(timeout=60) is JobState.TRANSFERRED
        hexed = ba(cli, "/rawreturn", "/getreplydata", "rr")
        assert bytes.fromhex(hexed.replace("\n", " ")) == odd.reply_for["rr"]
        assert hexed.splitlines()[0] == odd.reply_for["rr"][:16].hex(" ").upper()
        total = len(odd.reply_for["rr"])
        assert ba(cli, "/rawreturn", "/getreplyprogress", "rr").strip() == (
            f"{total} / {total} (100%)"
        )
        r = ba(cli, "/getreplydata", "up2", ok=False)  # not an upload-reply job
        assert r.returncode == 1, r
        ba(cli, "/complete", "rr")
        assert (tmp_path / "answer").read_bytes() == odd.reply_for["rr"]
    finally:
        odd.stop()


def test_monitor_redraws(ferryd: Daemon) -> None:
    cli = Cli(ferryd.socket)
    ba(cli, "/create", "watched")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferry.cli.main", "--socket", ferryd.socket,
         "bitsadmin", "/monitor", "/refresh", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
    )  # fmt: skip
    title = "MONITORING BACKGROUND COPY MANAGER(1 second refresh)"
    seen: list[str] = []
    # Read as it comes (a thread: readline blocks) until two screens were drawn; the deadline
    # is generous because a loaded machine may take seconds to start the CLI.
    reader = threading.Thread(
        target=lambda: seen.extend(iter(proc.stdout.readline, "")),  # type: ignore[union-attr]
        daemon=True,
    )
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while "".join(seen).count(title) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        reader.join(timeout=30)
    out = "".join(seen)
    assert out.count(title) >= 2
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
