"""``ferry credentials`` and the asyncio library's credential calls against a real ferryd
(SPEC §8.2): write-only passwords, the Basic-over-http warning, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from harness.ferryd import Daemon

import ferry
from tests.integration.cli_helpers import Cli, cli_env


def test_cli_set_list_remove_and_info(ferryd: Daemon, tmp_path: Path) -> None:
    cli = Cli(ferryd.socket)
    job = cli.ok("create", "creds")["id"]
    cli.ok("add", job, "http://127.0.0.1:9/x", str(tmp_path / "x"))
    pw = tmp_path / "pw"
    pw.write_text("cli-s3cret\n")
    shown = cli.ok("credentials", "set", job, "--target", "server", "--scheme", "basic",
                   "--user", "alice", "--password-file", str(pw))  # fmt: skip
    assert shown == {
        "credentials": [{"target": "SERVER", "scheme": "BASIC", "user": "alice", "implicit": False}]
    }
    # --password-stdin, implicit negotiate for the proxy.
    proc = subprocess.run(
        [sys.executable, "-m", "ferry.cli.main", "--socket", ferryd.socket, "--json",
         "credentials", "set", job, "--target", "proxy", "--scheme", "digest",
         "--user", "p", "--password-stdin"],
        input="stdin-s3cret\n", capture_output=True, text=True, env=cli_env(None), timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cli.ok("credentials", "set", job, "--target", "server", "--scheme", "negotiate")
    listed = cli.ok("credentials", "list", job)["credentials"]
    assert [(c["target"], c["scheme"], c["implicit"]) for c in listed] == [
        ("SERVER", "BASIC", False),
        ("PROXY", "DIGEST", False),
        ("SERVER", "NEGOTIATE", True),
    ]
    info = cli.ok("info", job)
    assert "cli-s3cret" not in json.dumps(info) and "stdin-s3cret" not in json.dumps(info)
    assert any("clear" in w for w in info["credential_warnings"])
    human = cli("info", job, json=False)
    assert "Warning" in human.stdout and "SERVER BASIC: user alice" in human.stdout
    # Bad input.
    r = cli("credentials", "set", job, "--target", "server", "--scheme", "basic", "--user", "u")
    assert r.returncode == 2  # a password source is required
    cli.ok("credentials", "remove", job, "--target", "proxy", "--scheme", "digest")
    assert len(cli.ok("credentials", "list", job)["credentials"]) == 2
    assert "s3cret" not in ferryd.log(10_000_000)


async def test_async_library(ferryd: Daemon) -> None:
    async with ferry.AsyncClient(ferryd.socket) as c:
        job = await c.create_job("aio-creds")
        await job.set_credentials("SERVER", "NTLM", "DOMAIN\\u", "pw")
        await job.set_credentials("SERVER", "NTLM", "DOMAIN\\v", "pw2")  # replaces
        assert await job.credentials() == [
            {"target": "SERVER", "scheme": "NTLM", "user": "DOMAIN\\v", "implicit": False}
        ]
        try:
            await job.set_credentials("SERVER", "PASSPORT")
        except ferry.FerryError as exc:
            assert exc.code == "BG_E_INVALID_AUTH_SCHEME"
        else:
            raise AssertionError("PASSPORT accepted")
        assert await job.remove_credentials("SERVER", "NTLM") is True
        assert job.data["credentials"] == []
